//! In-memory stand-ins for the queue, the contact list and the mail service, for unit tests of
//! the domain and the handlers. Integration tests use the real SDK clients against moto instead.

use crate::audience::TopicDefaults;
use crate::deliver::{Mailer, SendError};
use crate::directory::{ContactDirectory, ContactPage, DirectoryError};
use crate::domain::TaskId;
use crate::domain::{EmailAddress, Topic};
use crate::message::Message;
use crate::queue::{MessageQueue, QueueError};
use crate::render::RenderedEmail;
use crate::tasks::{
    Claim, ClaimStore, IdempotencyStore, PageCounts, PartFailure, Recipients, Reservation,
    Settlement, StoreError, TaskRecord, TaskStatus, TaskStore,
};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::SystemTime;

/// Records what is sent; refuses everything when `fail` is set.
#[derive(Debug, Default)]
pub struct RecordingQueue {
    pub sent: Mutex<Vec<Message>>,
    pub fail: bool,
}

impl RecordingQueue {
    pub fn take(&self) -> Vec<Message> {
        std::mem::take(&mut *self.sent.lock().unwrap())
    }
}

impl MessageQueue for RecordingQueue {
    async fn send(&self, message: &Message) -> Result<(), QueueError> {
        self.send_all(std::slice::from_ref(message)).await
    }

    async fn send_all(&self, messages: &[Message]) -> Result<(), QueueError> {
        if self.fail {
            return Err(QueueError("connection refused".into()));
        }
        self.sent.lock().unwrap().extend_from_slice(messages);
        Ok(())
    }
}

/// A contact list served in fixed pages, linked by the tokens "page-1", "page-2", …
/// Like the local SES, it ignores the topic filter, so callers must filter themselves.
#[derive(Debug, Default)]
pub struct PagedDirectory {
    pub defaults: TopicDefaults,
    pub pages: Vec<ContactPage>,
    /// Each call's token and topic filter, in order.
    pub requests: Mutex<Vec<(Option<String>, Option<Topic>)>>,
}

impl ContactDirectory for PagedDirectory {
    async fn topic_defaults(&self) -> Result<TopicDefaults, DirectoryError> {
        Ok(self.defaults.clone())
    }

    async fn page(
        &self,
        token: Option<&str>,
        opted_into: Option<&Topic>,
    ) -> Result<ContactPage, DirectoryError> {
        self.requests
            .lock()
            .unwrap()
            .push((token.map(str::to_owned), opted_into.cloned()));
        let index = match token {
            None => 0,
            Some(token) => token
                .strip_prefix("page-")
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| DirectoryError(format!("bad token {token}")))?,
        };
        let mut page = self.pages.get(index).cloned().unwrap_or_default();
        page.next_token = (index + 1 < self.pages.len()).then(|| format!("page-{}", index + 1));
        Ok(page)
    }
}

/// Records every email sent; answers with the scripted failure for an address, if any, and
/// gives the first sends (to whomever) the errors queued in `first_answers`.
#[derive(Debug, Default)]
pub struct RecordingMailer {
    pub sent: Mutex<Vec<(EmailAddress, RenderedEmail, Option<Topic>)>>,
    pub failures: HashMap<String, SendError>,
    pub first_answers: Mutex<VecDeque<SendError>>,
    /// Every call, answered or not.
    pub attempts: AtomicUsize,
    in_flight: AtomicUsize,
    pub max_in_flight_seen: AtomicUsize,
}

impl RecordingMailer {
    pub fn failing(failures: impl IntoIterator<Item = (String, SendError)>) -> Self {
        Self {
            failures: failures.into_iter().collect(),
            ..Self::default()
        }
    }

    pub fn answering_first(errors: impl IntoIterator<Item = SendError>) -> Self {
        Self {
            first_answers: Mutex::new(errors.into_iter().collect()),
            ..Self::default()
        }
    }

    pub fn recipients(&self) -> Vec<String> {
        self.sent
            .lock()
            .unwrap()
            .iter()
            .map(|(to, _, _)| to.to_string())
            .collect()
    }
}

impl Mailer for RecordingMailer {
    async fn send(
        &self,
        to: &EmailAddress,
        email: &RenderedEmail,
        topic: Option<&Topic>,
    ) -> Result<(), SendError> {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight_seen.fetch_max(now, Ordering::SeqCst);
        tokio::task::yield_now().await;
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.attempts.fetch_add(1, Ordering::SeqCst);
        if let Some(error) = self.first_answers.lock().unwrap().pop_front() {
            return Err(error);
        }
        if let Some(failure) = self.failures.get(to.as_str()) {
            return Err(failure.clone());
        }
        self.sent
            .lock()
            .unwrap()
            .push((to.clone(), email.clone(), topic.cloned()));
        Ok(())
    }
}

/// The task, idempotency and claim records in memory, with the same conditions as the DynamoDB
/// store (one writer wins; claims lapse; pages count once).
#[derive(Debug, Default)]
pub struct MemoryStore {
    pub tasks: Mutex<HashMap<TaskId, TaskRecord>>,
    pub keys: Mutex<HashMap<String, (TaskId, String, bool)>>,
    pub claims: Mutex<HashMap<(TaskId, String), (ClaimState, SystemTime)>>,
    pub pages: Mutex<HashSet<(TaskId, u32)>>,
    /// Makes every call fail, as an unreachable table would.
    pub fail: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimState {
    Sending,
    Sent,
    Rejected,
}

impl MemoryStore {
    fn check(&self) -> Result<(), StoreError> {
        if self.fail {
            return Err(StoreError("connection refused".into()));
        }
        Ok(())
    }

    fn update(
        &self,
        task_id: TaskId,
        change: impl FnOnce(&mut TaskRecord),
    ) -> Result<(), StoreError> {
        self.check()?;
        let mut tasks = self.tasks.lock().unwrap();
        let task = tasks
            .get_mut(&task_id)
            .ok_or_else(|| StoreError(format!("no task {task_id}")))?;
        change(task);
        Ok(())
    }
}

impl TaskStore for MemoryStore {
    async fn create(&self, task_id: TaskId) -> Result<(), StoreError> {
        self.check()?;
        let record = TaskRecord {
            task_id,
            status: TaskStatus::Accepted,
            created_at: "2026-11-25T10:00:00Z".into(),
            updated_at: "2026-11-25T10:00:00Z".into(),
            recipients: Recipients::default(),
            planning_done: false,
            failures: Vec::new(),
        };
        self.tasks.lock().unwrap().insert(task_id, record);
        Ok(())
    }

    async fn delete(&self, task_id: TaskId) -> Result<(), StoreError> {
        self.check()?;
        self.tasks.lock().unwrap().remove(&task_id);
        Ok(())
    }

    async fn get(&self, task_id: TaskId) -> Result<Option<TaskRecord>, StoreError> {
        self.check()?;
        Ok(self.tasks.lock().unwrap().get(&task_id).cloned())
    }

    async fn record_page(&self, task_id: TaskId, counts: PageCounts) -> Result<(), StoreError> {
        self.check()?;
        if !self.pages.lock().unwrap().insert((task_id, counts.page)) {
            return Ok(());
        }
        self.update(task_id, |task| {
            task.recipients.planned += counts.planned;
            task.recipients.skipped += counts.skipped;
            task.recipients.failed += counts.failed;
            task.planning_done = counts.last;
            task.status = if counts.last {
                TaskStatus::Sending
            } else {
                TaskStatus::Planning
            };
        })
    }

    async fn record_failure(
        &self,
        task_id: TaskId,
        failure: PartFailure,
        stops_planning: bool,
    ) -> Result<(), StoreError> {
        self.update(task_id, |task| {
            task.failures.push(failure);
            task.planning_done |= stops_planning;
        })
    }

    async fn finish(&self, task_id: TaskId, status: TaskStatus) -> Result<bool, StoreError> {
        let mut moved = false;
        self.update(task_id, |task| {
            if !task.status.is_finished() {
                task.status = status;
                moved = true;
            }
        })?;
        Ok(moved)
    }
}

impl IdempotencyStore for MemoryStore {
    async fn reserve(
        &self,
        key: &str,
        fingerprint: &str,
        task_id: TaskId,
    ) -> Result<Reservation, StoreError> {
        self.check()?;
        let mut keys = self.keys.lock().unwrap();
        if let Some((task_id, fingerprint, queued)) = keys.get(key) {
            return Ok(Reservation::Existing {
                task_id: *task_id,
                fingerprint: fingerprint.clone(),
                queued: *queued,
            });
        }
        keys.insert(key.to_owned(), (task_id, fingerprint.to_owned(), false));
        Ok(Reservation::New)
    }

    async fn mark_queued(&self, key: &str) -> Result<(), StoreError> {
        self.check()?;
        if let Some(entry) = self.keys.lock().unwrap().get_mut(key) {
            entry.2 = true;
        }
        Ok(())
    }

    async fn release(&self, key: &str) -> Result<(), StoreError> {
        self.check()?;
        self.keys.lock().unwrap().remove(key);
        Ok(())
    }
}

impl ClaimStore for MemoryStore {
    async fn claim(
        &self,
        task_id: TaskId,
        recipient: &EmailAddress,
        lapses: SystemTime,
    ) -> Result<Claim, StoreError> {
        self.check()?;
        let mut claims = self.claims.lock().unwrap();
        let key = (task_id, recipient.to_string());
        match claims.get(&key) {
            Some((ClaimState::Sent, _)) => Ok(Claim::Sent),
            Some((ClaimState::Rejected, _)) => Ok(Claim::Rejected),
            Some((ClaimState::Sending, lapse)) if *lapse >= SystemTime::now() => Ok(Claim::Busy),
            _ => {
                claims.insert(key, (ClaimState::Sending, lapses));
                Ok(Claim::Acquired)
            }
        }
    }

    async fn settle(&self, task_id: TaskId, settlements: &[Settlement]) -> Result<(), StoreError> {
        self.check()?;
        let (mut sent, mut rejected) = (0, 0);
        {
            let mut claims = self.claims.lock().unwrap();
            for settlement in settlements {
                match settlement {
                    Settlement::Sent(to) => {
                        sent += 1;
                        claims.insert(
                            (task_id, to.to_string()),
                            (ClaimState::Sent, SystemTime::now()),
                        );
                    }
                    Settlement::Rejected(to) => {
                        rejected += 1;
                        claims.insert(
                            (task_id, to.to_string()),
                            (ClaimState::Rejected, SystemTime::now()),
                        );
                    }
                    Settlement::Released(to) => {
                        claims.remove(&(task_id, to.to_string()));
                    }
                }
            }
        }
        if sent + rejected == 0 {
            return Ok(());
        }
        self.update(task_id, |task| {
            task.recipients.sent += sent;
            task.recipients.failed += rejected;
        })
    }
}

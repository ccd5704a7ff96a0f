//! In-memory stand-ins for the queue, the contact list, the mail service and the task store, for
//! unit tests of the domain and the handlers, with faults to inject. Integration tests use the
//! real SDK clients against the local AWS instead; the store contract (`contract`) holds
//! [`MemoryStore`] to what the DynamoDB store does there.

use crate::audience::{Contact, TopicDefaults};
use crate::domain::{
    EmailAddress, FailureCode, PartFailure, Pause, PauseCode, Recipients, TaskId, TaskKind,
    TaskRecord, TaskStatus, Topic,
};
use crate::message::Message;
use crate::planning::PagePlan;
use crate::ports::{
    Accounting, ChunkProgress, ChunkStore, ContactDirectory, ContactPage, DeadLetter,
    DeadLetterQueue, DirectoryError, Holder, IdempotencyStore, Lease, Mailer, MessageQueue,
    PageState, PauseStore, PlanStore, QueueError, Reservation, SendError, Settled, StoreError,
    TaskStore, Withdrawal,
};
use crate::render::RenderedEmail;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// A fault a fake injects into one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The call fails and changes nothing (refused, throttled, a conflict).
    Fail,
    /// The call takes effect, but its answer is lost: the caller sees an error.
    LoseAnswer,
    /// The call never answers and changes nothing (a dead network path).
    Stall,
}

/// Records what is sent; refuses everything when `fail` is set, and the next calls as `faults`
/// says.
#[derive(Debug, Default)]
pub struct RecordingQueue {
    pub sent: Mutex<Vec<Message>>,
    pub fail: bool,
    pub faults: Mutex<VecDeque<Fault>>,
}

impl RecordingQueue {
    pub fn take(&self) -> Vec<Message> {
        std::mem::take(&mut *self.sent.lock().unwrap())
    }

    pub fn failing_next(faults: impl IntoIterator<Item = Fault>) -> Self {
        Self {
            faults: Mutex::new(faults.into_iter().collect()),
            ..Self::default()
        }
    }
}

impl MessageQueue for RecordingQueue {
    async fn send(&self, message: &Message) -> Result<(), QueueError> {
        self.send_all(std::slice::from_ref(message)).await
    }

    async fn send_all(&self, messages: &[Message]) -> Result<(), QueueError> {
        let fault = self.faults.lock().unwrap().pop_front();
        if fault == Some(Fault::Stall) {
            std::future::pending::<()>().await;
        }
        if self.fail || fault == Some(Fault::Fail) {
            return Err(QueueError("connection refused".into()));
        }
        self.sent.lock().unwrap().extend_from_slice(messages);
        if fault == Some(Fault::LoseAnswer) {
            return Err(QueueError("timed out waiting for the answer".into()));
        }
        Ok(())
    }
}

/// A dead-letter queue in memory: what it holds stays until taken with `take`; receiving hides
/// a message until it is put back.
#[derive(Debug, Default)]
pub struct MemoryDeadLetters {
    pub messages: Mutex<Vec<(String, bool)>>,
}

impl MemoryDeadLetters {
    pub fn holding(bodies: impl IntoIterator<Item = String>) -> Self {
        Self {
            messages: Mutex::new(bodies.into_iter().map(|body| (body, false)).collect()),
        }
    }

    /// The bodies held, visible or not.
    pub fn bodies(&self) -> Vec<String> {
        self.messages
            .lock()
            .unwrap()
            .iter()
            .map(|(body, _)| body.clone())
            .collect()
    }
}

impl DeadLetterQueue for MemoryDeadLetters {
    async fn receive(&self, _hidden_for: Duration) -> Result<Vec<DeadLetter>, QueueError> {
        let mut messages = self.messages.lock().unwrap();
        Ok(messages
            .iter_mut()
            .enumerate()
            .filter(|(_, (_, hidden))| !*hidden)
            .take(10)
            .map(|(index, (body, hidden))| {
                *hidden = true;
                DeadLetter {
                    receipt: index.to_string(),
                    body: body.clone(),
                }
            })
            .collect())
    }

    async fn put_back(&self, receipts: &[String]) -> Result<(), QueueError> {
        let mut messages = self.messages.lock().unwrap();
        for receipt in receipts {
            if let Some((_, hidden)) = receipt
                .parse()
                .ok()
                .and_then(|i: usize| messages.get_mut(i))
            {
                *hidden = false;
            }
        }
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
    /// Every call fails (the list cannot be read).
    pub fail: bool,
}

impl PagedDirectory {
    fn check(&self) -> Result<(), DirectoryError> {
        match self.fail {
            true => Err(DirectoryError(
                "injected: the contact list is unreachable".into(),
            )),
            false => Ok(()),
        }
    }
}

impl ContactDirectory for PagedDirectory {
    async fn topic_defaults(&self) -> Result<TopicDefaults, DirectoryError> {
        self.check()?;
        Ok(self.defaults.clone())
    }

    async fn contact(&self, address: &EmailAddress) -> Result<Option<Contact>, DirectoryError> {
        self.check()?;
        Ok(self
            .pages
            .iter()
            .flat_map(|page| &page.contacts)
            .find(|contact| contact.email.eq_ignore_ascii_case(address.as_str()))
            .cloned())
    }

    async fn page(
        &self,
        token: Option<&str>,
        opted_into: Option<&Topic>,
    ) -> Result<ContactPage, DirectoryError> {
        self.check()?;
        self.requests
            .lock()
            .unwrap()
            .push((token.map(str::to_owned), opted_into.cloned()));
        let index = match token {
            None => 0,
            Some(token) => token
                .strip_prefix("page-")
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| DirectoryError(format!("bad token {token}").into()))?,
        };
        let mut page = self.pages.get(index).cloned().unwrap_or_default();
        page.next_token = (index + 1 < self.pages.len()).then(|| format!("page-{}", index + 1));
        Ok(page)
    }
}

/// Records every email sent; answers with the scripted failure for an address, if any, and
/// gives the first sends (to whomever) the errors queued in `first_answers`. Clones share what
/// they record, as [`MemoryStore`]'s share records: a test keeps one while the sender holds another.
#[derive(Debug, Default, Clone)]
pub struct RecordingMailer(Arc<MailLog>);

/// What a [`RecordingMailer`] saw and how it answers.
#[derive(Debug, Default)]
pub struct MailLog {
    pub sent: Mutex<Vec<(EmailAddress, RenderedEmail, Option<Topic>)>>,
    pub failures: HashMap<String, SendError>,
    pub first_answers: Mutex<VecDeque<SendError>>,
    /// Every call, answered or not.
    pub attempts: AtomicUsize,
    in_flight: AtomicUsize,
    pub max_in_flight_seen: AtomicUsize,
    /// Emails still accepted before SES refuses every send account-wide with the code.
    refusal: Mutex<Option<(usize, PauseCode)>>,
}

impl std::ops::Deref for RecordingMailer {
    type Target = MailLog;
    fn deref(&self) -> &MailLog {
        &self.0
    }
}

impl RecordingMailer {
    pub fn failing(failures: impl IntoIterator<Item = (String, SendError)>) -> Self {
        Self(Arc::new(MailLog {
            failures: failures.into_iter().collect(),
            ..MailLog::default()
        }))
    }

    pub fn answering_first(errors: impl IntoIterator<Item = SendError>) -> Self {
        Self(Arc::new(MailLog {
            first_answers: Mutex::new(errors.into_iter().collect()),
            ..MailLog::default()
        }))
    }

    /// Accepts `accepted` emails, then refuses every send account-wide with `code` (an
    /// unverified sender, a suspended account...) until [`Self::stop_refusing`].
    pub fn refusing_after(accepted: usize, code: PauseCode) -> Self {
        Self(Arc::new(MailLog {
            refusal: Mutex::new(Some((accepted, code))),
            ..MailLog::default()
        }))
    }

    /// The account is fixed.
    pub fn stop_refusing(&self) {
        *self.refusal.lock().unwrap() = None;
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
        _task_id: TaskId,
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
        if let Some((accepted, code)) = self.refusal.lock().unwrap().as_mut() {
            if *accepted == 0 {
                return Err(SendError::AccountWide(*code));
            }
            *accepted -= 1;
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

/// The task, idempotency, plan and chunk records in memory, with the same conditions as the
/// DynamoDB store (the `contract` scenarios hold both to them). Clones share the records, as
/// clients of one table do.
#[derive(Debug, Default, Clone)]
pub struct MemoryStore {
    state: Arc<Mutex<Records>>,
    /// Makes every call fail, as an unreachable table would.
    pub fail: bool,
}

#[derive(Debug, Default)]
struct Records {
    tasks: HashMap<TaskId, StoredTask>,
    keys: HashMap<String, StoredKey>,
    plans: HashMap<(TaskId, u32), PagePlan>,
    enqueued: HashSet<(TaskId, u32)>,
    chunks: HashMap<(TaskId, String), StoredChunk>,
}

#[derive(Debug, Clone)]
struct StoredKey {
    task_id: TaskId,
    fingerprint: String,
    queued: bool,
    running_until: SystemTime,
}

#[derive(Debug, Clone)]
struct StoredTask {
    record: TaskRecord,
    failures: BTreeMap<String, FailureCode>,
    pages_planned: u32,
    /// Pages in all, once known (the last page is planned, or planning stopped).
    page_count: Option<u32>,
    /// An overlay on the status, as in the DynamoDB store: planning goes on while paused.
    pause: Option<Pause>,
    /// Parked chunks' messages, by chunk id.
    parked: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default)]
struct StoredChunk {
    progress: ChunkProgress,
    holder: Option<Holder>,
}

impl StoredChunk {
    fn leased_to_another(&self, holder: Option<&Holder>, now: SystemTime) -> bool {
        self.holder
            .as_ref()
            .is_some_and(|held| Some(&held.token) != holder.map(|h| &h.token) && held.lapses >= now)
    }

    fn finished(&self) -> bool {
        self.progress.failed.is_empty() && self.progress.counted == self.progress.totals()
    }

    /// Nothing is left to lease it for: closed with something counted, or cancelled.
    fn done(&self) -> bool {
        self.finished() && (self.progress.counted != (0, 0) || !self.progress.cancelled.is_empty())
    }
}

impl MemoryStore {
    /// A store whose every call fails, as an unreachable table's would.
    pub fn unreachable() -> Self {
        Self {
            fail: true,
            ..Self::default()
        }
    }

    fn records(&self) -> Result<std::sync::MutexGuard<'_, Records>, StoreError> {
        if self.fail {
            return Err(StoreError("connection refused".into()));
        }
        Ok(self.state.lock().unwrap())
    }

    /// How many tasks are recorded.
    pub fn task_count(&self) -> usize {
        self.state.lock().unwrap().tasks.len()
    }

    /// How many idempotency keys are reserved.
    pub fn key_count(&self) -> usize {
        self.state.lock().unwrap().keys.len()
    }

    /// Puts a reserved key back to "not queued yet", as if its request were still between
    /// reserving the key and queueing its job.
    pub fn mark_pending(&self, key: &str) {
        if let Some(entry) = self.state.lock().unwrap().keys.get_mut(key) {
            entry.queued = false;
        }
    }

    /// Moves when a reservation's request may still be running, as if it had been reserved by
    /// a request with another deadline (one long dead, say).
    pub fn set_running_until(&self, key: &str, running_until: SystemTime) {
        if let Some(entry) = self.state.lock().unwrap().keys.get_mut(key) {
            entry.running_until = running_until;
        }
    }

    /// The task a key is reserved for, if it is.
    pub fn key_holder(&self, key: &str) -> Option<TaskId> {
        Some(self.state.lock().unwrap().keys.get(key)?.task_id)
    }

    /// The chunk's progress as stored, for tests that look inside.
    pub fn chunk(&self, task_id: TaskId, chunk_id: &str) -> Option<ChunkProgress> {
        let records = self.state.lock().unwrap();
        let chunk = records.chunks.get(&(task_id, chunk_id.to_owned()))?;
        Some(chunk.progress.clone())
    }

    /// Leaves a lease on a chunk as an invocation that held it would (alive or dead).
    pub fn hold(&self, task_id: TaskId, chunk_id: &str, holder: Holder) {
        let mut records = self.state.lock().unwrap();
        records
            .chunks
            .entry((task_id, chunk_id.to_owned()))
            .or_default()
            .holder = Some(holder);
    }
}

impl Records {
    fn task(&mut self, task_id: TaskId) -> Result<&mut StoredTask, StoreError> {
        self.tasks
            .get_mut(&task_id)
            .ok_or_else(|| StoreError(format!("no task {task_id}").into()))
    }
}

impl StoredTask {
    /// Accepted, planning or sending (under the pause overlay, if any): what may pause or cancel.
    fn is_running(&self) -> bool {
        matches!(
            self.record.status,
            TaskStatus::Accepted | TaskStatus::Planning | TaskStatus::Sending
        )
    }

    fn view(&self) -> TaskRecord {
        let mut record = self.record.clone();
        record.planning_done = self.page_count == Some(self.pages_planned);
        record.failures = self
            .failures
            .iter()
            .map(|(part, code)| PartFailure {
                part: part.clone(),
                code: *code,
            })
            .collect();
        if let Some(pause) = &self.pause {
            record.status = TaskStatus::Paused;
            record.pause = Some(pause.clone());
        }
        record
    }

    fn add(&mut self, sent: i64, failed: i64) {
        let counts = &mut self.record.recipients;
        counts.sent = counts.sent.saturating_add_signed(sent);
        counts.failed = counts.failed.saturating_add_signed(failed);
    }
}

/// The change of the task's counters that brings them from `counted` to `totals`.
fn delta(counted: (u64, u64), totals: (u64, u64)) -> (i64, i64) {
    (
        totals.0 as i64 - counted.0 as i64,
        totals.1 as i64 - counted.1 as i64,
    )
}

impl TaskStore for MemoryStore {
    async fn create(&self, task_id: TaskId, kind: TaskKind) -> Result<(), StoreError> {
        let mut records = self.records()?;
        if records.tasks.contains_key(&task_id) {
            return Ok(()); // a retry: task ids are fresh for every request
        }
        let record = TaskRecord {
            task_id,
            kind,
            status: TaskStatus::Accepted,
            created_at: "2026-11-25T10:00:00Z".into(),
            updated_at: "2026-11-25T10:00:00Z".into(),
            recipients: Recipients::default(),
            planning_done: false,
            unmatched_topics: Vec::new(),
            failures: Vec::new(),
            pause: None,
        };
        records.tasks.insert(
            task_id,
            StoredTask {
                record,
                failures: BTreeMap::new(),
                pages_planned: 0,
                page_count: None,
                pause: None,
                parked: BTreeMap::new(),
            },
        );
        Ok(())
    }

    async fn get(&self, task_id: TaskId) -> Result<Option<TaskRecord>, StoreError> {
        Ok(self.records()?.tasks.get(&task_id).map(StoredTask::view))
    }

    async fn record_failure(
        &self,
        task_id: TaskId,
        failure: PartFailure,
        stops_planning_at: Option<u32>,
    ) -> Result<(), StoreError> {
        let mut records = self.records()?;
        let task = records.task(task_id)?;
        task.failures.insert(failure.part, failure.code);
        if let Some(page) = stops_planning_at {
            task.page_count.get_or_insert(page);
        }
        Ok(())
    }

    async fn finish(&self, task_id: TaskId, status: TaskStatus) -> Result<bool, StoreError> {
        let mut records = self.records()?;
        let task = records.task(task_id)?;
        let current = task.record.status;
        if current == status || matches!(current, TaskStatus::Completed | TaskStatus::Cancelled) {
            return Ok(false);
        }
        task.record.status = status;
        task.pause = None;
        Ok(true)
    }

    async fn withdraw(&self, task_id: TaskId) -> Result<Withdrawal, StoreError> {
        let mut records = self.records()?;
        let Some(task) = records.tasks.get_mut(&task_id) else {
            return Ok(Withdrawal::Withdrawn);
        };
        Ok(match task.record.status {
            TaskStatus::Accepted | TaskStatus::Withdrawn => {
                task.record.status = TaskStatus::Withdrawn;
                task.pause = None;
                Withdrawal::Withdrawn
            }
            _ => Withdrawal::Started,
        })
    }

    async fn cancel(&self, task_id: TaskId) -> Result<bool, StoreError> {
        let mut records = self.records()?;
        let Some(task) = records.tasks.get_mut(&task_id) else {
            return Ok(false);
        };
        let active = task.is_running();
        if active {
            task.record.status = TaskStatus::Cancelling;
            task.pause = None;
        }
        Ok(active)
    }

    async fn stop_planning(&self, task_id: TaskId, page: u32) -> Result<(), StoreError> {
        let mut records = self.records()?;
        records.task(task_id)?.page_count.get_or_insert(page);
        Ok(())
    }
}

impl IdempotencyStore for MemoryStore {
    async fn reserve(
        &self,
        key: &str,
        fingerprint: &str,
        task_id: TaskId,
        running_until: SystemTime,
    ) -> Result<Reservation, StoreError> {
        let mut records = self.records()?;
        match records.keys.get(key) {
            // A retry of this very reservation.
            Some(held) if held.task_id == task_id => Ok(Reservation::New),
            Some(held) => Ok(Reservation::Existing {
                task_id: held.task_id,
                fingerprint: held.fingerprint.clone(),
                queued: held.queued,
                running_until: Some(held.running_until),
            }),
            None => {
                records.keys.insert(
                    key.to_owned(),
                    StoredKey {
                        task_id,
                        fingerprint: fingerprint.to_owned(),
                        queued: false,
                        running_until,
                    },
                );
                Ok(Reservation::New)
            }
        }
    }

    async fn mark_queued(&self, key: &str) -> Result<(), StoreError> {
        if let Some(entry) = self.records()?.keys.get_mut(key) {
            entry.queued = true;
        }
        Ok(())
    }

    async fn release(&self, key: &str) -> Result<(), StoreError> {
        self.records()?.keys.remove(key);
        Ok(())
    }

    async fn take_over(
        &self,
        key: &str,
        from: TaskId,
        task_id: TaskId,
        running_until: SystemTime,
    ) -> Result<bool, StoreError> {
        let mut records = self.records()?;
        let Some(held) = records.keys.get_mut(key) else {
            return Ok(false);
        };
        if held.task_id == task_id {
            return Ok(true); // a retry after a lost answer
        }
        if held.task_id != from || held.queued {
            return Ok(false);
        }
        held.task_id = task_id;
        held.running_until = running_until;
        Ok(true)
    }
}

impl PlanStore for MemoryStore {
    async fn page_state(&self, task_id: TaskId, page: u32) -> Result<PageState, StoreError> {
        let records = self.records()?;
        Ok(if records.enqueued.contains(&(task_id, page)) {
            PageState::Enqueued
        } else {
            match records.plans.get(&(task_id, page)) {
                Some(plan) => PageState::Planned(plan.clone()),
                None => PageState::Unplanned,
            }
        })
    }

    async fn record_page(&self, task_id: TaskId, plan: PagePlan) -> Result<PagePlan, StoreError> {
        let mut records = self.records()?;
        if let Some(stored) = records.plans.get(&(task_id, plan.page)) {
            return Ok(stored.clone());
        }
        let task = records.task(task_id)?;
        if task.record.status == TaskStatus::Withdrawn || task.record.status.is_cancelled() {
            return Err(StoreError(
                format!("task {task_id} is withdrawn or cancelled: its pages are not planned")
                    .into(),
            ));
        }
        let counts = &mut task.record.recipients;
        counts.planned += plan.contacts;
        counts.skipped += plan.skipped;
        counts.failed += plan.invalid_addresses;
        task.pages_planned += 1;
        task.page_count = plan.is_last().then_some(plan.page + 1);
        task.failures.remove(&PartFailure::planning_part(plan.page));
        if !plan.unmatched_topics.is_empty() {
            task.record.unmatched_topics = topic_names(&plan.unmatched_topics);
        }
        task.record.status = if plan.is_last() {
            TaskStatus::Sending
        } else {
            TaskStatus::Planning
        };
        records.plans.insert((task_id, plan.page), plan.clone());
        Ok(plan)
    }

    async fn mark_page_enqueued(&self, task_id: TaskId, page: u32) -> Result<(), StoreError> {
        self.records()?.enqueued.insert((task_id, page));
        Ok(())
    }
}

impl ChunkStore for MemoryStore {
    async fn lease(
        &self,
        task_id: TaskId,
        chunk_id: &str,
        _size: usize,
        holder: &Holder,
    ) -> Result<Lease, StoreError> {
        let mut records = self.records()?;
        let chunk = records
            .chunks
            .entry((task_id, chunk_id.to_owned()))
            .or_default();
        if chunk.done() {
            return Ok(Lease::Finished);
        }
        if chunk.leased_to_another(Some(holder), SystemTime::now()) {
            return Ok(Lease::Busy);
        }
        chunk.holder = Some(holder.clone());
        Ok(Lease::Held(chunk.progress.clone()))
    }

    async fn record(
        &self,
        task_id: TaskId,
        chunk_id: &str,
        holder: &Holder,
        settled: &Settled,
    ) -> Result<(), StoreError> {
        let mut records = self.records()?;
        let chunk = held_chunk(&mut records, task_id, chunk_id, holder)?;
        chunk.progress.apply(settled);
        Ok(())
    }

    async fn release_lease(
        &self,
        task_id: TaskId,
        chunk_id: &str,
        holder: &Holder,
        settled: &Settled,
    ) -> Result<(), StoreError> {
        let mut records = self.records()?;
        if let Some(chunk) = records.chunks.get(&(task_id, chunk_id.to_owned()))
            && chunk.holder.as_ref().map(|held| &held.token) != Some(&holder.token)
            && settled.sent.iter().all(|p| chunk.progress.sent.contains(p))
            && settled
                .rejected
                .iter()
                .all(|p| chunk.progress.rejected.contains(p))
        {
            return Ok(()); // a retry after a lost answer: released, and recorded
        }
        let chunk = held_chunk(&mut records, task_id, chunk_id, holder)?;
        chunk.progress.apply(settled);
        chunk.holder = None;
        Ok(())
    }

    async fn close(
        &self,
        task_id: TaskId,
        chunk_id: &str,
        holder: &Holder,
        settled: &Settled,
        progress: &ChunkProgress,
    ) -> Result<(), StoreError> {
        let mut records = self.records()?;
        let key = (task_id, chunk_id.to_owned());
        let stored = records.chunks.get(&key).cloned().unwrap_or_default();
        if stored.holder.is_none() && stored.progress.counted == progress.totals() {
            return Ok(()); // an earlier call did it; its answer was lost
        }
        let had_failures = !stored.progress.failed.is_empty();
        if stored.holder.as_ref().map(|held| &held.token) != Some(&holder.token)
            || stored.progress.counted != progress.counted
        {
            return Err(StoreError("the chunk's lease was lost".into()));
        }
        let task = records.task(task_id)?;
        let (sent, failed) = delta(progress.counted, progress.totals());
        task.add(sent, failed);
        let mut closed = stored;
        closed.progress.apply(settled);
        if had_failures && closed.progress.failed.is_empty() {
            task.failures.remove(&PartFailure::delivery_part(chunk_id));
        }
        closed.progress.counted = progress.totals();
        closed.holder = None;
        records.chunks.insert(key, closed);
        Ok(())
    }

    async fn fail_unsettled(
        &self,
        task_id: TaskId,
        chunk_id: &str,
        size: usize,
        failure: PartFailure,
    ) -> Result<Accounting, StoreError> {
        self.account_unsettled(task_id, chunk_id, size, Some(failure))
    }

    async fn cancel_unsettled(
        &self,
        task_id: TaskId,
        chunk_id: &str,
        size: usize,
    ) -> Result<Accounting, StoreError> {
        self.account_unsettled(task_id, chunk_id, size, None)
    }
}

impl MemoryStore {
    /// The chunk's unsettled recipients become failed (its message is dead-lettered: `failure`
    /// is recorded) or, without a failure, cancelled; the task counts them and what the chunk
    /// settled beyond what it holds for it, unless a live lease is held. As the DynamoDB store.
    fn account_unsettled(
        &self,
        task_id: TaskId,
        chunk_id: &str,
        size: usize,
        failure: Option<PartFailure>,
    ) -> Result<Accounting, StoreError> {
        let mut records = self.records()?;
        let key = (task_id, chunk_id.to_owned());
        let mut chunk = records.chunks.get(&key).cloned().unwrap_or_default();
        if chunk.leased_to_another(None, SystemTime::now()) {
            return Ok(Accounting::Held);
        }
        let unsettled = chunk.progress.unsettled(size);
        let cancelled = if failure.is_some() {
            chunk.progress.failed.extend(&unsettled);
            0
        } else {
            chunk.progress.cancelled.extend(&unsettled);
            unsettled.len() as u64
        };
        let totals = chunk.progress.totals();
        if unsettled.is_empty() && chunk.progress.counted == totals {
            return Ok(Accounting::Accounted);
        }
        let task = records.task(task_id)?;
        let (sent, failed) = delta(chunk.progress.counted, totals);
        task.add(sent, failed);
        task.record.recipients.cancelled += cancelled;
        if let Some(failure) = failure
            && !chunk.progress.failed.is_empty()
        {
            task.failures.insert(failure.part, failure.code);
        }
        chunk.progress.counted = totals;
        chunk.holder = None;
        records.chunks.insert(key, chunk);
        Ok(Accounting::Accounted)
    }
}

fn held_chunk<'a>(
    records: &'a mut Records,
    task_id: TaskId,
    chunk_id: &str,
    holder: &Holder,
) -> Result<&'a mut StoredChunk, StoreError> {
    records
        .chunks
        .get_mut(&(task_id, chunk_id.to_owned()))
        .filter(|chunk| chunk.holder.as_ref().map(|held| &held.token) == Some(&holder.token))
        .ok_or_else(|| StoreError("the chunk's lease was lost".into()))
}

/// A store that injects faults into the writes named in `faults` ("lease", "record",
/// "release", "close", "cancel_unsettled", "record_page", "mark_page_enqueued", "withdraw",
/// "cancel", and the pause store's), in order, and otherwise is `inner`: what a store does under a
/// conflict, throttling, or an answer lost after the write was applied.
#[derive(Debug, Default)]
pub struct FaultyStore<S> {
    pub inner: S,
    pub faults: Mutex<HashMap<&'static str, VecDeque<Fault>>>,
    /// Faults injected so far, by operation.
    pub injected: Mutex<HashMap<&'static str, usize>>,
}

impl<S> FaultyStore<S> {
    pub fn new(inner: S, faults: impl IntoIterator<Item = (&'static str, Vec<Fault>)>) -> Self {
        Self {
            inner,
            faults: Mutex::new(
                faults
                    .into_iter()
                    .map(|(operation, faults)| (operation, faults.into()))
                    .collect(),
            ),
            injected: Mutex::default(),
        }
    }

    fn fault(&self, operation: &'static str) -> Option<Fault> {
        let fault = self
            .faults
            .lock()
            .unwrap()
            .get_mut(operation)?
            .pop_front()?;
        *self.injected.lock().unwrap().entry(operation).or_default() += 1;
        Some(fault)
    }

    async fn faulty<T>(
        &self,
        operation: &'static str,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        match self.fault(operation) {
            None => call.await,
            Some(Fault::Fail) => Err(StoreError(
                format!("{operation}: TransactionCanceledException: TransactionConflict").into(),
            )),
            Some(Fault::Stall) => std::future::pending().await,
            Some(Fault::LoseAnswer) => {
                call.await?;
                Err(StoreError(
                    format!("{operation}: timed out; the write may have been applied").into(),
                ))
            }
        }
    }
}

impl PauseStore for MemoryStore {
    async fn pause(&self, task_id: TaskId, code: PauseCode) -> Result<bool, StoreError> {
        let mut records = self.records()?;
        let Some(task) = records.tasks.get_mut(&task_id) else {
            return Ok(false);
        };
        let active = task.is_running();
        if task.pause.is_some() || !active {
            return Ok(false);
        }
        task.pause = Some(Pause {
            code,
            since: "2026-11-25T10:05:00Z".into(),
        });
        Ok(true)
    }

    async fn park(
        &self,
        task_id: TaskId,
        chunk_id: &str,
        message: &str,
    ) -> Result<bool, StoreError> {
        let mut records = self.records()?;
        match records.tasks.get_mut(&task_id) {
            Some(task) if task.pause.is_some() => {
                task.parked.insert(chunk_id.to_owned(), message.to_owned());
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn unpause(&self, task_id: TaskId) -> Result<bool, StoreError> {
        let mut records = self.records()?;
        Ok(records
            .tasks
            .get_mut(&task_id)
            .and_then(|task| task.pause.take())
            .is_some())
    }

    async fn parked(&self, task_id: TaskId) -> Result<Vec<(String, String)>, StoreError> {
        let records = self.records()?;
        Ok(records.tasks.get(&task_id).map_or_else(Vec::new, |task| {
            task.parked
                .iter()
                .map(|(chunk, message)| (chunk.clone(), message.clone()))
                .collect()
        }))
    }

    async fn unpark(&self, task_id: TaskId, chunk_id: &str) -> Result<(), StoreError> {
        if let Some(task) = self.records()?.tasks.get_mut(&task_id) {
            task.parked.remove(chunk_id);
        }
        Ok(())
    }
}

impl<S: TaskStore> TaskStore for FaultyStore<S> {
    async fn create(&self, task_id: TaskId, kind: TaskKind) -> Result<(), StoreError> {
        self.inner.create(task_id, kind).await
    }
    async fn get(&self, task_id: TaskId) -> Result<Option<TaskRecord>, StoreError> {
        self.inner.get(task_id).await
    }
    async fn record_failure(
        &self,
        task_id: TaskId,
        failure: PartFailure,
        stops_planning_at: Option<u32>,
    ) -> Result<(), StoreError> {
        self.inner
            .record_failure(task_id, failure, stops_planning_at)
            .await
    }
    async fn finish(&self, task_id: TaskId, status: TaskStatus) -> Result<bool, StoreError> {
        self.inner.finish(task_id, status).await
    }
    async fn withdraw(&self, task_id: TaskId) -> Result<Withdrawal, StoreError> {
        self.faulty("withdraw", self.inner.withdraw(task_id)).await
    }
    async fn cancel(&self, task_id: TaskId) -> Result<bool, StoreError> {
        self.faulty("cancel", self.inner.cancel(task_id)).await
    }
    async fn stop_planning(&self, task_id: TaskId, page: u32) -> Result<(), StoreError> {
        self.inner.stop_planning(task_id, page).await
    }
}

impl<S: PauseStore> PauseStore for FaultyStore<S> {
    async fn pause(&self, task_id: TaskId, code: PauseCode) -> Result<bool, StoreError> {
        self.faulty("pause", self.inner.pause(task_id, code)).await
    }
    async fn park(
        &self,
        task_id: TaskId,
        chunk_id: &str,
        message: &str,
    ) -> Result<bool, StoreError> {
        self.faulty("park", self.inner.park(task_id, chunk_id, message))
            .await
    }
    async fn unpause(&self, task_id: TaskId) -> Result<bool, StoreError> {
        self.faulty("unpause", self.inner.unpause(task_id)).await
    }
    async fn parked(&self, task_id: TaskId) -> Result<Vec<(String, String)>, StoreError> {
        self.inner.parked(task_id).await
    }
    async fn unpark(&self, task_id: TaskId, chunk_id: &str) -> Result<(), StoreError> {
        self.faulty("unpark", self.inner.unpark(task_id, chunk_id))
            .await
    }
}

impl<S: PlanStore> PlanStore for FaultyStore<S> {
    async fn page_state(&self, task_id: TaskId, page: u32) -> Result<PageState, StoreError> {
        self.inner.page_state(task_id, page).await
    }
    async fn record_page(&self, task_id: TaskId, plan: PagePlan) -> Result<PagePlan, StoreError> {
        self.faulty("record_page", self.inner.record_page(task_id, plan))
            .await
    }
    async fn mark_page_enqueued(&self, task_id: TaskId, page: u32) -> Result<(), StoreError> {
        self.faulty(
            "mark_page_enqueued",
            self.inner.mark_page_enqueued(task_id, page),
        )
        .await
    }
}

impl<S: ChunkStore> ChunkStore for FaultyStore<S> {
    async fn lease(
        &self,
        task_id: TaskId,
        chunk_id: &str,
        size: usize,
        holder: &Holder,
    ) -> Result<Lease, StoreError> {
        self.faulty("lease", self.inner.lease(task_id, chunk_id, size, holder))
            .await
    }
    async fn record(
        &self,
        task_id: TaskId,
        chunk_id: &str,
        holder: &Holder,
        settled: &Settled,
    ) -> Result<(), StoreError> {
        self.faulty(
            "record",
            self.inner.record(task_id, chunk_id, holder, settled),
        )
        .await
    }
    async fn release_lease(
        &self,
        task_id: TaskId,
        chunk_id: &str,
        holder: &Holder,
        settled: &Settled,
    ) -> Result<(), StoreError> {
        self.faulty(
            "release",
            self.inner.release_lease(task_id, chunk_id, holder, settled),
        )
        .await
    }
    async fn close(
        &self,
        task_id: TaskId,
        chunk_id: &str,
        holder: &Holder,
        settled: &Settled,
        progress: &ChunkProgress,
    ) -> Result<(), StoreError> {
        self.faulty(
            "close",
            self.inner
                .close(task_id, chunk_id, holder, settled, progress),
        )
        .await
    }
    async fn fail_unsettled(
        &self,
        task_id: TaskId,
        chunk_id: &str,
        size: usize,
        failure: PartFailure,
    ) -> Result<Accounting, StoreError> {
        self.inner
            .fail_unsettled(task_id, chunk_id, size, failure)
            .await
    }
    async fn cancel_unsettled(
        &self,
        task_id: TaskId,
        chunk_id: &str,
        size: usize,
    ) -> Result<Accounting, StoreError> {
        self.faulty(
            "cancel_unsettled",
            self.inner.cancel_unsettled(task_id, chunk_id, size),
        )
        .await
    }
}

fn topic_names(topics: &[crate::domain::Topic]) -> Vec<String> {
    topics
        .iter()
        .map(|topic| topic.as_str().to_owned())
        .collect()
}

impl<S: IdempotencyStore> IdempotencyStore for FaultyStore<S> {
    async fn reserve(
        &self,
        key: &str,
        fingerprint: &str,
        task_id: TaskId,
        running_until: SystemTime,
    ) -> Result<Reservation, StoreError> {
        self.inner
            .reserve(key, fingerprint, task_id, running_until)
            .await
    }
    async fn mark_queued(&self, key: &str) -> Result<(), StoreError> {
        self.inner.mark_queued(key).await
    }
    async fn release(&self, key: &str) -> Result<(), StoreError> {
        self.inner.release(key).await
    }
    async fn take_over(
        &self,
        key: &str,
        from: TaskId,
        task_id: TaskId,
        running_until: SystemTime,
    ) -> Result<bool, StoreError> {
        self.inner
            .take_over(key, from, task_id, running_until)
            .await
    }
}

#[cfg(test)]
mod contract {
    crate::store_contract!(super::MemoryStore::default());
}

//! What the system remembers about each task: its status and counters, the idempotency keys of
//! the requests that created tasks, and which recipient has been sent what (the claims that make
//! delivery exactly-once per recipient). Storage is behind these traits; `dynamo` implements them.

use crate::domain::{EmailAddress, TaskId};
use serde::Serialize;
use std::future::Future;
use std::time::{SystemTime, UNIX_EPOCH};

/// Where a task is. Stored as the snake_case name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    Accepted,
    Planning,
    Sending,
    Completed,
    CompletedWithErrors,
}

impl TaskStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Planning => "planning",
            Self::Sending => "sending",
            Self::Completed => "completed",
            Self::CompletedWithErrors => "completed_with_errors",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        [
            Self::Accepted,
            Self::Planning,
            Self::Sending,
            Self::Completed,
            Self::CompletedWithErrors,
        ]
        .into_iter()
        .find(|status| status.as_str() == raw)
    }

    pub fn is_finished(self) -> bool {
        matches!(self, Self::Completed | Self::CompletedWithErrors)
    }
}

/// Recipient counts. `planned` counts every contact considered; the task is done when
/// `sent + skipped + failed == planned` and every page has been planned.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Recipients {
    pub planned: u64,
    pub sent: u64,
    pub skipped: u64,
    pub failed: u64,
}

impl Recipients {
    pub fn all_accounted_for(&self) -> bool {
        self.sent + self.skipped + self.failed == self.planned
    }
}

/// A part of a task that ended in the dead-letter queue, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartFailure {
    pub part: String,
    pub error: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TaskRecord {
    pub task_id: TaskId,
    pub status: TaskStatus,
    pub created_at: String,
    pub updated_at: String,
    pub recipients: Recipients,
    #[serde(skip)]
    pub planning_done: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<PartFailure>,
}

impl TaskRecord {
    /// The status to move to once the task is done, if it is done and not yet finished.
    pub fn completion(&self) -> Option<TaskStatus> {
        let done =
            !self.status.is_finished() && self.planning_done && self.recipients.all_accounted_for();
        let clean = self.recipients.failed == 0 && self.failures.is_empty();
        done.then_some(if clean {
            TaskStatus::Completed
        } else {
            TaskStatus::CompletedWithErrors
        })
    }
}

/// What one planned page adds to a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageCounts {
    pub page: u32,
    pub planned: u64,
    pub skipped: u64,
    pub failed: u64,
    pub last: bool,
}

impl PageCounts {
    /// The counts of a list that fits on one page and whose contacts are all recipients.
    pub fn only_page(recipients: u64) -> Self {
        Self {
            page: 0,
            planned: recipients,
            skipped: 0,
            failed: 0,
            last: true,
        }
    }
}

/// The store could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("the task store failed: {0}")]
pub struct StoreError(pub String);

pub trait TaskStore: Send + Sync {
    /// Records a new task as accepted.
    fn create(&self, task_id: TaskId) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Forgets a task whose job never reached the queue.
    fn delete(&self, task_id: TaskId) -> impl Future<Output = Result<(), StoreError>> + Send;
    fn get(
        &self,
        task_id: TaskId,
    ) -> impl Future<Output = Result<Option<TaskRecord>, StoreError>> + Send;
    /// Adds a planned page's counts, once per page however often planning is retried.
    fn record_page(
        &self,
        task_id: TaskId,
        counts: PageCounts,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Records a part of the task that will not be retried any more (its unsettled recipients
    /// are settled as failed separately). `stops_planning` when the part was a planning step: no later page will be planned.
    fn record_failure(
        &self,
        task_id: TaskId,
        failure: PartFailure,
        stops_planning: bool,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Moves the task to `status` unless it is already finished. `true` for the one caller that
    /// made the move.
    fn finish(
        &self,
        task_id: TaskId,
        status: TaskStatus,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
}

/// How a request with an Idempotency-Key relates to earlier ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reservation {
    /// First use of the key: the caller goes on to create the task.
    New,
    /// The key was used before (within its lifetime) for `task_id`.
    Existing {
        task_id: TaskId,
        fingerprint: String,
        queued: bool,
    },
}

pub trait IdempotencyStore: Send + Sync {
    /// Reserves `key` for `task_id` and the request `fingerprint`, unless it is already taken.
    fn reserve(
        &self,
        key: &str,
        fingerprint: &str,
        task_id: TaskId,
    ) -> impl Future<Output = Result<Reservation, StoreError>> + Send;
    /// The reservation's job is on the queue: replays may now answer with its task id.
    fn mark_queued(&self, key: &str) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Gives the key up after the job could not be queued, so a retry can use it.
    fn release(&self, key: &str) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// The state of one recipient's email for one task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// This invocation may send now.
    Acquired,
    /// Sent already: skip.
    Sent,
    /// Rejected for good already: skip.
    Rejected,
    /// Another invocation is sending (its claim is younger than the function timeout).
    Busy,
}

/// How a claimed recipient ended in this invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settlement {
    Sent(EmailAddress),
    Rejected(EmailAddress),
    /// Not sent (retryable failure or out of time): the claim is given back.
    Released(EmailAddress),
}

pub trait ClaimStore: Send + Sync {
    /// Claims `(task_id, recipient)` with one conditional write, until `lapses` (the claiming
    /// invocation's deadline, when Lambda stops it). A claim left unsettled past its lapse
    /// belonged to an invocation that died, and is taken over.
    fn claim(
        &self,
        task_id: TaskId,
        recipient: &EmailAddress,
        lapses: SystemTime,
    ) -> impl Future<Output = Result<Claim, StoreError>> + Send;
    /// Settles claims (at most [`MAX_SETTLEMENTS`]) and counts them on the task, atomically.
    fn settle(
        &self,
        task_id: TaskId,
        settlements: &[Settlement],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// A store shared by several workers in one process (the benchmark's instances) is still a store.
impl<T: TaskStore> TaskStore for std::sync::Arc<T> {
    fn create(&self, task_id: TaskId) -> impl Future<Output = Result<(), StoreError>> + Send {
        (**self).create(task_id)
    }
    fn delete(&self, task_id: TaskId) -> impl Future<Output = Result<(), StoreError>> + Send {
        (**self).delete(task_id)
    }
    fn get(
        &self,
        task_id: TaskId,
    ) -> impl Future<Output = Result<Option<TaskRecord>, StoreError>> + Send {
        (**self).get(task_id)
    }
    fn record_page(
        &self,
        task_id: TaskId,
        counts: PageCounts,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        (**self).record_page(task_id, counts)
    }
    fn record_failure(
        &self,
        task_id: TaskId,
        failure: PartFailure,
        stops_planning: bool,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        (**self).record_failure(task_id, failure, stops_planning)
    }
    fn finish(
        &self,
        task_id: TaskId,
        status: TaskStatus,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        (**self).finish(task_id, status)
    }
}

impl<T: ClaimStore> ClaimStore for std::sync::Arc<T> {
    fn claim(
        &self,
        task_id: TaskId,
        recipient: &EmailAddress,
        lapses: SystemTime,
    ) -> impl Future<Output = Result<Claim, StoreError>> + Send {
        (**self).claim(task_id, recipient, lapses)
    }
    fn settle(
        &self,
        task_id: TaskId,
        settlements: &[Settlement],
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        (**self).settle(task_id, settlements)
    }
}

/// Claims settled per write: DynamoDB transactions take 100 items; 25 keeps them small.
pub const MAX_SETTLEMENTS: usize = 25;

/// Seconds since the epoch.
pub fn epoch_seconds(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(
        planned: u64,
        sent: u64,
        skipped: u64,
        failed: u64,
        planning_done: bool,
    ) -> TaskRecord {
        TaskRecord {
            task_id: TaskId::generate(),
            status: TaskStatus::Sending,
            created_at: String::new(),
            updated_at: String::new(),
            recipients: Recipients {
                planned,
                sent,
                skipped,
                failed,
            },
            planning_done,
            failures: Vec::new(),
        }
    }

    #[test]
    fn a_task_completes_when_every_planned_recipient_is_accounted_for() {
        assert_eq!(
            record(10, 7, 3, 0, true).completion(),
            Some(TaskStatus::Completed)
        );
        assert_eq!(
            record(10, 6, 3, 1, true).completion(),
            Some(TaskStatus::CompletedWithErrors)
        );
        assert_eq!(
            record(10, 6, 3, 0, true).completion(),
            None,
            "one still owed"
        );
        assert_eq!(
            record(10, 7, 3, 0, false).completion(),
            None,
            "pages still to plan"
        );
        assert_eq!(
            record(0, 0, 0, 0, true).completion(),
            Some(TaskStatus::Completed),
            "nobody to send to"
        );
        let mut finished = record(10, 7, 3, 0, true);
        finished.status = TaskStatus::Completed;
        assert_eq!(finished.completion(), None, "completed only once");
    }

    #[test]
    fn a_failed_part_makes_the_completion_one_with_errors() {
        let mut task = record(10, 7, 3, 0, true);
        task.failures.push(PartFailure {
            part: "delivery p0-c1".into(),
            error: "poison".into(),
        });
        assert_eq!(task.completion(), Some(TaskStatus::CompletedWithErrors));
    }

    #[test]
    fn statuses_round_trip_through_their_names() {
        for status in [
            TaskStatus::Accepted,
            TaskStatus::Planning,
            TaskStatus::Sending,
            TaskStatus::Completed,
            TaskStatus::CompletedWithErrors,
        ] {
            assert_eq!(TaskStatus::parse(status.as_str()), Some(status));
            assert_eq!(serde_json::to_value(status).unwrap(), status.as_str());
        }
        assert_eq!(TaskStatus::parse("done"), None);
    }
}

//! What the system remembers about each task: its status and counters, the idempotency keys of
//! the requests that created tasks, each page's plan, and which recipient of each chunk has been
//! sent what (the leases and settlements that make delivery exactly-once per recipient). Storage
//! is behind these traits; `dynamo` implements them on DynamoDB, `fakes` in memory, and
//! `contract` holds the scenarios both must pass.

use crate::domain::TaskId;
use crate::planning::PagePlan;
use serde::Serialize;
use std::collections::BTreeSet;
use std::future::Future;
use std::time::{SystemTime, UNIX_EPOCH};

/// Where a task is. Stored as the snake_case name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    Accepted,
    Planning,
    Sending,
    /// Sending stopped for the whole task (see [`Pause`]) until it is resumed.
    Paused,
    Completed,
    CompletedWithErrors,
    /// Final: accept could not confirm the task's job reached the queue, answered 503, and
    /// made sure nothing of it will be delivered (a copy of the job that is on the queue after
    /// all is dropped by the worker).
    Withdrawn,
}

impl TaskStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Planning => "planning",
            Self::Sending => "sending",
            Self::Paused => "paused",
            Self::Completed => "completed",
            Self::CompletedWithErrors => "completed_with_errors",
            Self::Withdrawn => "withdrawn",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        [
            Self::Accepted,
            Self::Planning,
            Self::Sending,
            Self::Paused,
            Self::Completed,
            Self::CompletedWithErrors,
            Self::Withdrawn,
        ]
        .into_iter()
        .find(|status| status.as_str() == raw)
    }

    pub fn is_finished(self) -> bool {
        matches!(
            self,
            Self::Completed | Self::CompletedWithErrors | Self::Withdrawn
        )
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

/// A part of a task that ended in the dead-letter queue, and why, as a stable code. Callers see
/// the code and its short message (`GET /newsletters/{id}`); the raw error stays in the logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartFailure {
    pub part: String,
    pub code: FailureCode,
}

/// Why a part failed. The names are part of the API (README, `openapi.yaml`): never rename one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureCode {
    /// A chunk's message kept failing and reached the dead-letter queue: its unsent recipients
    /// count as failed until a redrive sends them.
    DeliveryDeadLettered,
    /// A page of the contact list could not be planned: planning stopped before it.
    PlanningDeadLettered,
    /// A message in the dead-letter queue could not be read; it names this task.
    MessageUnreadable,
}

impl FailureCode {
    const ALL: [Self; 3] = [
        Self::DeliveryDeadLettered,
        Self::PlanningDeadLettered,
        Self::MessageUnreadable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::DeliveryDeadLettered => "delivery_dead_lettered",
            Self::PlanningDeadLettered => "planning_dead_lettered",
            Self::MessageUnreadable => "message_unreadable",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|code| code.as_str() == raw)
    }

    pub fn message(self) -> &'static str {
        match self {
            Self::DeliveryDeadLettered => {
                "a delivery kept failing and reached the dead-letter queue; its unsent recipients count as failed until it is redriven"
            }
            Self::PlanningDeadLettered => {
                "a page of the contact list could not be planned; planning stopped before it"
            }
            Self::MessageUnreadable => "a message of this task could not be read",
        }
    }
}

impl PartFailure {
    /// A delivery chunk's failure (cleared by a redrive that sends its recipients).
    pub fn delivery(chunk_id: &str) -> Self {
        Self {
            part: Self::delivery_part(chunk_id),
            code: FailureCode::DeliveryDeadLettered,
        }
    }

    /// A planning step's failure (cleared by a redrive that plans the page).
    pub fn planning(page: u32) -> Self {
        Self {
            part: Self::planning_part(page),
            code: FailureCode::PlanningDeadLettered,
        }
    }

    pub fn unreadable() -> Self {
        Self {
            part: "unreadable message".into(),
            code: FailureCode::MessageUnreadable,
        }
    }

    /// The name under which a delivery chunk's failure is recorded.
    pub fn delivery_part(chunk_id: &str) -> String {
        format!("delivery {chunk_id}")
    }

    /// The name under which a planning step's failure is recorded.
    pub fn planning_part(page: u32) -> String {
        format!("planning page {page}")
    }
}

impl Serialize for PartFailure {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut failure = serializer.serialize_struct("PartFailure", 3)?;
        failure.serialize_field("part", &self.part)?;
        failure.serialize_field("code", &self.code)?;
        failure.serialize_field("message", self.code.message())?;
        failure.end()
    }
}

/// Why SES refuses every email of the account, whoever it is to: the task pauses instead of
/// failing its recipients. The names are part of the API (README, `openapi.yaml`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PauseCode {
    SenderNotVerified,
    /// The account is in the SES sandbox, where every recipient must be verified too.
    RecipientNotVerified,
    AccessDenied,
    ConfigurationSetMissing,
    SendingPaused,
    AccountSuspended,
    DailyQuotaExceeded,
}

impl PauseCode {
    const ALL: [Self; 7] = [
        Self::SenderNotVerified,
        Self::RecipientNotVerified,
        Self::AccessDenied,
        Self::ConfigurationSetMissing,
        Self::SendingPaused,
        Self::AccountSuspended,
        Self::DailyQuotaExceeded,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::SenderNotVerified => "sender_not_verified",
            Self::RecipientNotVerified => "recipient_not_verified",
            Self::AccessDenied => "access_denied",
            Self::ConfigurationSetMissing => "configuration_set_missing",
            Self::SendingPaused => "sending_paused",
            Self::AccountSuspended => "account_suspended",
            Self::DailyQuotaExceeded => "daily_quota_exceeded",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|code| code.as_str() == raw)
    }

    /// What is wrong and what fixes it, for the caller.
    pub fn message(self) -> &'static str {
        match self {
            Self::SenderNotVerified => {
                "SES refuses the sender address: verify it (or its domain) in SES, then resume"
            }
            Self::RecipientNotVerified => {
                "the SES account is in the sandbox and refuses unverified recipients: request production access, then resume"
            }
            Self::AccessDenied => {
                "the worker's role may not send through SES (ses:SendEmail): fix its policy, then resume"
            }
            Self::ConfigurationSetMissing => {
                "the SES configuration set the worker names does not exist: create it, then resume"
            }
            Self::SendingPaused => {
                "sending is paused for the SES account or configuration set: re-enable it, then resume"
            }
            Self::AccountSuspended => {
                "the SES account is suspended: resolve it with AWS, then resume"
            }
            Self::DailyQuotaExceeded => {
                "the SES account's 24-hour sending quota is used up: resume when it has room again, or raise it"
            }
        }
    }
}

/// A paused task's reason, as its status shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pause {
    pub code: PauseCode,
    /// When the task paused (RFC 3339).
    pub since: String,
}

impl Serialize for Pause {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut pause = serializer.serialize_struct("Pause", 3)?;
        pause.serialize_field("code", &self.code)?;
        pause.serialize_field("message", self.code.message())?;
        pause.serialize_field("since", &self.since)?;
        pause.end()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TaskRecord {
    pub task_id: TaskId,
    pub status: TaskStatus,
    pub created_at: String,
    pub updated_at: String,
    pub recipients: Recipients,
    /// Every page is planned (or planning stopped for good at a dead-lettered page).
    #[serde(skip)]
    pub planning_done: bool,
    /// Topics of the newsletter that no topic of the contact list matches (their sections
    /// reached nobody), in the newsletter's order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unmatched_topics: Vec<String>,
    /// By part, in the part's name order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<PartFailure>,
    /// Why the task is paused, while it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pause: Option<Pause>,
}

impl TaskRecord {
    /// The status to move to once the task is done, if it is done and not there yet. A task that
    /// completed with errors completes cleanly after a redrive from the dead-letter queue has
    /// delivered what had failed.
    pub fn completion(&self) -> Option<TaskStatus> {
        let done = self.planning_done && self.recipients.all_accounted_for();
        let clean = self.recipients.failed == 0 && self.failures.is_empty();
        let status = if clean {
            TaskStatus::Completed
        } else {
            TaskStatus::CompletedWithErrors
        };
        (done && self.status != status && self.status != TaskStatus::Completed).then_some(status)
    }
}

/// The store could not be read or written, or refused a write whose condition no longer holds
/// (a lease that another invocation took over).
#[derive(Debug, thiserror::Error)]
#[error("the task store failed: {0}")]
pub struct StoreError(pub String);

/// Task status and counters.
pub trait TaskStore: Send + Sync {
    /// Records a new task as accepted. Task ids are fresh for every request, so creating one that
    /// exists is a retry (an earlier try's answer was lost) and succeeds.
    fn create(&self, task_id: TaskId) -> impl Future<Output = Result<(), StoreError>> + Send;
    fn get(
        &self,
        task_id: TaskId,
    ) -> impl Future<Output = Result<Option<TaskRecord>, StoreError>> + Send;
    /// Records a part of the task that ended in the dead-letter queue, under `failure.part`
    /// (recording the same part again changes nothing). `stops_planning_at`: the part was the
    /// planning of this page, which never got planned, so planning ends before it.
    fn record_failure(
        &self,
        task_id: TaskId,
        failure: PartFailure,
        stops_planning_at: Option<u32>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Moves the task to the final `status` unless it is there already or completed. `true` for
    /// the one caller that made the move.
    fn finish(
        &self,
        task_id: TaskId,
        status: TaskStatus,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// Withdraws a task whose job accept could not confirm on the queue: one conditional write
    /// from `accepted` to `withdrawn`, after which the task is never planned (the move from
    /// `accepted` that [`PlanStore::record_page`] makes is refused on a withdrawn task), so
    /// nothing of it is delivered. `Withdrawn` also when it was withdrawn already (a retry) or
    /// has no record (nothing will plan it: the worker refuses jobs of unknown tasks);
    /// `Started` when the worker has moved it on: its job was queued after all.
    fn withdraw(
        &self,
        task_id: TaskId,
    ) -> impl Future<Output = Result<Withdrawal, StoreError>> + Send;
}

/// The answer to [`TaskStore::withdraw`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Withdrawal {
    /// The task is withdrawn: nothing of it will be delivered.
    Withdrawn,
    /// Planning has started: the job is on the queue and the task will be delivered.
    Started,
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
        /// Until when the request that holds the key may still be running (its invocation's
        /// deadline, plus skew): a reservation still pending after that was left by a request
        /// that died, and may be recovered ([`IdempotencyStore::take_over`]). `None` on a
        /// reservation that does not say (recorded before this was): never recovered.
        running_until: Option<SystemTime>,
    },
}

impl Reservation {
    /// Whether this is a pending reservation whose request can no longer be running at `now`.
    pub fn abandoned(&self, now: SystemTime) -> bool {
        matches!(
            self,
            Self::Existing {
                queued: false,
                running_until: Some(until),
                ..
            } if *until < now
        )
    }
}

pub trait IdempotencyStore: Send + Sync {
    /// Reserves `key` for `task_id` and the request `fingerprint`, by a request that may run
    /// until `running_until`, unless it is already taken. A key reserved for this same
    /// `task_id` is a retry (an earlier try's answer was lost): `New`.
    fn reserve(
        &self,
        key: &str,
        fingerprint: &str,
        task_id: TaskId,
        running_until: SystemTime,
    ) -> impl Future<Output = Result<Reservation, StoreError>> + Send;
    /// The reservation's job is on the queue: replays may now answer with its task id.
    fn mark_queued(&self, key: &str) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Gives the key up after the job could not be queued, so a retry can use it.
    fn release(&self, key: &str) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Moves a pending reservation of `key` from the task `from` (of a request that died; its
    /// task is withdrawn) to `task_id`, of a request that may run until `running_until`; the
    /// fingerprint stays. One conditional write: `false` when the key is no longer pending for
    /// `from` (another request took it over first, or it was released, queued or expired).
    /// A retry after a lost answer finds the key moved to `task_id`: `true`.
    fn take_over(
        &self,
        key: &str,
        from: TaskId,
        task_id: TaskId,
        running_until: SystemTime,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
}

/// Where planning of one page stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PageState {
    /// Nothing is recorded: the page is to be read and planned.
    Unplanned,
    /// The plan is stored and counted on the task; its messages may not all be queued yet.
    Planned(PagePlan),
    /// Every message of the plan is queued.
    Enqueued,
}

/// The plan of each page, so that planning is idempotent: a retried step queues the stored plan
/// again instead of re-reading a contact list that may have changed.
pub trait PlanStore: Send + Sync {
    fn page_state(
        &self,
        task_id: TaskId,
        page: u32,
    ) -> impl Future<Output = Result<PageState, StoreError>> + Send;
    /// Stores `plan` and adds its counts to the task, atomically and once. If a plan of this page
    /// is stored already, it is returned (and counted already); otherwise `plan` is returned.
    /// Recording a page also clears a planning failure of that page, and reopens planning.
    /// Refused (an error: nothing counted, the page stays unplanned) on a task that has no
    /// record or is withdrawn ([`TaskStore::withdraw`]).
    fn record_page(
        &self,
        task_id: TaskId,
        plan: PagePlan,
    ) -> impl Future<Output = Result<PagePlan, StoreError>> + Send;
    /// Every message of the page's plan is on the queue.
    fn mark_page_enqueued(
        &self,
        task_id: TaskId,
        page: u32,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// An invocation's right to send a chunk, until it lapses (the invocation's deadline, when
/// Lambda would have stopped it, plus a clock-skew allowance).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// Unique per invocation.
    pub token: String,
    pub lapses: SystemTime,
}

/// Positions (in the chunk's recipient list) of the chunk's recipients by state. A position is in
/// at most one set; one in none is still to be sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChunkProgress {
    pub sent: BTreeSet<u16>,
    pub rejected: BTreeSet<u16>,
    /// Given up on when the chunk reached the dead-letter queue: sent again after a redrive.
    pub failed: BTreeSet<u16>,
    /// What has been counted on the task so far: (sent, failed or rejected).
    pub counted: (u64, u64),
}

impl ChunkProgress {
    /// Whether the recipient at `position` still needs the email (never settled, or failed).
    pub fn owes(&self, position: u16) -> bool {
        !self.sent.contains(&position) && !self.rejected.contains(&position)
    }

    /// What the task's counters should hold for this chunk: (sent, failed or rejected).
    pub fn totals(&self) -> (u64, u64) {
        (
            self.sent.len() as u64,
            (self.rejected.len() + self.failed.len()) as u64,
        )
    }

    /// Applies a settlement made under the lease.
    pub fn apply(&mut self, settled: &Settled) {
        for position in &settled.sent {
            self.failed.remove(position);
            self.sent.insert(*position);
        }
        for position in &settled.rejected {
            self.failed.remove(position);
            self.rejected.insert(*position);
        }
    }
}

/// Recipients settled since the last write, by position.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settled {
    /// SES accepted their email.
    pub sent: Vec<u16>,
    /// SES refused their address for good.
    pub rejected: Vec<u16>,
}

impl Settled {
    pub fn len(&self) -> usize {
        self.sent.len() + self.rejected.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn append(&mut self, other: Settled) {
        self.sent.extend(other.sent);
        self.rejected.extend(other.rejected);
    }
}

/// The answer to a lease request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lease {
    /// The caller holds the chunk until its lease lapses; this is what is settled so far.
    Held(ChunkProgress),
    /// Another invocation holds a live lease on the chunk.
    Busy,
    /// Every recipient was sent or rejected, and counted: nothing is left to do.
    Finished,
}

/// What a dead-lettered chunk's accounting did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accounting {
    /// Its unsettled recipients are now failed and counted (or were already).
    Accounted,
    /// An invocation holds a live lease on it: account it later.
    Held,
}

/// Exactly-once delivery, per chunk: one lease per invocation that works on a chunk, one write
/// per few settled recipients, and one transaction when the chunk is done (the only write to the
/// task's counters). SES has no idempotency token, so what is in the window between a send and
/// its settlement may be sent again if the invocation dies.
pub trait ChunkStore: Send + Sync {
    /// Leases the chunk (of `size` recipients) to `holder`, unless another holder's lease is
    /// live. A lease left behind by an invocation that died is taken over once it has lapsed.
    fn lease(
        &self,
        task_id: TaskId,
        chunk_id: &str,
        size: usize,
        holder: &Holder,
    ) -> impl Future<Output = Result<Lease, StoreError>> + Send;
    /// Records `settled` (idempotent: recording it twice is recording it once). Fails, and
    /// records nothing, if `holder` no longer holds the lease.
    fn record(
        &self,
        task_id: TaskId,
        chunk_id: &str,
        holder: &Holder,
        settled: &Settled,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Records `settled` and gives the lease up: recipients are left for another invocation.
    /// Idempotent: a retry after a lost answer succeeds though the lease is gone.
    fn release_lease(
        &self,
        task_id: TaskId,
        chunk_id: &str,
        holder: &Holder,
        settled: &Settled,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Every recipient is settled: records `settled`, gives the lease up, and adds to the task's
    /// counters what `progress` (the chunk with `settled` applied) has beyond what they hold for
    /// it, all at once. Idempotent: after a lost answer, calling it again succeeds and counts
    /// nothing twice. Clears the chunk's failure record when no failed recipient is left.
    fn close(
        &self,
        task_id: TaskId,
        chunk_id: &str,
        holder: &Holder,
        settled: &Settled,
        progress: &ChunkProgress,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// The chunk's message is in the dead-letter queue: every recipient not settled becomes
    /// failed, is counted, and `failure` is recorded on the task, all at once, unless a live
    /// lease is held. Idempotent.
    fn fail_unsettled(
        &self,
        task_id: TaskId,
        chunk_id: &str,
        size: usize,
        failure: PartFailure,
    ) -> impl Future<Output = Result<Accounting, StoreError>> + Send;
}

/// Pausing a task whose sends SES refuses account-wide, and resuming it where it stopped: the
/// chunks that arrive while it is paused are parked here (their messages leave the queue, so
/// they do not burn their receives into the dead-letter queue), and queued again on resume.
pub trait PauseStore: Send + Sync {
    /// Pauses a planning or sending task for `code`. `false`, changing nothing, if the task is
    /// paused already (the first reason stays) or in any other status.
    fn pause(
        &self,
        task_id: TaskId,
        code: PauseCode,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// Keeps the chunk's `message` (its queue message, encoded) while the task is paused. `false`
    /// if the task is not paused (any more): the caller sends the chunk instead. Parking a chunk
    /// again replaces its message.
    fn park(
        &self,
        task_id: TaskId,
        chunk_id: &str,
        message: &str,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// Moves a paused task back to sending, keeping what is parked. `false` if it was not paused.
    fn unpause(&self, task_id: TaskId) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// The parked chunks' messages, by chunk id.
    fn parked(
        &self,
        task_id: TaskId,
    ) -> impl Future<Output = Result<Vec<(String, String)>, StoreError>> + Send;
    /// Forgets a parked chunk whose message is back on the queue. Idempotent.
    fn unpark(
        &self,
        task_id: TaskId,
        chunk_id: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// Seconds since the epoch.
pub fn epoch_seconds(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

/// Milliseconds since the epoch.
pub fn epoch_millis(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
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
            unmatched_topics: Vec::new(),
            failures: Vec::new(),
            pause: None,
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
        task.failures.push(PartFailure::delivery("p0-c1"));
        assert_eq!(task.completion(), Some(TaskStatus::CompletedWithErrors));
    }

    #[test]
    fn statuses_round_trip_through_their_names() {
        for status in [
            TaskStatus::Accepted,
            TaskStatus::Planning,
            TaskStatus::Sending,
            TaskStatus::Paused,
            TaskStatus::Completed,
            TaskStatus::CompletedWithErrors,
            TaskStatus::Withdrawn,
        ] {
            assert_eq!(TaskStatus::parse(status.as_str()), Some(status));
            assert_eq!(serde_json::to_value(status).unwrap(), status.as_str());
        }
        assert_eq!(TaskStatus::parse("done"), None);
    }

    #[test]
    fn pauses_show_a_stable_code_what_fixes_it_and_since_when() {
        for code in PauseCode::ALL {
            assert_eq!(PauseCode::parse(code.as_str()), Some(code));
            assert_eq!(serde_json::to_value(code).unwrap(), code.as_str());
        }
        let pause = Pause {
            code: PauseCode::SenderNotVerified,
            since: "2026-12-02T08:00:00Z".into(),
        };
        assert_eq!(
            serde_json::to_value(pause).unwrap(),
            serde_json::json!({
                "code": "sender_not_verified",
                "message": PauseCode::SenderNotVerified.message(),
                "since": "2026-12-02T08:00:00Z",
            })
        );
    }

    #[test]
    fn failures_show_a_stable_code_and_its_message_never_raw_error_text() {
        for code in FailureCode::ALL {
            assert_eq!(FailureCode::parse(code.as_str()), Some(code));
        }
        let shown = serde_json::to_value(PartFailure::planning(3)).unwrap();
        assert_eq!(
            shown,
            serde_json::json!({
                "part": "planning page 3",
                "code": "planning_dead_lettered",
                "message": FailureCode::PlanningDeadLettered.message(),
            })
        );
    }
}

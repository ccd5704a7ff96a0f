//! A task: one request to send a newsletter, as the system remembers it: its status, its
//! recipient counts, the parts that failed and why, and a pause.

use crate::domain::TaskId;
use serde::Serialize;

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
    /// A caller cancelled the task (`DELETE /newsletters/{task_id}`): nothing more of it is sent,
    /// and its chunks are being accounted (what they did not send counts as `cancelled`).
    Cancelling,
    /// Final: cancelled, and every chunk is accounted, so the counts are the task's last.
    Cancelled,
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
            Self::Cancelling => "cancelling",
            Self::Cancelled => "cancelled",
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
            Self::Cancelling,
            Self::Cancelled,
            Self::Withdrawn,
        ]
        .into_iter()
        .find(|status| status.as_str() == raw)
    }

    pub fn is_finished(self) -> bool {
        matches!(
            self,
            Self::Completed | Self::CompletedWithErrors | Self::Cancelled | Self::Withdrawn
        )
    }

    /// Cancelled, or being cancelled: nothing more of it is sent, and it cannot be paused or
    /// resumed.
    pub fn is_cancelled(self) -> bool {
        matches!(self, Self::Cancelling | Self::Cancelled)
    }
}

/// What a task sends: a newsletter to the contact list, or a test send of one to a few given
/// addresses (`POST /newsletters/test`), each getting what a subscriber with its preferences
/// would. Shown as `kind` in the status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    #[default]
    Newsletter,
    Test,
}

impl TaskKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Newsletter => "newsletter",
            Self::Test => "test",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        [Self::Newsletter, Self::Test]
            .into_iter()
            .find(|kind| kind.as_str() == raw)
    }
}

/// Recipient counts. `planned` counts every contact considered; the task is done when
/// `sent + skipped + failed + cancelled == planned` and every page has been planned.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Recipients {
    pub planned: u64,
    pub sent: u64,
    pub skipped: u64,
    pub failed: u64,
    /// Planned, but not sent because the task was cancelled first.
    pub cancelled: u64,
}

impl Recipients {
    pub fn all_accounted_for(&self) -> bool {
        self.sent + self.skipped + self.failed + self.cancelled == self.planned
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

/// Why a task is paused: SES refuses every email of the account, whoever it is to (the task
/// pauses instead of failing its recipients), or a caller asked for it. The names are part of
/// the API (README, `openapi.yaml`).
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
    /// A caller paused it (`POST /newsletters/{task_id}/pause`): nothing is wrong.
    Requested,
}

impl PauseCode {
    const ALL: [Self; 8] = [
        Self::SenderNotVerified,
        Self::RecipientNotVerified,
        Self::AccessDenied,
        Self::ConfigurationSetMissing,
        Self::SendingPaused,
        Self::AccountSuspended,
        Self::DailyQuotaExceeded,
        Self::Requested,
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
            Self::Requested => "requested",
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
            Self::Requested => {
                "paused through POST /newsletters/{task_id}/pause; resume it with POST /newsletters/{task_id}/resume"
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
    pub kind: TaskKind,
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
    /// delivered what had failed. A cancelling task is done once planning stopped and every
    /// chunk is accounted; it ends cancelled, whatever its chunks did.
    pub fn completion(&self) -> Option<TaskStatus> {
        let done = self.planning_done && self.recipients.all_accounted_for();
        if self.status.is_cancelled() {
            return (done && self.status == TaskStatus::Cancelling)
                .then_some(TaskStatus::Cancelled);
        }
        let clean = self.recipients.failed == 0 && self.failures.is_empty();
        let status = if clean {
            TaskStatus::Completed
        } else {
            TaskStatus::CompletedWithErrors
        };
        (done && self.status != status && self.status != TaskStatus::Completed).then_some(status)
    }
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
            kind: TaskKind::Newsletter,
            status: TaskStatus::Sending,
            created_at: String::new(),
            updated_at: String::new(),
            recipients: Recipients {
                planned,
                sent,
                skipped,
                failed,
                cancelled: 0,
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
    fn a_cancelling_task_ends_cancelled_once_every_recipient_is_accounted_for() {
        let mut task = record(10, 4, 1, 0, true);
        task.status = TaskStatus::Cancelling;
        assert_eq!(task.completion(), None, "five not accounted yet");
        task.recipients.cancelled = 5;
        assert_eq!(task.completion(), Some(TaskStatus::Cancelled));
        task.planning_done = false;
        assert_eq!(task.completion(), None, "planning has not stopped yet");
        task.planning_done = true;
        task.recipients.failed = 1;
        task.recipients.cancelled = 4;
        assert_eq!(
            task.completion(),
            Some(TaskStatus::Cancelled),
            "cancelled, not completed with errors"
        );
        task.status = TaskStatus::Cancelled;
        assert_eq!(task.completion(), None, "cancelled only once");
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
            TaskStatus::Cancelling,
            TaskStatus::Cancelled,
            TaskStatus::Withdrawn,
        ] {
            assert_eq!(TaskStatus::parse(status.as_str()), Some(status));
            assert_eq!(serde_json::to_value(status).unwrap(), status.as_str());
        }
        assert_eq!(TaskStatus::parse("done"), None);
        for kind in [TaskKind::Newsletter, TaskKind::Test] {
            assert_eq!(TaskKind::parse(kind.as_str()), Some(kind));
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.as_str());
        }
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

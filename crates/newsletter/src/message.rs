//! The messages that carry work through the jobs queue, versioned so that a worker never guesses
//! at a body it does not understand.
//!
//! ```json
//! {"version": 1, "kind": "job", "task_id": "…", "newsletter": {…}}
//! {"version": 1, "kind": "job", "task_id": "…", "newsletter": {…}, "to": ["ada@example.com"]}
//! {"version": 1, "kind": "delivery", "task_id": "…", "chunk_id": "p0-c3", "newsletter": {…},
//!  "recipients": [{"email": "ada@example.com", "topics": ["rust"]}]}
//! ```

use crate::domain::{EmailAddress, Newsletter, TaskId, TestRecipients, Topic};
use serde::{Deserialize, Serialize};

/// The format version this code writes and reads.
pub const MESSAGE_VERSION: u32 = 1;

/// What one SQS message asks the worker to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Message {
    /// Plan a newsletter: walk the contact list from `cursor` and enqueue deliveries.
    Job(Job),
    /// Send a newsletter to a bounded chunk of recipients.
    Delivery(Delivery),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub task_id: TaskId,
    pub newsletter: Newsletter,
    /// Where planning resumes; absent on the message the accept function enqueues.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<PlanCursor>,
    /// A test send's addresses: planned as one page of these alone, never the contact list's
    /// pages. Absent on a newsletter's job (and on every job written before test sends: they
    /// decode as newsletters, so the version stays 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<TestRecipients>,
}

impl Job {
    /// The page this job plans.
    pub fn page(&self) -> u32 {
        self.cursor.as_ref().map_or(0, |cursor| cursor.page)
    }
}

/// A position in the contact list: the page number (for deterministic chunk ids) and the token
/// that fetches it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanCursor {
    pub page: u32,
    pub next_token: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    pub task_id: TaskId,
    /// Deterministic within a task (page and chunk number), so a retried plan yields the same ids.
    pub chunk_id: String,
    /// 0 as planned; one more each time the recipients still owed are re-enqueued on their own.
    #[serde(default)]
    pub attempt: u32,
    pub newsletter: Newsletter,
    pub recipients: Vec<Recipient>,
}

/// A subscriber and the topics of this newsletter they opted into (never empty).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recipient {
    pub email: EmailAddress,
    pub topics: Vec<Topic>,
}

/// Why a queue message cannot be processed. It will not get better by retrying, but it is reported
/// failed all the same so that SQS moves it to the dead-letter queue instead of losing it.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("message is not a versioned JSON object: {0}")]
    NotVersioned(serde_json::Error),
    #[error("message version {0} is not supported (this worker reads version {MESSAGE_VERSION})")]
    UnsupportedVersion(u64),
    #[error("message does not match version {MESSAGE_VERSION}: {0}")]
    Invalid(serde_json::Error),
}

#[derive(Serialize)]
struct EnvelopeRef<'a> {
    version: u32,
    #[serde(flatten)]
    message: &'a Message,
}

#[derive(Deserialize)]
struct Envelope {
    #[serde(rename = "version")]
    _version: u64,
    #[serde(flatten)]
    message: Message,
}

#[derive(Deserialize)]
struct VersionOnly {
    version: u64,
}

#[derive(Deserialize)]
struct Salvage {
    task_id: TaskId,
    kind: Option<String>,
    cursor: Option<SalvagedCursor>,
}

#[derive(Deserialize)]
struct SalvagedCursor {
    page: u32,
}

/// What can still be read from a message body that does not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Salvaged {
    pub task_id: TaskId,
    /// The page it was to plan, when it says it is a job.
    pub job_page: Option<u32>,
}

impl Message {
    pub fn task_id(&self) -> TaskId {
        match self {
            Message::Job(job) => job.task_id,
            Message::Delivery(delivery) => delivery.task_id,
        }
    }

    /// What can still be read from a body that does not decode: its task id, and the page it
    /// was to plan if it claims to be a job.
    pub fn salvage(body: &str) -> Option<Salvaged> {
        let salvage: Salvage = serde_json::from_str(body).ok()?;
        let is_job = salvage.kind.as_deref() == Some("job");
        Some(Salvaged {
            task_id: salvage.task_id,
            job_page: is_job.then(|| salvage.cursor.map_or(0, |cursor| cursor.page)),
        })
    }

    pub fn encode(&self) -> String {
        let envelope = EnvelopeRef {
            version: MESSAGE_VERSION,
            message: self,
        };
        // Serializing plain data with string keys cannot fail.
        serde_json::to_string(&envelope).unwrap_or_default()
    }

    pub fn decode(body: &str) -> Result<Self, DecodeError> {
        let VersionOnly { version } =
            serde_json::from_str(body).map_err(DecodeError::NotVersioned)?;
        if version != u64::from(MESSAGE_VERSION) {
            return Err(DecodeError::UnsupportedVersion(version));
        }
        let envelope: Envelope = serde_json::from_str(body).map_err(DecodeError::Invalid)?;
        Ok(envelope.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn newsletter() -> Newsletter {
        Newsletter::from_json(&json!({
            "subject": "Weekly",
            "sections": [{"topic": "rust", "title": "T", "body": "B"}]
        }))
        .unwrap()
    }

    #[test]
    fn job_round_trips_with_version_and_kind() {
        let job = Message::Job(Job {
            task_id: TaskId::generate(),
            newsletter: newsletter(),
            cursor: None,
            to: None,
        });
        let encoded = job.encode();
        let value: Value = serde_json::from_str(&encoded).unwrap();
        assert_eq!(value["version"], 1);
        assert_eq!(value["kind"], "job");
        assert_eq!(value["task_id"], job.task_id().to_string());
        assert!(value.get("cursor").is_none());
        assert!(
            value.get("to").is_none(),
            "a newsletter's job reads as before test sends"
        );
        assert_eq!(Message::decode(&encoded).unwrap(), job);
    }

    #[test]
    fn a_test_job_carries_its_addresses() {
        let to = TestRecipients::new(vec![EmailAddress::parse("ada@example.com").unwrap()]);
        let job = Message::Job(Job {
            task_id: TaskId::generate(),
            newsletter: newsletter(),
            cursor: None,
            to: Some(to.unwrap()),
        });
        let encoded = job.encode();
        let value: Value = serde_json::from_str(&encoded).unwrap();
        assert_eq!(value["version"], 1);
        assert_eq!(value["to"], serde_json::json!(["ada@example.com"]));
        assert_eq!(Message::decode(&encoded).unwrap(), job);
    }

    #[test]
    fn delivery_round_trips() {
        let delivery = Message::Delivery(Delivery {
            task_id: TaskId::generate(),
            chunk_id: "p2-c1".into(),
            attempt: 1,
            newsletter: newsletter(),
            recipients: vec![Recipient {
                email: EmailAddress::parse("ada@example.com").unwrap(),
                topics: vec![Topic::parse("rust").unwrap()],
            }],
        });
        assert_eq!(Message::decode(&delivery.encode()).unwrap(), delivery);
    }

    #[test]
    fn poison_bodies_are_told_apart() {
        assert!(matches!(
            Message::decode("not json"),
            Err(DecodeError::NotVersioned(_))
        ));
        assert!(matches!(
            Message::decode(r#"{"kind":"job"}"#),
            Err(DecodeError::NotVersioned(_))
        ));
        assert!(matches!(
            Message::decode(r#"{"version":2,"kind":"job"}"#),
            Err(DecodeError::UnsupportedVersion(2))
        ));
        assert!(matches!(
            Message::decode(r#"{"version":1,"kind":"launch-missiles"}"#),
            Err(DecodeError::Invalid(_))
        ));
        // A newsletter that would not pass the accept function's rules is refused here too.
        let tampered = r#"{"version":1,"kind":"job","task_id":"0190b3c4-1f6e-7cc0-9a43-7d2b3c4d5e6f",
            "newsletter":{"subject":"a\r\nBcc: x","sections":[{"topic":"rust","title":"T","body":"B"}]}}"#;
        assert!(matches!(
            Message::decode(tampered),
            Err(DecodeError::Invalid(_))
        ));
    }
}

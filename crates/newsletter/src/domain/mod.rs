//! Types that can only hold valid values ("parse, don't validate"). Each parses from raw input at
//! the edge, and the rest of the code trusts it.

/// What every string newtype shares: its text, and serde through `parse` (see
/// `#[serde(try_from = "String", into = "String")]` on each type).
macro_rules! string_newtype {
    ($name:ident) => {
        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = $crate::domain::Invalid;
            fn try_from(raw: String) -> Result<Self, Self::Error> {
                Self::parse(&raw)
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0
            }
        }
    };
}

mod email_address;
mod idempotency_key;
mod newsletter;
mod recipient_ref;
mod section;
mod subject;
mod task;
mod task_id;
mod test_recipients;
mod text;
mod topic;

pub use email_address::EmailAddress;
pub use idempotency_key::IdempotencyKey;
pub(crate) use newsletter::field_error;
pub use newsletter::{FieldError, MAX_SECTIONS, Newsletter};
pub use recipient_ref::{RecipientRef, RecipientRefs};
pub use section::{MarkdownBody, Section, SectionTitle};
pub use subject::Subject;
pub use task::{
    FailureCode, PartFailure, Pause, PauseCode, Recipients, TaskKind, TaskRecord, TaskStatus,
};
pub use task_id::TaskId;
pub use test_recipients::{MAX_TEST_RECIPIENTS, TestRecipients};
pub use topic::Topic;

/// Why a raw value is not a valid domain value: a sentence for the caller, naming no secrets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

/// One line of text: trimmed, 1 to `max_chars` characters (Unicode scalar values, which is what a
/// caller means by "200 characters"), no control characters (CR and LF among them) and no Unicode
/// line or paragraph separators, nothing the queue cannot carry, and something a reader can see.
fn parse_single_line(raw: &str, max_chars: usize) -> Result<String, Invalid> {
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return Err(Invalid("must not be empty".into()));
    }
    if trimmed.chars().count() > max_chars {
        return Err(Invalid(format!("must be at most {max_chars} characters")));
    }
    let breaks_lines = |c: char| c.is_control() || c == '\u{2028}' || c == '\u{2029}';
    if trimmed.chars().any(breaks_lines) {
        return Err(Invalid(
            "must not contain control characters or line breaks".into(),
        ));
    }
    text::reject_uncarriable(trimmed)?;
    text::require_visible(trimmed)?;
    Ok(trimmed.to_owned())
}

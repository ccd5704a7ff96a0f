//! Types that can only hold valid values ("parse, don't validate"). Each parses from raw input at
//! the edge, and the rest of the code trusts it.

mod email_address;
mod idempotency_key;
mod newsletter;
mod section;
mod subject;
mod task_id;
mod topic;

pub use email_address::EmailAddress;
pub use idempotency_key::IdempotencyKey;
pub use newsletter::{FieldError, MAX_SECTIONS, Newsletter};
pub use section::{MarkdownBody, Section, SectionTitle};
pub use subject::Subject;
pub use task_id::TaskId;
pub use topic::Topic;

/// Why a raw value is not a valid domain value: a sentence for the caller, naming no secrets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

/// Counts characters (Unicode scalar values), which is what a caller means by "200 characters".
fn char_count_within(value: &str, min: usize, max: usize) -> bool {
    let count = value.chars().count();
    (min..=max).contains(&count)
}

/// Control characters (CR and LF among them) and the Unicode line and paragraph separators.
fn has_line_breaking_or_control_char(value: &str) -> bool {
    value
        .chars()
        .any(|c| c.is_control() || c == '\u{2028}' || c == '\u{2029}')
}

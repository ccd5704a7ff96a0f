//! Accepting a newsletter: parse the request body, give it a task id, and put it on the queue.

use crate::domain::{FieldError, Newsletter, TaskId};
use crate::message::{Job, Message};
use crate::queue::{MessageQueue, QueueError};
use tracing::Instrument;

/// The largest request body accepted, in bytes (after base64 decoding). Well under the 256 KiB SQS
/// message limit, leaving room for the envelope and for the recipients of delivery messages.
pub const MAX_REQUEST_BYTES: usize = 200 * 1024;

/// Everything that can stop a newsletter from being accepted.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("the request body is {size} bytes, over the {MAX_REQUEST_BYTES} byte limit")]
    TooLarge { size: usize },
    #[error("the request body is not valid JSON: {0}")]
    Malformed(serde_json::Error),
    #[error("the newsletter has {} invalid field(s)", .0.len())]
    Invalid(Vec<FieldError>),
    #[error(transparent)]
    Queue(#[from] QueueError),
}

/// Accepts a newsletter: returns its task id only once the job is durably on the queue.
pub async fn submit(queue: &impl MessageQueue, body: &[u8]) -> Result<TaskId, SubmitError> {
    if body.len() > MAX_REQUEST_BYTES {
        return Err(SubmitError::TooLarge { size: body.len() });
    }
    let document = serde_json::from_slice(body).map_err(SubmitError::Malformed)?;
    let newsletter = Newsletter::from_json(&document).map_err(SubmitError::Invalid)?;
    let task_id = TaskId::generate();
    let span = tracing::info_span!("task", %task_id);
    let sections = newsletter.sections().len();
    let job = Message::Job(Job {
        task_id,
        newsletter,
        cursor: None,
    });
    match queue.send(&job).instrument(span.clone()).await {
        Ok(()) => {
            span.in_scope(|| tracing::info!(sections, "newsletter accepted"));
            Ok(task_id)
        }
        Err(err) => {
            span.in_scope(
                || tracing::error!(error = %err, "newsletter not accepted: queue failed"),
            );
            Err(err.into())
        }
    }
}

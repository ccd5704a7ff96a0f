//! Accepting a newsletter: parse the request body, give it a task id, record the task, and put
//! the job on the queue; with an Idempotency-Key, at most once per key.

use crate::domain::{FieldError, IdempotencyKey, Newsletter, TaskId};
use crate::message::{Job, Message};
use crate::queue::{MessageQueue, QueueError};
use crate::tasks::{IdempotencyStore, Reservation, StoreError, TaskStore};
use sha2::{Digest, Sha256};
use std::time::Duration;
use tracing::Instrument;

/// The largest request body accepted, in bytes (after base64 decoding). Well under the 256 KiB SQS
/// message limit, leaving room for the envelope and for the recipients of delivery messages.
pub const MAX_REQUEST_BYTES: usize = 200 * 1024;

/// How long a request waits for a concurrent one with the same key to finish queueing.
const CONCURRENT_KEY_WAIT: Duration = Duration::from_secs(2);
const CONCURRENT_KEY_POLL: Duration = Duration::from_millis(100);

/// Everything that can stop a newsletter from being accepted.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("the request body is {size} bytes, over the {MAX_REQUEST_BYTES} byte limit")]
    TooLarge { size: usize },
    #[error("the request body is not valid JSON: {0}")]
    Malformed(serde_json::Error),
    #[error("the newsletter has {} invalid field(s)", .0.len())]
    Invalid(Vec<FieldError>),
    #[error("this Idempotency-Key was used for a different newsletter")]
    KeyReused,
    #[error("a request with this Idempotency-Key is still being processed")]
    KeyInFlight,
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Accepts a newsletter: returns its task id only once the job is durably on the queue. With an
/// idempotency key seen before (for the same newsletter), returns that task id and queues nothing.
pub async fn submit<Q, S>(
    queue: &Q,
    store: &S,
    body: &[u8],
    key: Option<&IdempotencyKey>,
) -> Result<TaskId, SubmitError>
where
    Q: MessageQueue,
    S: TaskStore + IdempotencyStore,
{
    if body.len() > MAX_REQUEST_BYTES {
        return Err(SubmitError::TooLarge { size: body.len() });
    }
    let document = serde_json::from_slice(body).map_err(SubmitError::Malformed)?;
    let newsletter = Newsletter::from_json(&document).map_err(SubmitError::Invalid)?;
    let task_id = TaskId::generate();
    let span = tracing::info_span!("task", %task_id);

    let Some(key) = key else {
        return enqueue(queue, store, task_id, newsletter)
            .instrument(span)
            .await;
    };
    if let Some(original) = reserve(store, key, &fingerprint(&newsletter), task_id).await? {
        tracing::info!(task_id = %original, "idempotent replay: answering with the original task");
        return Ok(original);
    }
    let result = enqueue(queue, store, task_id, newsletter)
        .instrument(span.clone())
        .await;
    let settled = match result {
        Ok(_) => store.mark_queued(key.as_str()).await,
        Err(_) => store.release(key.as_str()).await,
    };
    if let Err(err) = settled {
        span.in_scope(|| tracing::warn!(error = %err, "idempotency record not updated"));
    }
    result
}

/// Records the task, then queues its job; forgets the task again if the queue refuses it.
async fn enqueue<Q, S>(
    queue: &Q,
    store: &S,
    task_id: TaskId,
    newsletter: Newsletter,
) -> Result<TaskId, SubmitError>
where
    Q: MessageQueue,
    S: TaskStore,
{
    if let Err(err) = store.create(task_id).await {
        tracing::error!(error = %err, "newsletter not accepted: task store failed");
        return Err(err.into());
    }
    let sections = newsletter.sections().len();
    let job = Message::Job(Job {
        task_id,
        newsletter,
        cursor: None,
    });
    match queue.send(&job).await {
        Ok(()) => {
            tracing::info!(sections, "newsletter accepted");
            Ok(task_id)
        }
        Err(err) => {
            tracing::error!(error = %err, "newsletter not accepted: queue failed");
            if let Err(cleanup) = store.delete(task_id).await {
                tracing::warn!(error = %cleanup, "task record of the refused job left behind");
            }
            Err(err.into())
        }
    }
}

/// `None` when the key is new (the caller goes on); the original task id when it was used for the
/// same newsletter and its job is queued. Waits briefly for a concurrent request still queueing.
async fn reserve<S: IdempotencyStore>(
    store: &S,
    key: &IdempotencyKey,
    fingerprint: &str,
    task_id: TaskId,
) -> Result<Option<TaskId>, SubmitError> {
    let polls = CONCURRENT_KEY_WAIT.as_millis() / CONCURRENT_KEY_POLL.as_millis();
    for _ in 0..polls {
        match store.reserve(key.as_str(), fingerprint, task_id).await? {
            Reservation::New => return Ok(None),
            Reservation::Existing {
                fingerprint: other, ..
            } if other != fingerprint => {
                return Err(SubmitError::KeyReused);
            }
            Reservation::Existing {
                task_id,
                queued: true,
                ..
            } => return Ok(Some(task_id)),
            Reservation::Existing { queued: false, .. } => {
                tokio::time::sleep(CONCURRENT_KEY_POLL).await
            }
        }
    }
    Err(SubmitError::KeyInFlight)
}

/// Identifies a newsletter's content, whatever the formatting of the request that carried it.
fn fingerprint(newsletter: &Newsletter) -> String {
    let canonical = serde_json::to_vec(newsletter).unwrap_or_default();
    Sha256::digest(canonical)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

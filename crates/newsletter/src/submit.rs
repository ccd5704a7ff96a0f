//! Accepting a newsletter: parse the request body, give it a task id, record the task, and put
//! the job on the queue; with an Idempotency-Key, at most once per key.

use crate::domain::{FieldError, IdempotencyKey, Newsletter, TaskId, TaskKind, TestRecipients};
use crate::message::{Job, Message};
use crate::ports::{
    Cause, IdempotencyStore, MessageQueue, QueueError, Reservation, StoreError, TaskStore,
    Withdrawal,
};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::future::Future;
use std::time::{Duration, SystemTime};
use tokio::time::Instant;
use tracing::Instrument;

/// The largest request body accepted, in bytes (after base64 decoding). Well under the 256 KiB SQS
/// message limit, leaving room for the envelope and for the recipients of delivery messages.
pub const MAX_REQUEST_BYTES: usize = 200 * 1024;

/// How long a request waits for a concurrent one with the same key to finish queueing.
const CONCURRENT_KEY_WAIT: Duration = Duration::from_secs(2);
const CONCURRENT_KEY_POLL: Duration = Duration::from_millis(100);

/// A request's time when its invocation has no deadline (outside Lambda): the template's
/// function timeout.
pub const DEFAULT_TIME_LIMIT: Duration = Duration::from_secs(10);
/// Kept from the calls that accept a newsletter for those that settle a failure (withdrawing
/// the task, giving the key back), so that even then the answer goes out before the deadline.
const SETTLE_RESERVE: Duration = Duration::from_millis(1500);
/// Kept after everything for the answer to travel back through the runtime.
const ANSWER_MARGIN: Duration = Duration::from_millis(300);
/// How long after its deadline a request's writes may still arrive at the store: a write on
/// the wire when Lambda stopped the invocation, clocks a little apart.
pub const RUNNING_SKEW: Duration = Duration::from_secs(2);

/// When a request's calls must be done, from its invocation's deadline. Every call to the
/// queue or the store is cut off at these times (an SDK call that never answers becomes a
/// timeout, not a Lambda timeout), so the function always answers itself.
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    at: SystemTime,
    /// The calls that accept the newsletter (or read the list for a preview) end here.
    pub(crate) calls_end: Instant,
    /// Withdrawing and giving the key back end here; then the answer.
    settle_end: Instant,
}

impl Deadline {
    /// The invocation's deadline; `None`, or one already past, gives [`DEFAULT_TIME_LIMIT`] from
    /// now. Lambda always sends a deadline in the future; a `Context` with none set (tests) reads
    /// as the epoch, and `cargo lambda watch` sends a duration (600000 ms), which reads as 1970.
    pub fn of_invocation(deadline: Option<SystemTime>) -> Self {
        let now = SystemTime::now();
        let at = deadline
            .filter(|at| *at > now)
            .unwrap_or(now + DEFAULT_TIME_LIMIT);
        let remaining = at.duration_since(now).unwrap_or_default();
        // A short limit (a test's) scales the reserves down rather than leaving no time for calls.
        let margin = ANSWER_MARGIN.min(remaining / 10);
        let reserve = SETTLE_RESERVE.min(remaining / 4);
        let started = Instant::now();
        let settle_end = started + remaining.saturating_sub(margin);
        Self {
            at,
            calls_end: settle_end - reserve,
            settle_end,
        }
    }

    /// Until when the request may still be writing: what its key reservation records.
    fn running_until(&self) -> SystemTime {
        self.at + RUNNING_SKEW
    }
}

/// `call`, or a `timed_out` error if it has not answered by `end` (it is then cut off; what
/// it did is unknown, as with any lost answer).
pub(crate) async fn bounded<T, E>(
    end: Instant,
    call: impl Future<Output = Result<T, E>>,
    timed_out: fn(Cause) -> E,
) -> Result<T, E> {
    tokio::time::timeout_at(end, call)
        .await
        .unwrap_or_else(|_| Err(timed_out("no answer before the request's deadline".into())))
}

/// Why a request body does not hold a newsletter request: the same answers on every route that
/// takes one (`POST /newsletters`, `…/test`, `…/preview`).
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("the request body is {size} bytes, over the {MAX_REQUEST_BYTES} byte limit")]
    TooLarge { size: usize },
    #[error("the request body is not valid JSON: {0}")]
    Malformed(serde_json::Error),
    #[error("the newsletter has {} invalid field(s)", .0.len())]
    Invalid(Vec<FieldError>),
}

/// The JSON document of a request body of at most [`MAX_REQUEST_BYTES`].
pub fn parse_document(body: &[u8]) -> Result<Value, RequestError> {
    if body.len() > MAX_REQUEST_BYTES {
        return Err(RequestError::TooLarge { size: body.len() });
    }
    serde_json::from_slice(body).map_err(RequestError::Malformed)
}

/// The newsletter of `document` and, beside it, its member `name` as `parse` reads it (given
/// `None` when the member is absent); every invalid field of both is reported at once.
pub fn parse_beside<T>(
    document: &Value,
    name: &str,
    parse: impl FnOnce(Option<&Value>) -> Result<T, Vec<FieldError>>,
) -> Result<(Newsletter, T), RequestError> {
    let newsletter = Newsletter::from_json_beside(document, &[name]);
    // A document that is no object has only the newsletter's error to show.
    let other = match document.as_object() {
        Some(object) => parse(object.get(name)),
        None => Err(Vec::new()),
    };
    match (newsletter, other) {
        (Ok(newsletter), Ok(other)) => Ok((newsletter, other)),
        (newsletter, other) => Err(RequestError::Invalid(
            newsletter
                .err()
                .into_iter()
                .chain(other.err())
                .flatten()
                .collect(),
        )),
    }
}

/// Everything that can stop a newsletter from being accepted.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error("this Idempotency-Key was used for a different newsletter")]
    KeyReused,
    #[error("a request with this Idempotency-Key is still being processed")]
    KeyInFlight,
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// The queue did not confirm the job, and the task could not be withdrawn either: the job
    /// may be on the queue, and the task's status says whether it goes ahead.
    #[error("{cause}; task {task_id} could not be withdrawn, so its job may still be delivered")]
    InDoubt { task_id: TaskId, cause: QueueError },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Accepts a newsletter: returns its task id only once the job is durably on the queue. With an
/// idempotency key seen before (for the same newsletter), returns that task id and queues nothing.
/// Every call ends by `deadline`'s times.
pub async fn submit<Q, S>(
    queue: &Q,
    store: &S,
    body: &[u8],
    key: Option<&IdempotencyKey>,
    deadline: &Deadline,
) -> Result<TaskId, SubmitError>
where
    Q: MessageQueue,
    S: TaskStore + IdempotencyStore,
{
    let document = parse_document(body)?;
    let newsletter = Newsletter::from_json(&document).map_err(RequestError::Invalid)?;
    queue_job(queue, store, newsletter, None, key, deadline).await
}

/// Accepts a test send (`POST /newsletters/test`): the newsletter and its `"to"` addresses
/// become a task of kind test, queued exactly as [`submit`] queues a newsletter (the same
/// idempotency, the same "queued or nothing"); the worker plans its addresses alone.
pub async fn submit_test<Q, S>(
    queue: &Q,
    store: &S,
    body: &[u8],
    key: Option<&IdempotencyKey>,
    deadline: &Deadline,
) -> Result<TaskId, SubmitError>
where
    Q: MessageQueue,
    S: TaskStore + IdempotencyStore,
{
    let document = parse_document(body)?;
    let (newsletter, to) = parse_beside(&document, "to", |to| TestRecipients::from_json(to, "to"))?;
    queue_job(queue, store, newsletter, Some(to), key, deadline).await
}

/// The task and its job: a newsletter's, or a test send's to `to`.
async fn queue_job<Q, S>(
    queue: &Q,
    store: &S,
    newsletter: Newsletter,
    to: Option<TestRecipients>,
    key: Option<&IdempotencyKey>,
    deadline: &Deadline,
) -> Result<TaskId, SubmitError>
where
    Q: MessageQueue,
    S: TaskStore + IdempotencyStore,
{
    let task_id = TaskId::generate();
    let span = tracing::info_span!("task", %task_id);

    let Some(key) = key else {
        return enqueue(queue, store, task_id, newsletter, to, deadline)
            .instrument(span)
            .await;
    };
    let fingerprint = fingerprint(&newsletter, to.as_ref());
    if let Reserved::Replay(original) = reserve(store, key, &fingerprint, task_id, deadline)
        .instrument(span.clone())
        .await?
    {
        tracing::info!(task_id = %original, "idempotent replay: answering with the original task");
        return Ok(original);
    }
    let result = enqueue(queue, store, task_id, newsletter, to, deadline)
        .instrument(span.clone())
        .await;
    let settled = match &result {
        Ok(_) => {
            bounded(
                deadline.settle_end,
                store.mark_queued(key.as_str()),
                StoreError,
            )
            .await
        }
        // Its job may be queued: the key stays reserved, and a retry recovers it once this
        // request can no longer be running.
        Err(SubmitError::InDoubt { .. }) => Ok(()),
        Err(_) => bounded(deadline.settle_end, store.release(key.as_str()), StoreError).await,
    };
    if let Err(err) = settled {
        span.in_scope(|| tracing::warn!(error = %err, "idempotency record not updated"));
    }
    result
}

/// Records the task, then queues its job; withdraws the task if the queue does not confirm it.
async fn enqueue<Q, S>(
    queue: &Q,
    store: &S,
    task_id: TaskId,
    newsletter: Newsletter,
    to: Option<TestRecipients>,
    deadline: &Deadline,
) -> Result<TaskId, SubmitError>
where
    Q: MessageQueue,
    S: TaskStore,
{
    let kind = match to {
        Some(_) => TaskKind::Test,
        None => TaskKind::Newsletter,
    };
    let created = bounded(deadline.calls_end, store.create(task_id, kind), StoreError).await;
    if let Err(err) = created {
        tracing::error!(error = %err, "newsletter not accepted: task store failed");
        return Err(err.into());
    }
    let sections = newsletter.sections().len();
    let job = Message::Job(Job {
        task_id,
        newsletter,
        cursor: None,
        to,
    });
    match bounded(deadline.calls_end, queue.send(&job), QueueError).await {
        Ok(()) => {
            tracing::info!(sections, kind = kind.as_str(), "newsletter accepted");
            Ok(task_id)
        }
        Err(err) => {
            tracing::error!(error = %err, "the jobs queue did not confirm the job");
            withdraw(store, task_id, err, deadline).await
        }
    }
}

/// Settles a task whose job the queue did not confirm (it may have stored it and lost the
/// answer): withdrawn, nothing of it will be delivered; started, the job was queued after all.
async fn withdraw<S: TaskStore>(
    store: &S,
    task_id: TaskId,
    cause: QueueError,
    deadline: &Deadline,
) -> Result<TaskId, SubmitError> {
    match bounded(deadline.settle_end, store.withdraw(task_id), StoreError).await {
        Ok(Withdrawal::Withdrawn) => {
            tracing::warn!("newsletter not accepted: task withdrawn, nothing will be delivered");
            Err(cause.into())
        }
        Ok(Withdrawal::Started) => {
            tracing::info!("newsletter accepted: its job was queued after all, and is planned");
            Ok(task_id)
        }
        Err(err) => {
            tracing::error!(error = %err, "task not withdrawn: its job may be on the queue");
            Err(SubmitError::InDoubt { task_id, cause })
        }
    }
}

/// What a request with a key does after reserving it.
enum Reserved {
    /// The key is this request's: it goes on to queue the job.
    Ours,
    /// The key's job is queued for this task: answer with it.
    Replay(TaskId),
}

/// Reserves the key for `task_id`, or finds the original task of the same newsletter. Waits
/// briefly for a concurrent request still queueing; recovers a key whose request died.
async fn reserve<S: TaskStore + IdempotencyStore>(
    store: &S,
    key: &IdempotencyKey,
    fingerprint: &str,
    task_id: TaskId,
    deadline: &Deadline,
) -> Result<Reserved, SubmitError> {
    let give_up = deadline.calls_end.min(Instant::now() + CONCURRENT_KEY_WAIT);
    while Instant::now() < give_up {
        let found = bounded(
            deadline.calls_end,
            store.reserve(key.as_str(), fingerprint, task_id, deadline.running_until()),
            StoreError,
        )
        .await?;
        let abandoned = found.abandoned(SystemTime::now());
        match found {
            Reservation::New => return Ok(Reserved::Ours),
            Reservation::Existing {
                fingerprint: other, ..
            } if other != fingerprint => {
                return Err(SubmitError::KeyReused);
            }
            Reservation::Existing {
                task_id: original,
                queued: true,
                ..
            } => return Ok(Reserved::Replay(original)),
            Reservation::Existing { task_id: dead, .. } if abandoned => {
                if let Some(reserved) = recover(store, key, dead, task_id, deadline).await? {
                    return Ok(reserved);
                }
                // Another retry recovered it first: look again.
            }
            Reservation::Existing { .. } => tokio::time::sleep(CONCURRENT_KEY_POLL).await,
        }
    }
    Err(SubmitError::KeyInFlight)
}

/// Recovers a key left pending by a request that can no longer be running (it died, or could
/// not settle its task): its task is withdrawn and the key taken over for `task_id`, unless
/// the worker started that task (its job was queued), which is then the answer. `None` when
/// another request took the key over first.
async fn recover<S: TaskStore + IdempotencyStore>(
    store: &S,
    key: &IdempotencyKey,
    dead: TaskId,
    task_id: TaskId,
    deadline: &Deadline,
) -> Result<Option<Reserved>, SubmitError> {
    let end = deadline.calls_end;
    match bounded(end, store.withdraw(dead), StoreError).await? {
        Withdrawal::Withdrawn => {
            let took = store.take_over(key.as_str(), dead, task_id, deadline.running_until());
            let took = bounded(end, took, StoreError).await?;
            if took {
                tracing::info!(withdrawn = %dead, "idempotency key recovered from a request that died");
            }
            Ok(took.then_some(Reserved::Ours))
        }
        Withdrawal::Started => {
            bounded(end, store.mark_queued(key.as_str()), StoreError).await?;
            tracing::info!(task_id = %dead, "idempotency key recovered: its task was queued after all");
            Ok(Some(Reserved::Replay(dead)))
        }
    }
}

/// Identifies a newsletter's content, and a test send's addresses, whatever the formatting of
/// the request that carried them. A newsletter's is what it was before test sends existed, so
/// keys recorded then still match.
fn fingerprint(newsletter: &Newsletter, to: Option<&TestRecipients>) -> String {
    let mut canonical = serde_json::to_vec(newsletter).unwrap_or_default();
    if let Some(to) = to {
        canonical.extend_from_slice(b"\nto:");
        canonical.extend(serde_json::to_vec(to).unwrap_or_default());
    }
    Sha256::digest(canonical)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

#[cfg(test)]
mod tests;

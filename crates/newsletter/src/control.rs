//! Campaign control: pausing a task, resuming it where it stopped, and cancelling it. One
//! implementation for every way in: accept's `POST /newsletters/{task_id}/pause`, `…/resume`
//! and `DELETE /newsletters/{task_id}`, and the worker's `{"resume": "<task id>"}` event (the
//! operator's way out of a pause SES caused).
//!
//! A pause is an overlay on the task's status ([`PauseStore`]): the worker reads it at the start
//! of each chunk and, during a chunk, at most every [`crate::sending::CONTROL_CHECK_INTERVAL`];
//! a chunk that finds its task paused stops, records what settled and is parked. A resume moves
//! the task back and queues the parked chunks again; the store knows who was sent, so nobody is
//! sent twice and nobody is skipped. Both are idempotent: pausing a paused task or resuming a
//! running one changes nothing and answers the same, so a caller may retry either.
//!
//! A cancel moves the task to `cancelling` (ending any pause). Chunks see it the way they see a
//! pause, and count what they did not send as `cancelled` instead of parking; the chunks parked
//! by a pause are counted here at once. The task ends `cancelled` when every chunk is counted
//! and planning has stopped (at the first page it had not planned yet), so its counts are exact:
//! `sent` is what went out, `cancelled` what never will.

use crate::domain::{PauseCode, TaskId, TaskRecord, TaskStatus};
use crate::message::{DecodeError, Message};
use crate::ports::{
    Accounting, ChunkStore, MessageQueue, PauseStore, QueueError, StoreError, TaskStore,
};
use crate::status::complete_if_done;
use tracing::Instrument;

/// Why a pause or a resume was not done.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("no task {0}")]
    NotFound(TaskId),
    /// Nothing is left to pause, resume or cancel.
    #[error("the task is {}: it can no longer be paused, resumed or cancelled", .0.as_str())]
    Finished(TaskStatus),
    /// A cancelled task is not paused or resumed: it sends nothing more either way.
    #[error("the task is {}: it can no longer be paused or resumed", .0.as_str())]
    Cancelled(TaskStatus),
    /// A parked chunk's stored message does not decode (it was written by another version):
    /// the resume stops there, leaving it and the chunks after it parked, and fails.
    #[error("parked chunk {chunk_id} cannot be read: {source}")]
    UnreadableParked {
        chunk_id: String,
        #[source]
        source: DecodeError,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Queue(#[from] QueueError),
}

/// What a resume did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resumed {
    /// The task after the resume.
    pub task: TaskRecord,
    /// The task was paused, and now sends again (`false`: it was running already).
    pub resumed: bool,
    /// Parked chunks put back on the queue.
    pub requeued: usize,
}

/// Pauses the task: no chunk of it sends once its instance has seen the pause (see the module
/// comment). Allowed while the task is accepted, planning or sending; pausing a paused task
/// (for any reason: the first one stays) changes nothing. Returns the task as it is now.
pub async fn pause<S>(store: &S, task_id: TaskId) -> Result<TaskRecord, ControlError>
where
    S: TaskStore + PauseStore,
{
    async {
        let before = running(store, task_id).await?;
        if before.status == TaskStatus::Paused {
            tracing::info!("pause asked of a paused task; nothing to do");
            return Ok(before);
        }
        let paused = store.pause(task_id, PauseCode::Requested).await?;
        // Refused: paused by another caller or the worker meanwhile, or finished meanwhile.
        let after = running(store, task_id).await?;
        if paused {
            tracing::info!("task paused on request");
        }
        Ok(after)
    }
    .instrument(tracing::info_span!("task", %task_id))
    .await
}

/// Resumes the task where it stopped, whatever paused it: the overlay goes, then every parked
/// chunk goes back on the queue and is forgotten. Safe to repeat: a resume that died half-way
/// queues the rest when run again (a running task's parked chunks are queued too), and a chunk
/// queued twice sends nobody twice.
pub async fn resume<Q, S>(queue: &Q, store: &S, task_id: TaskId) -> Result<Resumed, ControlError>
where
    Q: MessageQueue,
    S: TaskStore + PauseStore,
{
    async {
        running(store, task_id).await?;
        // Unpaused first: no chunk parks after this (parking is conditional on the pause), so
        // the list read next is complete.
        let resumed = store.unpause(task_id).await?;
        let parked = store.parked(task_id).await?;
        for (chunk_id, message) in &parked {
            let message = parked_message(chunk_id, message)?;
            // Queued before it is forgotten: a failure in between queues it again next time.
            queue.send_all(&[message]).await?;
            store.unpark(task_id, chunk_id).await?;
        }
        let task = store
            .get(task_id)
            .await?
            .ok_or(ControlError::NotFound(task_id))?;
        tracing::info!(resumed, requeued = parked.len(), "task resumed");
        Ok(Resumed {
            task,
            resumed,
            requeued: parked.len(),
        })
    }
    .instrument(tracing::info_span!("task", %task_id))
    .await
}

/// Cancels the task: nothing more of it is sent, by any instance, once each has seen the
/// cancel (at a chunk's start, and during one at most every
/// [`crate::sending::CONTROL_CHECK_INTERVAL`]); see the module comment. Allowed while the task
/// is accepted, planning, sending or paused; cancelling a cancelling task changes nothing and
/// answers the same, so a caller may retry. Returns the task as it is now: `cancelling`, or
/// `cancelled` if nothing was left in flight.
pub async fn cancel<Q, S>(queue: &Q, store: &S, task_id: TaskId) -> Result<TaskRecord, ControlError>
where
    Q: MessageQueue,
    S: TaskStore + PauseStore + ChunkStore,
{
    async {
        let before = store
            .get(task_id)
            .await?
            .ok_or(ControlError::NotFound(task_id))?;
        if before.status.is_finished() {
            return Err(ControlError::Finished(before.status));
        }
        if store.cancel(task_id).await? {
            tracing::info!("task cancelled on request");
        }
        // No chunk parks once the pause is gone, so the list read now is complete. A parked
        // chunk gave its lease up; one that is held anyway goes back on the queue, where the
        // worker counts it.
        for (chunk_id, message) in store.parked(task_id).await? {
            let message = parked_message(&chunk_id, &message)?;
            let size = match &message {
                Message::Delivery(delivery) => delivery.recipients.len(),
                Message::Job(_) => 0,
            };
            if store.cancel_unsettled(task_id, &chunk_id, size).await? == Accounting::Held {
                queue.send_all(&[message]).await?;
            }
            store.unpark(task_id, &chunk_id).await?;
        }
        complete_if_done(store, task_id).await?;
        let after = store
            .get(task_id)
            .await?
            .ok_or(ControlError::NotFound(task_id))?;
        // Refused: it finished in between (every email went out before the cancel).
        if !after.status.is_cancelled() {
            return Err(ControlError::Finished(after.status));
        }
        Ok(after)
    }
    .instrument(tracing::info_span!("task", %task_id))
    .await
}

/// A parked chunk's stored message, decoded.
fn parked_message(chunk_id: &str, stored: &str) -> Result<Message, ControlError> {
    Message::decode(stored).map_err(|source| ControlError::UnreadableParked {
        chunk_id: chunk_id.to_owned(),
        source,
    })
}

/// The task, if it exists and is neither finished nor cancelled.
async fn running(store: &impl TaskStore, task_id: TaskId) -> Result<TaskRecord, ControlError> {
    let task = store
        .get(task_id)
        .await?
        .ok_or(ControlError::NotFound(task_id))?;
    if task.status.is_finished() {
        return Err(ControlError::Finished(task.status));
    }
    if task.status.is_cancelled() {
        return Err(ControlError::Cancelled(task.status));
    }
    Ok(task)
}

#[cfg(test)]
mod tests;

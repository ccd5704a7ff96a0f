//! Campaign control: pausing a task and resuming it where it stopped. One implementation for
//! every way in: accept's `POST /newsletters/{task_id}/pause` and `…/resume`, and the worker's
//! `{"resume": "<task id>"}` event (the operator's way out of a pause SES caused).
//!
//! A pause is an overlay on the task's status ([`PauseStore`]): the worker reads it at the start
//! of each chunk and, during a chunk, at most every [`crate::sending::CONTROL_CHECK_INTERVAL`];
//! a chunk that finds its task paused stops, records what settled and is parked. A resume moves
//! the task back and queues the parked chunks again; the store knows who was sent, so nobody is
//! sent twice and nobody is skipped. Both are idempotent: pausing a paused task or resuming a
//! running one changes nothing and answers the same, so a caller may retry either.

use crate::domain::{PauseCode, TaskId, TaskRecord, TaskStatus};
use crate::message::{DecodeError, Message};
use crate::ports::{MessageQueue, PauseStore, QueueError, StoreError, TaskStore};
use tracing::Instrument;

/// Why a pause or a resume was not done.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("no task {0}")]
    NotFound(TaskId),
    /// Nothing is left to pause or resume.
    #[error("the task is {}: it can no longer be paused or resumed", .0.as_str())]
    Finished(TaskStatus),
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
            let message =
                Message::decode(message).map_err(|source| ControlError::UnreadableParked {
                    chunk_id: chunk_id.clone(),
                    source,
                })?;
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

/// The task, if it exists and is not finished.
async fn running(store: &impl TaskStore, task_id: TaskId) -> Result<TaskRecord, ControlError> {
    let task = store
        .get(task_id)
        .await?
        .ok_or(ControlError::NotFound(task_id))?;
    if task.status.is_finished() {
        return Err(ControlError::Finished(task.status));
    }
    Ok(task)
}

#[cfg(test)]
mod tests;

//! Looking a task up by the id a caller holds.

use crate::domain::{TaskId, TaskRecord};
use crate::ports::{StoreError, TaskStore};

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("'{0}' is not a task id (a UUID)")]
    MalformedId(String),
    #[error("no task {0}")]
    NotFound(TaskId),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub async fn task_status(store: &impl TaskStore, raw_id: &str) -> Result<TaskRecord, StatusError> {
    let task_id = parse_task_id(raw_id)?;
    store
        .get(task_id)
        .await?
        .ok_or(StatusError::NotFound(task_id))
}

/// The task id a caller wrote in a path; what it wrote, cut to 64 characters, if it is none.
pub fn parse_task_id(raw_id: &str) -> Result<TaskId, StatusError> {
    raw_id
        .parse()
        .map_err(|_| StatusError::MalformedId(raw_id.chars().take(64).collect()))
}

/// Moves the task to its final status if it is done ([`TaskRecord::completion`]). Many callers
/// may try at once (every chunk's invocation, a cancel); the store lets exactly one make the
/// move, and that one logs it. Returns the task as read before the move (`None`: no record).
pub async fn complete_if_done(
    store: &impl TaskStore,
    task_id: TaskId,
) -> Result<Option<TaskRecord>, StoreError> {
    let Some(task) = store.get(task_id).await? else {
        return Ok(None);
    };
    if let Some(status) = task.completion()
        && store.finish(task_id, status).await?
    {
        let counts = &task.recipients;
        tracing::info!(
            status = status.as_str(),
            planned = counts.planned,
            sent = counts.sent,
            skipped = counts.skipped,
            failed = counts.failed,
            cancelled = counts.cancelled,
            "task completed"
        );
    }
    Ok(Some(task))
}

//! Parked-chunk items (`parked#<task id>#<chunk id>`) and the pause overlay on the task item
//! (`pause_code`, `paused_at`, and the parked chunks' ids in `parked`).

use super::attributes::Attributes;
use super::{
    DynamoStore, RECORD_LIFETIME, TransactError, applied, build_error, expires_in, now_rfc3339,
    parked_key, s, task_key,
};
use aws_sdk_dynamodb::types::{AttributeValue, Delete, Put, TransactWriteItem};
use newsletter::domain::{PauseCode, TaskId, TaskStatus};
use newsletter::ports::{PauseStore, StoreError};

impl PauseStore for DynamoStore {
    async fn pause(&self, task_id: TaskId, code: PauseCode) -> Result<bool, StoreError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", task_key(task_id))
            .update_expression("SET pause_code = :code, paused_at = :now, updated_at = :now")
            .condition_expression(
                "attribute_exists(pk) AND attribute_not_exists(pause_code) \
                 AND #status IN (:accepted, :planning, :sending)",
            )
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":accepted", s(TaskStatus::Accepted.as_str()))
            .expression_attribute_values(":code", s(code.as_str()))
            .expression_attribute_values(":now", s(now_rfc3339()))
            .expression_attribute_values(":planning", s(TaskStatus::Planning.as_str()))
            .expression_attribute_values(":sending", s(TaskStatus::Sending.as_str()))
            .send()
            .await;
        applied(result)
    }

    async fn park(
        &self,
        task_id: TaskId,
        chunk_id: &str,
        message: &str,
    ) -> Result<bool, StoreError> {
        let parked = Put::builder()
            .table_name(&self.table)
            .item("pk", parked_key(task_id, chunk_id))
            .item("message", s(message))
            .item("expires_at", expires_in(RECORD_LIFETIME))
            .build()
            .map_err(build_error)?;
        // Only while paused: a resume that moved the task on first sees every chunk parked
        // before it, and none after.
        let listed = self
            .update(task_key(task_id))
            .update_expression("ADD parked :chunk")
            .condition_expression("attribute_exists(pause_code)")
            .expression_attribute_values(":chunk", AttributeValue::Ss(vec![chunk_id.to_owned()]))
            .build()
            .map_err(build_error)?;
        match self
            .transact(vec![
                TransactWriteItem::builder().put(parked).build(),
                TransactWriteItem::builder().update(listed).build(),
            ])
            .await
        {
            Ok(()) => Ok(true),
            Err(TransactError::Conditions(_)) => Ok(false),
            Err(TransactError::Store(err)) => Err(err),
        }
    }

    async fn unpause(&self, task_id: TaskId) -> Result<bool, StoreError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", task_key(task_id))
            .update_expression("REMOVE pause_code, paused_at SET updated_at = :now")
            .condition_expression("attribute_exists(pause_code)")
            .expression_attribute_values(":now", s(now_rfc3339()))
            .send()
            .await;
        applied(result)
    }

    async fn parked(&self, task_id: TaskId) -> Result<Vec<(String, String)>, StoreError> {
        let Some(task) = self.read(task_key(task_id)).await? else {
            return Ok(Vec::new());
        };
        // There while some chunk is parked (DynamoDB keeps no empty set).
        let mut chunk_ids: Vec<String> = task
            .optional_text_set("parked")?
            .map(<[String]>::to_vec)
            .unwrap_or_default();
        chunk_ids.sort();
        let mut parked = Vec::with_capacity(chunk_ids.len());
        for chunk_id in chunk_ids {
            let Some(item) = self.read(parked_key(task_id, &chunk_id)).await? else {
                return Err(StoreError(
                    format!("parked chunk {chunk_id} of task {task_id} has no message").into(),
                ));
            };
            let message = item.text("message")?.to_owned();
            parked.push((chunk_id, message));
        }
        Ok(parked)
    }

    async fn unpark(&self, task_id: TaskId, chunk_id: &str) -> Result<(), StoreError> {
        let unlisted = self
            .update(task_key(task_id))
            .update_expression("DELETE parked :chunk")
            .condition_expression("attribute_exists(pk)")
            .expression_attribute_values(":chunk", AttributeValue::Ss(vec![chunk_id.to_owned()]))
            .build()
            .map_err(build_error)?;
        let forgotten = Delete::builder()
            .table_name(&self.table)
            .key("pk", parked_key(task_id, chunk_id))
            .build()
            .map_err(build_error)?;
        match self
            .transact(vec![
                TransactWriteItem::builder().update(unlisted).build(),
                TransactWriteItem::builder().delete(forgotten).build(),
            ])
            .await
        {
            Ok(()) | Err(TransactError::Conditions(_)) => Ok(()), // no task: nothing parked
            Err(TransactError::Store(err)) => Err(err),
        }
    }
}

//! The task item (`task#<task id>`): created, read back as a [`TaskRecord`], its failures
//! recorded by part, and its moves to a final status or to withdrawn. Planning (`plans`), closing
//! chunks (`claims`) and pauses (`pauses`) update it too.

use super::attributes::{AttributeError, Attributes};
use super::{DynamoStore, Item, applied, expires_in, n, now_rfc3339, s, store_error, task_key};
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValuesOnConditionCheckFailure};
use newsletter::domain::{
    FailureCode, PartFailure, Pause, PauseCode, Recipients, TaskId, TaskKind, TaskRecord,
    TaskStatus,
};
use newsletter::ports::{StoreError, TaskStore, Withdrawal};
use std::collections::HashMap;
use std::time::Duration;

const TASK_LIFETIME: Duration = Duration::from_secs(90 * 24 * 3600);

impl TaskStore for DynamoStore {
    async fn create(&self, task_id: TaskId, kind: TaskKind) -> Result<(), StoreError> {
        let now = now_rfc3339();
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("pk", task_key(task_id))
            .item("kind", s(kind.as_str()))
            .item("status", s(TaskStatus::Accepted.as_str()))
            .item("created_at", s(&now))
            .item("updated_at", s(now))
            .item("planned", n(0))
            .item("sent", n(0))
            .item("skipped", n(0))
            .item("failed", n(0))
            .item("cancelled", n(0))
            .item("pages_planned", n(0))
            // Failures are recorded by part (`SET failures.#part`), which needs the map to exist.
            .item("failures", AttributeValue::M(HashMap::new()))
            .item("expires_at", expires_in(TASK_LIFETIME))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            // Task ids are fresh for every request, so the record can only be there because an
            // earlier try of this very put took effect and its answer was lost.
            Err(err)
                if matches!(
                    err.as_service_error(),
                    Some(PutItemError::ConditionalCheckFailedException(_))
                ) =>
            {
                Ok(())
            }
            Err(err) => Err(store_error(err)),
        }
    }

    async fn get(&self, task_id: TaskId) -> Result<Option<TaskRecord>, StoreError> {
        self.read(task_key(task_id))
            .await?
            .map(|item| task_record(task_id, &item))
            .transpose()
            .map_err(StoreError::from)
    }

    async fn record_failure(
        &self,
        task_id: TaskId,
        failure: PartFailure,
        stops_planning_at: Option<u32>,
    ) -> Result<(), StoreError> {
        let mut update = "SET failures.#part = :code, updated_at = :now".to_owned();
        if stops_planning_at.is_some() {
            update.push_str(", page_count = if_not_exists(page_count, :page)");
        }
        let mut request = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", task_key(task_id))
            .update_expression(update)
            .condition_expression("attribute_exists(pk)")
            .expression_attribute_names("#part", failure.part)
            .expression_attribute_values(":code", s(failure.code.as_str()))
            .expression_attribute_values(":now", s(now_rfc3339()));
        if let Some(page) = stops_planning_at {
            request = request.expression_attribute_values(":page", n(page));
        }
        request.send().await.map(|_| ()).map_err(store_error)
    }

    async fn finish(&self, task_id: TaskId, status: TaskStatus) -> Result<bool, StoreError> {
        // Who made the move: an SDK retry after a lost answer sends the same token, fails the
        // condition its first try made false, and recognises its own move by it.
        let mover = uuid::Uuid::now_v7().to_string();
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", task_key(task_id))
            // A final status ends a pause (the pause overlay would hide it for good).
            .update_expression(
                "SET #status = :status, updated_at = :now, finished_by = :mover \
                 REMOVE pause_code, paused_at",
            )
            .condition_expression(
                "attribute_exists(pk) AND NOT #status IN (:status, :completed, :cancelled)",
            )
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":status", s(status.as_str()))
            .expression_attribute_values(":now", s(now_rfc3339()))
            .expression_attribute_values(":completed", s(TaskStatus::Completed.as_str()))
            .expression_attribute_values(":cancelled", s(TaskStatus::Cancelled.as_str()))
            .expression_attribute_values(":mover", s(&mover))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(err) => match err.as_service_error() {
                // `finished_by` is there once some caller has moved the task to a final status
                // (and not on moves made before it was written).
                Some(UpdateItemError::ConditionalCheckFailedException(refused)) => {
                    match refused.item() {
                        Some(item) => {
                            Ok(item.optional_text("finished_by")? == Some(mover.as_str()))
                        }
                        None => Ok(false),
                    }
                }
                _ => Err(store_error(err)),
            },
        }
    }

    async fn withdraw(&self, task_id: TaskId) -> Result<Withdrawal, StoreError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", task_key(task_id))
            .update_expression(
                "SET #status = :withdrawn, updated_at = :now REMOVE pause_code, paused_at",
            )
            // Withdrawn already: a retry after a lost answer, which changes nothing.
            .condition_expression("#status IN (:accepted, :withdrawn)")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":withdrawn", s(TaskStatus::Withdrawn.as_str()))
            .expression_attribute_values(":accepted", s(TaskStatus::Accepted.as_str()))
            .expression_attribute_values(":now", s(now_rfc3339()))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match result {
            Ok(_) => Ok(Withdrawal::Withdrawn),
            Err(err) => match err.as_service_error() {
                // A task with no record (the condition fails on a missing item) is never planned.
                Some(UpdateItemError::ConditionalCheckFailedException(refused)) => {
                    Ok(match refused.item() {
                        None => Withdrawal::Withdrawn,
                        Some(_) => Withdrawal::Started,
                    })
                }
                _ => Err(store_error(err)),
            },
        }
    }

    async fn cancel(&self, task_id: TaskId) -> Result<bool, StoreError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", task_key(task_id))
            // Removing the pause overlay is what lets the cancel show, and what stops chunks
            // from parking (parking is conditional on it).
            .update_expression(
                "SET #status = :cancelling, updated_at = :now REMOVE pause_code, paused_at",
            )
            .condition_expression("#status IN (:accepted, :planning, :sending)")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":cancelling", s(TaskStatus::Cancelling.as_str()))
            .expression_attribute_values(":accepted", s(TaskStatus::Accepted.as_str()))
            .expression_attribute_values(":planning", s(TaskStatus::Planning.as_str()))
            .expression_attribute_values(":sending", s(TaskStatus::Sending.as_str()))
            .expression_attribute_values(":now", s(now_rfc3339()))
            .send()
            .await;
        applied(result)
    }

    async fn stop_planning(&self, task_id: TaskId, page: u32) -> Result<(), StoreError> {
        self.client
            .update_item()
            .table_name(&self.table)
            .key("pk", task_key(task_id))
            .update_expression(
                "SET page_count = if_not_exists(page_count, :page), updated_at = :now",
            )
            .condition_expression("attribute_exists(pk)")
            .expression_attribute_values(":page", n(page))
            .expression_attribute_values(":now", s(now_rfc3339()))
            .send()
            .await
            .map(|_| ())
            .map_err(store_error)
    }
}

fn task_record(task_id: TaskId, item: &Item) -> Result<TaskRecord, AttributeError> {
    let status = item.parsed("status", "task status", TaskStatus::parse)?;
    // The overlay is there only while the task is paused; `paused_at` is set and removed with
    // `pause_code`.
    let pause = match item.optional_parsed("pause_code", "pause code", PauseCode::parse)? {
        Some(code) => Some(Pause {
            code,
            since: item.text("paused_at")?.to_owned(),
        }),
        None => None,
    };
    // Set once planning has reached its last page, or stopped for good at a dead-lettered one.
    let planning_done = match item.optional_number::<u64>("page_count")? {
        // Task items created before pages were counted lack `pages_planned` until a page is
        // recorded on them (`ADD` starts it from 0): none planned, as those items always read.
        Some(page_count) => page_count == item.optional_number("pages_planned")?.unwrap_or(0),
        None => false,
    };
    Ok(TaskRecord {
        task_id,
        // Task items created before test sends existed have no kind: they were all newsletters.
        kind: item
            .optional_parsed("kind", "task kind", TaskKind::parse)?
            .unwrap_or(TaskKind::Newsletter),
        status: if pause.is_some() {
            TaskStatus::Paused
        } else {
            status
        },
        created_at: item.text("created_at")?.to_owned(),
        updated_at: item.text("updated_at")?.to_owned(),
        recipients: Recipients {
            planned: item.number("planned")?,
            sent: item.number("sent")?,
            skipped: item.number("skipped")?,
            failed: item.number("failed")?,
            // Task items created before cancelling existed lack it until a chunk of theirs is
            // cancelled (`ADD` starts it from 0): none cancelled, which is what they are.
            cancelled: item.optional_number("cancelled")?.unwrap_or(0),
        },
        planning_done,
        // Written only when some topic matched nothing (the same on every page).
        unmatched_topics: item
            .optional_text_list("unmatched_topics")?
            .map(|names| names.into_iter().map(str::to_owned).collect())
            .unwrap_or_default(),
        failures: failures(item)?,
        pause,
    })
}

/// The failures recorded by part, in the part's name order.
fn failures(item: &Item) -> Result<Vec<PartFailure>, AttributeError> {
    // Task items created before failures were kept by part (in a map written on create) have
    // no attribute until a part fails, then a list: both read as no failure, as they always
    // have. Anything else that is not a map is an error.
    if matches!(item.get("failures"), Some(AttributeValue::L(_))) {
        return Ok(Vec::new());
    }
    let Some(parts) = item.optional_map("failures")? else {
        return Ok(Vec::new());
    };
    let mut failures = parts
        .iter()
        .map(|(part, code)| {
            Ok(PartFailure {
                part: part.clone(),
                code: failure_code(item, part, code)?,
            })
        })
        .collect::<Result<Vec<_>, AttributeError>>()?;
    failures.sort_by(|a, b| a.part.cmp(&b.part));
    Ok(failures)
}

/// A failure's stored code. Items written before codes existed hold a sentence: their part's
/// name tells which failure it was.
fn failure_code(
    item: &Item,
    part: &str,
    stored: &AttributeValue,
) -> Result<FailureCode, AttributeError> {
    let raw = item.nested_text(&format!("failures.{part}"), stored)?;
    Ok(match FailureCode::parse(raw) {
        Some(code) => code,
        None if part.starts_with("delivery ") => FailureCode::DeliveryDeadLettered,
        None if part.starts_with("planning ") => FailureCode::PlanningDeadLettered,
        None => FailureCode::MessageUnreadable,
    })
}

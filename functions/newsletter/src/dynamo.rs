//! The task store on one DynamoDB table with a string partition key `pk` and TTL on `expires_at`:
//!
//! | item | pk | lives |
//! |---|---|---|
//! | task status and counters | `task#<task id>` | 90 days |
//! | idempotency key | `idem#<key>` | 24 hours |
//! | recipient claim | `claim#<task id>#<email>` | 30 days |
//! | planned-page marker | `page#<task id>#<page>` | 30 days |

use crate::aws_error::describe;
use crate::domain::{EmailAddress, TaskId};
use crate::tasks::{
    Claim, ClaimStore, IdempotencyStore, PageCounts, PartFailure, Recipients, Reservation,
    Settlement, StoreError, TaskRecord, TaskStatus, TaskStore, epoch_seconds,
};
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::primitives::{DateTime, DateTimeFormat};
use aws_sdk_dynamodb::types::{
    AttributeValue, Delete, Put, ReturnValuesOnConditionCheckFailure, TransactWriteItem, Update,
};
use std::collections::HashMap;
use std::time::{Duration, SystemTime};

const TASK_LIFETIME: Duration = Duration::from_secs(90 * 24 * 3600);
const IDEMPOTENCY_LIFETIME: Duration = Duration::from_secs(24 * 3600);
const CLAIM_LIFETIME: Duration = Duration::from_secs(30 * 24 * 3600);

type Item = HashMap<String, AttributeValue>;

#[derive(Debug, Clone)]
pub struct DynamoStore {
    client: aws_sdk_dynamodb::Client,
    table: String,
}

impl DynamoStore {
    /// The live reservation of `key`, if any (an expired one that TTL has not removed yet is none).
    async fn lookup(&self, key: &str) -> Result<Option<Reservation>, StoreError> {
        let output = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(format!("idem#{key}")))
            .consistent_read(true)
            .send()
            .await
            .map_err(store_error)?;
        let now = epoch_seconds(SystemTime::now());
        Ok(output
            .item
            .filter(|item| number(item, "expires_at") >= now)
            .and_then(|item| reservation(&item)))
    }

    pub fn new(client: aws_sdk_dynamodb::Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }
}

fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

fn n(value: u64) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

fn task_key(task_id: TaskId) -> AttributeValue {
    s(format!("task#{task_id}"))
}

fn claim_key(task_id: TaskId, recipient: &EmailAddress) -> AttributeValue {
    s(format!("claim#{task_id}#{recipient}"))
}

fn now_rfc3339() -> String {
    DateTime::from(SystemTime::now())
        .fmt(DateTimeFormat::DateTime)
        .unwrap_or_default()
}

fn expires_in(lifetime: Duration) -> AttributeValue {
    n(epoch_seconds(SystemTime::now() + lifetime))
}

fn store_error<E, R>(err: SdkError<E, R>) -> StoreError
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    StoreError(describe(&err))
}

fn text<'a>(item: &'a Item, name: &str) -> Option<&'a str> {
    item.get(name)
        .and_then(|value| value.as_s().ok())
        .map(String::as_str)
}

fn number(item: &Item, name: &str) -> u64 {
    item.get(name)
        .and_then(|value| value.as_n().ok())
        .and_then(|raw| raw.parse().ok())
        .unwrap_or(0)
}

fn failures(item: &Item) -> Vec<PartFailure> {
    let Some(Ok(list)) = item.get("failures").map(AttributeValue::as_l) else {
        return Vec::new();
    };
    list.iter()
        .filter_map(|entry| entry.as_m().ok())
        .map(|entry| PartFailure {
            part: text(entry, "part").unwrap_or_default().to_owned(),
            error: text(entry, "error").unwrap_or_default().to_owned(),
        })
        .collect()
}

fn task_record(task_id: TaskId, item: &Item) -> Result<TaskRecord, StoreError> {
    let status = text(item, "status")
        .and_then(TaskStatus::parse)
        .ok_or_else(|| StoreError(format!("task {task_id} has no valid status")))?;
    Ok(TaskRecord {
        task_id,
        status,
        created_at: text(item, "created_at").unwrap_or_default().to_owned(),
        updated_at: text(item, "updated_at").unwrap_or_default().to_owned(),
        recipients: Recipients {
            planned: number(item, "planned"),
            sent: number(item, "sent"),
            skipped: number(item, "skipped"),
            failed: number(item, "failed"),
        },
        planning_done: matches!(item.get("planning_done"), Some(AttributeValue::Bool(true))),
        failures: failures(item),
    })
}

fn reservation(item: &Item) -> Option<Reservation> {
    Some(Reservation::Existing {
        task_id: text(item, "task_id")?.parse().ok()?,
        fingerprint: text(item, "fingerprint")?.to_owned(),
        queued: text(item, "state") == Some("queued"),
    })
}

/// Which items of a cancelled transaction failed their condition (by position), or `None`
/// when the transaction failed for another reason.
fn failed_conditions<R>(
    err: &SdkError<aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError, R>,
) -> Option<Vec<bool>> {
    use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
    match err.as_service_error() {
        Some(TransactWriteItemsError::TransactionCanceledException(cancelled)) => Some(
            cancelled
                .cancellation_reasons()
                .iter()
                .map(|reason| reason.code() == Some("ConditionalCheckFailed"))
                .collect(),
        ),
        _ => None,
    }
}

impl TaskStore for DynamoStore {
    async fn create(&self, task_id: TaskId) -> Result<(), StoreError> {
        let now = now_rfc3339();
        self.client
            .put_item()
            .table_name(&self.table)
            .item("pk", task_key(task_id))
            .item("status", s(TaskStatus::Accepted.as_str()))
            .item("created_at", s(&now))
            .item("updated_at", s(now))
            .item("planned", n(0))
            .item("sent", n(0))
            .item("skipped", n(0))
            .item("failed", n(0))
            .item("planning_done", AttributeValue::Bool(false))
            .item("expires_at", expires_in(TASK_LIFETIME))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await
            .map(|_| ())
            .map_err(store_error)
    }

    async fn delete(&self, task_id: TaskId) -> Result<(), StoreError> {
        self.client
            .delete_item()
            .table_name(&self.table)
            .key("pk", task_key(task_id))
            .send()
            .await
            .map(|_| ())
            .map_err(store_error)
    }

    async fn get(&self, task_id: TaskId) -> Result<Option<TaskRecord>, StoreError> {
        let output = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", task_key(task_id))
            .consistent_read(true)
            .send()
            .await
            .map_err(store_error)?;
        output
            .item
            .map(|item| task_record(task_id, &item))
            .transpose()
    }

    async fn record_page(&self, task_id: TaskId, counts: PageCounts) -> Result<(), StoreError> {
        let status = if counts.last {
            TaskStatus::Sending
        } else {
            TaskStatus::Planning
        };
        let marker = Put::builder()
            .table_name(&self.table)
            .item("pk", s(format!("page#{task_id}#{}", counts.page)))
            .item("expires_at", expires_in(CLAIM_LIFETIME))
            .condition_expression("attribute_not_exists(pk)")
            .build()
            .map_err(|err| StoreError(err.to_string()))?;
        let update = Update::builder()
            .table_name(&self.table)
            .key("pk", task_key(task_id))
            .update_expression(
                "ADD planned :planned, skipped :skipped, failed :failed \
                 SET #status = :status, planning_done = :done, updated_at = :now",
            )
            .condition_expression("attribute_exists(pk)")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":planned", n(counts.planned))
            .expression_attribute_values(":skipped", n(counts.skipped))
            .expression_attribute_values(":failed", n(counts.failed))
            .expression_attribute_values(":status", s(status.as_str()))
            .expression_attribute_values(":done", AttributeValue::Bool(counts.last))
            .expression_attribute_values(":now", s(now_rfc3339()))
            .build()
            .map_err(|err| StoreError(err.to_string()))?;
        let result = self
            .client
            .transact_write_items()
            .transact_items(TransactWriteItem::builder().put(marker).build())
            .transact_items(TransactWriteItem::builder().update(update).build())
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(err) => match failed_conditions(&err).as_deref() {
                // The page was recorded by an earlier attempt: its counts are in already.
                Some([true, ..]) => Ok(()),
                Some([_, true]) => {
                    tracing::warn!("no status record for this task; its counts are not kept");
                    Ok(())
                }
                _ => Err(store_error(err)),
            },
        }
    }

    async fn record_failure(
        &self,
        task_id: TaskId,
        failure: PartFailure,
        stops_planning: bool,
    ) -> Result<(), StoreError> {
        let entry = AttributeValue::M(HashMap::from([
            ("part".to_owned(), s(failure.part)),
            ("error".to_owned(), s(failure.error)),
        ]));
        let mut update = "SET failures = list_append(if_not_exists(failures, :empty), :failure), updated_at = :now"
            .to_owned();
        if stops_planning {
            update.push_str(", planning_done = :true");
        }
        let mut request = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", task_key(task_id))
            .update_expression(update)
            .condition_expression("attribute_exists(pk)")
            .expression_attribute_values(":empty", AttributeValue::L(Vec::new()))
            .expression_attribute_values(":failure", AttributeValue::L(vec![entry]))
            .expression_attribute_values(":now", s(now_rfc3339()));
        if stops_planning {
            request = request.expression_attribute_values(":true", AttributeValue::Bool(true));
        }
        request.send().await.map(|_| ()).map_err(store_error)
    }

    async fn finish(&self, task_id: TaskId, status: TaskStatus) -> Result<bool, StoreError> {
        use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", task_key(task_id))
            .update_expression("SET #status = :status, updated_at = :now")
            .condition_expression(
                "attribute_exists(pk) AND NOT #status IN (:completed, :with_errors)",
            )
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":status", s(status.as_str()))
            .expression_attribute_values(":now", s(now_rfc3339()))
            .expression_attribute_values(":completed", s(TaskStatus::Completed.as_str()))
            .expression_attribute_values(
                ":with_errors",
                s(TaskStatus::CompletedWithErrors.as_str()),
            )
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(err)
                if matches!(
                    err.as_service_error(),
                    Some(UpdateItemError::ConditionalCheckFailedException(_))
                ) =>
            {
                Ok(false)
            }
            Err(err) => Err(store_error(err)),
        }
    }
}

impl IdempotencyStore for DynamoStore {
    async fn reserve(
        &self,
        key: &str,
        fingerprint: &str,
        task_id: TaskId,
    ) -> Result<Reservation, StoreError> {
        use aws_sdk_dynamodb::operation::put_item::PutItemError;
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("pk", s(format!("idem#{key}")))
            .item("task_id", s(task_id.to_string()))
            .item("fingerprint", s(fingerprint))
            .item("state", s("pending"))
            .item("expires_at", expires_in(IDEMPOTENCY_LIFETIME))
            // TTL deletes lazily: an expired record may still be there, and no longer counts.
            .condition_expression("attribute_not_exists(pk) OR expires_at < :now")
            .expression_attribute_values(":now", n(epoch_seconds(SystemTime::now())))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match result {
            Ok(_) => Ok(Reservation::New),
            Err(err) => match err.as_service_error() {
                Some(PutItemError::ConditionalCheckFailedException(taken)) => {
                    match taken.item().and_then(reservation) {
                        Some(existing) => Ok(existing),
                        None => self
                            .lookup(key)
                            .await?
                            .ok_or_else(|| StoreError(format!("idempotency key {key} vanished"))),
                    }
                }
                _ => Err(store_error(err)),
            },
        }
    }

    async fn mark_queued(&self, key: &str) -> Result<(), StoreError> {
        self.client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(format!("idem#{key}")))
            .update_expression("SET #state = :queued")
            .expression_attribute_names("#state", "state")
            .expression_attribute_values(":queued", s("queued"))
            .send()
            .await
            .map(|_| ())
            .map_err(store_error)
    }

    async fn release(&self, key: &str) -> Result<(), StoreError> {
        self.client
            .delete_item()
            .table_name(&self.table)
            .key("pk", s(format!("idem#{key}")))
            .send()
            .await
            .map(|_| ())
            .map_err(store_error)
    }
}

impl ClaimStore for DynamoStore {
    async fn claim(
        &self,
        task_id: TaskId,
        recipient: &EmailAddress,
        lapses: SystemTime,
    ) -> Result<Claim, StoreError> {
        use aws_sdk_dynamodb::operation::put_item::PutItemError;
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("pk", claim_key(task_id, recipient))
            .item("state", s("sending"))
            .item("lapses_at", n(epoch_seconds(lapses)))
            .item("expires_at", expires_in(CLAIM_LIFETIME))
            .condition_expression(
                "attribute_not_exists(pk) OR (#state = :sending AND lapses_at < :now)",
            )
            .expression_attribute_names("#state", "state")
            .expression_attribute_values(":sending", s("sending"))
            .expression_attribute_values(":now", n(epoch_seconds(SystemTime::now())))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match result {
            Ok(_) => Ok(Claim::Acquired),
            Err(err) => match err.as_service_error() {
                Some(PutItemError::ConditionalCheckFailedException(taken)) => {
                    Ok(match taken.item().and_then(|item| text(item, "state")) {
                        Some("sent") => Claim::Sent,
                        Some("rejected") => Claim::Rejected,
                        _ => Claim::Busy,
                    })
                }
                _ => Err(store_error(err)),
            },
        }
    }

    async fn settle(&self, task_id: TaskId, settlements: &[Settlement]) -> Result<(), StoreError> {
        let count = |wanted: fn(&Settlement) -> bool| {
            settlements.iter().filter(|s| wanted(s)).count() as u64
        };
        let sent = count(|s| matches!(s, Settlement::Sent(_)));
        let rejected = count(|s| matches!(s, Settlement::Rejected(_)));
        let build_error = |err: aws_sdk_dynamodb::error::BuildError| StoreError(err.to_string());

        let mut items = Vec::with_capacity(settlements.len() + 1);
        if sent + rejected > 0 {
            let update = Update::builder()
                .table_name(&self.table)
                .key("pk", task_key(task_id))
                .update_expression("ADD sent :sent, failed :rejected SET updated_at = :now")
                .condition_expression("attribute_exists(pk)")
                .expression_attribute_values(":sent", n(sent))
                .expression_attribute_values(":rejected", n(rejected))
                .expression_attribute_values(":now", s(now_rfc3339()))
                .build()
                .map_err(build_error)?;
            items.push(TransactWriteItem::builder().update(update).build());
        }
        for settlement in settlements {
            let item = match settlement {
                Settlement::Sent(recipient) | Settlement::Rejected(recipient) => {
                    let state = if matches!(settlement, Settlement::Sent(_)) {
                        "sent"
                    } else {
                        "rejected"
                    };
                    let put = Put::builder()
                        .table_name(&self.table)
                        .item("pk", claim_key(task_id, recipient))
                        .item("state", s(state))
                        .item("expires_at", expires_in(CLAIM_LIFETIME))
                        .build()
                        .map_err(build_error)?;
                    TransactWriteItem::builder().put(put).build()
                }
                Settlement::Released(recipient) => {
                    let delete = Delete::builder()
                        .table_name(&self.table)
                        .key("pk", claim_key(task_id, recipient))
                        .build()
                        .map_err(build_error)?;
                    TransactWriteItem::builder().delete(delete).build()
                }
            };
            items.push(item);
        }
        if items.is_empty() {
            return Ok(());
        }
        let counted = sent + rejected > 0;
        let result = self
            .client
            .transact_write_items()
            .set_transact_items(Some(items.clone()))
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            // Only the task's condition can fail: it has no status record (an event sent by
            // hand, or a task past its lifetime). Settle the claims all the same.
            Err(err)
                if counted
                    && failed_conditions(&err)
                        .is_some_and(|failed| failed.first() == Some(&true)) =>
            {
                tracing::warn!("no status record for this task; its counts are not kept");
                self.client
                    .transact_write_items()
                    .set_transact_items(Some(items.split_off(1)))
                    .send()
                    .await
                    .map(|_| ())
                    .map_err(store_error)
            }
            Err(err) => Err(store_error(err)),
        }
    }
}

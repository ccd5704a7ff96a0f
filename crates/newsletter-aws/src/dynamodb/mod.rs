//! The task store on one DynamoDB table with a string partition key `pk` and TTL on `expires_at`:
//!
//! | item | pk | holds | lives |
//! |---|---|---|---|
//! | task | `task#<task id>` | status, counters, pages planned, failures by part | 90 days |
//! | idempotency key | `idem#<key>` | task id, request fingerprint, state, until when its request may run | 24 hours |
//! | page plan | `plan#<task id>#<page>` | the page's chunks of recipients (compact JSON) | 30 days |
//! | page marker | `page#<task id>#<page>` | whether the plan's messages are all queued | 30 days |
//! | chunk | `chunk#<task id>#<chunk id>` | lease, positions sent / rejected / failed (number sets), what is counted | 30 days |
//! | parked chunk | `parked#<task id>#<chunk id>` | the chunk's queue message, while its task is paused | 30 days |
//!
//! A pause is an overlay on the task item (`pause_code`, `paused_at`, and the ids of its parked
//! chunks in `parked`): planning goes on writing `status` while sending is paused.
//!
//! Write cost per email (on-demand, items under 1 KB): a chunk of 50 takes one lease write, a
//! record write per [`newsletter::sending::SETTLE_GROUP`] settled recipients, and one two-item
//! transaction when done (4 units); only that transaction touches the task item.
//!
//! Each port is implemented in its own module, on the items it owns: [`TaskStore`] in `tasks`,
//! [`IdempotencyStore`] in `idempotency`, [`PlanStore`] in `plans`, [`ChunkStore`] in `claims`,
//! [`PauseStore`] in `pauses`; `attributes` reads items back, typed. This module holds what they
//! share: the store, the keys, and the table's conventions (lifetimes, timestamps, errors).
//!
//! [`TaskStore`]: newsletter::ports::TaskStore
//! [`IdempotencyStore`]: newsletter::ports::IdempotencyStore
//! [`PlanStore`]: newsletter::ports::PlanStore
//! [`ChunkStore`]: newsletter::ports::ChunkStore
//! [`PauseStore`]: newsletter::ports::PauseStore

mod attributes;
mod claims;
mod idempotency;
mod pauses;
mod plans;
mod tasks;

use crate::error::cause;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::primitives::{DateTime, DateTimeFormat};
use aws_sdk_dynamodb::types::{AttributeValue, TransactWriteItem, Update};
use newsletter::domain::TaskId;
use newsletter::ports::{StoreError, epoch_seconds};
use std::collections::HashMap;
use std::time::{Duration, SystemTime};

/// How long page plans, page markers, chunks and parked chunks are kept.
const RECORD_LIFETIME: Duration = Duration::from_secs(30 * 24 * 3600);

type Item = HashMap<String, AttributeValue>;

#[derive(Debug, Clone)]
pub struct DynamoStore {
    client: aws_sdk_dynamodb::Client,
    table: String,
}

impl DynamoStore {
    pub fn new(client: aws_sdk_dynamodb::Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }

    /// One item, read consistently.
    async fn read(&self, key: AttributeValue) -> Result<Option<Item>, StoreError> {
        self.client
            .get_item()
            .table_name(&self.table)
            .key("pk", key)
            .consistent_read(true)
            .send()
            .await
            .map(|output| output.item)
            .map_err(store_error)
    }

    async fn transact(&self, items: Vec<TransactWriteItem>) -> Result<(), TransactError> {
        self.client
            .transact_write_items()
            .set_transact_items(Some(items))
            .send()
            .await
            .map(|_| ())
            .map_err(|err| match failed_conditions(&err) {
                Some(failed) => TransactError::Conditions(failed),
                None => TransactError::Store(store_error(err)),
            })
    }

    fn update(&self, key: AttributeValue) -> aws_sdk_dynamodb::types::builders::UpdateBuilder {
        Update::builder().table_name(&self.table).key("pk", key)
    }
}

/// A transaction that failed: some items' conditions (by position), or anything else.
enum TransactError {
    Conditions(Vec<bool>),
    Store(StoreError),
}

fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

fn n(value: impl ToString) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

fn task_key(task_id: TaskId) -> AttributeValue {
    s(format!("task#{task_id}"))
}

fn idempotency_key(key: &str) -> AttributeValue {
    s(format!("idem#{key}"))
}

fn plan_key(task_id: TaskId, page: u32) -> AttributeValue {
    s(format!("plan#{task_id}#{page}"))
}

fn page_key(task_id: TaskId, page: u32) -> AttributeValue {
    s(format!("page#{task_id}#{page}"))
}

fn chunk_key(task_id: TaskId, chunk_id: &str) -> AttributeValue {
    s(format!("chunk#{task_id}#{chunk_id}"))
}

fn parked_key(task_id: TaskId, chunk_id: &str) -> AttributeValue {
    s(format!("parked#{task_id}#{chunk_id}"))
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
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    StoreError(cause(err))
}

fn build_error(err: aws_sdk_dynamodb::error::BuildError) -> StoreError {
    StoreError(Box::new(err))
}

/// Which items of a cancelled transaction failed their condition (by position), or `None`
/// when the transaction failed for another reason (a conflict, throttling, a timeout).
fn failed_conditions<R>(err: &SdkError<TransactWriteItemsError, R>) -> Option<Vec<bool>> {
    match err.as_service_error() {
        Some(TransactWriteItemsError::TransactionCanceledException(cancelled)) => {
            let reasons = cancelled.cancellation_reasons();
            let codes: Vec<Option<&str>> = reasons.iter().map(|reason| reason.code()).collect();
            // A conflict or throttling cancels with other codes: that is not a condition.
            codes
                .iter()
                .all(|code| matches!(code, None | Some("None" | "ConditionalCheckFailed")))
                .then(|| {
                    codes
                        .iter()
                        .map(|code| *code == Some("ConditionalCheckFailed"))
                        .collect()
                })
        }
        _ => None,
    }
}

/// Whether a conditional `UpdateItem` took effect: `false` when its condition did not hold.
fn applied<T, R: std::fmt::Debug + Send + Sync + 'static>(
    result: Result<T, SdkError<UpdateItemError, R>>,
) -> Result<bool, StoreError> {
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

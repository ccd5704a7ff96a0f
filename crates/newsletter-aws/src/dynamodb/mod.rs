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

use crate::error::cause;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::primitives::{DateTime, DateTimeFormat};
use aws_sdk_dynamodb::types::{
    AttributeValue, Put, ReturnValue, ReturnValuesOnConditionCheckFailure, TransactWriteItem,
    Update,
};
use newsletter::domain::{
    EmailAddress, FailureCode, PartFailure, Pause, PauseCode, Recipients, TaskId, TaskRecord,
    TaskStatus, Topic,
};
use newsletter::message::Recipient;
use newsletter::planning::PagePlan;
use newsletter::ports::{
    Accounting, ChunkProgress, ChunkStore, Holder, IdempotencyStore, Lease, PageState, PauseStore,
    PlanStore, Reservation, Settled, StoreError, TaskStore, Withdrawal, epoch_millis,
    epoch_seconds,
};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const TASK_LIFETIME: Duration = Duration::from_secs(90 * 24 * 3600);
const IDEMPOTENCY_LIFETIME: Duration = Duration::from_secs(24 * 3600);
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

    /// The live reservation of `key`, if any (an expired one that TTL has not removed yet is none).
    async fn lookup(&self, key: &str) -> Result<Option<Reservation>, StoreError> {
        let now = epoch_seconds(SystemTime::now());
        Ok(self
            .read(s(format!("idem#{key}")))
            .await?
            .filter(|item| number(item, "expires_at") >= now)
            .and_then(|item| reservation(&item)))
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

fn positions(values: impl IntoIterator<Item = u16>) -> AttributeValue {
    AttributeValue::Ns(values.into_iter().map(|p| p.to_string()).collect())
}

fn task_key(task_id: TaskId) -> AttributeValue {
    s(format!("task#{task_id}"))
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

fn flag(item: &Item, name: &str) -> bool {
    matches!(item.get(name), Some(AttributeValue::Bool(true)))
}

fn position_set(item: &Item, name: &str) -> BTreeSet<u16> {
    item.get(name)
        .and_then(|value| value.as_ns().ok())
        .map(|set| set.iter().filter_map(|raw| raw.parse().ok()).collect())
        .unwrap_or_default()
}

fn task_record(task_id: TaskId, item: &Item) -> Result<TaskRecord, StoreError> {
    let status = text(item, "status")
        .and_then(TaskStatus::parse)
        .ok_or_else(|| StoreError(format!("task {task_id} has no valid status").into()))?;
    let pause = text(item, "pause_code")
        .and_then(PauseCode::parse)
        .map(|code| Pause {
            code,
            since: text(item, "paused_at").unwrap_or_default().to_owned(),
        });
    let failures = match item.get("failures").map(AttributeValue::as_m) {
        Some(Ok(parts)) => {
            let mut failures: Vec<PartFailure> = parts
                .iter()
                .map(|(part, code)| PartFailure {
                    part: part.clone(),
                    code: failure_code(part, code),
                })
                .collect();
            failures.sort_by(|a, b| a.part.cmp(&b.part));
            failures
        }
        _ => Vec::new(),
    };
    Ok(TaskRecord {
        task_id,
        status: if pause.is_some() {
            TaskStatus::Paused
        } else {
            status
        },
        created_at: text(item, "created_at").unwrap_or_default().to_owned(),
        updated_at: text(item, "updated_at").unwrap_or_default().to_owned(),
        recipients: Recipients {
            planned: number(item, "planned"),
            sent: number(item, "sent"),
            skipped: number(item, "skipped"),
            failed: number(item, "failed"),
        },
        planning_done: item.contains_key("page_count")
            && number(item, "page_count") == number(item, "pages_planned"),
        unmatched_topics: item
            .get("unmatched_topics")
            .and_then(|value| value.as_l().ok())
            .map(|names| {
                names
                    .iter()
                    .filter_map(|name| name.as_s().ok().cloned())
                    .collect()
            })
            .unwrap_or_default(),
        failures,
        pause,
    })
}

/// Whether a conditional `UpdateItem` took effect: `false` when its condition did not hold.
fn applied<T, R: std::fmt::Debug + Send + Sync + 'static>(
    result: Result<T, SdkError<aws_sdk_dynamodb::operation::update_item::UpdateItemError, R>>,
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

/// A failure's stored code. Items written before codes existed hold a sentence: their part's
/// name tells which failure it was.
fn failure_code(part: &str, stored: &AttributeValue) -> FailureCode {
    match stored.as_s().ok().and_then(|raw| FailureCode::parse(raw)) {
        Some(code) => code,
        None if part.starts_with("delivery ") => FailureCode::DeliveryDeadLettered,
        None if part.starts_with("planning ") => FailureCode::PlanningDeadLettered,
        None => FailureCode::MessageUnreadable,
    }
}

fn reservation(item: &Item) -> Option<Reservation> {
    Some(Reservation::Existing {
        task_id: text(item, "task_id")?.parse().ok()?,
        fingerprint: text(item, "fingerprint")?.to_owned(),
        queued: text(item, "state") == Some("queued"),
        running_until: item
            .contains_key("running_until")
            .then(|| UNIX_EPOCH + Duration::from_millis(number(item, "running_until"))),
    })
}

fn chunk_progress(item: &Item) -> ChunkProgress {
    ChunkProgress {
        sent: position_set(item, "sent"),
        rejected: position_set(item, "rejected"),
        failed: position_set(item, "failed"),
        counted: (number(item, "counted_sent"), number(item, "counted_failed")),
    }
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

/// A page plan as stored: each topic written once, recipients as their address and the
/// positions of their topics, so that 1,000 recipients fit well inside DynamoDB's 400 KB item.
#[derive(Serialize, Deserialize)]
struct StoredPlan {
    topics: Vec<Topic>,
    chunks: Vec<Vec<(EmailAddress, Vec<u8>)>>,
    contacts: u64,
    skipped: u64,
    invalid_addresses: u64,
    next_token: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    unmatched_topics: Vec<Topic>,
}

fn encode_plan(plan: &PagePlan) -> Result<String, StoreError> {
    let mut topics: Vec<Topic> = Vec::new();
    let mut position = |topic: &Topic| match topics.iter().position(|known| known == topic) {
        Some(index) => index as u8,
        None => {
            topics.push(topic.clone());
            (topics.len() - 1) as u8
        }
    };
    let chunks = plan
        .chunks
        .iter()
        .map(|chunk| {
            chunk
                .iter()
                .map(|recipient| {
                    let indexes = recipient.topics.iter().map(&mut position).collect();
                    (recipient.email.clone(), indexes)
                })
                .collect()
        })
        .collect();
    let stored = StoredPlan {
        topics,
        chunks,
        contacts: plan.contacts,
        skipped: plan.skipped,
        invalid_addresses: plan.invalid_addresses,
        next_token: plan.next_token.clone(),
        unmatched_topics: plan.unmatched_topics.clone(),
    };
    serde_json::to_string(&stored).map_err(|err| StoreError(err.to_string().into()))
}

fn decode_plan(page: u32, raw: &str) -> Result<PagePlan, StoreError> {
    let stored: StoredPlan = serde_json::from_str(raw).map_err(|err| {
        StoreError(format!("stored plan of page {page} is unreadable: {err}").into())
    })?;
    let topic = |index: &u8| {
        stored
            .topics
            .get(usize::from(*index))
            .cloned()
            .ok_or_else(|| {
                StoreError(format!("stored plan of page {page} names no topic {index}").into())
            })
    };
    let chunks = stored
        .chunks
        .iter()
        .map(|chunk| {
            chunk
                .iter()
                .map(|(email, indexes)| {
                    Ok(Recipient {
                        email: email.clone(),
                        topics: indexes.iter().map(topic).collect::<Result<_, _>>()?,
                    })
                })
                .collect::<Result<Vec<_>, StoreError>>()
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(PagePlan {
        page,
        chunks,
        contacts: stored.contacts,
        skipped: stored.skipped,
        invalid_addresses: stored.invalid_addresses,
        next_token: stored.next_token,
        unmatched_topics: stored.unmatched_topics,
    })
}

impl TaskStore for DynamoStore {
    async fn create(&self, task_id: TaskId) -> Result<(), StoreError> {
        let now = now_rfc3339();
        let result = self
            .client
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
            .update_expression("SET #status = :status, updated_at = :now, finished_by = :mover")
            .condition_expression(
                "attribute_exists(pk) AND #status <> :status AND #status <> :completed",
            )
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":status", s(status.as_str()))
            .expression_attribute_values(":now", s(now_rfc3339()))
            .expression_attribute_values(":completed", s(TaskStatus::Completed.as_str()))
            .expression_attribute_values(":mover", s(&mover))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(err) => match err.as_service_error() {
                Some(UpdateItemError::ConditionalCheckFailedException(refused)) => Ok(refused
                    .item()
                    .is_some_and(|item| text(item, "finished_by") == Some(mover.as_str()))),
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
            .update_expression("SET #status = :withdrawn, updated_at = :now")
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
}

impl IdempotencyStore for DynamoStore {
    async fn reserve(
        &self,
        key: &str,
        fingerprint: &str,
        task_id: TaskId,
        running_until: SystemTime,
    ) -> Result<Reservation, StoreError> {
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("pk", s(format!("idem#{key}")))
            .item("task_id", s(task_id.to_string()))
            .item("fingerprint", s(fingerprint))
            .item("state", s("pending"))
            .item("running_until", n(epoch_millis(running_until)))
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
                        // Ours: an earlier try of this put took effect and its answer was lost.
                        Some(Reservation::Existing {
                            task_id: holder, ..
                        }) if holder == task_id => Ok(Reservation::New),
                        Some(existing) => Ok(existing),
                        None => self.lookup(key).await?.ok_or_else(|| {
                            StoreError(format!("idempotency key {key} vanished").into())
                        }),
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

    async fn take_over(
        &self,
        key: &str,
        from: TaskId,
        task_id: TaskId,
        running_until: SystemTime,
    ) -> Result<bool, StoreError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(format!("idem#{key}")))
            .update_expression(
                "SET task_id = :task_id, running_until = :until, expires_at = :expires",
            )
            // On the old task id, so that of two requests recovering the key one wins.
            .condition_expression("task_id = :from AND #state = :pending AND expires_at >= :now")
            .expression_attribute_names("#state", "state")
            .expression_attribute_values(":task_id", s(task_id.to_string()))
            .expression_attribute_values(":until", n(epoch_millis(running_until)))
            .expression_attribute_values(":expires", expires_in(IDEMPOTENCY_LIFETIME))
            .expression_attribute_values(":from", s(from.to_string()))
            .expression_attribute_values(":pending", s("pending"))
            .expression_attribute_values(":now", n(epoch_seconds(SystemTime::now())))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(err) => match err.as_service_error() {
                // Ours already when an earlier try of this update took effect, its answer lost.
                Some(UpdateItemError::ConditionalCheckFailedException(refused)) => {
                    let task_id = task_id.to_string();
                    Ok(refused
                        .item()
                        .is_some_and(|item| text(item, "task_id") == Some(task_id.as_str())))
                }
                _ => Err(store_error(err)),
            },
        }
    }
}

impl PlanStore for DynamoStore {
    async fn page_state(&self, task_id: TaskId, page: u32) -> Result<PageState, StoreError> {
        let Some(marker) = self.read(page_key(task_id, page)).await? else {
            return Ok(PageState::Unplanned);
        };
        if flag(&marker, "enqueued") {
            return Ok(PageState::Enqueued);
        }
        let plan = self.read(plan_key(task_id, page)).await?.ok_or_else(|| {
            StoreError(format!("page {page} is counted but has no stored plan").into())
        })?;
        let raw = text(&plan, "plan").unwrap_or_default();
        Ok(PageState::Planned(decode_plan(page, raw)?))
    }

    async fn record_page(&self, task_id: TaskId, plan: PagePlan) -> Result<PagePlan, StoreError> {
        // The plan first, on its own item (it can be 100s of KB; the marker below stays small,
        // so the transaction and later marker writes cost a unit or two each). The first plan
        // stored wins: a retry that read a changed contact list uses the stored one.
        let stored = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("pk", plan_key(task_id, plan.page))
            .item("plan", s(encode_plan(&plan)?))
            .item("expires_at", expires_in(RECORD_LIFETIME))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await;
        let plan = match stored {
            Ok(_) => plan,
            Err(err)
                if matches!(
                    err.as_service_error(),
                    Some(PutItemError::ConditionalCheckFailedException(_))
                ) =>
            {
                let item = self
                    .read(plan_key(task_id, plan.page))
                    .await?
                    .ok_or_else(|| {
                        StoreError(format!("the plan of page {} vanished", plan.page).into())
                    })?;
                decode_plan(plan.page, text(&item, "plan").unwrap_or_default())?
            }
            Err(err) => return Err(store_error(err)),
        };

        let marker = Put::builder()
            .table_name(&self.table)
            .item("pk", page_key(task_id, plan.page))
            .item("enqueued", AttributeValue::Bool(false))
            .item("expires_at", expires_in(RECORD_LIFETIME))
            .condition_expression("attribute_not_exists(pk)")
            .build()
            .map_err(build_error)?;
        // A redriven planning step clears its failure, and planning goes on past it again.
        let (status, pages) = if plan.is_last() {
            (
                TaskStatus::Sending,
                ", page_count = :page_count REMOVE failures.#part",
            )
        } else {
            (TaskStatus::Planning, " REMOVE page_count, failures.#part")
        };
        // The same on every page (one contact list): recorded with the counts, at no extra write.
        let unmatched = if plan.unmatched_topics.is_empty() {
            ""
        } else {
            ", unmatched_topics = :unmatched"
        };
        let mut counts = self
            .update(task_key(task_id))
            .update_expression(format!(
                "ADD planned :planned, skipped :skipped, failed :failed, pages_planned :one \
                 SET #status = :status, updated_at = :now{unmatched}{pages}"
            ))
            // A withdrawn task is never planned: its accept answered 503.
            .condition_expression("attribute_exists(pk) AND #status <> :withdrawn")
            .expression_attribute_names("#status", "status")
            .expression_attribute_names("#part", PartFailure::planning_part(plan.page))
            .expression_attribute_values(":withdrawn", s(TaskStatus::Withdrawn.as_str()))
            .expression_attribute_values(":planned", n(plan.contacts))
            .expression_attribute_values(":skipped", n(plan.skipped))
            .expression_attribute_values(":failed", n(plan.invalid_addresses))
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":status", s(status.as_str()))
            .expression_attribute_values(":now", s(now_rfc3339()));
        if plan.is_last() {
            counts = counts.expression_attribute_values(":page_count", n(plan.page + 1));
        }
        if !plan.unmatched_topics.is_empty() {
            let names = plan.unmatched_topics.iter().map(|topic| s(topic.as_str()));
            counts = counts
                .expression_attribute_values(":unmatched", AttributeValue::L(names.collect()));
        }
        let counts = counts.build().map_err(build_error)?;
        match self
            .transact(vec![
                TransactWriteItem::builder().put(marker).build(),
                TransactWriteItem::builder().update(counts).build(),
            ])
            .await
        {
            Ok(()) => Ok(plan),
            // Counted by an earlier attempt (whose answer may have been lost).
            Err(TransactError::Conditions(failed)) if failed.first() == Some(&true) => Ok(plan),
            Err(TransactError::Conditions(_)) => Err(StoreError(
                format!(
                    "task {task_id} has no status record or is withdrawn: its pages are not counted"
                )
                .into(),
            )),
            Err(TransactError::Store(err)) => Err(err),
        }
    }

    async fn mark_page_enqueued(&self, task_id: TaskId, page: u32) -> Result<(), StoreError> {
        self.client
            .update_item()
            .table_name(&self.table)
            .key("pk", page_key(task_id, page))
            .update_expression("SET enqueued = :true")
            .expression_attribute_values(":true", AttributeValue::Bool(true))
            .send()
            .await
            .map(|_| ())
            .map_err(store_error)
    }
}

/// The parts of an update expression that record settled positions.
struct SettleExpression {
    add: Vec<&'static str>,
    delete: Option<&'static str>,
    values: Vec<(&'static str, AttributeValue)>,
}

impl SettleExpression {
    fn new(settled: &Settled) -> Self {
        let mut expression = Self {
            add: Vec::new(),
            delete: None,
            values: Vec::new(),
        };
        if !settled.sent.is_empty() {
            expression.add.push("sent :sent");
            expression
                .values
                .push((":sent", positions(settled.sent.iter().copied())));
        }
        if !settled.rejected.is_empty() {
            expression.add.push("rejected :rejected");
            expression
                .values
                .push((":rejected", positions(settled.rejected.iter().copied())));
        }
        if !settled.is_empty() {
            // A failed recipient that a redrive settles leaves the failed set.
            expression.delete = Some("failed :settled");
            expression.values.push((
                ":settled",
                positions(settled.sent.iter().chain(&settled.rejected).copied()),
            ));
        }
        expression
    }

    /// `ADD … DELETE …`, then `rest` (more clauses).
    fn expression(&self, rest: &str) -> String {
        let mut text = String::new();
        if !self.add.is_empty() {
            text.push_str("ADD ");
            text.push_str(&self.add.join(", "));
            text.push(' ');
        }
        if let Some(delete) = self.delete {
            text.push_str("DELETE ");
            text.push_str(delete);
            text.push(' ');
        }
        text.push_str(rest);
        text
    }
}

impl DynamoStore {
    /// Records `settled` under `holder`'s lease, and `rest` of an update expression with it.
    async fn settle(
        &self,
        task_id: TaskId,
        chunk_id: &str,
        holder: &Holder,
        settled: &Settled,
        rest: &str,
    ) -> Result<(), StoreError> {
        let expression = SettleExpression::new(settled);
        let update = expression.expression(rest);
        if update.trim().is_empty() {
            return Ok(());
        }
        let mut request = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", chunk_key(task_id, chunk_id))
            .update_expression(update)
            .condition_expression("holder = :holder")
            .expression_attribute_values(":holder", s(&holder.token));
        for (name, value) in expression.values {
            request = request.expression_attribute_values(name, value);
        }
        match request.send().await {
            Ok(_) => Ok(()),
            Err(err)
                if matches!(
                    err.as_service_error(),
                    Some(UpdateItemError::ConditionalCheckFailedException(_))
                ) =>
            {
                Err(StoreError(
                    format!("the lease on chunk {chunk_id} was lost").into(),
                ))
            }
            Err(err) => Err(store_error(err)),
        }
    }
}

impl ChunkStore for DynamoStore {
    async fn lease(
        &self,
        task_id: TaskId,
        chunk_id: &str,
        size: usize,
        holder: &Holder,
    ) -> Result<Lease, StoreError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", chunk_key(task_id, chunk_id))
            .condition_expression(
                "(attribute_not_exists(holder) OR holder = :holder OR lease_until < :now) \
                 AND (attribute_not_exists(done) OR done = :false)",
            )
            .expression_attribute_names("#size", "size")
            .update_expression(
                "SET holder = :holder, lease_until = :until, #size = :size, \
                 counted_sent = if_not_exists(counted_sent, :zero), \
                 counted_failed = if_not_exists(counted_failed, :zero), \
                 expires_at = if_not_exists(expires_at, :expires)",
            )
            .expression_attribute_values(":holder", s(&holder.token))
            .expression_attribute_values(":until", n(epoch_millis(holder.lapses)))
            .expression_attribute_values(":size", n(size))
            .expression_attribute_values(":zero", n(0))
            .expression_attribute_values(":expires", expires_in(RECORD_LIFETIME))
            .expression_attribute_values(":now", n(epoch_millis(SystemTime::now())))
            .expression_attribute_values(":false", AttributeValue::Bool(false))
            .return_values(ReturnValue::AllNew)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match result {
            Ok(output) => Ok(Lease::Held(chunk_progress(
                &output.attributes.unwrap_or_default(),
            ))),
            Err(err) => match err.as_service_error() {
                Some(UpdateItemError::ConditionalCheckFailedException(taken)) => {
                    Ok(match taken.item() {
                        Some(item) if flag(item, "done") => Lease::Finished,
                        _ => Lease::Busy,
                    })
                }
                _ => Err(store_error(err)),
            },
        }
    }

    async fn record(
        &self,
        task_id: TaskId,
        chunk_id: &str,
        holder: &Holder,
        settled: &Settled,
    ) -> Result<(), StoreError> {
        self.settle(task_id, chunk_id, holder, settled, "").await
    }

    async fn release_lease(
        &self,
        task_id: TaskId,
        chunk_id: &str,
        holder: &Holder,
        settled: &Settled,
    ) -> Result<(), StoreError> {
        let released = self
            .settle(
                task_id,
                chunk_id,
                holder,
                settled,
                "REMOVE holder, lease_until",
            )
            .await;
        if released.is_ok() {
            return released;
        }
        // A retry after a lost answer finds the lease gone (its first try removed it): done if
        // what it was to record is there and the lease is not ours any more.
        let item = self.read(chunk_key(task_id, chunk_id)).await?;
        let done = item.as_ref().is_some_and(|item| {
            let progress = chunk_progress(item);
            text(item, "holder") != Some(holder.token.as_str())
                && settled.sent.iter().all(|p| progress.sent.contains(p))
                && settled
                    .rejected
                    .iter()
                    .all(|p| progress.rejected.contains(p))
        });
        if done { Ok(()) } else { released }
    }

    async fn close(
        &self,
        task_id: TaskId,
        chunk_id: &str,
        holder: &Holder,
        settled: &Settled,
        progress: &ChunkProgress,
    ) -> Result<(), StoreError> {
        let totals = progress.totals();
        let expression = SettleExpression::new(settled);
        let mut chunk = self
            .update(chunk_key(task_id, chunk_id))
            .update_expression(expression.expression(
                "SET counted_sent = :total_sent, counted_failed = :total_failed, done = :done \
                 REMOVE holder, lease_until",
            ))
            .condition_expression(
                "holder = :holder AND counted_sent = :counted_sent \
                 AND counted_failed = :counted_failed",
            )
            .expression_attribute_values(":holder", s(&holder.token))
            .expression_attribute_values(":total_sent", n(totals.0))
            .expression_attribute_values(":total_failed", n(totals.1))
            .expression_attribute_values(":counted_sent", n(progress.counted.0))
            .expression_attribute_values(":counted_failed", n(progress.counted.1))
            .expression_attribute_values(":done", AttributeValue::Bool(progress.failed.is_empty()));
        for (name, value) in expression.values {
            chunk = chunk.expression_attribute_values(name, value);
        }
        let chunk = chunk.build().map_err(build_error)?;
        let delta_sent = totals.0 as i64 - progress.counted.0 as i64;
        let delta_failed = totals.1 as i64 - progress.counted.1 as i64;
        // Failures are kept by part; the part is cleared once nobody in it is failed any more.
        let clear_failure = if progress.failed.is_empty() {
            " REMOVE failures.#part"
        } else {
            ""
        };
        let task = self
            .update(task_key(task_id))
            .update_expression(format!(
                "ADD sent :sent, failed :failed SET updated_at = :now{clear_failure}"
            ))
            .condition_expression("attribute_exists(pk)")
            .expression_attribute_values(":sent", n(delta_sent))
            .expression_attribute_values(":failed", n(delta_failed))
            .expression_attribute_values(":now", s(now_rfc3339()));
        let task = if clear_failure.is_empty() {
            task
        } else {
            task.expression_attribute_names("#part", PartFailure::delivery_part(chunk_id))
        }
        .build()
        .map_err(build_error)?;
        let result = self
            .transact(vec![
                TransactWriteItem::builder().update(chunk).build(),
                TransactWriteItem::builder().update(task).build(),
            ])
            .await;
        match result {
            Ok(()) => Ok(()),
            Err(TransactError::Conditions(failed)) if failed.first() == Some(&true) => {
                // Either an earlier call of ours went through and its answer was lost (then
                // the chunk is counted as we wanted, and nobody holds it), or the lease is gone.
                let item = self.read(chunk_key(task_id, chunk_id)).await?;
                let closed = item.as_ref().is_some_and(|item| {
                    !item.contains_key("holder") && chunk_progress(item).counted == totals
                });
                if closed {
                    Ok(())
                } else {
                    Err(StoreError(
                        format!("the lease on chunk {chunk_id} was lost").into(),
                    ))
                }
            }
            Err(TransactError::Conditions(_)) => Err(StoreError(
                format!("no status record for task {task_id}: chunk {chunk_id} cannot be counted")
                    .into(),
            )),
            Err(TransactError::Store(err)) => Err(err),
        }
    }

    async fn fail_unsettled(
        &self,
        task_id: TaskId,
        chunk_id: &str,
        size: usize,
        failure: PartFailure,
    ) -> Result<Accounting, StoreError> {
        let now = epoch_millis(SystemTime::now());
        let item = self.read(chunk_key(task_id, chunk_id)).await?;
        let progress = item.as_ref().map(chunk_progress).unwrap_or_default();
        if item
            .as_ref()
            .is_some_and(|item| item.contains_key("holder") && number(item, "lease_until") >= now)
        {
            return Ok(Accounting::Held);
        }
        let unsettled: Vec<u16> = (0..size as u16)
            .filter(|position| progress.owes(*position) && !progress.failed.contains(position))
            .collect();
        let mut after = progress.clone();
        after.failed.extend(&unsettled);
        let totals = after.totals();
        if unsettled.is_empty() && totals == progress.counted {
            return Ok(Accounting::Accounted);
        }
        let mut chunk = self
            .update(chunk_key(task_id, chunk_id))
            .update_expression(format!(
                "{}SET counted_sent = :total_sent, counted_failed = :total_failed, done = :false, \
                 #size = :size, expires_at = if_not_exists(expires_at, :expires) \
                 REMOVE holder, lease_until",
                if unsettled.is_empty() {
                    ""
                } else {
                    "ADD failed :unsettled "
                }
            ))
            .condition_expression(
                "attribute_not_exists(pk) OR (counted_sent = :counted_sent \
                 AND counted_failed = :counted_failed \
                 AND (attribute_not_exists(holder) OR lease_until < :now))",
            )
            .expression_attribute_names("#size", "size")
            .expression_attribute_values(":total_sent", n(totals.0))
            .expression_attribute_values(":total_failed", n(totals.1))
            .expression_attribute_values(":counted_sent", n(progress.counted.0))
            .expression_attribute_values(":counted_failed", n(progress.counted.1))
            .expression_attribute_values(":false", AttributeValue::Bool(false))
            .expression_attribute_values(":size", n(size))
            .expression_attribute_values(":expires", expires_in(RECORD_LIFETIME))
            .expression_attribute_values(":now", n(now));
        if !unsettled.is_empty() {
            chunk = chunk.expression_attribute_values(":unsettled", positions(unsettled));
        }
        let task = self
            .update(task_key(task_id))
            .update_expression(
                "ADD sent :sent, failed :failed SET updated_at = :now, failures.#part = :code",
            )
            .condition_expression("attribute_exists(pk)")
            .expression_attribute_names("#part", failure.part)
            .expression_attribute_values(":sent", n(totals.0 as i64 - progress.counted.0 as i64))
            .expression_attribute_values(":failed", n(totals.1 as i64 - progress.counted.1 as i64))
            .expression_attribute_values(":code", s(failure.code.as_str()))
            .expression_attribute_values(":now", s(now_rfc3339()))
            .build()
            .map_err(build_error)?;
        match self
            .transact(vec![
                TransactWriteItem::builder()
                    .update(chunk.build().map_err(build_error)?)
                    .build(),
                TransactWriteItem::builder().update(task).build(),
            ])
            .await
        {
            Ok(()) => Ok(Accounting::Accounted),
            // Someone leased or counted it meanwhile: look again on the next sweep.
            Err(TransactError::Conditions(failed)) if failed.first() == Some(&true) => {
                Ok(Accounting::Held)
            }
            Err(TransactError::Conditions(_)) => Err(StoreError(
                format!("no status record for task {task_id}: chunk {chunk_id} cannot be counted")
                    .into(),
            )),
            Err(TransactError::Store(err)) => Err(err),
        }
    }
}

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
                 AND #status IN (:planning, :sending)",
            )
            .expression_attribute_names("#status", "status")
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
        let mut chunk_ids: Vec<String> = task
            .get("parked")
            .and_then(|value| value.as_ss().ok())
            .cloned()
            .unwrap_or_default();
        chunk_ids.sort();
        let mut parked = Vec::with_capacity(chunk_ids.len());
        for chunk_id in chunk_ids {
            let item = self.read(parked_key(task_id, &chunk_id)).await?;
            match item.as_ref().and_then(|item| text(item, "message")) {
                Some(message) => parked.push((chunk_id, message.to_owned())),
                None => {
                    return Err(StoreError(
                        format!("parked chunk {chunk_id} of task {task_id} has no message").into(),
                    ));
                }
            }
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
        let forgotten = aws_sdk_dynamodb::types::Delete::builder()
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

//! Page plans (`plan#<task id>#<page>`, in the stored-plan encoding) and page markers
//! (`page#<task id>#<page>`), with the counts that recording a page adds to the task item.

use super::attributes::Attributes;
use super::{
    DynamoStore, RECORD_LIFETIME, TransactError, build_error, expires_in, n, now_rfc3339, page_key,
    plan_key, s, store_error, task_key,
};
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::types::{AttributeValue, Put, TransactWriteItem};
use newsletter::domain::{EmailAddress, PartFailure, TaskId, TaskStatus, Topic};
use newsletter::message::Recipient;
use newsletter::planning::PagePlan;
use newsletter::ports::{PageState, PlanStore, StoreError};
use serde::{Deserialize, Serialize};

impl PlanStore for DynamoStore {
    async fn page_state(&self, task_id: TaskId, page: u32) -> Result<PageState, StoreError> {
        let Some(marker) = self.read(page_key(task_id, page)).await? else {
            return Ok(PageState::Unplanned);
        };
        // Written on every marker; only markers of pages planned before plans were stored lack it,
        // and read, as they always have, as not enqueued (and then fail for want of a plan).
        if marker.optional_flag("enqueued")?.unwrap_or(false) {
            return Ok(PageState::Enqueued);
        }
        let plan = self.read(plan_key(task_id, page)).await?.ok_or_else(|| {
            StoreError(format!("page {page} is counted but has no stored plan").into())
        })?;
        Ok(PageState::Planned(decode_plan(page, plan.text("plan")?)?))
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
                decode_plan(plan.page, item.text("plan")?)?
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
            // A withdrawn task is never planned: its accept answered 503. A cancelled one plans
            // nothing more (and its status must not move back to planning or sending).
            .condition_expression(
                "attribute_exists(pk) AND NOT #status IN (:withdrawn, :cancelling, :cancelled)",
            )
            .expression_attribute_names("#status", "status")
            .expression_attribute_names("#part", PartFailure::planning_part(plan.page))
            .expression_attribute_values(":withdrawn", s(TaskStatus::Withdrawn.as_str()))
            .expression_attribute_values(":cancelling", s(TaskStatus::Cancelling.as_str()))
            .expression_attribute_values(":cancelled", s(TaskStatus::Cancelled.as_str()))
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
                    "task {task_id} has no status record, or is withdrawn or cancelled: its pages are not counted"
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

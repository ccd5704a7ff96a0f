//! Chunk items (`chunk#<task id>#<chunk id>`): leases, settlements ([`SettleExpression`]),
//! closing a chunk into its task's counters, and accounting a dead-lettered or cancelled one.

use super::attributes::{AttributeError, Attributes};
use super::{
    DynamoStore, Item, RECORD_LIFETIME, TransactError, build_error, chunk_key, expires_in, n,
    now_rfc3339, s, store_error, task_key,
};
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{
    AttributeValue, ReturnValue, ReturnValuesOnConditionCheckFailure, TransactWriteItem,
};
use newsletter::domain::{PartFailure, TaskId};
use newsletter::ports::{
    Accounting, ChunkProgress, ChunkStore, Holder, Lease, Settled, StoreError, epoch_millis,
};
use std::time::SystemTime;

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
            Ok(output) => {
                let item = output.attributes.ok_or_else(|| {
                    StoreError(format!("the lease on chunk {chunk_id} returned no item").into())
                })?;
                Ok(Lease::Held(chunk_progress(&item)?))
            }
            Err(err) => match err.as_service_error() {
                Some(UpdateItemError::ConditionalCheckFailedException(taken)) => {
                    // `done` is written when the chunk is closed or accounted; before, it is
                    // not done (as the lease's condition has it).
                    let done = match taken.item() {
                        Some(item) => item.optional_flag("done")?.unwrap_or(false),
                        None => false,
                    };
                    Ok(if done { Lease::Finished } else { Lease::Busy })
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
        let Some(item) = self.read(chunk_key(task_id, chunk_id)).await? else {
            return released;
        };
        let progress = chunk_progress(&item)?;
        let done = item.optional_text("holder")? != Some(holder.token.as_str())
            && settled.sent.iter().all(|p| progress.sent.contains(p))
            && settled
                .rejected
                .iter()
                .all(|p| progress.rejected.contains(p));
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
                let closed = match self.read(chunk_key(task_id, chunk_id)).await? {
                    Some(item) => {
                        item.optional_text("holder")?.is_none()
                            && chunk_progress(&item)?.counted == totals
                    }
                    None => false,
                };
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
        self.account_unsettled(task_id, chunk_id, size, Unsettled::Failed(failure))
            .await
    }

    async fn cancel_unsettled(
        &self,
        task_id: TaskId,
        chunk_id: &str,
        size: usize,
    ) -> Result<Accounting, StoreError> {
        self.account_unsettled(task_id, chunk_id, size, Unsettled::Cancelled)
            .await
    }
}

/// What the recipients of a chunk that nobody will send any more become.
enum Unsettled {
    /// Its message is in the dead-letter queue: failed, until a redrive sends them.
    Failed(PartFailure),
    /// Its task is cancelled: never sent, and the chunk is done.
    Cancelled,
}

impl DynamoStore {
    /// Accounts the chunk's unsettled recipients as `how` says, with what it settled beyond
    /// what the task counts for it, in one transaction, unless a live lease is held.
    async fn account_unsettled(
        &self,
        task_id: TaskId,
        chunk_id: &str,
        size: usize,
        how: Unsettled,
    ) -> Result<Accounting, StoreError> {
        let now = epoch_millis(SystemTime::now());
        let item = self.read(chunk_key(task_id, chunk_id)).await?;
        // No item: never leased, nothing settled.
        let progress = item
            .as_ref()
            .map(chunk_progress)
            .transpose()?
            .unwrap_or_default();
        let held = match &item {
            // `lease_until` is written and removed with `holder`.
            Some(item) if item.optional_text("holder")?.is_some() => {
                item.number::<u64>("lease_until")? >= now
            }
            _ => false,
        };
        if held {
            return Ok(Accounting::Held);
        }
        let unsettled = progress.unsettled(size);
        let mut after = progress.clone();
        let (set, done, cancelled) = match &how {
            Unsettled::Failed(_) => {
                after.failed.extend(&unsettled);
                ("failed", false, 0)
            }
            Unsettled::Cancelled => {
                after.cancelled.extend(&unsettled);
                ("cancelled", true, unsettled.len())
            }
        };
        let totals = after.totals();
        if unsettled.is_empty() && totals == progress.counted {
            return Ok(Accounting::Accounted);
        }
        // A chunk is cancelled once: the condition on the set keeps a racing second call from
        // counting its recipients again.
        let once = match how {
            Unsettled::Failed(_) => "",
            Unsettled::Cancelled => " AND attribute_not_exists(cancelled)",
        };
        let mut chunk = self
            .update(chunk_key(task_id, chunk_id))
            .update_expression(format!(
                "{}SET counted_sent = :total_sent, counted_failed = :total_failed, done = :done, \
                 #size = :size, expires_at = if_not_exists(expires_at, :expires) \
                 REMOVE holder, lease_until",
                if unsettled.is_empty() {
                    String::new()
                } else {
                    format!("ADD {set} :unsettled ")
                }
            ))
            .condition_expression(format!(
                "attribute_not_exists(pk) OR (counted_sent = :counted_sent \
                 AND counted_failed = :counted_failed \
                 AND (attribute_not_exists(holder) OR lease_until < :now){once})"
            ))
            .expression_attribute_names("#size", "size")
            .expression_attribute_values(":total_sent", n(totals.0))
            .expression_attribute_values(":total_failed", n(totals.1))
            .expression_attribute_values(":counted_sent", n(progress.counted.0))
            .expression_attribute_values(":counted_failed", n(progress.counted.1))
            .expression_attribute_values(":done", AttributeValue::Bool(done))
            .expression_attribute_values(":size", n(size))
            .expression_attribute_values(":expires", expires_in(RECORD_LIFETIME))
            .expression_attribute_values(":now", n(now));
        if !unsettled.is_empty() {
            chunk = chunk.expression_attribute_values(":unsettled", positions(unsettled));
        }
        let task = self
            .update(task_key(task_id))
            .condition_expression("attribute_exists(pk)")
            .expression_attribute_values(":sent", n(totals.0 as i64 - progress.counted.0 as i64))
            .expression_attribute_values(":failed", n(totals.1 as i64 - progress.counted.1 as i64))
            .expression_attribute_values(":now", s(now_rfc3339()));
        let task = match how {
            Unsettled::Failed(failure) => task
                .update_expression(
                    "ADD sent :sent, failed :failed SET updated_at = :now, failures.#part = :code",
                )
                .expression_attribute_names("#part", failure.part)
                .expression_attribute_values(":code", s(failure.code.as_str())),
            Unsettled::Cancelled => task
                .update_expression(
                    "ADD sent :sent, failed :failed, cancelled :cancelled SET updated_at = :now",
                )
                .expression_attribute_values(":cancelled", n(cancelled)),
        }
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
            // Someone leased, counted or cancelled it meanwhile: look again later.
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

fn positions(values: impl IntoIterator<Item = u16>) -> AttributeValue {
    AttributeValue::Ns(values.into_iter().map(|p| p.to_string()).collect())
}

fn chunk_progress(item: &Item) -> Result<ChunkProgress, AttributeError> {
    // The sets are there once a position is in them (DynamoDB keeps no empty set); the counts
    // are written by every write that makes a chunk item (a lease, an accounting).
    Ok(ChunkProgress {
        sent: item.optional_number_set("sent")?.unwrap_or_default(),
        rejected: item.optional_number_set("rejected")?.unwrap_or_default(),
        failed: item.optional_number_set("failed")?.unwrap_or_default(),
        cancelled: item.optional_number_set("cancelled")?.unwrap_or_default(),
        counted: (item.number("counted_sent")?, item.number("counted_failed")?),
    })
}

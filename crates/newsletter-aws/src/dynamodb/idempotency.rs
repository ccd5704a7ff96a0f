//! Idempotency-key items (`idem#<key>`): reserving a key for a request, marking its job queued,
//! releasing it, and taking it over from a request that died.

use super::attributes::{AttributeError, Attributes};
use super::{DynamoStore, Item, expires_in, idempotency_key, n, s, store_error};
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::ReturnValuesOnConditionCheckFailure;
use newsletter::domain::TaskId;
use newsletter::ports::{IdempotencyStore, Reservation, StoreError, epoch_millis, epoch_seconds};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const IDEMPOTENCY_LIFETIME: Duration = Duration::from_secs(24 * 3600);

impl DynamoStore {
    /// The live reservation of `key`, if any (an expired one that TTL has not removed yet is none).
    async fn lookup(&self, key: &str) -> Result<Option<Reservation>, StoreError> {
        let now = epoch_seconds(SystemTime::now());
        let Some(item) = self.read(idempotency_key(key)).await? else {
            return Ok(None);
        };
        if item.number::<u64>("expires_at")? < now {
            return Ok(None);
        }
        Ok(Some(reservation(&item)?))
    }
}

fn reservation(item: &Item) -> Result<Reservation, AttributeError> {
    Ok(Reservation::Existing {
        task_id: item.parsed("task_id", "task id", |raw| raw.parse().ok())?,
        fingerprint: item.text("fingerprint")?.to_owned(),
        queued: item.parsed("state", "reservation state", |raw| match raw {
            "pending" => Some(false),
            "queued" => Some(true),
            _ => None,
        })?,
        // Reservations recorded before `running_until` was have none: they say nothing about
        // their request, and are never recovered (see `Reservation::Existing`).
        running_until: item
            .optional_number("running_until")?
            .map(|millis| UNIX_EPOCH + Duration::from_millis(millis)),
    })
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
            .item("pk", idempotency_key(key))
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
                    match taken.item().map(reservation).transpose()? {
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
            .key("pk", idempotency_key(key))
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
            .key("pk", idempotency_key(key))
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
            .key("pk", idempotency_key(key))
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
                    match refused.item() {
                        Some(item) => Ok(item.text("task_id")? == task_id),
                        None => Ok(false),
                    }
                }
                _ => Err(store_error(err)),
            },
        }
    }
}

//! The jobs queue as the domain sees it, and its SQS implementation.

use crate::error::cause;
use aws_sdk_sqs::types::{ChangeMessageVisibilityBatchRequestEntry, SendMessageBatchRequestEntry};
use newsletter::message::Message;
use newsletter::planning::{MAX_MESSAGE_BYTES, pack};
use newsletter::ports::{DeadLetter, DeadLetterQueue, MessageQueue, QueueError};
use std::time::Duration;

/// The jobs queue on Amazon SQS.
#[derive(Debug, Clone)]
pub struct SqsQueue {
    client: aws_sdk_sqs::Client,
    queue_url: String,
}

/// SendMessageBatch takes at most 10 entries, and at most the message size limit in total.
const MAX_BATCH_ENTRIES: usize = 10;
/// Rounds of resending the entries a batch reported failed before giving up.
const BATCH_ATTEMPTS: usize = 3;

impl SqsQueue {
    pub fn new(client: aws_sdk_sqs::Client, queue_url: impl Into<String>) -> Self {
        Self {
            client,
            queue_url: queue_url.into(),
        }
    }

    /// Sends one batch, resending the entries SQS reports failed (batches can partly fail).
    async fn send_batch(&self, bodies: Vec<String>) -> Result<(), QueueError> {
        let mut pending: Vec<(usize, String)> = bodies.into_iter().enumerate().collect();
        let mut last_failure = String::new();
        for _ in 0..BATCH_ATTEMPTS {
            let entries = pending
                .iter()
                .map(|(id, body)| {
                    SendMessageBatchRequestEntry::builder()
                        .id(id.to_string())
                        .message_body(body)
                        .build()
                        .map_err(|err| QueueError(err.to_string().into()))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let output = self
                .client
                .send_message_batch()
                .queue_url(&self.queue_url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|err| QueueError(cause(err)))?;
            let failed_ids: Vec<String> =
                output.failed.iter().map(|entry| entry.id.clone()).collect();
            if let Some(entry) = output.failed.first() {
                last_failure =
                    format!("{}: {}", entry.code, entry.message.as_deref().unwrap_or(""));
            }
            pending.retain(|(id, _)| failed_ids.contains(&id.to_string()));
            if pending.is_empty() {
                return Ok(());
            }
        }
        Err(QueueError(
            format!(
                "{} message(s) still refused after {BATCH_ATTEMPTS} attempts ({last_failure})",
                pending.len()
            )
            .into(),
        ))
    }
}

/// Groups message bodies into batches SQS accepts: ≤ 10 entries and ≤ the size limit each.
pub fn batches(bodies: Vec<String>) -> Vec<Vec<String>> {
    pack(bodies, MAX_BATCH_ENTRIES, MAX_MESSAGE_BYTES, String::len)
}

impl MessageQueue for SqsQueue {
    async fn send(&self, message: &Message) -> Result<(), QueueError> {
        self.client
            .send_message()
            .queue_url(&self.queue_url)
            .message_body(message.encode())
            .send()
            .await
            .map(|_| ())
            .map_err(|err| QueueError(cause(err)))
    }

    async fn send_all(&self, messages: &[Message]) -> Result<(), QueueError> {
        let bodies = messages.iter().map(Message::encode).collect();
        for batch in batches(bodies) {
            self.send_batch(batch).await?;
        }
        Ok(())
    }
}

impl DeadLetterQueue for SqsQueue {
    async fn receive(&self, hidden_for: Duration) -> Result<Vec<DeadLetter>, QueueError> {
        let output = self
            .client
            .receive_message()
            .queue_url(&self.queue_url)
            .max_number_of_messages(MAX_BATCH_ENTRIES as i32)
            .visibility_timeout(hidden_for.as_secs().clamp(1, 12 * 3600) as i32)
            .send()
            .await
            .map_err(|err| QueueError(cause(err)))?;
        Ok(output
            .messages
            .unwrap_or_default()
            .into_iter()
            .filter_map(|message| {
                Some(DeadLetter {
                    receipt: message.receipt_handle?,
                    body: message.body.unwrap_or_default(),
                })
            })
            .collect())
    }

    async fn put_back(&self, receipts: &[String]) -> Result<(), QueueError> {
        for batch in receipts.chunks(MAX_BATCH_ENTRIES) {
            let entries = batch
                .iter()
                .enumerate()
                .map(|(id, receipt)| {
                    ChangeMessageVisibilityBatchRequestEntry::builder()
                        .id(id.to_string())
                        .receipt_handle(receipt)
                        .visibility_timeout(0)
                        .build()
                        .map_err(|err| QueueError(err.to_string().into()))
                })
                .collect::<Result<Vec<_>, _>>()?;
            self.client
                .change_message_visibility_batch()
                .queue_url(&self.queue_url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|err| QueueError(cause(err)))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_respect_entry_count_and_total_size() {
        let small: Vec<String> = (0..25).map(|i| format!("m{i}")).collect();
        let sizes: Vec<usize> = batches(small).iter().map(Vec::len).collect();
        assert_eq!(sizes, [10, 10, 5]);

        let big: Vec<String> = (0..3).map(|_| "x".repeat(100 * 1024)).collect();
        let sizes: Vec<usize> = batches(big).iter().map(Vec::len).collect();
        assert_eq!(sizes, [2, 1]);

        assert!(batches(Vec::new()).is_empty());
    }
}

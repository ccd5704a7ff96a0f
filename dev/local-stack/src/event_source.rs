//! An SQS event source that behaves like Lambda's, for a function served by `cargo lambda watch`
//! (which, like `sam local`, cannot trigger a function from SQS).
//!
//! It long-polls the queue, hands each batch to the function, deletes the messages the function
//! did not report in `batchItemFailures`, and leaves the reported ones to reappear after the
//! visibility timeout, so the queue's own redrive policy moves a poison message to the DLQ.

use crate::template::{self, Template};
use anyhow::Context;
use aws_lambda_events::encodings::Base64Data;
use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent, SqsMessage, SqsMessageAttribute};
use aws_sdk_sqs::types::{
    DeleteMessageBatchRequestEntry, Message, MessageSystemAttributeName, QueueAttributeName,
};
use std::collections::HashMap;
use std::future::Future;
use std::time::{Duration, Instant};

/// Calls the function with one batch.
pub trait Invoke: Send + Sync {
    fn invoke(
        &self,
        event: SqsEvent,
    ) -> impl Future<Output = anyhow::Result<SqsBatchResponse>> + Send;
}

/// Invokes a function through the Lambda invoke API (`cargo lambda watch` serves it).
pub struct HttpInvoker {
    client: reqwest::Client,
    url: String,
}

impl HttpInvoker {
    pub fn new(invoke_endpoint: &str, function: &str) -> Self {
        Self {
            client: reqwest::Client::new(),
            url: format!("{invoke_endpoint}/2015-03-31/functions/{function}/invocations"),
        }
    }
}

impl HttpInvoker {
    /// Invokes the function with any JSON event and returns its answer.
    pub async fn invoke_json(&self, event: &impl serde::Serialize) -> anyhow::Result<String> {
        let response = self.client.post(&self.url).json(event).send().await?;
        let status = response.status();
        let body = response.text().await?;
        anyhow::ensure!(
            status.is_success(),
            "the function failed ({status}): {body}"
        );
        Ok(body)
    }
}

impl Invoke for HttpInvoker {
    async fn invoke(&self, event: SqsEvent) -> anyhow::Result<SqsBatchResponse> {
        let body = self.invoke_json(&event).await?;
        serde_json::from_str(&body)
            .with_context(|| format!("the function's answer is not a batch response: {body}"))
    }
}

/// The trigger's settings, as the template's SQS event sets them.
#[derive(Debug, Clone)]
pub struct Trigger {
    pub batch_size: i32,
    pub batching_window: Duration,
    pub wait_time_seconds: i32,
}

impl Trigger {
    /// The worker's SQS event in `template` (`BatchSize`, `MaximumBatchingWindowInSeconds`), with
    /// the 20 s long poll of Lambda's pollers (no template setting).
    pub fn from_template(template: &Template) -> anyhow::Result<Self> {
        let event = template
            .function(template::WORKER_FUNCTION)?
            .sqs_event(template::JOBS_EVENT)?;
        Ok(Self {
            batch_size: event.batch_size.try_into()?,
            batching_window: event.batching_window,
            wait_time_seconds: 20,
        })
    }
}

/// What one poll did.
#[derive(Debug, Default)]
pub struct PollOutcome {
    /// Message bodies handed to the function.
    pub bodies: Vec<String>,
    /// How many of them it reported failed (or all of them, when the invocation itself failed).
    pub failed: usize,
}

pub struct SqsEventSource {
    sqs: aws_sdk_sqs::Client,
    queue_url: String,
    queue_arn: String,
    trigger: Trigger,
}

impl SqsEventSource {
    pub async fn new(
        sqs: aws_sdk_sqs::Client,
        queue_url: &str,
        trigger: Trigger,
    ) -> anyhow::Result<Self> {
        let queue_arn = sqs
            .get_queue_attributes()
            .queue_url(queue_url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await?
            .attributes
            .and_then(|mut attributes| attributes.remove(&QueueAttributeName::QueueArn))
            .context("the queue has no ARN")?;
        Ok(Self {
            sqs,
            queue_url: queue_url.to_owned(),
            queue_arn,
            trigger,
        })
    }

    /// Receives one batch (waiting up to the long-poll time for the first message, then up to the
    /// batching window to fill it), invokes the function, and deletes what succeeded.
    pub async fn poll(&self, function: &impl Invoke) -> anyhow::Result<PollOutcome> {
        let messages = self.receive_batch().await?;
        if messages.is_empty() {
            return Ok(PollOutcome::default());
        }
        let bodies: Vec<String> = messages
            .iter()
            .map(|m| m.body.clone().unwrap_or_default())
            .collect();
        let event = self.event(&messages);
        let failed_ids = match function.invoke(event).await {
            Ok(response) => response
                .batch_item_failures
                .into_iter()
                .map(|failure| failure.item_identifier)
                .collect::<Vec<_>>(),
            Err(err) => {
                // Lambda treats a failed invocation as the whole batch failing.
                eprintln!("worker invocation failed, the batch will be retried: {err:#}");
                messages
                    .iter()
                    .filter_map(|m| m.message_id.clone())
                    .collect()
            }
        };
        let done: Vec<&Message> = messages
            .iter()
            .filter(|m| {
                !failed_ids
                    .iter()
                    .any(|id| Some(id) == m.message_id.as_ref())
            })
            .collect();
        self.delete(&done).await?;
        Ok(PollOutcome {
            failed: messages.len() - done.len(),
            bodies,
        })
    }

    async fn receive_batch(&self) -> anyhow::Result<Vec<Message>> {
        let mut batch: Vec<Message> = Vec::new();
        let mut window_ends: Option<Instant> = None;
        while batch.len() < self.trigger.batch_size as usize {
            let wait = match window_ends {
                None => self.trigger.wait_time_seconds,
                Some(end) if Instant::now() < end => 0,
                Some(_) => break,
            };
            let received = self
                .sqs
                .receive_message()
                .queue_url(&self.queue_url)
                .max_number_of_messages((self.trigger.batch_size - batch.len() as i32).min(10))
                .wait_time_seconds(wait)
                .message_system_attribute_names(MessageSystemAttributeName::All)
                .message_attribute_names("All")
                .send()
                .await?
                .messages
                .unwrap_or_default();
            if received.is_empty() && window_ends.is_none() {
                break;
            }
            window_ends.get_or_insert_with(|| Instant::now() + self.trigger.batching_window);
            if received.is_empty() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            batch.extend(received);
        }
        Ok(batch)
    }

    fn event(&self, messages: &[Message]) -> SqsEvent {
        let mut event = SqsEvent::default();
        event.records = messages
            .iter()
            .map(|message| {
                let mut record = SqsMessage::default();
                record.message_id = message.message_id.clone();
                record.receipt_handle = message.receipt_handle.clone();
                record.body = message.body.clone();
                record.md5_of_body = message.md5_of_body.clone();
                record.md5_of_message_attributes = message.md5_of_message_attributes.clone();
                // As Lambda passes them: camelCase names, binary values base64 in the JSON.
                record.message_attributes = message
                    .message_attributes
                    .iter()
                    .flatten()
                    .map(|(name, value)| {
                        let mut attribute = SqsMessageAttribute::default();
                        attribute.data_type = Some(value.data_type.clone());
                        attribute.string_value = value.string_value.clone();
                        attribute.binary_value = value.binary_value.as_ref().map(|blob| {
                            // Non-exhaustive: built through its `DerefMut` to the bytes.
                            let mut data = Base64Data::default();
                            data.extend_from_slice(blob.as_ref());
                            data
                        });
                        (name.clone(), attribute)
                    })
                    .collect();
                record.attributes = message
                    .attributes
                    .iter()
                    .flatten()
                    .map(|(name, value)| (name.as_str().to_owned(), value.clone()))
                    .collect::<HashMap<_, _>>();
                record.event_source = Some("aws:sqs".into());
                record.event_source_arn = Some(self.queue_arn.clone());
                record.aws_region = Some(crate::REGION.into());
                record
            })
            .collect();
        event
    }

    async fn delete(&self, messages: &[&Message]) -> anyhow::Result<()> {
        for group in messages.chunks(10) {
            let entries = group
                .iter()
                .enumerate()
                .map(|(index, message)| {
                    DeleteMessageBatchRequestEntry::builder()
                        .id(index.to_string())
                        .receipt_handle(message.receipt_handle.clone().unwrap_or_default())
                        .build()
                })
                .collect::<Result<Vec<_>, _>>()?;
            if entries.is_empty() {
                continue;
            }
            self.sqs
                .delete_message_batch()
                .queue_url(&self.queue_url)
                .set_entries(Some(entries))
                .send()
                .await?;
        }
        Ok(())
    }
}

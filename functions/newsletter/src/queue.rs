//! The jobs queue as the domain sees it, and its SQS implementation.

use crate::message::Message;
use aws_sdk_sqs::error::DisplayErrorContext;
use std::future::Future;

/// Where work goes to be done later. Sending returns only once the queue has stored the message.
pub trait MessageQueue: Send + Sync {
    fn send(&self, message: &Message) -> impl Future<Output = Result<(), QueueError>> + Send;
}

/// The queue did not confirm it stored the message: unreachable, throttled, or access denied.
/// The text is the SDK's error chain, which names the cause but never a message body.
#[derive(Debug, thiserror::Error)]
#[error("the jobs queue did not accept the message: {0}")]
pub struct QueueError(pub String);

/// The jobs queue on Amazon SQS.
#[derive(Debug, Clone)]
pub struct SqsQueue {
    client: aws_sdk_sqs::Client,
    queue_url: String,
}

impl SqsQueue {
    pub fn new(client: aws_sdk_sqs::Client, queue_url: impl Into<String>) -> Self {
        Self {
            client,
            queue_url: queue_url.into(),
        }
    }
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
            .map_err(|err| QueueError(DisplayErrorContext(&err).to_string()))
    }
}

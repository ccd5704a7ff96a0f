//! SQS adapter for the worker: run each record of a batch through the domain and report the
//! ones that failed, so SQS retries only those.

mod config;
pub mod ses;

pub use config::Config;

use aws_config::{SdkConfig, retry::RetryConfig};
use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
use futures::future::join_all;
use lambda_runtime::{Error, LambdaEvent};
use newsletter::{
    deliver::{Mailer, SendPolicy, Sender},
    directory::ContactDirectory,
    dynamo::DynamoStore,
    queue::{MessageQueue, SqsQueue},
    tasks::{ClaimStore, TaskStore},
    work::{Invocation, Worker},
};
use ses::{SesContactList, SesMailer};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The worker as deployed: SQS for the queue, SES v2 for contacts and mail.
pub type SesWorker = Worker<SqsQueue, SesContactList, SesMailer, DynamoStore>;

/// Builds the worker's clients once, at init. Makes no network call.
pub fn build(config: &Config, aws: &SdkConfig) -> SesWorker {
    let store = DynamoStore::new(aws_sdk_dynamodb::Client::new(aws), &config.table_name);
    build_with_store(config, aws, store)
}

/// The worker with another task store (the benchmark keeps claims in memory, so that it
/// measures the worker rather than the local DynamoDB).
pub fn build_with_store<S>(
    config: &Config,
    aws: &SdkConfig,
    store: S,
) -> Worker<SqsQueue, SesContactList, SesMailer, S>
where
    S: TaskStore + ClaimStore,
{
    // The contact-list APIs have low per-account request rates: when several plans run at once,
    // back off and retry inside the SDK rather than fail the job message.
    let ses = aws_sdk_sesv2::Client::from_conf(
        aws_sdk_sesv2::config::Builder::from(aws)
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(6)
                    .with_initial_backoff(Duration::from_millis(200))
                    .with_max_backoff(Duration::from_secs(5)),
            )
            .build(),
    );
    // Sends are retried by the `Sender`, which slows down on throttling and holds each
    // recipient's claim meanwhile; SDK retries would resend behind its back, at the old rate.
    let ses_sending = aws_sdk_sesv2::Client::from_conf(
        aws_sdk_sesv2::config::Builder::from(aws)
            .retry_config(RetryConfig::disabled())
            .build(),
    );
    Worker::new(
        SqsQueue::new(aws_sdk_sqs::Client::new(aws), &config.queue_url),
        SesContactList::new(ses, &config.contact_list_name),
        Sender::new(
            SesMailer::new(ses_sending, config),
            SendPolicy::per_instance(
                config.max_send_rate,
                config.max_concurrency,
                config.max_in_flight,
            ),
        ),
        store,
    )
}

/// Processes a batch. Records run concurrently (they share the send-rate limiter); each failed
/// record is reported by its message id, and a failure never affects its batch-mates.
///
/// A record on its `max_receive_count`th receive is on its last attempt: if it fails, SQS moves
/// it to the dead-letter queue, and the worker records that on its task first.
pub async fn handle<Q, D, M, S>(
    worker: &Worker<Q, D, M, S>,
    max_receive_count: u32,
    event: LambdaEvent<SqsEvent>,
) -> Result<SqsBatchResponse, Error>
where
    Q: MessageQueue,
    D: ContactDirectory,
    M: Mailer,
    S: TaskStore + ClaimStore,
{
    let deadline = invocation_deadline(event.context.deadline);
    let outcomes = join_all(event.payload.records.iter().map(|record| async move {
        let body = record.body.as_deref().unwrap_or_default();
        let receives: u32 = record
            .attributes
            .get("ApproximateReceiveCount")
            .and_then(|count| count.parse().ok())
            .unwrap_or(1);
        let invocation = Invocation {
            deadline,
            last_attempt: receives >= max_receive_count,
        };
        (
            record.message_id.as_deref(),
            worker.process(body, invocation).await,
        )
    }))
    .await;

    let mut response = SqsBatchResponse::default();
    for (message_id, result) in outcomes {
        let Err(err) = result else { continue };
        // Log the id and the reason, never the body: it holds subscriber data.
        tracing::warn!(message_id = message_id.unwrap_or("<none>"), error = %err, "reporting message failed");
        match message_id {
            Some(id) => {
                let mut failure = BatchItemFailure::default();
                failure.item_identifier = id.to_owned();
                response.batch_item_failures.push(failure);
            }
            // Without an id the record cannot be reported alone; failing the invocation makes
            // SQS retry the whole batch rather than lose this message.
            None => return Err("an SQS record without a message id failed".into()),
        }
    }
    Ok(response)
}

/// Time to assume when the deadline is unusable: the template's worker timeout.
const FALLBACK_TIME_LIMIT: Duration = Duration::from_secs(60);

/// The invocation's deadline, from the context's milliseconds since the epoch.
fn invocation_deadline(deadline_ms: u64) -> SystemTime {
    let deadline = UNIX_EPOCH + Duration::from_millis(deadline_ms);
    // Lambda always sends a deadline in the future. `cargo lambda watch` sends a duration
    // (600000) instead of a timestamp, which reads as long past: fall back to the timeout.
    if deadline > SystemTime::now() {
        deadline
    } else {
        SystemTime::now() + FALLBACK_TIME_LIMIT
    }
}

#[cfg(test)]
mod tests;

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
    queue::{MessageQueue, SqsQueue},
    work::Worker,
};
use ses::{SesContactList, SesMailer};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Time kept back from the invocation's deadline to re-enqueue owed recipients and report.
const DEADLINE_MARGIN: Duration = Duration::from_secs(5);

/// The worker as deployed: SQS for the queue, SES v2 for contacts and mail.
pub type SesWorker = Worker<SqsQueue, SesContactList, SesMailer>;

/// Builds the worker's clients once, at init. Makes no network call.
pub fn build(config: &Config, aws: &SdkConfig) -> SesWorker {
    // Throttling is expected at the account's send rate: back off and retry inside the SDK before
    // a recipient counts as owed.
    let ses_config = aws_sdk_sesv2::config::Builder::from(aws)
        .retry_config(
            RetryConfig::standard()
                .with_max_attempts(6)
                .with_initial_backoff(Duration::from_millis(200))
                .with_max_backoff(Duration::from_secs(5)),
        )
        .build();
    let ses = aws_sdk_sesv2::Client::from_conf(ses_config);
    Worker::new(
        SqsQueue::new(aws_sdk_sqs::Client::new(aws), &config.queue_url),
        SesContactList::new(ses.clone(), &config.contact_list_name),
        Sender::new(
            SesMailer::new(ses, config),
            SendPolicy::per_instance(
                config.max_send_rate,
                config.max_concurrency,
                config.max_in_flight,
            ),
        ),
    )
}

/// Processes a batch. Records run concurrently (they share the send-rate limiter); each failed
/// record is reported by its message id, and a failure never affects its batch-mates.
pub async fn handle<Q, D, M>(
    worker: &Worker<Q, D, M>,
    event: LambdaEvent<SqsEvent>,
) -> Result<SqsBatchResponse, Error>
where
    Q: MessageQueue,
    D: ContactDirectory,
    M: Mailer,
{
    let deadline = sending_deadline(event.context.deadline);
    let outcomes = join_all(event.payload.records.iter().map(|record| async move {
        let body = record.body.as_deref().unwrap_or_default();
        let result = worker.process(body, deadline).await;
        (record.message_id.as_deref(), result)
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

/// When to stop starting sends: the invocation's deadline (milliseconds since the epoch) less a
/// margin, as an `Instant`.
fn sending_deadline(deadline_ms: u64) -> Instant {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64);
    // Lambda always sends a deadline in the future. `cargo lambda watch` sends a duration
    // (600000) instead of a timestamp, which reads as long past: fall back to the timeout.
    let remaining = if deadline_ms > now_ms {
        Duration::from_millis(deadline_ms - now_ms)
    } else {
        FALLBACK_TIME_LIMIT
    };
    let margin = DEADLINE_MARGIN.min(remaining / 4);
    Instant::now() + remaining.saturating_sub(margin)
}

#[cfg(test)]
mod tests;

//! The `worker` Lambda: SQS batches in, newsletters out through SES v2, partial batch failures back.

use aws_config::{BehaviorVersion, retry::RetryConfig, timeout::TimeoutConfig};
use lambda_runtime::{Error, run, service_fn};
use newsletter::{
    deliver::{SendPolicy, Sender},
    queue::SqsQueue,
    work::Worker,
};
use std::time::Duration;
use worker::{
    Config,
    ses::{SesContactList, SesMailer},
};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    lambda_runtime::tracing::init_default_subscriber();

    let config = Config::from_env()?;
    // No network call here: clients resolve credentials and connect on first use.
    let aws = aws_config::defaults(BehaviorVersion::latest())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(3))
                .operation_attempt_timeout(Duration::from_secs(10))
                .build(),
        )
        .load()
        .await;
    // Throttling is expected at the account's send rate: back off and retry inside the SDK before
    // a recipient counts as owed.
    let ses_config = aws_sdk_sesv2::config::Builder::from(&aws)
        .retry_config(
            RetryConfig::standard()
                .with_max_attempts(6)
                .with_initial_backoff(Duration::from_millis(200))
                .with_max_backoff(Duration::from_secs(5)),
        )
        .build();
    let ses = aws_sdk_sesv2::Client::from_conf(ses_config);

    let worker = Worker::new(
        SqsQueue::new(aws_sdk_sqs::Client::new(&aws), &config.queue_url),
        SesContactList::new(ses.clone(), &config.contact_list_name),
        Sender::new(
            SesMailer::new(ses, &config),
            SendPolicy::per_instance(
                config.max_send_rate,
                config.max_concurrency,
                config.max_in_flight,
            ),
        ),
    );

    run(service_fn(|event| worker::handle(&worker, event))).await
}

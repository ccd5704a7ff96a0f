//! The `worker` Lambda: SQS batches in, newsletters out through SES v2, partial batch failures back.

use aws_config::{BehaviorVersion, timeout::TimeoutConfig};
use lambda_runtime::{Error, run, service_fn};
use std::time::Duration;
use worker::Config;

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
    let worker = worker::build(&config, &aws);

    run(service_fn(|event| {
        worker::handle(&worker, config.max_receive_count, event)
    }))
    .await
}

//! The `worker` Lambda: SQS batches in, newsletters out through SES v2, partial batch failures back.

use aws_config::timeout::TimeoutConfig;
use lambda_runtime::{Error, run, service_fn};
use newsletter::sdk;
use std::time::Duration;
use worker::Config;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    lambda_runtime::tracing::init_default_subscriber();

    let config = Config::from_env()?;
    let aws = sdk::load(
        TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(3))
            .operation_attempt_timeout(Duration::from_secs(10))
            .build(),
    )
    .await?;
    let worker = worker::build(&config, &aws);

    run(service_fn(|event| {
        worker::handle(&worker, config.max_receive_count, event)
    }))
    .await
}

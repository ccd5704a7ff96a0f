//! The `worker` Lambda: SQS batches in, newsletters out through SES v2, partial batch failures back.

use aws_config::timeout::TimeoutConfig;
use lambda_runtime::{Error, run, service_fn};
use newsletter_aws::sdk;
use std::time::Duration;
use worker::Config;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    lambda_runtime::tracing::init_default_subscriber();

    let config = Config::from_env()?;
    let aws = sdk::load(
        TimeoutConfig::builder()
            // Short enough that a slow call fails within the invocation's reserve (see
            // `newsletter::sending::Budget`) and is retried there, not cut off by Lambda.
            .connect_timeout(Duration::from_secs(1))
            .operation_attempt_timeout(Duration::from_secs(2))
            .operation_timeout(Duration::from_secs(3))
            .build(),
    )
    .await?;
    let function = worker::build(&config, &aws)?;

    run(service_fn(|event| worker::handle(&function, event))).await
}

//! The `accept` Lambda: `POST /newsletters` → SQS → `202 Accepted`.

use accept::App;
use aws_config::timeout::TimeoutConfig;
use lambda_http::{Error, run, service_fn};
use newsletter::{config, dynamo::DynamoStore, queue::SqsQueue, sdk};
use std::time::Duration;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    lambda_http::tracing::init_default_subscriber();

    let queue_url = config::required("QUEUE_URL")?;
    let table_name = config::required("TABLE_NAME")?;
    // The caller is waiting. Each call is cut off at the invocation's deadline (`submit`), so
    // these only keep one struggling attempt from using up a request's time: well below the
    // 10 s function timeout, leaving room for the SDK's retries, the withdraw and the answer.
    let aws = sdk::load(
        TimeoutConfig::builder()
            .connect_timeout(Duration::from_millis(500))
            .operation_attempt_timeout(Duration::from_millis(1500))
            .operation_timeout(Duration::from_secs(4))
            .build(),
    )
    .await?;
    let app = App::new(
        SqsQueue::new(aws_sdk_sqs::Client::new(&aws), queue_url),
        DynamoStore::new(aws_sdk_dynamodb::Client::new(&aws), table_name),
    );

    run(service_fn(|request| async {
        Ok::<_, Error>(app.handle(request).await)
    }))
    .await
}

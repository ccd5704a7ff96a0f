//! The `accept` Lambda: `POST /newsletters` → SQS → `202 Accepted`.

use accept::App;
use lambda_http::{Error, run, service_fn};
use newsletter::{config, dynamo::DynamoStore, queue::SqsQueue, sdk};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    lambda_http::tracing::init_default_subscriber();

    let queue_url = config::required("QUEUE_URL")?;
    let table_name = config::required("TABLE_NAME")?;
    // The caller is waiting: bound the time a struggling SQS or DynamoDB can hold a request.
    let aws = sdk::load(accept::sdk_timeouts()).await?;
    let app = App::new(
        SqsQueue::new(aws_sdk_sqs::Client::new(&aws), queue_url),
        DynamoStore::new(aws_sdk_dynamodb::Client::new(&aws), table_name),
    );

    run(service_fn(|request| async {
        Ok::<_, Error>(app.handle(request).await)
    }))
    .await
}

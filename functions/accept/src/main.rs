//! The `accept` Lambda: `POST /newsletters` → SQS → `202 Accepted` (and the other routes of
//! `accept::ROUTES`).

use accept::App;
use lambda_http::{Error, lambda_runtime, service_fn};
use newsletter::config;
use newsletter_aws::dynamodb::DynamoStore;
use newsletter_aws::sdk;
use newsletter_aws::ses::SesContactList;
use newsletter_aws::sqs::SqsQueue;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    lambda_http::tracing::init_default_subscriber();

    let queue_url = config::required("QUEUE_URL")?;
    let table_name = config::required("TABLE_NAME")?;
    let contact_list_name = config::required("CONTACT_LIST_NAME")?;
    // The caller is waiting: bound the time a struggling SQS or DynamoDB can hold a request.
    let aws = sdk::load(accept::sdk_timeouts()).await?;
    let app = App::new(
        SqsQueue::new(aws_sdk_sqs::Client::new(&aws), queue_url),
        DynamoStore::new(aws_sdk_dynamodb::Client::new(&aws), table_name),
        // With accept's own timeouts (not the worker's patient contact-list client): a preview
        // answers within the request's time, 503 at worst.
        SesContactList::new(aws_sdk_sesv2::Client::new(&aws), contact_list_name),
    );

    // Not lambda_http::run: its conversion of the event panics on some events API Gateway sends
    // (see accept::event); handle_event answers every one. Boxed: with the features a
    // workspace-wide build unifies (clippy, the tests), the unboxed future nests past rustc's
    // query depth limit computing its layout.
    lambda_runtime::run(service_fn(|event| Box::pin(app.handle_event(event)))).await
}

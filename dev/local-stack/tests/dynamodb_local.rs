//! DynamoDB Local as the local stack uses it: the tasks table as the template defines it, and
//! `sdk_config` sending DynamoDB there and every other service to the other endpoint.

use aws_sdk_dynamodb::types::{BillingMode, TimeToLiveStatus};
use local_stack::dynamodb_local::{shared_endpoint, unique_table_name};
use local_stack::{Endpoints, provision::create_tasks_table};

#[tokio::test]
async fn the_tasks_table_is_created_as_the_template_defines_it() {
    let aws = local_stack::sdk_config(&Endpoints {
        aws: closed_endpoint(),
        dynamodb: shared_endpoint().expect("DynamoDB Local starts"),
    })
    .await;
    let dynamodb = aws_sdk_dynamodb::Client::new(&aws);
    let name = unique_table_name("tasks");

    create_tasks_table(&dynamodb, &name).await.unwrap();

    let table = dynamodb
        .describe_table()
        .table_name(&name)
        .send()
        .await
        .unwrap()
        .table
        .unwrap();
    let key = table.key_schema();
    assert_eq!(key.len(), 1);
    assert_eq!(key[0].attribute_name(), "pk");
    assert_eq!(
        table
            .billing_mode_summary()
            .and_then(|summary| summary.billing_mode()),
        Some(&BillingMode::PayPerRequest)
    );
    let ttl = dynamodb
        .describe_time_to_live()
        .table_name(&name)
        .send()
        .await
        .unwrap()
        .time_to_live_description
        .unwrap();
    assert_eq!(ttl.attribute_name(), Some("expires_at"));
    assert_eq!(ttl.time_to_live_status(), Some(&TimeToLiveStatus::Enabled));
}

#[tokio::test]
async fn only_dynamodb_goes_to_dynamodb_local() {
    let aws = local_stack::sdk_config(&Endpoints {
        aws: closed_endpoint(),
        dynamodb: shared_endpoint().expect("DynamoDB Local starts"),
    })
    .await;

    let tables = aws_sdk_dynamodb::Client::new(&aws)
        .list_tables()
        .send()
        .await;
    let queues = aws_sdk_sqs::Client::new(&aws).list_queues().send().await;

    assert!(tables.is_ok(), "{tables:?}");
    assert!(queues.is_err(), "SQS must go to the closed endpoint");
}

#[tokio::test]
async fn the_warm_up_runs_on_a_table_of_its_own() {
    let endpoint = shared_endpoint().expect("DynamoDB Local starts");
    let dynamodb = local_stack::dynamodb_client(&endpoint);

    local_stack::dynamodb_local::warm_up(&dynamodb, 3)
        .await
        .unwrap();

    let tables = dynamodb.list_tables().send().await.unwrap();
    assert!(
        tables
            .table_names()
            .iter()
            .all(|name| !name.starts_with("warm-up")),
        "{tables:?}"
    );
}

#[test]
fn table_names_are_unique_and_valid() {
    let (first, second) = (unique_table_name("t"), unique_table_name("t"));
    assert_ne!(first, second);
    // DynamoDB (Local too) rejects names under 3 characters.
    assert!(first.len() >= 3, "{first}");
}

/// An endpoint nothing listens on.
fn closed_endpoint() -> String {
    let port = local_stack::moto::free_port().expect("a free port");
    format!("http://127.0.0.1:{port}")
}

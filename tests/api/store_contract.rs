//! The store contract (`newsletter::testing::contract`) on the DynamoDB store, against DynamoDB Local:
//! the same scenarios the in-memory store passes in the unit tests, so that no unit test can
//! pass on behaviour the shipped store does not have.

use newsletter_aws::dynamodb::DynamoStore;

/// The DynamoDB store on a table of its own on the test process's DynamoDB Local.
async fn dynamo_store() -> DynamoStore {
    let endpoint = local_stack::dynamodb_local::shared_endpoint().expect("DynamoDB Local starts");
    let client = local_stack::dynamodb_client(&endpoint);
    let table = local_stack::dynamodb_local::unique_table_name("contract");
    local_stack::provision::create_tasks_table(&client, &table)
        .await
        .expect("the tasks table is created");
    DynamoStore::new(client, table)
}

newsletter::store_contract!(dynamo_store().await);

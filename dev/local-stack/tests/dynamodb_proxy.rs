//! The DynamoDB proxy with the Rust SDK on one side and DynamoDB Local on the other: what it
//! counts, and that the SDK takes each injected answer for the error DynamoDB would give (and
//! retries exactly those that it retries from DynamoDB).

use aws_config::retry::ErrorKind;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::config::retry::RetryConfig;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{
    AttributeValue, Get, KeysAndAttributes, Put, PutRequest, ReturnConsumedCapacity,
    TransactGetItem, TransactWriteItem, Update, WriteRequest,
};
use local_stack::dynamodb_local::{shared_endpoint, unique_table_name};
use local_stack::dynamodb_proxy::{DynamoDbProxy, Fault, FaultKind, Operation};
use local_stack::provision::create_tasks_table;
use std::time::Duration;

struct Fixture {
    proxy: DynamoDbProxy,
    /// Through the proxy, with the SDK's standard retry (3 attempts), backing off briefly.
    client: Client,
    /// Through the proxy, without retries: what a single answer parses as.
    once: Client,
    /// Straight to DynamoDB Local, to look at the table behind the proxy's back.
    direct: Client,
    table: String,
}

async fn fixture() -> Fixture {
    let upstream = shared_endpoint().expect("DynamoDB Local starts");
    let proxy = DynamoDbProxy::start(&upstream).await.expect("proxy starts");
    let through = local_stack::dynamodb_client(&proxy.endpoint());
    let with_retry = |retry: RetryConfig| {
        Client::from_conf(through.config().to_builder().retry_config(retry).build())
    };
    let client = with_retry(
        RetryConfig::standard()
            .with_max_attempts(3)
            .with_initial_backoff(Duration::from_millis(10)),
    );
    let once = with_retry(RetryConfig::disabled());
    let table = unique_table_name("proxy");
    create_tasks_table(&client, &table).await.unwrap();
    proxy.reset_stats();
    Fixture {
        proxy,
        client,
        once,
        direct: local_stack::dynamodb_client(&upstream),
        table,
    }
}

fn s(value: &str) -> AttributeValue {
    AttributeValue::S(value.into())
}

fn n(value: i64) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

impl Fixture {
    fn put(&self, pk: &str) -> Put {
        Put::builder()
            .table_name(&self.table)
            .item("pk", s(pk))
            .build()
            .unwrap()
    }

    fn add_one(&self, pk: &str) -> Update {
        Update::builder()
            .table_name(&self.table)
            .key("pk", s(pk))
            .update_expression("ADD #count :one")
            .expression_attribute_names("#count", "count")
            .expression_attribute_values(":one", n(1))
            .build()
            .unwrap()
    }

    async fn increment(&self, client: &Client, pk: &str) -> Result<(), SdkError<UpdateItemError>> {
        client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(pk))
            .update_expression("ADD #count :one")
            .expression_attribute_names("#count", "count")
            .expression_attribute_values(":one", n(1))
            .send()
            .await
            .map(|_| ())
    }

    /// The item's `count` as DynamoDB Local holds it (`None`: no item).
    async fn count(&self, pk: &str) -> Option<i64> {
        let item = self
            .direct
            .get_item()
            .table_name(&self.table)
            .key("pk", s(pk))
            .consistent_read(true)
            .send()
            .await
            .unwrap()
            .item?;
        Some(
            item.get("count")
                .and_then(|count| count.as_n().ok())
                .map_or(0, |count| count.parse().unwrap()),
        )
    }
}

#[tokio::test]
async fn capacity_is_counted_per_operation_as_dynamodb_local_reports_it() {
    let f = fixture().await;
    let c = &f.client;

    let put = c
        .put_item()
        .table_name(&f.table)
        .item("pk", s("a"))
        .send()
        .await
        .unwrap();
    // The proxy asked for it, so the SDK sees it too.
    assert_eq!(put.consumed_capacity().unwrap().capacity_units(), Some(1.0));
    let refused = c
        .put_item()
        .table_name(&f.table)
        .item("pk", s("a"))
        .condition_expression("attribute_not_exists(pk)")
        .send()
        .await;
    assert!(refused.is_err());
    f.increment(c, "a").await.unwrap();
    c.get_item()
        .table_name(&f.table)
        .key("pk", s("a"))
        .consistent_read(true)
        .send()
        .await
        .unwrap();
    c.get_item()
        .table_name(&f.table)
        .key("pk", s("a"))
        .send()
        .await
        .unwrap();
    for items in [2, 4] {
        let mut transaction = c.transact_write_items();
        for item in 0..items {
            transaction = transaction.transact_items(
                TransactWriteItem::builder()
                    .put(f.put(&format!("t{items}-{item}")))
                    .build(),
            );
        }
        transaction.send().await.unwrap();
    }
    let get = |pk: &str| {
        TransactGetItem::builder()
            .get(
                Get::builder()
                    .table_name(&f.table)
                    .key("pk", s(pk))
                    .build()
                    .unwrap(),
            )
            .build()
    };
    c.transact_get_items()
        .transact_items(get("a"))
        .transact_items(get("t2-0"))
        .send()
        .await
        .unwrap();
    let writes = ["b1", "b2", "b3"]
        .into_iter()
        .map(|pk| {
            let put = PutRequest::builder().item("pk", s(pk)).build().unwrap();
            WriteRequest::builder().put_request(put).build()
        })
        .collect();
    c.batch_write_item()
        .request_items(&f.table, writes)
        .send()
        .await
        .unwrap();
    let keys = ["b1", "b2", "b3"]
        .into_iter()
        .fold(KeysAndAttributes::builder(), |keys, pk| {
            keys.keys([("pk".to_owned(), s(pk))].into())
        })
        .build()
        .unwrap();
    c.batch_get_item()
        .request_items(&f.table, keys)
        .send()
        .await
        .unwrap();
    c.query()
        .table_name(&f.table)
        .key_condition_expression("pk = :pk")
        .expression_attribute_values(":pk", s("a"))
        .send()
        .await
        .unwrap();
    c.scan().table_name(&f.table).send().await.unwrap();
    c.delete_item()
        .table_name(&f.table)
        .key("pk", s("b1"))
        .send()
        .await
        .unwrap();
    // A client's own setting is left alone: NONE is not counted, INDEXES is.
    let uncounted = c
        .put_item()
        .table_name(&f.table)
        .item("pk", s("c"))
        .return_consumed_capacity(ReturnConsumedCapacity::None)
        .send()
        .await
        .unwrap();
    assert!(uncounted.consumed_capacity().is_none());
    c.delete_item()
        .table_name(&f.table)
        .key("pk", s("c"))
        .return_consumed_capacity(ReturnConsumedCapacity::Indexes)
        .send()
        .await
        .unwrap();

    let stats = f.proxy.stats();
    let units = |operation: Operation| {
        let stats = stats.operation(operation);
        (stats.requests, stats.write_units, stats.read_units)
    };
    // One small item is one write unit; the refused put reports none (DynamoDB charges it).
    assert_eq!(units(Operation::PutItem), (3, 1.0, 0.0));
    assert_eq!(
        stats.operation(Operation::PutItem).errors,
        [("ConditionalCheckFailedException".to_owned(), 1)].into()
    );
    assert_eq!(units(Operation::UpdateItem), (1, 1.0, 0.0));
    assert_eq!(units(Operation::DeleteItem), (2, 2.0, 0.0));
    // Consistent 1, eventually consistent 0.5.
    assert_eq!(units(Operation::GetItem), (2, 0.0, 1.5));
    // DynamoDB would charge 2 per item (4 + 8); DynamoDB Local says 2 per transaction of small
    // items. The item count is there to compute DynamoDB's figure.
    assert_eq!(units(Operation::TransactWriteItems), (2, 4.0, 0.0));
    assert_eq!(
        stats
            .operation(Operation::TransactWriteItems)
            .transact_items,
        6
    );
    // Transactional reads are right: 2 per item.
    assert_eq!(units(Operation::TransactGetItems), (1, 0.0, 4.0));
    assert_eq!(
        stats.operation(Operation::TransactGetItems).transact_items,
        2
    );
    assert_eq!(units(Operation::BatchWriteItem), (1, 3.0, 0.0));
    assert_eq!(units(Operation::BatchGetItem), (1, 0.0, 1.5));
    assert_eq!(units(Operation::Query), (1, 0.0, 0.5));
    assert_eq!(units(Operation::Scan), (1, 0.0, 0.5));
    assert_eq!(stats.total.requests, 15);
    assert_eq!(stats.total.write_units, 11.0);
    assert_eq!(stats.total.read_units, 8.0);
    assert_eq!(stats.total.errors_total(), 1);
    // DynamoDB's bill: 1 + 1 (the refused put) + 1 + 2 + 2 × 6 + 3.
    assert_eq!(stats.estimated_write_units(), 20.0);
    assert_eq!(stats.total.injected, 0);

    f.proxy.reset_stats();
    assert_eq!(f.proxy.stats().total.requests, 0);
}

#[tokio::test]
async fn a_transaction_conflict_is_a_cancelled_transaction_that_the_sdk_does_not_retry() {
    let f = fixture().await;
    f.proxy.inject(Fault::on(
        Operation::TransactWriteItems,
        FaultKind::TransactionConflict,
    ));

    let err = f
        .client
        .transact_write_items()
        .transact_items(TransactWriteItem::builder().put(f.put("x1")).build())
        .transact_items(TransactWriteItem::builder().update(f.add_one("x2")).build())
        .transact_items(TransactWriteItem::builder().put(f.put("x3")).build())
        .send()
        .await
        .unwrap_err();

    let Some(TransactWriteItemsError::TransactionCanceledException(cancelled)) =
        err.as_service_error()
    else {
        panic!("not a cancelled transaction: {err:?}");
    };
    let codes: Vec<Option<&str>> = cancelled
        .cancellation_reasons()
        .iter()
        .map(|reason| reason.code())
        .collect();
    assert_eq!(
        codes,
        [Some("TransactionConflict"), Some("None"), Some("None")]
    );
    assert_eq!(
        cancelled.message(),
        Some(
            "Transaction cancelled, please refer cancellation reasons for specific reasons \
             [TransactionConflict, None, None]"
        )
    );
    let stats = f.proxy.stats();
    assert_eq!(
        stats.operation(Operation::TransactWriteItems).requests,
        1,
        "not retried by the SDK"
    );
    assert_eq!(stats.injected(FaultKind::TransactionConflict), 1);
    assert_eq!(f.count("x1").await, None, "not forwarded");

    // A single-item write that meets a transaction.
    f.proxy.inject(Fault::on(
        Operation::UpdateItem,
        FaultKind::TransactionConflict,
    ));
    let err = f.increment(&f.client, "x2").await.unwrap_err();
    assert!(
        matches!(
            err.as_service_error(),
            Some(UpdateItemError::TransactionConflictException(_))
        ),
        "{err:?}"
    );
    assert_eq!(f.proxy.stats().operation(Operation::UpdateItem).requests, 1);
    assert_eq!(f.count("x2").await, None);
    assert_eq!(f.proxy.faults_left(), 0);
}

#[tokio::test]
async fn throttling_is_retried_by_the_sdk_standard_retry_up_to_its_attempts() {
    let f = fixture().await;
    for kind in [
        FaultKind::Throttling,
        FaultKind::ProvisionedThroughputExceeded,
    ] {
        f.proxy.reset_stats();
        f.proxy
            .inject(Fault::on(Operation::UpdateItem, kind).times(2));
        f.increment(&f.client, "counter").await.unwrap();
        let stats = f.proxy.stats();
        assert_eq!(
            stats.operation(Operation::UpdateItem).requests,
            3,
            "{kind:?}"
        );
        assert_eq!(stats.injected(kind), 2);

        // One more than the SDK's attempts: it gives up with the throttling error.
        f.proxy
            .inject(Fault::on(Operation::UpdateItem, kind).times(3));
        let err = f.increment(&f.client, "counter").await.unwrap_err();
        let service = err.as_service_error().expect("a service error");
        match kind {
            FaultKind::Throttling => assert!(service.is_throttling_exception(), "{err:?}"),
            _ => assert!(
                service.is_provisioned_throughput_exceeded_exception(),
                "{err:?}"
            ),
        }
        assert_eq!(f.proxy.stats().operation(Operation::UpdateItem).requests, 6);
    }
    assert_eq!(
        f.count("counter").await,
        Some(2),
        "applied once per success"
    );

    // Throttling a transaction is retried too (no ClientRequestToken mismatch: it is the same).
    f.proxy.inject(Fault::on(
        Operation::TransactWriteItems,
        FaultKind::Throttling,
    ));
    f.client
        .transact_write_items()
        .transact_items(
            TransactWriteItem::builder()
                .update(f.add_one("counter"))
                .build(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(f.count("counter").await, Some(3));
}

#[tokio::test]
async fn a_lost_answer_is_applied_then_retried_as_a_transient_error() {
    let f = fixture().await;

    // What one answer is: a modeled InternalServerError, HTTP 500, after the write happened.
    f.proxy
        .inject(Fault::on(Operation::UpdateItem, FaultKind::LostAnswer));
    let err = f.increment(&f.once, "counter").await.unwrap_err();
    assert!(
        matches!(
            err.as_service_error(),
            Some(UpdateItemError::InternalServerError(_))
        ),
        "{err:?}"
    );
    assert_eq!(
        err.raw_response().map(|raw| raw.status().as_u16()),
        Some(500)
    );
    assert_eq!(f.count("counter").await, Some(1), "it was applied");

    // The SDK retries it, so the write reaches the table twice.
    f.proxy
        .inject(Fault::on(Operation::UpdateItem, FaultKind::LostAnswer));
    f.increment(&f.client, "counter").await.unwrap();
    assert_eq!(f.count("counter").await, Some(3));

    // A conditional write retried after a lost answer fails its own condition.
    f.proxy
        .inject(Fault::on(Operation::PutItem, FaultKind::LostAnswer));
    let err = f
        .client
        .put_item()
        .table_name(&f.table)
        .item("pk", s("claimed"))
        .condition_expression("attribute_not_exists(pk)")
        .send()
        .await
        .unwrap_err();
    assert!(
        err.as_service_error()
            .is_some_and(|err| err.is_conditional_check_failed_exception()),
        "{err:?}"
    );
    assert_eq!(
        f.count("claimed").await,
        Some(0),
        "written by the first try"
    );

    // A transaction's retry carries the same ClientRequestToken, which DynamoDB Local honours:
    // it succeeds and is applied once.
    f.proxy.inject(Fault::on(
        Operation::TransactWriteItems,
        FaultKind::LostAnswer,
    ));
    f.client
        .transact_write_items()
        .transact_items(
            TransactWriteItem::builder()
                .update(f.add_one("counter"))
                .build(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(f.count("counter").await, Some(4));
    let stats = f.proxy.stats();
    assert_eq!(stats.operation(Operation::TransactWriteItems).requests, 2);
    assert_eq!(stats.injected(FaultKind::LostAnswer), 4);
    // The lost answers' capacity was consumed, and is counted.
    assert_eq!(stats.operation(Operation::UpdateItem).write_units, 3.0);
}

#[tokio::test]
async fn a_dropped_connection_is_applied_then_retried_as_a_transient_error() {
    let f = fixture().await;

    f.proxy.inject(Fault::on(
        Operation::UpdateItem,
        FaultKind::DroppedConnection,
    ));
    let err = f.increment(&f.once, "counter").await.unwrap_err();
    // No answer at all: a dispatch failure (hyper's IncompleteMessage), which the SDK's
    // connector marks transient.
    let SdkError::DispatchFailure(failure) = &err else {
        panic!("not a dispatch failure: {err:?}");
    };
    assert_eq!(
        failure.as_other(),
        Some(ErrorKind::TransientError),
        "{err:?}"
    );
    assert_eq!(f.count("counter").await, Some(1), "it was applied");

    f.proxy.inject(Fault::on(
        Operation::UpdateItem,
        FaultKind::DroppedConnection,
    ));
    f.increment(&f.client, "counter").await.unwrap();
    assert_eq!(f.count("counter").await, Some(3), "applied, then retried");
    assert_eq!(f.proxy.stats().injected(FaultKind::DroppedConnection), 2);
}

#[tokio::test]
async fn a_fault_skips_the_requests_it_is_told_to_and_any_matches_only_data_operations() {
    let f = fixture().await;
    f.proxy.inject(
        Fault::on(Operation::GetItem, FaultKind::Throttling)
            .after(2)
            .times(1),
    );
    let get = || {
        f.once
            .get_item()
            .table_name(&f.table)
            .key("pk", s("a"))
            .send()
    };
    assert!(get().await.is_ok());
    assert!(get().await.is_ok());
    assert!(get().await.is_err(), "the third");
    assert!(get().await.is_ok(), "once");

    f.proxy
        .inject(Fault::on_any(FaultKind::ProvisionedThroughputExceeded));
    // Table management is never faulted (provisioning goes through the proxy too).
    f.once
        .describe_table()
        .table_name(&f.table)
        .send()
        .await
        .unwrap();
    assert_eq!(f.proxy.faults_left(), 1);
    let query = f
        .once
        .query()
        .table_name(&f.table)
        .key_condition_expression("pk = :pk")
        .expression_attribute_values(":pk", s("a"))
        .send()
        .await
        .unwrap_err();
    assert!(
        query
            .as_service_error()
            .is_some_and(|err| err.is_provisioned_throughput_exceeded_exception()),
        "{query:?}"
    );
    assert_eq!(f.proxy.faults_left(), 0);

    f.proxy
        .inject(Fault::on(Operation::Scan, FaultKind::Throttling).times(5));
    f.proxy.clear_faults();
    assert!(f.once.scan().table_name(&f.table).send().await.is_ok());
}

#[tokio::test]
async fn the_proxy_stops_when_dropped() {
    let f = fixture().await;
    let address = f.proxy.endpoint().trim_start_matches("http://").to_owned();
    drop(f.proxy);
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(&address).await.is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the proxy still listens on {address}");
}

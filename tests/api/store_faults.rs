//! The DynamoDB store under what DynamoDB Local never does (transaction conflicts, throttling,
//! lost answers, dropped connections), injected by the DynamoDB proxy between the functions and
//! it: every contact still gets exactly one email, the task completes with exact counts, and no
//! chunk is left leased.

use crate::helpers::{TestApp, json_body, post_request, spawn_app_behind_dynamodb_proxy};
use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use aws_sdk_dynamodb::types::AttributeValue;
use lambda_http::{Body, RequestExt, http};
use lambda_runtime::{Context, LambdaEvent};
use local_stack::Settings;
use local_stack::dynamodb_proxy::{CapacityStats, DynamoDbProxy, Fault, FaultKind, Operation};
use local_stack::event_source::Invoke;
use local_stack::subscribers::{ContactList, Status, Subscriber, TopicSpec};
use newsletter::domain::{TaskId, TaskKind, TaskStatus};
use newsletter::message::Message;
use newsletter::ports::{ChunkStore, Holder, Lease, Settled, TaskStore};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use worker::{WorkerEvent, WorkerResponse};

/// Contacts that want the newsletter's one topic (three chunks: 50, 50, 20), and contacts that
/// opted out of it.
const OPTED_IN: usize = 120;
const OPTED_OUT: usize = 12;
/// An invocation's time, short: the SDK's backoffs (up to 1 s, then 2 s, for throttling) use up
/// its budget, so chunks are also handed back for lack of time and messages fail when the store
/// cannot be retried before the deadline. Its leases lapse 2 s (the store's clock-skew
/// allowance) after it.
const SHORT_INVOCATION: Duration = Duration::from_secs(5);
/// Time enough for the store's own retries after any of the SDK's backoffs here.
const LONG_INVOCATION: Duration = Duration::from_secs(30);
/// Longer than a short invocation's lease lives, as the template's (6 × the function timeout)
/// is longer than the function's: a message that failed with its chunk still leased comes back
/// once the lease has lapsed (sooner, its copy would find the chunk busy and be dropped).
const VISIBILITY_TIMEOUT: u32 = 8;

fn audience() -> ContactList {
    let contact = |email: String, opted_out: bool| Subscriber {
        email,
        topics: if opted_out {
            [("rust".to_owned(), Status::OptOut)].into()
        } else {
            Default::default()
        },
        unsubscribe_all: false,
    };
    ContactList {
        topics: vec![TopicSpec {
            name: "rust".into(),
            default: Status::OptIn,
        }],
        subscribers: (0..OPTED_IN)
            .map(|i| contact(format!("reader{i:03}@example.com"), false))
            .chain((0..OPTED_OUT).map(|i| contact(format!("quiet{i:02}@example.com"), true)))
            .collect(),
    }
}

async fn app() -> (TestApp, DynamoDbProxy) {
    spawn_app_behind_dynamodb_proxy(Settings {
        audience: audience(),
        visibility_timeout: VISIBILITY_TIMEOUT,
        ..Settings::local().expect("template.yaml gives the local settings")
    })
    .await
}

/// Accepts the newsletter (with no fault injected yet) and returns its task id.
async fn post(app: &TestApp) -> String {
    let body = json!({"subject": "Weekly digest",
        "sections": [{"topic": "rust", "title": "Release notes", "body": "About *Rust*."}]})
    .to_string();
    let accepted = app.post_newsletter(&body).await;
    assert_eq!(accepted.status(), 202);
    json_body(&accepted)["task_id"]
        .as_str()
        .expect("a task id")
        .to_owned()
}

/// The worker handler called in-process with a deadline `lifetime` away, shorter than the
/// helper's 60 s, so that leases lapse within the test as they would after a Lambda timeout.
/// Records which messages it reported failed.
struct Invocations<'a> {
    app: &'a TestApp,
    lifetime: Duration,
    failed: Mutex<Vec<String>>,
}

impl<'a> Invocations<'a> {
    fn new(app: &'a TestApp, lifetime: Duration) -> Self {
        Self {
            app,
            lifetime,
            failed: Mutex::default(),
        }
    }
}

impl Invoke for Invocations<'_> {
    async fn invoke(&self, event: SqsEvent) -> anyhow::Result<SqsBatchResponse> {
        let mut context = Context::default();
        let deadline = SystemTime::now().duration_since(UNIX_EPOCH)? + self.lifetime;
        context.deadline = deadline.as_millis() as u64;
        let answer = worker::handle(
            &self.app.worker.function,
            LambdaEvent::new(WorkerEvent::Batch(event.clone()), context),
        )
        .await
        .map_err(|err| anyhow::anyhow!("{err}"))?;
        let WorkerResponse::Batch(response) = answer else {
            anyhow::bail!("a batch was answered as a sweep")
        };
        for failure in &response.batch_item_failures {
            let body = event
                .records
                .iter()
                .find(|record| record.message_id.as_ref() == Some(&failure.item_identifier))
                .and_then(|record| record.body.as_deref())
                .unwrap_or_default();
            let part = match Message::decode(body) {
                Ok(Message::Job(job)) => format!("job page {}", job.page()),
                Ok(Message::Delivery(delivery)) => format!("delivery {}", delivery.chunk_id),
                Err(err) => format!("undecodable: {err}"),
            };
            self.failed.lock().unwrap().push(part);
        }
        Ok(response)
    }
}

/// Feeds the worker from the queue as Lambda's trigger does, until the queue is empty: a message
/// reported failed comes back after the visibility timeout. Returns the messages that failed, one
/// entry per failed receive.
async fn run_worker_until_queue_is_empty(app: &TestApp, lifetime: Duration) -> Vec<String> {
    let source = app.event_source(10).await;
    let invoker = Invocations::new(app, lifetime);
    let started = Instant::now();
    loop {
        let outcome = source.poll(&invoker).await.expect("poll the queue");
        if outcome.bodies.is_empty() {
            if app.queue_depth().await == 0 {
                return invoker.failed.into_inner().unwrap();
            }
            assert!(
                started.elapsed() < Duration::from_secs(180),
                "the queue did not drain"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

async fn status(app: &TestApp, task_id: &str) -> Value {
    let path = format!("/newsletters/{task_id}");
    let request = http::Request::builder()
        .method("GET")
        .uri(&path)
        .body(Body::Empty)
        .unwrap()
        .with_raw_http_path(&path);
    let response = app.accept.handle(request).await;
    assert_eq!(response.status(), 200);
    json_body(&response)
}

/// The task's chunk items, read from DynamoDB Local itself (not through the proxy).
async fn chunk_items(
    proxy: &DynamoDbProxy,
    app: &TestApp,
    task_id: &str,
) -> Vec<HashMap<String, AttributeValue>> {
    let dynamodb = local_stack::dynamodb_client(proxy.upstream());
    let mut items = Vec::new();
    let mut start = None;
    loop {
        let page = dynamodb
            .scan()
            .table_name(&app.settings.table_name)
            .filter_expression("begins_with(pk, :chunk)")
            .expression_attribute_values(":chunk", AttributeValue::S(format!("chunk#{task_id}#")))
            .consistent_read(true)
            .set_exclusive_start_key(start)
            .send()
            .await
            .expect("scan the table");
        items.extend(page.items.unwrap_or_default());
        start = page.last_evaluated_key;
        if start.is_none() {
            return items;
        }
    }
}

/// What must hold whatever the faults were.
async fn assert_delivered_exactly_once(app: &TestApp, proxy: &DynamoDbProxy, task_id: &str) {
    // Reads below go through the proxy: nothing more is injected.
    proxy.clear_faults();
    let mut expected: Vec<String> = (0..OPTED_IN)
        .map(|i| format!("reader{i:03}@example.com"))
        .collect();
    expected.sort();
    assert_eq!(
        app.recipients().await,
        expected,
        "every opted-in contact exactly one email, nobody else any"
    );
    let status = status(app, task_id).await;
    assert_eq!(status["status"], "completed", "{status}");
    assert_eq!(
        status["recipients"],
        json!({"planned": OPTED_IN + OPTED_OUT, "sent": OPTED_IN, "skipped": OPTED_OUT, "failed": 0, "cancelled": 0}),
        "{status}"
    );
    assert!(status.get("failures").is_none(), "{status}");
    let chunks = chunk_items(proxy, app, task_id).await;
    assert_eq!(chunks.len(), OPTED_IN.div_ceil(50), "{chunks:?}");
    for chunk in &chunks {
        assert!(
            !chunk.contains_key("holder"),
            "a chunk is still leased: {chunk:?}"
        );
        assert_eq!(
            chunk.get("done"),
            Some(&AttributeValue::Bool(true)),
            "{chunk:?}"
        );
    }
    assert_eq!(app.dead_letter_depth().await, 0);
}

fn assert_injected(stats: &CapacityStats, kinds: &[FaultKind]) {
    for kind in kinds {
        assert!(
            stats.injected(*kind) > 0,
            "no {kind:?} injected: {stats:#?}"
        );
    }
}

/// Per-operation requests, units and faults, for the test's output (`--nocapture`).
fn report(scenario: &str, stats: &CapacityStats, failed: &[String]) {
    eprintln!(
        "{scenario}: failed receives {failed:?}; injected {:?}",
        stats.injected
    );
    for (operation, figures) in &stats.operations {
        eprintln!(
            "  {operation}: {} requests, {} write / {} read units, {} transaction items, \
             errors {:?}, {} injected",
            figures.requests,
            figures.write_units,
            figures.read_units,
            figures.transact_items,
            figures.errors,
            figures.injected
        );
    }
}

#[tokio::test]
async fn planning_survives_a_conflict_and_lost_answers_on_its_page_record() {
    let (app, proxy) = app().await;
    let task_id = post(&app).await;
    // The plan's own put loses its answer: the SDK's retry finds the plan stored.
    proxy.inject(Fault::on(Operation::PutItem, FaultKind::LostAnswer));
    // The page's record (its marker and counts, one transaction) meets a conflict: the job
    // fails and comes back from SQS. Its second try loses the answer: the SDK retries it.
    proxy.inject(Fault::on(
        Operation::TransactWriteItems,
        FaultKind::TransactionConflict,
    ));
    proxy.inject(Fault::on(Operation::TransactWriteItems, FaultKind::LostAnswer).after(1));

    let failed = run_worker_until_queue_is_empty(&app, SHORT_INVOCATION).await;

    let stats = proxy.stats();
    report("planning", &stats, &failed);
    assert_eq!(proxy.faults_left(), 0, "every fault was injected");
    assert_injected(
        &stats,
        &[FaultKind::TransactionConflict, FaultKind::LostAnswer],
    );
    assert_eq!(
        failed,
        ["job page 0"],
        "the job failed once, on the conflict"
    );
    assert_delivered_exactly_once(&app, &proxy, &task_id).await;
}

#[tokio::test]
async fn delivery_survives_conflicts_throttling_and_lost_answers_on_its_chunks() {
    let (app, proxy) = app().await;
    let task_id = post(&app).await;
    // Plan first (the job is the only message), so that the faults fall on the chunks: per
    // chunk a lease and record writes (UpdateItem), then the closing transaction.
    let planned = app
        .event_source(1)
        .await
        .poll(&Invocations::new(&app, LONG_INVOCATION))
        .await
        .expect("poll the queue");
    assert_eq!((planned.bodies.len(), planned.failed), (1, 0));
    proxy.reset_stats();
    let update = |kind| Fault::on(Operation::UpdateItem, kind);
    let transaction = |kind| Fault::on(Operation::TransactWriteItems, kind);
    // The first lease is throttled twice (the SDK's third attempt gets through), record writes
    // are throttled, lose their answers (applied, then retried by the SDK), lose their
    // connection, and meet a transaction.
    proxy.inject(update(FaultKind::Throttling).times(2));
    proxy.inject(
        update(FaultKind::ProvisionedThroughputExceeded)
            .after(4)
            .times(2),
    );
    proxy.inject(update(FaultKind::LostAnswer).after(8));
    proxy.inject(update(FaultKind::DroppedConnection).after(11));
    proxy.inject(update(FaultKind::TransactionConflict).after(13));
    // The first close conflicts twice; the second loses its answer, the third its connection.
    proxy.inject(transaction(FaultKind::TransactionConflict).times(2));
    proxy.inject(transaction(FaultKind::LostAnswer).after(3));
    proxy.inject(transaction(FaultKind::DroppedConnection).after(5));

    let failed = run_worker_until_queue_is_empty(&app, LONG_INVOCATION).await;

    let stats = proxy.stats();
    report("delivery", &stats, &failed);
    assert_eq!(proxy.faults_left(), 0, "every fault was injected");
    assert_injected(
        &stats,
        &[
            FaultKind::TransactionConflict,
            FaultKind::Throttling,
            FaultKind::ProvisionedThroughputExceeded,
            FaultKind::LostAnswer,
            FaultKind::DroppedConnection,
        ],
    );
    assert_eq!(failed, [""; 0], "the store's retries absorbed every fault");
    assert_delivered_exactly_once(&app, &proxy, &task_id).await;
}

#[tokio::test]
async fn a_storm_of_faults_on_every_operation_still_delivers_exactly_once() {
    let (app, proxy) = app().await;
    let task_id = post(&app).await;
    // One data-plane request in three, whatever it is (reads too, the task's completion, the
    // page's bookkeeping), gets a fault, in turn each kind that any operation can get; writes
    // that can meet a transaction get conflicts as well.
    let kinds = [
        FaultKind::Throttling,
        FaultKind::LostAnswer,
        FaultKind::ProvisionedThroughputExceeded,
        FaultKind::DroppedConnection,
    ];
    for (round, kind) in kinds.iter().cycle().take(40).enumerate() {
        proxy.inject(Fault::on_any(*kind).after(3 * round as u32 + 1));
    }
    for after in [0, 3, 6] {
        proxy.inject(
            Fault::on(
                Operation::TransactWriteItems,
                FaultKind::TransactionConflict,
            )
            .after(after),
        );
        proxy.inject(
            Fault::on(Operation::UpdateItem, FaultKind::TransactionConflict).after(4 * after + 2),
        );
    }

    let failed = run_worker_until_queue_is_empty(&app, SHORT_INVOCATION).await;

    let stats = proxy.stats();
    report("storm", &stats, &failed);
    assert_injected(
        &stats,
        &[
            FaultKind::TransactionConflict,
            FaultKind::Throttling,
            FaultKind::ProvisionedThroughputExceeded,
            FaultKind::LostAnswer,
            FaultKind::DroppedConnection,
        ],
    );
    assert_delivered_exactly_once(&app, &proxy, &task_id).await;
}

// The store's writes one at a time, each losing its answer once: DynamoDB applied the write, and
// the SDK sends it again. Each must still do what its contract in `tasks.rs` says (these four
// failed before their fixes: a 503 and a leftover task, a key stuck at 409 for 24 hours, a
// message failed for a lease already given up, a completion nobody logged).

fn newsletter() -> String {
    json!({"subject": "S", "sections": [{"topic": "rust", "title": "T", "body": "B"}]}).to_string()
}

#[tokio::test]
async fn a_new_task_whose_record_lost_its_answer_is_still_accepted() {
    let (app, proxy) = app().await;
    // The task's record is the first put of a POST without a key.
    proxy.inject(Fault::on(Operation::PutItem, FaultKind::LostAnswer));

    let response = app.post_newsletter(&newsletter()).await;

    assert_eq!(proxy.stats().injected(FaultKind::LostAnswer), 1);
    assert_eq!(
        response.status(),
        202,
        "{}",
        String::from_utf8_lossy(response.body().as_ref())
    );
}

#[tokio::test]
async fn an_idempotency_key_whose_reservation_lost_its_answer_still_gets_its_newsletter_accepted() {
    let (app, proxy) = app().await;
    let with_key = || {
        let mut request = post_request(&newsletter());
        request
            .headers_mut()
            .insert("idempotency-key", "digest-2026-49".parse().unwrap());
        request
    };
    // The key's reservation is the first put of a POST with a key.
    proxy.inject(Fault::on(Operation::PutItem, FaultKind::LostAnswer));

    let first = app.accept.handle(with_key()).await;
    let retry = app.accept.handle(with_key()).await;

    assert_eq!(proxy.stats().injected(FaultKind::LostAnswer), 1);
    let answers: Vec<(u16, String)> = [first, retry]
        .iter()
        .map(|response| {
            let body = String::from_utf8_lossy(response.body().as_ref()).into_owned();
            (response.status().as_u16(), body)
        })
        .collect();
    assert!(
        answers.iter().all(|(status, _)| *status == 202),
        "the first POST, or at least its retry, is accepted: {answers:#?}"
    );
}

#[tokio::test]
async fn giving_a_lease_up_survives_a_lost_answer() {
    let (app, proxy) = app().await;
    let task_id = TaskId::generate();
    app.store
        .create(task_id, TaskKind::Newsletter)
        .await
        .unwrap();
    let holder = Holder {
        token: "invocation-1".into(),
        lapses: SystemTime::now() + Duration::from_secs(60),
    };
    let lease = app.store.lease(task_id, "p0-c0", 10, &holder).await;
    assert!(matches!(lease, Ok(Lease::Held(_))), "{lease:?}");
    proxy.inject(Fault::on(Operation::UpdateItem, FaultKind::LostAnswer));
    let settled = Settled {
        sent: vec![0, 1],
        rejected: Vec::new(),
    };

    let released = app
        .store
        .release_lease(task_id, "p0-c0", &holder, &settled)
        .await;

    assert_eq!(proxy.stats().injected(FaultKind::LostAnswer), 1);
    assert!(released.is_ok(), "{released:?}");
    let next = Holder {
        token: "invocation-2".into(),
        ..holder
    };
    match app.store.lease(task_id, "p0-c0", 10, &next).await {
        Ok(Lease::Held(progress)) => assert_eq!(progress.sent, [0, 1].into()),
        other => panic!("the chunk was not given up with what was settled: {other:?}"),
    }
}

#[tokio::test]
async fn the_caller_that_finishes_a_task_is_told_so_after_a_lost_answer() {
    let (app, proxy) = app().await;
    let task_id = TaskId::generate();
    app.store
        .create(task_id, TaskKind::Newsletter)
        .await
        .unwrap();
    proxy.inject(Fault::on(Operation::UpdateItem, FaultKind::LostAnswer));

    let finished = app.store.finish(task_id, TaskStatus::Completed).await;

    assert_eq!(proxy.stats().injected(FaultKind::LostAnswer), 1);
    assert_eq!(
        app.store
            .get(task_id)
            .await
            .unwrap()
            .map(|task| task.status),
        Some(TaskStatus::Completed)
    );
    assert!(
        matches!(finished, Ok(true)),
        "the one caller that made the move: {finished:?}"
    );
}

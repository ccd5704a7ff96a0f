//! The batch contract: only failed records are reported, by message id; the schedule's sweep
//! event is told from a batch.

use super::*;
use aws_lambda_events::event::sqs::SqsMessage;
use lambda_runtime::Context;
use newsletter::audience::{Subscription, TopicDefaults};
use newsletter::domain::{EmailAddress, TaskKind, TaskStatus, Topic};
use newsletter::message::{Delivery, Message, Recipient};
use newsletter::planning::PagePlan;
use newsletter::ports::{ContactPage, PlanStore, SendError, TaskStore};
use newsletter::sending::{SendPolicy, Sender};
use newsletter::testing::fakes::{
    MemoryDeadLetters, MemoryStore, PagedDirectory, RecordingMailer, RecordingQueue,
};
use newsletter::{Newsletter, TaskId};
use serde_json::json;

type TestFunction =
    Function<RecordingQueue, PagedDirectory, RecordingMailer, MemoryStore, MemoryDeadLetters>;

fn function_with(mailer: RecordingMailer, store: MemoryStore) -> TestFunction {
    let directory = PagedDirectory {
        defaults: TopicDefaults([("rust".to_string(), Subscription::OptIn)].into()),
        pages: vec![ContactPage::default()],
        ..Default::default()
    };
    let policy = SendPolicy {
        emails_per_second: 10_000.0,
        max_in_flight: 4,
    };
    Function {
        dispatcher: Dispatcher::new(
            RecordingQueue::default(),
            directory,
            Sender::new(mailer, policy),
            store,
            50,
        ),
        dead_letters: MemoryDeadLetters::default(),
        time_limit: Duration::from_secs(60),
    }
}

fn function() -> (TestFunction, MemoryStore) {
    let store = MemoryStore::default();
    (
        function_with(RecordingMailer::default(), store.clone()),
        store,
    )
}

/// A delivery message to `email` for a recorded, fully planned task.
async fn delivery_to(store: &MemoryStore, email: &str) -> (TaskId, String) {
    let task_id = TaskId::generate();
    store.create(task_id, TaskKind::Newsletter).await.unwrap();
    let recipients = vec![Recipient {
        email: EmailAddress::parse(email).unwrap(),
        topics: vec![Topic::parse("rust").unwrap()],
    }];
    let plan = PagePlan {
        chunks: vec![recipients.clone()],
        contacts: 1,
        ..PagePlan::default()
    };
    store.record_page(task_id, plan).await.unwrap();
    let message = Message::Delivery(Delivery {
        task_id,
        chunk_id: "p0-c0".into(),
        attempt: 0,
        newsletter: Newsletter::from_json(&json!({
            "subject": "S", "sections": [{"topic": "rust", "title": "T", "body": "B"}]
        }))
        .unwrap(),
        recipients,
    });
    (task_id, message.encode())
}

fn record(id: Option<&str>, body: &str) -> SqsMessage {
    let mut message = SqsMessage::default();
    message.message_id = id.map(str::to_owned);
    message.body = Some(body.to_owned());
    message
}

fn context() -> Context {
    let mut context = Context::default();
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    context.deadline = now_ms + 60_000;
    context
}

fn event(records: Vec<SqsMessage>) -> LambdaEvent<WorkerEvent> {
    let mut payload = SqsEvent::default();
    payload.records = records;
    LambdaEvent::new(WorkerEvent::Batch(payload), context())
}

async fn batch(function: &TestFunction, records: Vec<SqsMessage>) -> SqsBatchResponse {
    match handle(function, event(records)).await.unwrap() {
        WorkerResponse::Batch(response) => response,
        other => panic!("a batch was answered as something else: {other:?}"),
    }
}

fn reported(response: &SqsBatchResponse) -> Vec<&str> {
    response
        .batch_item_failures
        .iter()
        .map(|failure| failure.item_identifier.as_str())
        .collect()
}

#[tokio::test]
async fn a_poison_message_is_reported_alone_and_its_batch_mates_are_done() {
    let store = MemoryStore::default();
    let mailer = RecordingMailer::default();
    let function = function_with(mailer.clone(), store.clone());
    let (_, first) = delivery_to(&store, "a@example.com").await;
    let (_, second) = delivery_to(&store, "b@example.com").await;
    let records = vec![
        record(Some("good-1"), &first),
        record(Some("poison"), "{\"not\": \"a message\"}"),
        record(Some("good-2"), &second),
    ];

    let response = batch(&function, records).await;

    assert_eq!(reported(&response), ["poison"]);
    let mut sent = mailer.recipients();
    sent.sort();
    assert_eq!(sent, ["a@example.com", "b@example.com"]);
}

#[tokio::test]
async fn a_record_without_a_body_is_poison() {
    let (function, _) = function();
    let mut bodiless = record(Some("empty"), "");
    bodiless.body = None;
    let response = batch(&function, vec![bodiless]).await;
    assert_eq!(reported(&response), ["empty"]);
}

#[tokio::test]
async fn an_all_good_batch_reports_nothing() {
    let (function, store) = function();
    let (task_id, body) = delivery_to(&store, "a@example.com").await;
    let answer = handle(&function, event(vec![record(Some("1"), &body)]))
        .await
        .unwrap();
    let json = serde_json::to_value(&answer).unwrap();
    assert_eq!(json, json!({"batchItemFailures": []}));
    let task = store.get(task_id).await.unwrap().unwrap();
    assert_eq!(task.status, TaskStatus::Completed);
}

#[tokio::test]
async fn a_message_that_keeps_failing_is_reported_until_the_sweep_accounts_it() {
    let failing = RecordingMailer::failing([(
        "a@example.com".to_string(),
        SendError::Transient("SES unavailable".into()),
    )]);
    let store = MemoryStore::default();
    let mut function = function_with(failing, store.clone());
    let (task_id, body) = delivery_to(&store, "a@example.com").await;

    for _ in 0..5 {
        let response = batch(&function, vec![record(Some("m"), &body)]).await;
        assert_eq!(
            reported(&response),
            ["m"],
            "reported, so SQS retries it and then dead-letters it"
        );
    }
    let task = store.get(task_id).await.unwrap().unwrap();
    assert_eq!(task.status, TaskStatus::Sending, "not yet accounted");

    // The schedule's event, as the template sends it, sweeps the dead-letter queue.
    function.dead_letters = MemoryDeadLetters::holding([body]);
    let sweep: WorkerEvent = serde_json::from_str(r#"{"sweep": "dead-letters"}"#).unwrap();
    let answer = handle(&function, LambdaEvent::new(sweep, context()))
        .await
        .unwrap();
    assert_eq!(
        serde_json::to_value(&answer).unwrap(),
        json!({"seen": 1, "accounted": 1, "deferred": 0})
    );
    let task = store.get(task_id).await.unwrap().unwrap();
    assert_eq!(task.status, TaskStatus::CompletedWithErrors);
    assert_eq!(task.recipients.failed, 1);
}

#[test]
fn the_events_are_told_apart() {
    let sqs: WorkerEvent = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../events/sqs-job.json"
        ))
        .unwrap(),
    )
    .unwrap();
    assert!(matches!(sqs, WorkerEvent::Batch(batch) if batch.records.len() == 1));
    let sweep: WorkerEvent = serde_json::from_str(r#"{"sweep": "dead-letters"}"#).unwrap();
    assert!(matches!(sweep, WorkerEvent::Sweep(_)));
    assert!(
        serde_json::from_str::<WorkerEvent>(r#"{"sweep": "everything"}"#).is_err(),
        "an unknown sweep is refused, not taken for an empty batch"
    );
}

#[tokio::test]
async fn a_failure_that_cannot_be_named_fails_the_whole_batch() {
    let (function, _) = function();
    assert!(
        handle(&function, event(vec![record(None, "poison")]))
            .await
            .is_err()
    );
}

#[test]
fn the_invocation_deadline_comes_from_the_context_or_falls_back_to_the_timeout() {
    let now = SystemTime::now();
    let in_a_minute = now + Duration::from_secs(60);
    let deadline_ms = in_a_minute.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
    let limit = Duration::from_secs(60);
    let deadline = invocation_deadline(deadline_ms, limit);
    assert!(deadline.duration_since(in_a_minute).unwrap_or_default() < Duration::from_millis(1));
    // cargo lambda watch sends 600000 (a duration): the template's timeout is assumed instead.
    let fallback = invocation_deadline(600_000, limit)
        .duration_since(now)
        .unwrap();
    assert!(
        fallback >= Duration::from_secs(59) && fallback <= Duration::from_secs(61),
        "{fallback:?}"
    );
}

//! The batch contract: only failed records are reported, by message id; a record on its last
//! receive is recorded on its task before it goes to the dead-letter queue.

use super::*;
use aws_lambda_events::event::sqs::SqsMessage;
use lambda_runtime::Context;
use newsletter::domain::{EmailAddress, Topic};
use newsletter::{
    Newsletter, TaskId,
    audience::{Subscription, TopicDefaults},
    deliver::{SendError, SendPolicy, Sender},
    directory::ContactPage,
    fakes::{MemoryStore, PagedDirectory, RecordingMailer, RecordingQueue},
    message::{Delivery, Message, Recipient},
    tasks::{PageCounts, TaskStatus, TaskStore},
};
use serde_json::json;

type TestWorker = Worker<RecordingQueue, PagedDirectory, RecordingMailer, MemoryStore>;

const MAX_RECEIVE_COUNT: u32 = 5;

fn worker_with(mailer: RecordingMailer) -> TestWorker {
    let directory = PagedDirectory {
        defaults: TopicDefaults([("rust".to_string(), Subscription::OptIn)].into()),
        pages: vec![ContactPage::default()],
        ..Default::default()
    };
    let policy = SendPolicy {
        emails_per_second: 10_000.0,
        max_in_flight: 4,
    };
    Worker::new(
        RecordingQueue::default(),
        directory,
        Sender::new(mailer, policy),
        MemoryStore::default(),
    )
}

fn worker() -> TestWorker {
    worker_with(RecordingMailer::default())
}

/// A delivery message to `email` for a recorded, fully planned task.
async fn delivery_to(worker: &TestWorker, email: &str) -> (TaskId, String) {
    let task_id = TaskId::generate();
    let store = worker.store();
    store.create(task_id).await.unwrap();
    let counts = PageCounts::only_page(1);
    store.record_page(task_id, counts).await.unwrap();
    let message = Message::Delivery(Delivery {
        task_id,
        chunk_id: "p0-c0".into(),
        attempt: 0,
        newsletter: Newsletter::from_json(&json!({
            "subject": "S", "sections": [{"topic": "rust", "title": "T", "body": "B"}]
        }))
        .unwrap(),
        recipients: vec![Recipient {
            email: EmailAddress::parse(email).unwrap(),
            topics: vec![Topic::parse("rust").unwrap()],
        }],
    });
    (task_id, message.encode())
}

fn record(id: Option<&str>, body: &str, receives: u32) -> SqsMessage {
    let mut message = SqsMessage::default();
    message.message_id = id.map(str::to_owned);
    message.body = Some(body.to_owned());
    message
        .attributes
        .insert("ApproximateReceiveCount".into(), receives.to_string());
    message
}

fn event(records: Vec<SqsMessage>) -> LambdaEvent<SqsEvent> {
    let mut payload = SqsEvent::default();
    payload.records = records;
    let mut context = Context::default();
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    context.deadline = now_ms + 60_000;
    LambdaEvent::new(payload, context)
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
    let worker = worker();
    let (_, first) = delivery_to(&worker, "a@example.com").await;
    let (_, second) = delivery_to(&worker, "b@example.com").await;
    let batch = event(vec![
        record(Some("good-1"), &first, 1),
        record(Some("poison"), "{\"not\": \"a message\"}", 1),
        record(Some("good-2"), &second, 1),
    ]);

    let response = handle(&worker, MAX_RECEIVE_COUNT, batch).await.unwrap();

    assert_eq!(reported(&response), ["poison"]);
    let mut sent = worker.sender().mailer().recipients();
    sent.sort();
    assert_eq!(sent, ["a@example.com", "b@example.com"]);
}

#[tokio::test]
async fn a_record_without_a_body_is_poison() {
    let worker = worker();
    let mut bodiless = record(Some("empty"), "", 1);
    bodiless.body = None;
    let response = handle(&worker, MAX_RECEIVE_COUNT, event(vec![bodiless]))
        .await
        .unwrap();
    assert_eq!(reported(&response), ["empty"]);
}

#[tokio::test]
async fn an_all_good_batch_reports_nothing() {
    let worker = worker();
    let (task_id, body) = delivery_to(&worker, "a@example.com").await;
    let response = handle(
        &worker,
        MAX_RECEIVE_COUNT,
        event(vec![record(Some("1"), &body, 1)]),
    )
    .await
    .unwrap();
    assert!(response.batch_item_failures.is_empty());
    let json = serde_json::to_value(&response).unwrap();
    assert_eq!(json, json!({"batchItemFailures": []}));
    let task = worker.store().get(task_id).await.unwrap().unwrap();
    assert_eq!(task.status, TaskStatus::Completed);
}

#[tokio::test]
async fn a_failure_on_the_last_receive_is_recorded_on_the_task() {
    let failing = RecordingMailer::failing([(
        "a@example.com".to_string(),
        SendError::Transient("throttled".into()),
    )]);
    let worker = worker_with(failing);
    let (task_id, body) = delivery_to(&worker, "a@example.com").await;

    let early = handle(
        &worker,
        MAX_RECEIVE_COUNT,
        event(vec![record(Some("m"), &body, 4)]),
    )
    .await;
    assert_eq!(reported(&early.unwrap()), ["m"]);
    let task = worker.store().get(task_id).await.unwrap().unwrap();
    assert_eq!(
        task.status,
        TaskStatus::Sending,
        "not yet: SQS will deliver it again"
    );

    let last = handle(
        &worker,
        MAX_RECEIVE_COUNT,
        event(vec![record(Some("m"), &body, 5)]),
    )
    .await;
    assert_eq!(
        reported(&last.unwrap()),
        ["m"],
        "still reported, so it reaches the DLQ"
    );
    let task = worker.store().get(task_id).await.unwrap().unwrap();
    assert_eq!(task.status, TaskStatus::CompletedWithErrors);
    assert_eq!(task.recipients.failed, 1);
}

#[tokio::test]
async fn a_failure_that_cannot_be_named_fails_the_whole_batch() {
    let worker = worker();
    let batch = event(vec![record(None, "poison", 1)]);
    assert!(handle(&worker, MAX_RECEIVE_COUNT, batch).await.is_err());
}

#[test]
fn the_invocation_deadline_comes_from_the_context_or_falls_back_to_the_timeout() {
    let now = SystemTime::now();
    let in_a_minute = now + Duration::from_secs(60);
    let deadline_ms = in_a_minute.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
    let deadline = invocation_deadline(deadline_ms);
    assert!(deadline.duration_since(in_a_minute).unwrap_or_default() < Duration::from_millis(1));
    // cargo lambda watch sends 600000 (a duration): the template's timeout is assumed instead.
    let fallback = invocation_deadline(600_000).duration_since(now).unwrap();
    assert!(
        fallback >= Duration::from_secs(59) && fallback <= Duration::from_secs(61),
        "{fallback:?}"
    );
}

//! The batch contract: only failed records are reported, by message id.

use super::*;
use aws_lambda_events::event::sqs::SqsMessage;
use lambda_runtime::Context;
use newsletter::domain::{EmailAddress, Topic};
use newsletter::{
    Newsletter, TaskId,
    audience::{Subscription, TopicDefaults},
    deliver::{SendPolicy, Sender},
    directory::ContactPage,
    fakes::{PagedDirectory, RecordingMailer, RecordingQueue},
    message::{Delivery, Message, Recipient},
};
use serde_json::json;

type TestWorker = Worker<RecordingQueue, PagedDirectory, RecordingMailer>;

fn worker() -> TestWorker {
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
        Sender::new(RecordingMailer::default(), policy),
    )
}

fn delivery_to(email: &str) -> String {
    Message::Delivery(Delivery {
        task_id: TaskId::generate(),
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
    })
    .encode()
}

fn record(id: Option<&str>, body: &str) -> SqsMessage {
    let mut message = SqsMessage::default();
    message.message_id = id.map(str::to_owned);
    message.body = Some(body.to_owned());
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
    let batch = event(vec![
        record(Some("good-1"), &delivery_to("a@example.com")),
        record(Some("poison"), "{\"not\": \"a message\"}"),
        record(Some("good-2"), &delivery_to("b@example.com")),
    ]);

    let response = handle(&worker, batch).await.unwrap();

    assert_eq!(reported(&response), ["poison"]);
    let mut sent = worker.sender().mailer().recipients();
    sent.sort();
    assert_eq!(sent, ["a@example.com", "b@example.com"]);
}

#[tokio::test]
async fn a_record_without_a_body_is_poison() {
    let worker = worker();
    let mut bodiless = record(Some("empty"), "");
    bodiless.body = None;
    let response = handle(&worker, event(vec![bodiless])).await.unwrap();
    assert_eq!(reported(&response), ["empty"]);
}

#[tokio::test]
async fn an_all_good_batch_reports_nothing() {
    let worker = worker();
    let response = handle(
        &worker,
        event(vec![record(Some("1"), &delivery_to("a@example.com"))]),
    )
    .await
    .unwrap();
    assert!(response.batch_item_failures.is_empty());
    let json = serde_json::to_value(&response).unwrap();
    assert_eq!(json, json!({"batchItemFailures": []}));
}

#[tokio::test]
async fn a_failure_that_cannot_be_named_fails_the_whole_batch() {
    let worker = worker();
    assert!(
        handle(&worker, event(vec![record(None, "poison")]))
            .await
            .is_err()
    );
}

#[test]
fn the_sending_deadline_keeps_a_margin_before_the_invocation_deadline() {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let left = sending_deadline(now_ms + 60_000).saturating_duration_since(Instant::now());
    assert!(
        left <= Duration::from_secs(55) && left > Duration::from_secs(50),
        "{left:?}"
    );
    // A nearly spent invocation still keeps a quarter of what is left.
    let left = sending_deadline(now_ms + 2_000).saturating_duration_since(Instant::now());
    assert!(left <= Duration::from_millis(1_500), "{left:?}");
    // A deadline in the past (cargo lambda watch sends 600000) falls back to the timeout.
    let left = sending_deadline(600_000).saturating_duration_since(Instant::now());
    assert!(
        left <= Duration::from_secs(55) && left > Duration::from_secs(50),
        "{left:?}"
    );
}

//! `POST /newsletters` when SQS stores the job but the answer is lost or held back (through the
//! SQS proxy in front of moto): the answer is a 503 in time, and nothing is delivered twice.

use crate::helpers::{TestApp, event_file, json_body, post_request, spawn_app_with, with_deadline};
use lambda_http::{Body, Request, Response, http::HeaderValue};
use local_stack::Settings;
use local_stack::sqs_proxy::SendFault;
use local_stack::subscribers::{ContactList, Status, Subscriber, TopicSpec};
use newsletter::domain::TaskStatus;
use newsletter::message::Message;
use newsletter::ports::TaskStore;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const SUBSCRIBERS: [&str; 3] = ["a@example.com", "b@example.com", "c@example.com"];

async fn app() -> TestApp {
    let audience = ContactList {
        topics: vec![TopicSpec {
            name: "rust".into(),
            default: Status::OptIn,
        }],
        subscribers: SUBSCRIBERS
            .iter()
            .map(|email| Subscriber {
                email: (*email).into(),
                topics: BTreeMap::new(),
                unsubscribe_all: false,
            })
            .collect(),
    };
    let settings = Settings {
        audience,
        ..Settings::local().expect("template.yaml gives the local settings")
    };
    spawn_app_with(settings, &[]).await
}

fn keyed(time_limit: Duration) -> Request {
    let mut request = post_request(&event_file("newsletter.json"));
    request
        .headers_mut()
        .insert("idempotency-key", HeaderValue::from_static("order-42"));
    with_deadline(request, time_limit)
}

fn assert_503(response: &Response<Body>) {
    assert_eq!(response.status(), 503, "{:?}", response.body());
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    assert_eq!(
        json_body(response)["type"],
        "urn:newsletter-dispatch:problem:queue-unavailable"
    );
}

/// Runs the worker until the queue is empty (no message may fail: withdrawn jobs are dropped),
/// and checks that every subscriber got exactly one email, and that every task the worker saw
/// other than `accepted` is withdrawn.
async fn assert_delivered_once(app: &TestApp, accepted: &str) {
    app.run_worker_until_queue_is_empty().await;
    assert_eq!(app.recipients().await, SUBSCRIBERS, "one email each");
    for body in app.worker.bodies() {
        let Ok(Message::Job(job)) = Message::decode(&body) else {
            continue;
        };
        let status = app.store.get(job.task_id).await.unwrap().unwrap().status;
        if job.task_id.to_string() == accepted {
            assert_eq!(status, TaskStatus::Completed);
        } else {
            assert_eq!(status, TaskStatus::Withdrawn, "{}", job.task_id);
        }
    }
}

#[tokio::test]
async fn lost_send_message_answers_are_a_503_and_the_keyed_retry_delivers_once() {
    let app = app().await;
    let (accept, proxy) = app.accept_behind_sqs_proxy().await;
    proxy.inject([SendFault::LoseAnswer; 3]);

    let started = Instant::now();
    let refused = accept.handle(keyed(Duration::from_secs(10))).await;
    let took = started.elapsed();

    assert_503(&refused);
    assert!(took < Duration::from_secs(10), "answered after {took:?}");
    assert_eq!(proxy.faults_left(), 0, "the SDK tried 3 times");
    assert_eq!(proxy.messages_sent(), 3, "and SQS stored the job each time");
    let retry = accept.handle(keyed(Duration::from_secs(10))).await;
    assert_eq!(retry.status(), 202);
    let task_id = json_body(&retry)["task_id"].as_str().unwrap().to_owned();
    assert_eq!(app.queue_depth().await, 4);
    assert_delivered_once(&app, &task_id).await;
}

#[tokio::test]
async fn a_send_message_held_past_the_deadline_is_a_503_in_time() {
    let app = app().await;
    let (accept, proxy) = app.accept_behind_sqs_proxy().await;
    proxy.inject([SendFault::Stall(Duration::from_secs(30)); 4]);

    let started = Instant::now();
    let refused = accept.handle(keyed(Duration::from_secs(3))).await;
    let took = started.elapsed();

    assert_503(&refused);
    assert!(
        took < Duration::from_secs(3),
        "answered after {took:?}, past the invocation's deadline"
    );
    assert!(proxy.messages_sent() >= 1, "SQS stored the job");
    proxy.clear_faults();
    let retry = accept.handle(keyed(Duration::from_secs(10))).await;
    assert_eq!(retry.status(), 202);
    let task_id = json_body(&retry)["task_id"].as_str().unwrap().to_owned();
    assert_delivered_once(&app, &task_id).await;
}

//! Task status, Idempotency-Key and exactly-once delivery, against moto's DynamoDB, SQS and SES.

use crate::helpers::{TestApp, json_body, post_request, spawn_app_with};
use crate::worker::{mixed_audience, newsletter_body};
use aws_lambda_events::event::sqs::{SqsEvent, SqsMessage};
use lambda_http::{Body, Request, RequestExt, http};
use local_stack::Settings;
use local_stack::event_source::Invoke;
use local_stack::subscribers::{ContactList, Status, Subscriber, TopicSpec};
use serde_json::{Value, json};

async fn app(audience: ContactList, moto_env: &[(&str, &str)]) -> TestApp {
    spawn_app_with(
        Settings {
            audience,
            ..Settings::local().expect("template.yaml gives the local settings")
        },
        moto_env,
    )
    .await
}

fn get(path: &str) -> Request {
    http::Request::builder()
        .method("GET")
        .uri(path)
        .body(Body::Empty)
        .unwrap()
        .with_raw_http_path(path)
}

fn with_key(key: &str, body: &str) -> Request {
    let mut request = post_request(body);
    request
        .headers_mut()
        .insert("idempotency-key", key.parse().unwrap());
    request
}

async fn status(app: &TestApp, task_id: &str) -> (u16, Value) {
    let response = app
        .accept
        .handle(get(&format!("/newsletters/{task_id}")))
        .await;
    (response.status().as_u16(), json_body(&response))
}

async fn post(app: &TestApp, request: Request) -> (u16, String) {
    let response = app.accept.handle(request).await;
    let status = response.status().as_u16();
    let task_id = json_body(&response)["task_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    (status, task_id)
}

/// Hands the worker these message bodies as one SQS batch, as a redelivery would.
async fn redeliver(app: &TestApp, bodies: &[String]) {
    let mut event = SqsEvent::default();
    event.records = bodies
        .iter()
        .enumerate()
        .map(|(index, body)| {
            let mut record = SqsMessage::default();
            record.message_id = Some(format!("redelivered-{index}"));
            record.body = Some(body.clone());
            record
        })
        .collect();
    app.worker.invoke(event).await.unwrap();
}

#[tokio::test]
async fn status_moves_from_accepted_to_completed_with_exact_counts() {
    let app = app(mixed_audience(), &[]).await;
    let (accepted, task_id) = post(&app, post_request(&newsletter_body())).await;
    assert_eq!(accepted, 202);

    let (code, before) = status(&app, &task_id).await;
    assert_eq!(code, 200);
    assert_eq!(before["status"], "accepted");
    assert_eq!(
        before["recipients"],
        json!({"planned": 0, "sent": 0, "skipped": 0, "failed": 0, "cancelled": 0})
    );

    app.run_worker_until_queue_is_empty().await;

    let (_, after) = status(&app, &task_id).await;
    assert_eq!(after["task_id"], task_id.as_str());
    assert_eq!(after["status"], "completed");
    // 260 contacts: 131 want a section; the other three patterns of 43 do not.
    assert_eq!(
        after["recipients"],
        json!({"planned": 260, "sent": 131, "skipped": 129, "failed": 0, "cancelled": 0})
    );
    assert!(after["updated_at"].as_str().unwrap() >= after["created_at"].as_str().unwrap());

    let (missing, problem) = status(&app, "01a21247-9995-70f9-bc17-8ed0fa487837").await;
    assert_eq!(missing, 404);
    assert_eq!(
        problem["type"],
        "urn:newsletter-dispatch:problem:task-not-found"
    );
    assert_eq!(status(&app, "not-an-id").await.0, 400);
}

#[tokio::test]
async fn the_same_idempotency_key_twice_is_one_task_and_one_set_of_emails() {
    let app = app(mixed_audience(), &[]).await;
    let (first, first_id) = post(&app, with_key("digest-2026-48", &newsletter_body())).await;
    let (second, second_id) = post(&app, with_key("digest-2026-48", &newsletter_body())).await;
    assert_eq!((first, second), (202, 202));
    assert_eq!(first_id, second_id);

    app.run_worker_until_queue_is_empty().await;

    let recipients = app.recipients().await;
    assert_eq!(recipients.len(), 131, "one set of emails");
    let mut distinct = recipients.clone();
    distinct.dedup();
    assert_eq!(distinct.len(), 131);

    let mut other = serde_json::from_str::<Value>(&newsletter_body()).unwrap();
    other["subject"] = json!("Another digest");
    let (reused, _) = post(&app, with_key("digest-2026-48", &other.to_string())).await;
    assert_eq!(reused, 422);
}

#[tokio::test]
async fn concurrent_duplicates_make_one_task() {
    let app = app(mixed_audience(), &[]).await;
    let body = newsletter_body();
    let ((a, a_id), (b, b_id)) = tokio::join!(
        post(&app, with_key("same-key", &body)),
        post(&app, with_key("same-key", &body))
    );

    // Both answer 202 with the same task (the later one waited), or the later one is told to
    // retry (409): never two tasks.
    let accepted: Vec<&String> = [(a, &a_id), (b, &b_id)]
        .iter()
        .filter(|(s, _)| *s == 202)
        .map(|(_, id)| *id)
        .collect();
    assert!(
        !accepted.is_empty() && [a, b].iter().all(|s| [202, 409].contains(s)),
        "{a} {b}"
    );
    assert!(accepted.iter().all(|id| *id == accepted[0]));
    let jobs = app.drain_queue().await;
    assert_eq!(jobs.len(), 1, "one job on the queue");
}

#[tokio::test]
async fn a_redelivered_chunk_after_partial_ses_failures_sends_each_recipient_once() {
    let subscribers = (0..30)
        .map(|i| {
            let name = if i % 3 == 0 {
                format!("flaky{i}")
            } else {
                format!("steady{i}")
            };
            Subscriber {
                email: format!("{name}@example.com"),
                topics: Default::default(),
                unsubscribe_all: false,
            }
        })
        .collect();
    let audience = ContactList {
        topics: vec![TopicSpec {
            name: "rust".into(),
            default: Status::OptIn,
        }],
        subscribers,
    };
    let app = app(audience, &[("LOCAL_SES_FAIL_FIRST", "^flaky")]).await;
    let body = json!({"subject": "S", "sections": [{"topic": "rust", "title": "T", "body": "B"}]})
        .to_string();
    let (_, task_id) = post(&app, post_request(&body)).await;

    // Plan the job, then deliver its chunk once: SES fails for the flaky third of them.
    let job = app.drain_queue().await;
    redeliver(&app, &job).await;
    let chunk = app.drain_queue().await;
    assert_eq!(chunk.len(), 1);
    redeliver(&app, &chunk).await;
    assert_eq!(app.recipients().await.len(), 20);

    // SQS delivers the original chunk again (as after a lost re-enqueue or a crash), and the
    // narrowed retry of the flaky recipients runs too.
    redeliver(&app, &chunk).await;
    app.run_worker_until_queue_is_empty().await;

    let recipients = app.recipients().await;
    let mut distinct = recipients.clone();
    distinct.dedup();
    assert_eq!(
        recipients.len(),
        30,
        "every recipient exactly once: {recipients:?}"
    );
    assert_eq!(distinct.len(), 30);
    let (_, task) = status(&app, &task_id).await;
    assert_eq!(task["status"], "completed");
    assert_eq!(
        task["recipients"],
        json!({"planned": 30, "sent": 30, "skipped": 0, "failed": 0, "cancelled": 0})
    );
}

#[tokio::test]
async fn a_poison_job_reaches_the_dlq_and_its_task_says_which_part_failed() {
    let settings = Settings {
        audience: mixed_audience(),
        visibility_timeout: 1,
        ..Settings::local().expect("template.yaml gives the local settings")
    };
    let app = spawn_app_with(settings, &[]).await;
    let (_, task_id) = post(&app, post_request(&newsletter_body())).await;
    // Swap the queued job for a broken one of the same task.
    app.drain_queue().await;
    app.enqueue_raw(&format!(
        r#"{{"version": 1, "kind": "job", "task_id": "{task_id}", "newsletter": {{}}}}"#
    ))
    .await;

    app.run_worker_until_something_is_dead_lettered().await;
    let (_, task) = status(&app, &task_id).await;
    assert_eq!(
        task["status"], "accepted",
        "its last receive did not say so"
    );

    // The template's schedule sweeps the dead-letter queue: the task is told, the message stays.
    let sweep = app.worker.sweep_dead_letters().await;
    assert_eq!(sweep, json!({"seen": 1, "accounted": 1, "deferred": 0}));
    assert_eq!(app.dead_letter_depth().await, 1, "left for a redrive");
    let (_, task) = status(&app, &task_id).await;
    assert_eq!(task["status"], "completed_with_errors");
    // A stable code and its short message, never the raw error text (it stays in the logs).
    assert_eq!(
        task["failures"],
        json!([{
            "part": "unreadable message",
            "code": "message_unreadable",
            "message": "a message of this task could not be read",
        }])
    );
    assert!(app.sent_emails().await.is_empty());
    assert_eq!(app.queue_depth().await, 0, "nothing left on the jobs queue");
}

#[tokio::test]
async fn after_an_outage_a_redrive_from_the_dlq_delivers_to_everyone_not_yet_sent_once() {
    // SES refuses every send (transiently) for the first 15 tries per recipient: 3 tries an
    // invocation over the 5 receives, so the chunk is dead-lettered; then the outage is over.
    let subscribers: Vec<Subscriber> = (0..6)
        .map(|n| Subscriber {
            email: format!("reader{n}@example.com"),
            topics: Default::default(),
            unsubscribe_all: false,
        })
        .collect();
    let audience = ContactList {
        topics: vec![TopicSpec {
            name: "rust".into(),
            default: Status::OptIn,
        }],
        subscribers,
    };
    let settings = Settings {
        audience,
        visibility_timeout: 1,
        ..Settings::local().expect("template.yaml gives the local settings")
    };
    let app = spawn_app_with(
        settings,
        &[
            ("LOCAL_SES_FAIL_FIRST", "^reader"),
            ("LOCAL_SES_FAIL_TIMES", "15"),
        ],
    )
    .await;
    let body = json!({"subject": "S", "sections": [{"topic": "rust", "title": "T", "body": "B"}]});
    let (_, task_id) = post(&app, post_request(&body.to_string())).await;

    app.run_worker_until_something_is_dead_lettered().await;
    app.worker.sweep_dead_letters().await;
    let (_, task) = status(&app, &task_id).await;
    assert_eq!(task["status"], "completed_with_errors");
    assert_eq!(
        task["recipients"],
        json!({"planned": 6, "sent": 0, "skipped": 0, "failed": 6, "cancelled": 0})
    );
    assert_eq!(task["failures"][0]["part"], "delivery p0-c0");
    assert!(app.recipients().await.is_empty());

    // What StartMessageMoveTask does (moto lacks it): every DLQ message back to the jobs queue.
    let moved = app.redrive_dead_letters().await;
    assert_eq!(moved, 1);
    app.run_worker_until_queue_is_empty().await;

    let recipients = app.recipients().await;
    let mut distinct = recipients.clone();
    distinct.dedup();
    assert_eq!(recipients.len(), 6, "everyone once: {recipients:?}");
    assert_eq!(distinct.len(), 6);
    let (_, task) = status(&app, &task_id).await;
    assert_eq!(task["status"], "completed");
    assert_eq!(
        task["recipients"],
        json!({"planned": 6, "sent": 6, "skipped": 0, "failed": 0, "cancelled": 0})
    );
    assert!(task.get("failures").is_none(), "{task}");
}

#[tokio::test]
async fn an_unverified_sender_pauses_the_task_and_a_resume_sends_everyone_once() {
    let app = app(mixed_audience(), &[]).await;
    // SES (moto, as the real service) refuses every send from a sender it has not verified.
    app.ses
        .delete_email_identity()
        .email_identity(&app.settings.from_address)
        .send()
        .await
        .expect("the sender is unverified");
    let (accepted, task_id) = post(&app, post_request(&newsletter_body())).await;
    assert_eq!(accepted, 202);

    app.run_worker_until_queue_is_empty().await;
    let paused = status(&app, &task_id).await.1;
    assert_eq!(paused["status"], "paused", "{paused}");
    assert_eq!(paused["pause"]["code"], "sender_not_verified");
    assert!(
        paused["pause"]["message"]
            .as_str()
            .unwrap()
            .contains("verify")
    );
    assert_eq!(paused["recipients"]["failed"], 0, "nobody failed for it");
    assert!(app.recipients().await.is_empty());
    assert_eq!(
        app.dead_letter_depth().await,
        0,
        "nothing burns its receives"
    );

    app.ses
        .create_email_identity()
        .email_identity(&app.settings.from_address)
        .send()
        .await
        .expect("the sender is verified again");
    let resumed = app.worker.resume(&task_id).await;
    assert_eq!(resumed["resumed"], true);
    app.run_worker_until_queue_is_empty().await;

    let done = status(&app, &task_id).await.1;
    assert_eq!(done["status"], "completed", "{done}");
    assert!(done.get("pause").is_none());
    let recipients = app.recipients().await;
    let mut distinct = recipients.clone();
    distinct.dedup();
    assert_eq!(recipients, distinct, "nobody twice");
    assert_eq!(
        done["recipients"]["sent"].as_u64(),
        Some(recipients.len() as u64)
    );
    assert!(!recipients.is_empty());
}

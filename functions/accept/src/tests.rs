//! The handler against an in-memory queue: every rule answers with the exact problem body, and
//! nothing reaches the queue unless the answer is 202.

use super::*;
use lambda_http::http::{self, HeaderValue};
use newsletter::TaskId;
use newsletter::domain::TaskStatus;
use newsletter::message::Message;
use newsletter::ports::{PauseStore, QueueError, TaskStore};
use newsletter::testing::fakes::{Fault, FaultyStore, MemoryStore, PagedDirectory, RecordingQueue};
use serde_json::{Value, json};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

type TestApp = App<RecordingQueue, MemoryStore, PagedDirectory>;

fn app() -> TestApp {
    App::new(
        RecordingQueue::default(),
        MemoryStore::default(),
        PagedDirectory::default(),
    )
}

fn request(method: &str, path: &str, content_type: Option<&str>, body: impl Into<Body>) -> Request {
    let mut builder = http::Request::builder().method(method).uri(path);
    if let Some(content_type) = content_type {
        builder = builder.header(header::CONTENT_TYPE, content_type);
    }
    builder.body(body.into()).unwrap().with_raw_http_path(path)
}

fn post_json(body: &str) -> Request {
    request(
        "POST",
        "/newsletters",
        Some("application/json"),
        body.to_owned(),
    )
}

fn valid_body() -> Value {
    json!({
        "subject": "Weekly digest",
        "sections": [{"topic": "rust", "title": "Release notes", "body": "Markdown **text**"}]
    })
}

struct Answer {
    status: u16,
    content_type: String,
    headers: http::HeaderMap,
    body: Value,
}

async fn send<Q, S, D>(app: &App<Q, S, D>, request: Request) -> Answer
where
    Q: MessageQueue,
    S: TaskStore + IdempotencyStore + PauseStore + ChunkStore,
    D: ContactDirectory,
{
    let response = app.handle(request).await;
    let content_type = response.headers()[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .to_owned();
    let body = serde_json::from_slice(response.body().as_ref()).unwrap();
    Answer {
        status: response.status().as_u16(),
        content_type,
        headers: response.headers().clone(),
        body,
    }
}

/// Sends a request that must be refused, and checks nothing was queued.
async fn problem(request: Request) -> Answer {
    let app = app();
    let answer = send(&app, request).await;
    assert_eq!(answer.content_type, "application/problem+json");
    assert_eq!(answer.body["status"], answer.status);
    assert!(
        app.queue.sent.lock().unwrap().is_empty(),
        "a refused request was queued"
    );
    answer
}

/// The task id of a `202` answered to a POST of a newsletter or a test send, checking that the
/// answer is exactly that: `{"task_id", "status": "accepted"}` at the task's `Location`.
fn accepted_task_id(answer: &Answer) -> String {
    assert_eq!(answer.status, 202);
    let task_id = answer.body["task_id"].as_str().unwrap().to_owned();
    assert_eq!(
        answer.body,
        json!({"task_id": task_id, "status": "accepted"})
    );
    assert_eq!(
        answer.headers[header::LOCATION],
        format!("/newsletters/{task_id}").as_str()
    );
    task_id
}

#[tokio::test]
async fn valid_newsletter_is_queued_and_answered_202_with_its_task_id() {
    let app = app();
    let answer = send(&app, post_json(&valid_body().to_string())).await;

    assert_eq!(answer.content_type, "application/json");
    let task_id = accepted_task_id(&answer);

    let sent = app.queue.sent.lock().unwrap();
    let [Message::Job(job)] = sent.as_slice() else {
        panic!("expected exactly one job, got {sent:?}");
    };
    assert_eq!(job.task_id.to_string(), task_id);
    assert_eq!(job.newsletter.subject().as_str(), "Weekly digest");
    assert!(job.cursor.is_none());
}

#[tokio::test]
async fn each_request_gets_its_own_task_id() {
    let app = app();
    let first = send(&app, post_json(&valid_body().to_string())).await;
    let second = send(&app, post_json(&valid_body().to_string())).await;
    assert_ne!(first.body["task_id"], second.body["task_id"]);
}

#[tokio::test]
async fn json_with_utf8_charset_is_accepted() {
    for content_type in [
        "application/json; charset=utf-8",
        "Application/JSON;charset=\"UTF-8\"",
    ] {
        let app = app();
        let answer = send(
            &app,
            request(
                "POST",
                "/newsletters",
                Some(content_type),
                valid_body().to_string(),
            ),
        )
        .await;
        assert_eq!(answer.status, 202, "{content_type}");
    }
}

#[tokio::test]
async fn binary_body_is_read_like_text() {
    let app = app();
    let answer = send(
        &app,
        request(
            "POST",
            "/newsletters",
            Some("application/json"),
            valid_body().to_string().into_bytes(),
        ),
    )
    .await;
    assert_eq!(answer.status, 202);
}

#[tokio::test]
async fn malformed_json_is_400() {
    let answer = problem(post_json(r#"{"subject": "Hi", "sections": ["#)).await;
    assert_eq!(answer.status, 400);
    assert_eq!(
        answer.body,
        json!({
            "type": "urn:newsletter-dispatch:problem:malformed-json",
            "title": "Malformed JSON",
            "status": 400,
            "detail": "the request body is not valid JSON: EOF while parsing a list at line 1 column 31"
        })
    );
}

#[tokio::test]
async fn empty_and_non_utf8_bodies_are_400() {
    assert_eq!(problem(post_json("")).await.status, 400);
    let latin1 = request(
        "POST",
        "/newsletters",
        Some("application/json"),
        vec![b'"', 0xE9, b'"'],
    );
    assert_eq!(problem(latin1).await.status, 400);
}

#[tokio::test]
async fn validation_failure_is_422_listing_every_field() {
    let body = json!({
        "subject": "Hi\r\nBcc: everyone@example.com",
        "sections": [{"topic": "Not A Slug", "title": "", "body": "ok", "extra": true}],
        "from": "ceo@example.com"
    });
    let answer = problem(post_json(&body.to_string())).await;
    assert_eq!(answer.status, 422);
    assert_eq!(
        answer.body,
        json!({
            "type": "urn:newsletter-dispatch:problem:validation-failed",
            "title": "Invalid newsletter",
            "status": 422,
            "detail": "the newsletter has 5 invalid field(s)",
            "errors": [
                {"pointer": "#/from", "detail": "is not a known field"},
                {"pointer": "#/subject", "detail": "must not contain control characters or line breaks"},
                {"pointer": "#/sections/0/extra", "detail": "is not a known field"},
                {"pointer": "#/sections/0/topic", "detail": "must be a slug of 1 to 64 characters from a-z, 0-9 and '-'"},
                {"pointer": "#/sections/0/title", "detail": "must not be empty"}
            ]
        })
    );
}

#[tokio::test]
async fn every_field_rule_is_a_422_naming_the_field() {
    let long = "x".repeat(201);
    let cases = [
        (
            json!({"sections": [{"topic": "a", "title": "t", "body": "b"}]}),
            "#/subject",
            "is required",
        ),
        (
            json!({"subject": "  ", "sections": [{"topic": "a", "title": "t", "body": "b"}]}),
            "#/subject",
            "must not be empty",
        ),
        (
            json!({"subject": long, "sections": [{"topic": "a", "title": "t", "body": "b"}]}),
            "#/subject",
            "must be at most 200 characters",
        ),
        (
            json!({"subject": 1, "sections": [{"topic": "a", "title": "t", "body": "b"}]}),
            "#/subject",
            "must be a string",
        ),
        (json!({"subject": "s"}), "#/sections", "is required"),
        (
            json!({"subject": "s", "sections": "rust"}),
            "#/sections",
            "must be an array of sections",
        ),
        (
            json!({"subject": "s", "sections": []}),
            "#/sections",
            "must hold 1 to 50 sections, got 0",
        ),
        (
            json!({"subject": "s", "sections": [1]}),
            "#/sections/0",
            "must be an object with topic, title and body",
        ),
        (
            json!({"subject": "s", "sections": [{"title": "t", "body": "b"}]}),
            "#/sections/0/topic",
            "is required",
        ),
        (
            json!({"subject": "s", "sections": [{"topic": "", "title": "t", "body": "b"}]}),
            "#/sections/0/topic",
            "must be a slug of 1 to 64 characters from a-z, 0-9 and '-'",
        ),
        (
            json!({"subject": "s", "sections": [{"topic": "a", "title": long, "body": "b"}]}),
            "#/sections/0/title",
            "must be at most 200 characters",
        ),
        (
            json!({"subject": "s", "sections": [{"topic": "a", "title": "t", "body": ""}]}),
            "#/sections/0/body",
            "must not be empty",
        ),
        (
            json!({"subject": "s", "sections": [{"topic": "a", "title": "t", "body": null}]}),
            "#/sections/0/body",
            "must be a string",
        ),
        (json!(["not", "an", "object"]), "#", "must be a JSON object"),
    ];
    for (body, pointer, detail) in cases {
        let answer = problem(post_json(&body.to_string())).await;
        assert_eq!(answer.status, 422, "{body}");
        assert_eq!(
            answer.body["errors"],
            json!([{"pointer": pointer, "detail": detail}]),
            "{body}"
        );
    }
}

#[tokio::test]
async fn wrong_or_missing_content_type_is_415() {
    for content_type in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("application/json; charset=latin1"),
    ] {
        let answer = problem(request(
            "POST",
            "/newsletters",
            content_type,
            valid_body().to_string(),
        ))
        .await;
        assert_eq!(answer.status, 415, "{content_type:?}");
        assert_eq!(answer.headers["accept-post"], "application/json");
        assert_eq!(
            answer.body,
            json!({
                "type": "urn:newsletter-dispatch:problem:unsupported-media-type",
                "title": "Unsupported Media Type",
                "status": 415,
                "detail": "the request body must be JSON, sent with Content-Type: application/json"
            })
        );
    }
}

#[tokio::test]
async fn oversized_body_is_413() {
    let padding = "x".repeat(newsletter::submit::MAX_REQUEST_BYTES);
    let body = json!({"subject": "s", "sections": [{"topic": "a", "title": "t", "body": padding}]})
        .to_string();
    let size = body.len();
    let answer = problem(post_json(&body)).await;
    assert_eq!(answer.status, 413);
    assert_eq!(
        answer.body["detail"],
        format!("the request body is {size} bytes, over the 204800 byte limit")
    );
    assert_eq!(answer.body["title"], "Content Too Large");
}

#[tokio::test]
async fn a_body_just_under_the_limit_is_accepted() {
    let skeleton =
        json!({"subject": "s", "sections": [{"topic": "a", "title": "t", "body": ""}]}).to_string();
    let padding = "x".repeat(newsletter::submit::MAX_REQUEST_BYTES - skeleton.len());
    let body = json!({"subject": "s", "sections": [{"topic": "a", "title": "t", "body": padding}]})
        .to_string();
    assert_eq!(body.len(), newsletter::submit::MAX_REQUEST_BYTES);
    assert_eq!(send(&app(), post_json(&body)).await.status, 202);
}

#[tokio::test]
async fn other_methods_are_405_with_allow() {
    for method in ["GET", "PUT", "DELETE", "PATCH"] {
        let answer = problem(request(
            method,
            "/newsletters",
            Some("application/json"),
            valid_body().to_string(),
        ))
        .await;
        assert_eq!(answer.status, 405, "{method}");
        assert_eq!(answer.headers[header::ALLOW], "POST");
        assert_eq!(
            answer.body["type"],
            "urn:newsletter-dispatch:problem:method-not-allowed"
        );
    }
}

#[tokio::test]
async fn unknown_paths_are_404() {
    for path in [
        "/",
        "/newsletter",
        "/newslettersx",
        "/newsletters/a/b",
        "/newsletters/",
        "/admin",
    ] {
        let answer = problem(request(
            "POST",
            path,
            Some("application/json"),
            valid_body().to_string(),
        ))
        .await;
        assert_eq!(answer.status, 404, "{path}");
        assert_eq!(answer.body["title"], "Not Found");
    }
}

#[tokio::test]
async fn queue_failure_is_503_with_retry_after_and_never_202() {
    let app = App::new(
        RecordingQueue {
            fail: true,
            ..Default::default()
        },
        MemoryStore::default(),
        PagedDirectory::default(),
    );
    let answer = send(&app, post_json(&valid_body().to_string())).await;
    assert_eq!(answer.status, 503);
    assert_eq!(
        app.store.task_count(),
        1,
        "the task of a refused job is kept, withdrawn"
    );
    assert_eq!(answer.content_type, "application/problem+json");
    assert_eq!(
        answer.headers[header::RETRY_AFTER],
        HeaderValue::from_static("5")
    );
    assert_eq!(
        answer.body,
        json!({
            "type": "urn:newsletter-dispatch:problem:queue-unavailable",
            "title": "Service Unavailable",
            "status": 503,
            "detail": "the newsletter could not be queued and was not accepted; retry later"
        })
    );
}

fn with_key(key: &str, body: &str) -> Request {
    let mut request = post_json(body);
    request
        .headers_mut()
        .insert("idempotency-key", HeaderValue::from_str(key).unwrap());
    request
}

fn get(path: &str) -> Request {
    request("GET", path, None, Body::Empty)
}

#[tokio::test]
async fn an_accepted_newsletter_has_a_status_record() {
    let app = app();
    let answer = send(&app, post_json(&valid_body().to_string())).await;
    let task_id: TaskId = answer.body["task_id"].as_str().unwrap().parse().unwrap();
    let task = app.store.get(task_id).await.unwrap().unwrap();
    assert_eq!(task.status, TaskStatus::Accepted);
}

#[tokio::test]
async fn status_of_a_task_in_progress_says_when_to_look_again() {
    let app = app();
    let accepted = send(&app, post_json(&valid_body().to_string())).await;
    let location = accepted.headers[header::LOCATION]
        .to_str()
        .unwrap()
        .to_owned();

    let answer = send(&app, get(&location)).await;

    assert_eq!(answer.status, 200);
    assert_eq!(answer.content_type, "application/json");
    assert_eq!(answer.headers[header::RETRY_AFTER], "5");
    assert_eq!(answer.headers[header::CACHE_CONTROL], "no-store");
    assert_eq!(
        answer.body,
        json!({
            "task_id": accepted.body["task_id"],
            "kind": "newsletter",
            "status": "accepted",
            "created_at": "2026-11-25T10:00:00Z",
            "updated_at": "2026-11-25T10:00:00Z",
            "recipients": {"planned": 0, "sent": 0, "skipped": 0, "failed": 0, "cancelled": 0}
        })
    );
}

#[tokio::test]
async fn status_of_a_finished_task_has_no_retry_after() {
    let app = app();
    let accepted = send(&app, post_json(&valid_body().to_string())).await;
    let task_id: TaskId = accepted.body["task_id"].as_str().unwrap().parse().unwrap();
    app.store
        .finish(task_id, TaskStatus::Completed)
        .await
        .unwrap();

    let answer = send(&app, get(&format!("/newsletters/{task_id}"))).await;

    assert_eq!(answer.body["status"], "completed");
    assert!(answer.headers.get(header::RETRY_AFTER).is_none());
}

#[tokio::test]
async fn unknown_and_malformed_task_ids() {
    let unknown = problem(get(&format!("/newsletters/{}", TaskId::generate()))).await;
    assert_eq!(unknown.status, 404);
    assert_eq!(
        unknown.body["type"],
        "urn:newsletter-dispatch:problem:task-not-found"
    );

    let malformed = problem(get("/newsletters/not-a-task")).await;
    assert_eq!(malformed.status, 400);
    assert_eq!(
        malformed.body,
        json!({
            "type": "urn:newsletter-dispatch:problem:malformed-task-id",
            "title": "Malformed task id",
            "status": 400,
            "detail": "'not-a-task' is not a task id (a UUID)"
        })
    );
    let wrong_method = problem(request(
        "PUT",
        &format!("/newsletters/{}", TaskId::generate()),
        None,
        Body::Empty,
    ))
    .await;
    assert_eq!(wrong_method.status, 405);
    assert_eq!(wrong_method.headers[header::ALLOW], "GET, DELETE");
}

#[tokio::test]
async fn the_same_idempotency_key_twice_is_one_task_and_one_job() {
    let app = app();
    let body = valid_body().to_string();
    let first = send(&app, with_key("order-42", &body)).await;
    // Same newsletter, formatted differently: still the same request.
    let reformatted = serde_json::to_string_pretty(&valid_body()).unwrap();
    let second = send(&app, with_key("order-42", &reformatted)).await;

    assert_eq!((first.status, second.status), (202, 202));
    assert_eq!(first.body["task_id"], second.body["task_id"]);
    assert_eq!(
        first.headers[header::LOCATION],
        second.headers[header::LOCATION]
    );
    assert_eq!(app.queue.sent.lock().unwrap().len(), 1);
    assert_eq!(app.store.task_count(), 1);
}

#[tokio::test]
async fn the_same_key_with_another_newsletter_is_422() {
    let app = app();
    send(&app, with_key("order-42", &valid_body().to_string())).await;
    let mut other = valid_body();
    other["subject"] = json!("Another digest");

    let answer = send(&app, with_key("order-42", &other.to_string())).await;

    assert_eq!(answer.status, 422);
    assert_eq!(
        answer.body["type"],
        "urn:newsletter-dispatch:problem:idempotency-key-reused"
    );
    assert_eq!(app.queue.sent.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn a_key_still_being_processed_is_409() {
    let app = app();
    let body = valid_body().to_string();
    send(&app, with_key("order-42", &body)).await;
    // As if the first request were still between reserving the key and queueing its job.
    app.store.mark_pending("order-42");

    let answer = send(&app, with_key("order-42", &body)).await;

    assert_eq!(answer.status, 409);
    assert_eq!(answer.headers[header::RETRY_AFTER], "1");
    assert_eq!(
        app.queue.sent.lock().unwrap().len(),
        1,
        "only the first request's job"
    );
}

#[tokio::test]
async fn invalid_idempotency_keys_are_400() {
    for key in ["", &"k".repeat(256), "with space"] {
        let mut request = post_json(&valid_body().to_string());
        request
            .headers_mut()
            .insert("idempotency-key", HeaderValue::from_str(key).unwrap());
        let answer = problem(request).await;
        assert_eq!(answer.status, 400, "{key:?}");
        assert_eq!(
            answer.body["type"],
            "urn:newsletter-dispatch:problem:invalid-idempotency-key"
        );
    }
}

#[tokio::test]
async fn a_failed_enqueue_gives_the_key_back() {
    let app = App::new(
        RecordingQueue {
            fail: true,
            ..Default::default()
        },
        MemoryStore::default(),
        PagedDirectory::default(),
    );
    assert_eq!(
        send(&app, with_key("order-42", &valid_body().to_string()))
            .await
            .status,
        503
    );
    assert!(
        app.store.key_count() == 0,
        "a retry with the key may try again"
    );
}

#[tokio::test]
async fn a_store_outage_is_503_and_nothing_is_queued() {
    let app = App::new(
        RecordingQueue::default(),
        MemoryStore::unreachable(),
        PagedDirectory::default(),
    );
    let answer = send(&app, post_json(&valid_body().to_string())).await;
    assert_eq!(answer.status, 503);
    assert_eq!(answer.headers[header::RETRY_AFTER], "5");
    assert!(app.queue.sent.lock().unwrap().is_empty());
    assert_eq!(
        send(&app, get(&format!("/newsletters/{}", TaskId::generate())))
            .await
            .status,
        503
    );
}

#[tokio::test]
async fn the_drafts_quoted_key_and_the_bare_token_are_one_key() {
    let app = app();
    let body = valid_body().to_string();
    let uuid = "8e03978e-40d5-43e8-bc93-6894a57f9324";
    let quoted = send(&app, with_key(&format!("\"{uuid}\""), &body)).await;
    let bare = send(&app, with_key(uuid, &body)).await;

    assert_eq!((quoted.status, bare.status), (202, 202));
    assert_eq!(quoted.body["task_id"], bare.body["task_id"]);
    assert_eq!(app.queue.sent.lock().unwrap().len(), 1);
    assert_eq!(app.store.task_count(), 1);
}

#[tokio::test]
async fn a_malformed_quoted_key_is_400() {
    for key in [r#""unterminated"#, r#""a"; expires=1"#, r#""""#] {
        let mut request = post_json(&valid_body().to_string());
        request
            .headers_mut()
            .insert("idempotency-key", HeaderValue::from_str(key).unwrap());
        let answer = problem(request).await;
        assert_eq!(answer.status, 400, "{key:?}");
        assert_eq!(
            answer.body["detail"],
            "Idempotency-Key must be a quoted string (\"...\") or a token of 1 to 255 visible \
             ASCII characters"
        );
    }
}

#[tokio::test]
async fn characters_sqs_refuses_are_a_422_naming_the_field() {
    // Both spellings of U+FFFE in JSON: raw UTF-8, and the \u escape (what most encoders write).
    let raw = json!({
        "subject": "Digest \u{FFFE}",
        "sections": [{"topic": "rust", "title": "T", "body": "B\u{FFFF}"}]
    })
    .to_string();
    let escaped = r#"{"subject": "Digest \uFFFE",
        "sections": [{"topic": "rust", "title": "T", "body": "B\uFFFF"}]}"#;
    for body in [raw.as_str(), escaped] {
        let answer = problem(post_json(body)).await;
        assert_eq!(answer.status, 422, "{body}");
        let pointers: Vec<&str> = answer.body["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|error| error["pointer"].as_str().unwrap())
            .collect();
        assert_eq!(pointers, ["#/subject", "#/sections/0/body"], "{body}");
        assert!(
            answer.body["errors"][0]["detail"]
                .as_str()
                .unwrap()
                .starts_with("must not contain U+FFFE:")
        );
    }
}

#[tokio::test]
async fn a_subject_or_title_of_invisible_characters_is_a_422() {
    let body = json!({
        "subject": "\u{200B}\u{200D}\u{FEFF}",
        "sections": [{"topic": "rust", "title": "\u{202E}\u{2066}\u{200E}", "body": "B"}]
    });
    let answer = problem(post_json(&body.to_string())).await;
    assert_eq!(answer.status, 422);
    let visible =
        "must hold at least one visible character, not only invisible formatting characters";
    assert_eq!(
        answer.body["errors"],
        json!([
            {"pointer": "#/subject", "detail": visible},
            {"pointer": "#/sections/0/title", "detail": visible}
        ])
    );
}

#[tokio::test]
async fn a_lost_queue_answer_withdraws_the_task_and_its_status_says_so() {
    let app = App::new(
        RecordingQueue::failing_next([Fault::LoseAnswer]),
        MemoryStore::default(),
        PagedDirectory::default(),
    );
    let answer = send(&app, with_key("order-42", &valid_body().to_string())).await;
    assert_eq!(answer.status, 503);
    assert_eq!(
        answer.body.get("task_id"),
        None,
        "nothing to look up: withdrawn"
    );
    let Some(Message::Job(job)) = app.queue.take().pop() else {
        panic!("the queue stored the job");
    };
    let status = send(&app, get(&format!("/newsletters/{}", job.task_id))).await;
    assert_eq!(status.body["status"], "withdrawn");
    assert!(
        status.headers.get(header::RETRY_AFTER).is_none(),
        "withdrawn is final"
    );
    assert_eq!(
        app.store.key_count(),
        0,
        "a retry with the key may try again"
    );
}

#[tokio::test]
async fn a_task_that_could_not_be_withdrawn_is_a_503_naming_it() {
    let app = App::new(
        RecordingQueue::failing_next([Fault::LoseAnswer]),
        FaultyStore::new(MemoryStore::default(), [("withdraw", vec![Fault::Fail])]),
        PagedDirectory::default(),
    );
    let answer = send(&app, post_json(&valid_body().to_string())).await;
    let Some(Message::Job(job)) = app.queue.take().pop() else {
        panic!("the queue stored the job");
    };
    let task_id = job.task_id.to_string();
    assert_eq!(answer.status, 503);
    assert_eq!(answer.content_type, "application/problem+json");
    assert_eq!(answer.headers[header::RETRY_AFTER], "5");
    assert_eq!(
        answer.body,
        json!({
            "type": "urn:newsletter-dispatch:problem:queue-unconfirmed",
            "title": "Service Unavailable",
            "status": 503,
            "detail": format!(
                "the queue did not confirm the newsletter, and whether it goes ahead is not \
                 known yet; GET /newsletters/{task_id} tells (withdrawn: it will not be sent). \
                 Retry with the same Idempotency-Key to be safe"
            ),
            "task_id": task_id,
        })
    );
}

/// A queue that stores nothing and never answers, as SQS behind a dead network path.
struct StalledQueue;

impl MessageQueue for StalledQueue {
    async fn send(&self, _message: &Message) -> Result<(), QueueError> {
        std::future::pending().await
    }

    async fn send_all(&self, _messages: &[Message]) -> Result<(), QueueError> {
        std::future::pending().await
    }
}

#[tokio::test]
async fn the_invocation_deadline_bounds_the_request() {
    let app = App::new(
        StalledQueue,
        MemoryStore::default(),
        PagedDirectory::default(),
    );
    let mut context = lambda_http::Context::default();
    let deadline = SystemTime::now() + Duration::from_secs(2);
    context.deadline = deadline.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
    let request = post_json(&valid_body().to_string()).with_lambda_context(context);
    let started = tokio::time::Instant::now();

    let answer = tokio::time::timeout(Duration::from_secs(30), send(&app, request))
        .await
        .expect("the handler answers by itself");

    assert_eq!(answer.status, 503);
    assert_eq!(
        answer.body["type"],
        "urn:newsletter-dispatch:problem:queue-unavailable"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "before the deadline: {:?}",
        started.elapsed()
    );
}

fn post(path: &str) -> Request {
    request("POST", path, None, Body::Empty)
}

/// A task accepted through the handler, by id.
async fn accepted_task(app: &TestApp) -> TaskId {
    let answer = send(app, post_json(&valid_body().to_string())).await;
    answer.body["task_id"].as_str().unwrap().parse().unwrap()
}

#[tokio::test]
async fn pause_and_resume_answer_202_with_the_status_and_are_safe_to_repeat() {
    let app = app();
    let task_id = accepted_task(&app).await;
    app.queue.take();

    // A body is ignored, whatever it is: neither route takes parameters.
    let paused = send(
        &app,
        request(
            "POST",
            &format!("/newsletters/{task_id}/pause"),
            Some("text/plain"),
            "ignored",
        ),
    )
    .await;
    assert_eq!(paused.status, 202);
    assert_eq!(paused.content_type, "application/json");
    assert_eq!(
        paused.headers[header::LOCATION],
        format!("/newsletters/{task_id}").as_str()
    );
    assert_eq!(paused.headers[header::RETRY_AFTER], "5");
    assert_eq!(paused.headers[header::CACHE_CONTROL], "no-store");
    assert_eq!(paused.body["status"], "paused");
    assert_eq!(paused.body["pause"]["code"], "requested");
    let status = send(&app, get(&format!("/newsletters/{task_id}"))).await;
    assert_eq!(paused.body, status.body, "the body GET answers");
    let again = send(&app, post(&format!("/newsletters/{task_id}/pause"))).await;
    assert_eq!((again.status, &again.body), (202, &paused.body), "a no-op");

    let resumed = send(&app, post(&format!("/newsletters/{task_id}/resume"))).await;
    assert_eq!(resumed.status, 202);
    assert_eq!(resumed.body["status"], "accepted");
    assert!(resumed.body.get("pause").is_none());
    let again = send(&app, post(&format!("/newsletters/{task_id}/resume"))).await;
    assert_eq!((again.status, &again.body), (202, &resumed.body), "a no-op");
    assert!(app.queue.take().is_empty(), "nothing was parked");
}

#[tokio::test]
async fn resume_queues_the_parked_deliveries_again() {
    let app = app();
    let task_id = accepted_task(&app).await;
    let job = app.queue.take().remove(0);
    send(&app, post(&format!("/newsletters/{task_id}/pause"))).await;
    assert!(
        app.store
            .park(task_id, "p0-c0", &job.encode())
            .await
            .unwrap()
    );

    let resumed = send(&app, post(&format!("/newsletters/{task_id}/resume"))).await;
    assert_eq!(resumed.status, 202);
    assert_eq!(app.queue.take(), [job], "the parked message, as it was");
    assert!(app.store.parked(task_id).await.unwrap().is_empty());
}

#[tokio::test]
async fn pause_and_resume_of_unknown_finished_or_malformed_tasks_are_problems() {
    for action in ["pause", "resume"] {
        let unknown = problem(post(&format!(
            "/newsletters/{}/{action}",
            TaskId::generate()
        )))
        .await;
        assert_eq!(unknown.status, 404, "{action}");
        assert_eq!(
            unknown.body["type"],
            "urn:newsletter-dispatch:problem:task-not-found"
        );

        let malformed = problem(post(&format!("/newsletters/not-a-task/{action}"))).await;
        assert_eq!(malformed.status, 400, "{action}");
        assert_eq!(
            malformed.body["type"],
            "urn:newsletter-dispatch:problem:malformed-task-id"
        );

        let wrong_method = problem(get(&format!(
            "/newsletters/{}/{action}",
            TaskId::generate()
        )))
        .await;
        assert_eq!(wrong_method.status, 405, "{action}");
        assert_eq!(wrong_method.headers[header::ALLOW], "POST");

        let app = app();
        let task_id = accepted_task(&app).await;
        app.store
            .finish(task_id, TaskStatus::Completed)
            .await
            .unwrap();
        let finished = send(&app, post(&format!("/newsletters/{task_id}/{action}"))).await;
        assert_eq!(finished.content_type, "application/problem+json");
        assert_eq!(
            finished.body,
            json!({
                "type": "urn:newsletter-dispatch:problem:task-finished",
                "title": "Task finished",
                "status": 409,
                "detail": "the task is completed: it can no longer be paused, resumed or cancelled"
            }),
            "{action}"
        );
    }
}

#[tokio::test]
async fn a_store_outage_during_a_pause_resume_or_cancel_is_503_with_retry_after() {
    let app = App::new(
        RecordingQueue::default(),
        MemoryStore::unreachable(),
        PagedDirectory::default(),
    );
    let task = format!("/newsletters/{}", TaskId::generate());
    for request in [
        post(&format!("{task}/pause")),
        post(&format!("{task}/resume")),
        delete(&task),
    ] {
        let method = request.method().clone();
        let answer = send(&app, request).await;
        assert_eq!(answer.status, 503, "{method}");
        assert_eq!(
            answer.body["type"],
            "urn:newsletter-dispatch:problem:store-unavailable"
        );
        assert_eq!(answer.headers[header::RETRY_AFTER], "5");
    }
}

fn delete(path: &str) -> Request {
    request("DELETE", path, None, Body::Empty)
}

#[tokio::test]
async fn cancel_answers_202_with_the_status_and_is_safe_to_repeat() {
    let app = app();
    let task_id = accepted_task(&app).await;
    app.queue.take();
    let cancelled = send(&app, delete(&format!("/newsletters/{task_id}"))).await;
    assert_eq!(cancelled.status, 202);
    assert_eq!(cancelled.content_type, "application/json");
    assert_eq!(
        cancelled.headers[header::LOCATION],
        format!("/newsletters/{task_id}").as_str()
    );
    assert_eq!(
        cancelled.headers[header::RETRY_AFTER],
        "5",
        "cancelling is not final"
    );
    assert_eq!(cancelled.body["status"], "cancelling");
    assert_eq!(cancelled.body["recipients"]["cancelled"], 0);
    let status = send(&app, get(&format!("/newsletters/{task_id}"))).await;
    assert_eq!(cancelled.body, status.body, "the body GET answers");
    let again = send(&app, delete(&format!("/newsletters/{task_id}"))).await;
    assert_eq!(
        (again.status, &again.body),
        (202, &cancelled.body),
        "a no-op"
    );
    assert!(app.queue.take().is_empty(), "nothing queued");

    // Nothing would be sent either way: pause and resume are refused.
    for action in ["pause", "resume"] {
        let refused = send(&app, post(&format!("/newsletters/{task_id}/{action}"))).await;
        assert_eq!(refused.content_type, "application/problem+json");
        assert_eq!(
            refused.body,
            json!({
                "type": "urn:newsletter-dispatch:problem:task-cancelled",
                "title": "Task cancelled",
                "status": 409,
                "detail": "the task is cancelling: it can no longer be paused or resumed"
            }),
            "{action}"
        );
    }
}

#[tokio::test]
async fn cancel_of_a_paused_task_counts_its_parked_deliveries_and_ends_it() {
    let app = app();
    let task_id = accepted_task(&app).await;
    app.queue.take();
    send(&app, post(&format!("/newsletters/{task_id}/pause"))).await;
    let plan = newsletter::planning::PagePlan {
        page: 0,
        chunks: Vec::new(),
        contacts: 2,
        skipped: 0,
        invalid_addresses: 0,
        next_token: None,
        unmatched_topics: Vec::new(),
    };
    newsletter::ports::PlanStore::record_page(&app.store, task_id, plan)
        .await
        .unwrap();
    let delivery = Message::decode(&format!(
        r#"{{"version": 1, "kind": "delivery", "task_id": "{task_id}", "chunk_id": "p0-c0",
            "newsletter": {}, "recipients": [
              {{"email": "a@example.com", "topics": ["rust"]}},
              {{"email": "b@example.com", "topics": ["rust"]}}]}}"#,
        valid_body()
    ))
    .unwrap();
    assert!(
        app.store
            .park(task_id, "p0-c0", &delivery.encode())
            .await
            .unwrap()
    );

    let cancelled = send(&app, delete(&format!("/newsletters/{task_id}"))).await;
    assert_eq!(cancelled.status, 202);
    assert_eq!(
        cancelled.body["status"], "cancelled",
        "nothing was in flight"
    );
    assert_eq!(cancelled.body["recipients"]["cancelled"], 2);
    assert!(
        cancelled.headers.get(header::RETRY_AFTER).is_none(),
        "final"
    );
    assert!(app.store.parked(task_id).await.unwrap().is_empty());
    assert!(app.queue.take().is_empty());
    let again = send(&app, delete(&format!("/newsletters/{task_id}"))).await;
    assert_eq!(again.status, 409);
    assert_eq!(
        again.body["detail"],
        "the task is cancelled: it can no longer be paused, resumed or cancelled"
    );
}

#[tokio::test]
async fn cancel_of_unknown_finished_or_malformed_tasks_are_problems() {
    let unknown = problem(delete(&format!("/newsletters/{}", TaskId::generate()))).await;
    assert_eq!(unknown.status, 404);
    assert_eq!(
        unknown.body["type"],
        "urn:newsletter-dispatch:problem:task-not-found"
    );
    let malformed = problem(delete("/newsletters/not-a-task")).await;
    assert_eq!(malformed.status, 400);
    assert_eq!(
        malformed.body["type"],
        "urn:newsletter-dispatch:problem:malformed-task-id"
    );
    let wrong_method = problem(post(&format!("/newsletters/{}", TaskId::generate()))).await;
    assert_eq!(wrong_method.status, 405);
    assert_eq!(wrong_method.headers[header::ALLOW], "GET, DELETE");

    let app = app();
    let task_id = accepted_task(&app).await;
    app.store.withdraw(task_id).await.unwrap();
    let finished = send(&app, delete(&format!("/newsletters/{task_id}"))).await;
    assert_eq!(finished.status, 409);
    assert_eq!(
        finished.body["type"],
        "urn:newsletter-dispatch:problem:task-finished"
    );
    assert_eq!(
        finished.body["detail"],
        "the task is withdrawn: it can no longer be paused, resumed or cancelled"
    );
}

mod new_routes;

//! `POST /newsletters/test` and `POST /newsletters/preview` through the real accept handler and
//! the in-process worker, on moto's SQS and SES and DynamoDB Local: a test send reaches exactly
//! its addresses, and a preview is byte for byte the email the worker sends.

use crate::helpers::{TestApp, json_body, spawn_app_with};
use crate::worker::{mixed_audience, newsletter_body};
use lambda_http::{Body, Request, RequestExt, http};
use local_stack::Settings;
use local_stack::outbox::SentEmail;
use serde_json::{Value, json};

/// In `mixed_audience`: opted into aws only.
const AWS_ONLY: &str = "reader002@example.com";
/// Opted into rust (by default) and aws.
const RUST_AND_AWS: &str = "reader001@example.com";
/// Unsubscribed from all.
const UNSUBSCRIBED: &str = "reader004@example.com";
/// Not in the list.
const OUTSIDER: &str = "editor@example.org";

async fn app() -> TestApp {
    spawn_app_with(
        Settings {
            audience: mixed_audience(),
            ..Settings::local().expect("template.yaml gives the local settings")
        },
        &[],
    )
    .await
}

fn request(method: &str, path: &str, content_type: &str, body: String) -> Request {
    http::Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", content_type)
        .body(Body::Text(body))
        .unwrap()
        .with_raw_http_path(path)
}

/// The newsletter of `newsletter_body` with `extra` members beside it.
fn body_with(extra: Value) -> String {
    let mut body: Value = serde_json::from_str(&newsletter_body()).unwrap();
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        body.extend(extra.clone());
    }
    body.to_string()
}

async fn post(app: &TestApp, path: &str, body: String) -> (u16, Value) {
    let response = app
        .accept
        .handle(request("POST", path, "application/json", body))
        .await;
    (response.status().as_u16(), json_body(&response))
}

async fn test_send(app: &TestApp, to: &[&str]) -> String {
    let (status, body) = post(app, "/newsletters/test", body_with(json!({"to": to}))).await;
    assert_eq!(status, 202, "{body}");
    app.run_worker_until_queue_is_empty().await;
    body["task_id"].as_str().unwrap().to_owned()
}

fn email_to<'a>(emails: &'a [SentEmail], address: &str) -> &'a SentEmail {
    let sent: Vec<_> = emails
        .iter()
        .filter(|email| email.destinations.to_addresses == [address])
        .collect();
    assert_eq!(sent.len(), 1, "one email to {address}");
    sent[0]
}

#[tokio::test]
async fn a_test_send_reaches_exactly_its_deliverable_addresses_with_their_sections() {
    let app = app().await;
    let task_id = test_send(&app, &[AWS_ONLY, UNSUBSCRIBED, OUTSIDER]).await;

    let emails = app.sent_emails().await;
    assert_eq!(
        app.recipients().await,
        [OUTSIDER, AWS_ONLY],
        "nobody else in the list, not the unsubscribed address"
    );
    assert_eq!(
        email_to(&emails, AWS_ONLY).section_titles(),
        ["Lambda news"]
    );
    assert_eq!(
        email_to(&emails, OUTSIDER).section_titles(),
        [
            "Rust 1.95 released",
            "Lambda news",
            "Nobody follows this",
            "Crate of the week"
        ],
        "an address not in the list gets every section"
    );
    for email in &emails {
        assert_eq!(
            email.task_id(),
            Some(task_id.as_str()),
            "tagged with its task"
        );
        assert_eq!(
            email.subject, "Weekly digest",
            "not marked: what subscribers get"
        );
    }

    let response = app
        .accept
        .handle(
            http::Request::builder()
                .method("GET")
                .uri(format!("/newsletters/{task_id}"))
                .body(Body::Empty)
                .unwrap()
                .with_raw_http_path(format!("/newsletters/{task_id}")),
        )
        .await;
    let status = json_body(&response);
    assert_eq!(status["kind"], "test");
    assert_eq!(status["status"], "completed");
    assert_eq!(
        status["recipients"],
        json!({"planned": 3, "sent": 2, "skipped": 1, "failed": 0})
    );
    assert_eq!(status["unmatched_topics"], json!(["cobol"]));
}

#[tokio::test]
async fn a_preview_is_byte_for_byte_the_email_the_worker_sends() {
    let app = app().await;
    test_send(&app, &[RUST_AND_AWS, OUTSIDER]).await;
    let emails = app.sent_emails().await;

    for address in [RUST_AND_AWS, OUTSIDER] {
        let (status, preview) = post(
            &app,
            "/newsletters/preview",
            body_with(json!({"as": address})),
        )
        .await;
        assert_eq!(status, 200, "{preview}");
        let sent = email_to(&emails, address);
        assert_eq!(preview["as"], address);
        assert_eq!(preview["subject"].as_str(), Some(sent.subject.as_str()));
        assert_eq!(
            preview["html"].as_str(),
            Some(sent.body.as_str()),
            "{address}"
        );
        assert_eq!(preview["text"].as_str(), sent.text.as_deref(), "{address}");
        let titles: Vec<&str> = preview["sections"]
            .as_array()
            .unwrap()
            .iter()
            .map(|section| section["title"].as_str().unwrap())
            .collect();
        assert_eq!(titles, sent.section_titles());
    }
    // Without "as": every section, as the address not in the list got it.
    let (_, everything) = post(&app, "/newsletters/preview", newsletter_body()).await;
    assert_eq!(
        everything["html"].as_str(),
        Some(email_to(&emails, OUTSIDER).body.as_str())
    );
    assert!(everything.get("as").is_none());
}

#[tokio::test]
async fn a_preview_as_a_contact_who_gets_nothing_says_why_and_sends_nothing() {
    let app = app().await;
    let (status, preview) = post(
        &app,
        "/newsletters/preview",
        body_with(json!({"as": UNSUBSCRIBED})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        preview,
        json!({"as": UNSUBSCRIBED, "sections": [], "skipped": "unsubscribed_from_all"})
    );
    let (_, preview) = post(
        &app,
        "/newsletters/preview",
        body_with(json!({"as": "reader003@example.com"})),
    )
    .await;
    assert_eq!(preview["skipped"], "no_topic_of_interest");
    assert_eq!(app.queue_depth().await, 0);
    assert!(app.sent_emails().await.is_empty());
}

#[tokio::test]
async fn the_new_routes_answer_their_4xx_with_problems_and_queue_nothing() {
    let app = app().await;
    let cases = [
        (
            "POST",
            "/newsletters/test",
            "application/json",
            body_with(json!({"to": []})),
            422,
            "validation-failed",
            Some("#/to"),
        ),
        (
            "POST",
            "/newsletters/test",
            "application/json",
            body_with(json!({"to": ["a@x.io", "nope"]})),
            422,
            "validation-failed",
            Some("#/to/1"),
        ),
        (
            "POST",
            "/newsletters/test",
            "application/json",
            newsletter_body(),
            422,
            "validation-failed",
            Some("#/to"),
        ),
        (
            "POST",
            "/newsletters/test",
            "text/plain",
            body_with(json!({"to": [OUTSIDER]})),
            415,
            "unsupported-media-type",
            None,
        ),
        (
            "POST",
            "/newsletters/test",
            "application/json",
            "{".to_owned(),
            400,
            "malformed-json",
            None,
        ),
        (
            "GET",
            "/newsletters/test",
            "application/json",
            String::new(),
            405,
            "method-not-allowed",
            None,
        ),
        (
            "POST",
            "/newsletters/preview",
            "application/json",
            body_with(json!({"as": "nope"})),
            422,
            "validation-failed",
            Some("#/as"),
        ),
        (
            "POST",
            "/newsletters/preview",
            "text/plain",
            newsletter_body(),
            415,
            "unsupported-media-type",
            None,
        ),
        (
            "POST",
            "/newsletters/preview",
            "application/json",
            "[1,".to_owned(),
            400,
            "malformed-json",
            None,
        ),
        (
            "GET",
            "/newsletters/preview",
            "application/json",
            String::new(),
            405,
            "method-not-allowed",
            None,
        ),
    ];
    for (method, path, content_type, body, status, kind, pointer) in cases {
        let response = app
            .accept
            .handle(request(method, path, content_type, body))
            .await;
        assert_eq!(response.status().as_u16(), status, "{method} {path} {kind}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
        let problem = json_body(&response);
        assert_eq!(
            problem["type"],
            format!("urn:newsletter-dispatch:problem:{kind}")
        );
        assert_eq!(problem["status"], status);
        if let Some(pointer) = pointer {
            assert_eq!(problem["errors"][0]["pointer"], pointer, "{method} {path}");
        }
        if status == 405 {
            assert_eq!(response.headers()["allow"], "POST");
        }
    }
    assert_eq!(app.queue_depth().await, 0);
}

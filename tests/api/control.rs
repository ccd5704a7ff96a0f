//! Pause, resume and cancel through the real accept handler and worker, against moto (SQS, SES)
//! and DynamoDB Local: a pause stops a send under way, a resume delivers everyone else, once; a
//! cancel stops it for good, and the task ends with exact counts.

use crate::helpers::{TestApp, json_body, post_request, spawn_app, spawn_app_sending_at};
use crate::worker::{mixed_audience, newsletter_body};
use lambda_http::{Body, Request, RequestExt, http};
use local_stack::Settings;
use newsletter::TaskId;
use newsletter::domain::TaskKind;
use newsletter::ports::TaskStore;
use newsletter::sending::CONTROL_CHECK_INTERVAL;
use serde_json::Value;
use std::time::Duration;

/// The worker's send rate here: a chunk of 50 takes about 4 s (after the limiter's 1 s burst),
/// so the pause lands mid-chunk.
const EMAILS_PER_SECOND: f64 = 10.0;
/// Recipients per chunk (the worker's default).
const CHUNK: usize = 50;

fn request(method: &str, path: &str) -> Request {
    http::Request::builder()
        .method(method)
        .uri(path)
        .body(Body::Empty)
        .unwrap()
        .with_raw_http_path(path)
}

/// Sends a request to accept: (status, content type, body).
async fn call(app: &TestApp, method: &str, path: &str) -> (u16, String, Value) {
    let response = app.accept.handle(request(method, path)).await;
    let content_type = response.headers()[http::header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .to_owned();
    (
        response.status().as_u16(),
        content_type,
        json_body(&response),
    )
}

/// A slow worker's app (the mixed audience) and the task of a newsletter it accepted.
async fn slow_send_accepted() -> (TestApp, String) {
    let settings = Settings {
        audience: mixed_audience(),
        ..Settings::local().expect("template.yaml gives the local settings")
    };
    let app = spawn_app_sending_at(settings, EMAILS_PER_SECOND).await;
    let accepted = app.accept.handle(post_request(&newsletter_body())).await;
    assert_eq!(accepted.status(), 202);
    let task_id = json_body(&accepted)["task_id"].as_str().unwrap().to_owned();
    (app, task_id)
}

/// Waits until the worker has sent a dozen emails; how many it has sent then.
async fn some_sent(app: &TestApp) -> usize {
    while app.recipients().await.len() < 12 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.recipients().await.len()
}

#[tokio::test]
async fn a_pause_during_a_send_stops_it_and_the_resume_delivers_everyone_exactly_once() {
    let (app, task_id) = slow_send_accepted().await;

    // The worker sends while a caller pauses the task, once some emails are out.
    let pausing = async {
        let sent_before = some_sent(&app).await;
        let paused = call(&app, "POST", &format!("/newsletters/{task_id}/pause")).await;
        (sent_before, paused)
    };
    let ((sent_before, paused), ()) = tokio::join!(pausing, app.run_worker_until_queue_is_empty());
    let (status, content_type, body) = paused;
    assert_eq!((status, content_type.as_str()), (202, "application/json"));
    assert_eq!(body["status"], "paused", "{body}");
    assert_eq!(body["pause"]["code"], "requested");

    let sent_while_paused = app.recipients().await.len();
    let (_, _, held) = call(&app, "GET", &format!("/newsletters/{task_id}")).await;
    let counts = &held["recipients"];
    let everyone = counts["planned"].as_u64().unwrap() - counts["skipped"].as_u64().unwrap();
    let everyone = usize::try_from(everyone).unwrap();
    assert!(everyone > 100, "mixed_audience has {everyone} recipients");
    assert!(
        sent_while_paused < CHUNK,
        "the pause stopped the first chunk under way: {sent_while_paused} sent"
    );
    // In flight + rate x (interval + the limiter's 1 s burst); moto answers in milliseconds, so
    // what is in flight is about nothing.
    let bound = (EMAILS_PER_SECOND * (CONTROL_CHECK_INTERVAL.as_secs_f64() + 1.0)) as usize;
    assert!(
        sent_while_paused - sent_before <= bound,
        "{} sent after the pause, bound {bound}",
        sent_while_paused - sent_before
    );
    assert_eq!(held["status"], "paused");
    assert_eq!(held["recipients"]["failed"], 0, "nobody failed for a pause");
    assert_eq!(
        app.queue_depth().await,
        0,
        "its chunks are parked, not queued"
    );
    assert_eq!(app.dead_letter_depth().await, 0);

    let (status, _, resumed) = call(&app, "POST", &format!("/newsletters/{task_id}/resume")).await;
    assert_eq!(status, 202);
    assert_ne!(resumed["status"], "paused", "{resumed}");
    assert!(resumed.get("pause").is_none());
    app.run_worker_until_queue_is_empty().await;

    let (_, _, done) = call(&app, "GET", &format!("/newsletters/{task_id}")).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["recipients"]["sent"], everyone);
    let recipients = app.recipients().await;
    let mut distinct = recipients.clone();
    distinct.dedup();
    assert_eq!(recipients, distinct, "nobody twice");
    assert_eq!(recipients.len(), everyone, "nobody skipped");

    let (status, content_type, finished) =
        call(&app, "POST", &format!("/newsletters/{task_id}/pause")).await;
    assert_eq!(
        (status, content_type.as_str()),
        (409, "application/problem+json")
    );
    assert_eq!(
        finished["type"],
        "urn:newsletter-dispatch:problem:task-finished"
    );
    assert!(finished["detail"].as_str().unwrap().contains("completed"));
}

#[tokio::test]
async fn a_cancel_during_a_send_stops_it_within_the_bound_and_ends_with_exact_counts() {
    let (app, task_id) = slow_send_accepted().await;

    let cancelling = async {
        let sent_before = some_sent(&app).await;
        let cancelled = call(&app, "DELETE", &format!("/newsletters/{task_id}")).await;
        (sent_before, cancelled)
    };
    // The worker goes on with the queue: the chunk under way stops, the chunks still queued are
    // counted without a send.
    let ((sent_before, cancelled), ()) =
        tokio::join!(cancelling, app.run_worker_until_queue_is_empty());
    let (status, content_type, body) = cancelled;
    assert_eq!((status, content_type.as_str()), (202, "application/json"));
    assert_eq!(body["status"], "cancelling", "{body}");

    let sent = app.recipients().await;
    let bound = (EMAILS_PER_SECOND * (CONTROL_CHECK_INTERVAL.as_secs_f64() + 1.0)) as usize;
    assert!(
        sent.len() - sent_before <= bound,
        "{} sent after the cancel, bound {bound}",
        sent.len() - sent_before
    );
    let (_, _, done) = call(&app, "GET", &format!("/newsletters/{task_id}")).await;
    assert_eq!(done["status"], "cancelled", "{done}");
    let counts = &done["recipients"];
    let count = |name: &str| counts[name].as_u64().unwrap();
    assert_eq!(count("sent"), sent.len() as u64, "sent is what SES took");
    assert_eq!(count("failed"), 0);
    assert!(count("cancelled") > 50, "most were never sent: {counts}");
    assert_eq!(
        count("sent") + count("skipped") + count("cancelled"),
        count("planned"),
        "everyone planned is accounted for: {counts}"
    );
    let mut distinct = sent.clone();
    distinct.dedup();
    assert_eq!(sent, distinct, "nobody twice");
    assert_eq!(app.queue_depth().await, 0);
    assert_eq!(app.dead_letter_depth().await, 0);

    let (status, _, again) = call(&app, "DELETE", &format!("/newsletters/{task_id}")).await;
    assert_eq!(status, 409);
    assert_eq!(
        again["type"],
        "urn:newsletter-dispatch:problem:task-finished"
    );
    let (status, _, resumed) = call(&app, "POST", &format!("/newsletters/{task_id}/resume")).await;
    assert_eq!(status, 409, "{resumed}");
}

#[tokio::test]
async fn control_routes_answer_problems_for_unknown_finished_malformed_and_wrong_methods() {
    let app = spawn_app().await;
    let finished = TaskId::generate();
    app.store
        .create(finished, TaskKind::Newsletter)
        .await
        .unwrap();
    app.store.withdraw(finished).await.unwrap();
    let unknown = TaskId::generate();
    // (method, path of the route, with {id} for the task id), and the Allow of a 405 there.
    let routes = [
        ("POST", "/newsletters/{id}/pause", "POST"),
        ("POST", "/newsletters/{id}/resume", "POST"),
        ("DELETE", "/newsletters/{id}", "GET, DELETE"),
    ];
    for (method, route, allow) in routes {
        let path = |id: &str| route.replace("{id}", id);
        let cases = [
            (method, path(&unknown.to_string()), 404, "task-not-found"),
            (method, path(&finished.to_string()), 409, "task-finished"),
            (method, path("not-a-uuid"), 400, "malformed-task-id"),
            (
                "PUT",
                path(&finished.to_string()),
                405,
                "method-not-allowed",
            ),
            (
                "PATCH",
                path(&finished.to_string()),
                405,
                "method-not-allowed",
            ),
        ];
        for (method, path, status, kind) in cases {
            let response = app.accept.handle(request(method, &path)).await;
            assert_eq!(response.status().as_u16(), status, "{method} {path}");
            assert_eq!(
                response.headers()[http::header::CONTENT_TYPE],
                "application/problem+json",
                "{method} {path}"
            );
            if status == 405 {
                assert_eq!(response.headers()[http::header::ALLOW], allow);
            }
            let body = json_body(&response);
            assert_eq!(body["status"], status);
            assert_eq!(
                body["type"],
                format!("urn:newsletter-dispatch:problem:{kind}"),
                "{method} {path}"
            );
        }
        let (_, _, withdrawn) = call(&app, method, &path(&finished.to_string())).await;
        assert!(withdrawn["detail"].as_str().unwrap().contains("withdrawn"));
    }
    assert_eq!(app.queue_depth().await, 0, "no problem queued anything");
}

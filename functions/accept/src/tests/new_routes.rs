//! `POST /newsletters/test` and `POST /newsletters/preview`: every refusal is the exact problem,
//! names the field, and queues nothing.

use super::*;
use newsletter::audience::{Contact, Subscription, TopicDefaults};
use newsletter::domain::TaskKind;
use newsletter::ports::ContactPage;

fn post(path: &str, body: &Value) -> Request {
    request("POST", path, Some("application/json"), body.to_string())
}

fn with(extra: Value) -> Value {
    let mut body = valid_body();
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        body.extend(extra.clone());
    }
    body
}

/// A list of rust and aws (both opted into by default), with one contact opted out of rust and
/// one unsubscribed from all.
fn directory() -> PagedDirectory {
    let contact = |email: &str, unsubscribe_all| Contact {
        email: email.into(),
        unsubscribe_all,
        preferences: vec![("rust".into(), Subscription::OptOut)],
    };
    PagedDirectory {
        defaults: TopicDefaults(
            [
                ("rust".into(), Subscription::OptIn),
                ("aws".into(), Subscription::OptIn),
            ]
            .into(),
        ),
        pages: vec![ContactPage {
            contacts: vec![contact("out@x.io", false), contact("gone@x.io", true)],
            next_token: None,
        }],
        ..Default::default()
    }
}

fn app_with(directory: PagedDirectory) -> TestApp {
    App::new(RecordingQueue::default(), MemoryStore::default(), directory)
}

/// Sends a request to `app` that must be refused, and checks nothing was queued.
async fn refused(app: &TestApp, request: Request) -> Answer {
    let answer = send(app, request).await;
    assert_eq!(answer.content_type, "application/problem+json");
    assert_eq!(answer.body["status"], answer.status);
    assert!(
        app.queue.sent.lock().unwrap().is_empty(),
        "a refused request was queued"
    );
    answer
}

fn pointers(answer: &Answer) -> Vec<&str> {
    answer.body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|error| error["pointer"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn a_test_send_is_a_task_of_kind_test_with_its_addresses_on_the_job() {
    let app = app();
    let body = with(json!({"to": ["a@x.io", "b@y.io"]}));
    let answer = send(&app, post(TEST_PATH, &body)).await;

    let task_id = accepted_task_id(&answer);
    let sent = app.queue.take();
    let [Message::Job(job)] = sent.as_slice() else {
        panic!("expected exactly one job, got {sent:?}");
    };
    let to: Vec<&str> = job
        .to
        .as_ref()
        .unwrap()
        .addresses()
        .iter()
        .map(|a| a.as_str())
        .collect();
    assert_eq!(to, ["a@x.io", "b@y.io"]);

    let status = send(&app, get(&format!("/newsletters/{task_id}"))).await;
    assert_eq!(status.body["kind"], "test");
    let task = app
        .store
        .get(task_id.parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(task.kind, TaskKind::Test);
}

#[tokio::test]
async fn a_test_send_with_bad_addresses_is_422_naming_each() {
    let eleven: Vec<String> = (0..11).map(|i| format!("u{i}@x.io")).collect();
    for (to, expected) in [
        (None, vec!["#/to"]),
        (Some(json!([])), vec!["#/to"]),
        (Some(json!(eleven)), vec!["#/to"]),
        (Some(json!("a@x.io")), vec!["#/to"]),
        (
            Some(json!(["a@x.io", "no-at-sign", 3])),
            vec!["#/to/1", "#/to/2"],
        ),
        (Some(json!(["a@x.io", "A@X.io"])), vec!["#/to/1"]),
    ] {
        let body = match &to {
            Some(to) => with(json!({"to": to})),
            None => valid_body(),
        };
        let answer = refused(&app(), post(TEST_PATH, &body)).await;
        assert_eq!(answer.status, 422, "{to:?}");
        assert_eq!(
            answer.body["type"],
            "urn:newsletter-dispatch:problem:validation-failed"
        );
        assert_eq!(pointers(&answer), expected, "{to:?}");
    }
    // The newsletter's rules hold as on POST /newsletters, reported with the addresses'.
    let body = json!({"subject": " ", "sections": [], "to": ["x"], "cc": []});
    let answer = refused(&app(), post(TEST_PATH, &body)).await;
    assert_eq!(
        pointers(&answer),
        ["#/cc", "#/subject", "#/sections", "#/to/0"]
    );
}

#[tokio::test]
async fn the_new_routes_refuse_bodies_as_post_newsletters_does() {
    let app = app();
    for path in [TEST_PATH, PREVIEW_PATH] {
        let wrong_type = request("POST", path, Some("text/plain"), valid_body().to_string());
        let answer = refused(&app, wrong_type).await;
        assert_eq!(
            (answer.status, answer.body["type"].as_str()),
            (
                415,
                Some("urn:newsletter-dispatch:problem:unsupported-media-type")
            )
        );
        let malformed = request("POST", path, Some("application/json"), "{\"subject\":");
        let answer = refused(&app, malformed).await;
        assert_eq!(
            (answer.status, answer.body["type"].as_str()),
            (400, Some("urn:newsletter-dispatch:problem:malformed-json"))
        );
        let padding = "x".repeat(newsletter::submit::MAX_REQUEST_BYTES);
        let large = request(
            "POST",
            path,
            Some("application/json"),
            format!("{{\"subject\":\"{padding}\"}}"),
        );
        let answer = refused(&app, large).await;
        assert_eq!(
            (answer.status, answer.body["type"].as_str()),
            (413, Some("urn:newsletter-dispatch:problem:body-too-large"))
        );
        let answer = refused(&app, get(path)).await;
        assert_eq!(answer.status, 405, "{path} is not a task id");
        assert_eq!(answer.headers[header::ALLOW], "POST");
    }
    // A newsletter does not take the new routes' fields.
    let answer = refused(
        &app,
        post_json(&with(json!({"to": ["a@x.io"]})).to_string()),
    )
    .await;
    assert_eq!(pointers(&answer), ["#/to"]);
    let answer = refused(&app, post(PREVIEW_PATH, &with(json!({"to": ["a@x.io"]})))).await;
    assert_eq!(pointers(&answer), ["#/to"]);
}

#[tokio::test]
async fn a_preview_is_the_email_with_its_sections() {
    let app = app_with(directory());
    let body = json!({
        "subject": "Weekly digest",
        "sections": [
            {"topic": "rust", "title": "Release notes", "body": "Markdown **text**"},
            {"topic": "aws", "title": "Lambda", "body": "news"}
        ]
    });
    let answer = send(&app, post(PREVIEW_PATH, &body)).await;

    assert_eq!(answer.status, 200);
    assert_eq!(answer.content_type, "application/json");
    let newsletter = newsletter::Newsletter::from_json(&body).unwrap();
    let topics: Vec<_> = newsletter.topics().into_iter().cloned().collect();
    let email = newsletter::render::render(&newsletter, &topics);
    assert_eq!(
        answer.body,
        json!({
            "subject": email.subject,
            "html": email.html,
            "text": email.text,
            "sections": [
                {"topic": "rust", "title": "Release notes"},
                {"topic": "aws", "title": "Lambda"}
            ]
        })
    );

    let as_contact = send(
        &app,
        post(
            PREVIEW_PATH,
            &json!({"as": "out@x.io", "subject": "S", "sections": body["sections"]}),
        ),
    )
    .await;
    assert_eq!(as_contact.status, 200);
    assert_eq!(as_contact.body["as"], "out@x.io");
    assert_eq!(
        as_contact.body["sections"],
        json!([{"topic": "aws", "title": "Lambda"}])
    );
    assert!(
        app.queue.sent.lock().unwrap().is_empty(),
        "a preview queues nothing"
    );
}

#[tokio::test]
async fn a_preview_as_a_contact_who_gets_nothing_says_why() {
    let app = app_with(directory());
    let answer = send(&app, post(PREVIEW_PATH, &with(json!({"as": "gone@x.io"})))).await;
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.body,
        json!({"as": "gone@x.io", "sections": [], "skipped": "unsubscribed_from_all"})
    );
    let answer = send(&app, post(PREVIEW_PATH, &with(json!({"as": "out@x.io"})))).await;
    assert_eq!(answer.body["skipped"], "no_topic_of_interest");
}

#[tokio::test]
async fn a_preview_as_a_bad_address_is_422_naming_as() {
    for as_ in [json!("nope"), json!(""), json!(["a@x.io"])] {
        let answer = refused(&app(), post(PREVIEW_PATH, &with(json!({"as": as_})))).await;
        assert_eq!(answer.status, 422);
        assert_eq!(pointers(&answer), ["#/as"], "{as_}");
    }
}

#[tokio::test]
async fn a_preview_when_the_list_cannot_be_read_is_503_with_retry_after() {
    let app = app_with(PagedDirectory {
        fail: true,
        ..Default::default()
    });
    let answer = refused(&app, post(PREVIEW_PATH, &with(json!({"as": "a@x.io"})))).await;
    assert_eq!(answer.status, 503);
    assert_eq!(
        answer.body["type"],
        "urn:newsletter-dispatch:problem:directory-unavailable"
    );
    assert_eq!(answer.headers[header::RETRY_AFTER], "5");
    // Without "as", the list is not needed.
    assert_eq!(
        send(&app, post(PREVIEW_PATH, &valid_body())).await.status,
        200
    );
}

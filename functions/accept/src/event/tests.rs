//! Events that lambda_http 1.3 panics on, and the ones it reads, through `handle_event` as the
//! runtime calls it: each gets the JSON response its origin expects.

use super::*;
use newsletter::testing::fakes::{MemoryStore, PagedDirectory, RecordingQueue};
use serde_json::{Value, json};

const CONSOLE_TEST: &str = include_str!("../../../../events/rest-api-console-test.json");
const BAD_BASE64: &str = include_str!("../../../../events/http-api-post-bad-base64.json");
const BASE64: &str = include_str!("../../../../events/http-api-post-base64.json");
const HTTP_API_POST: &str = include_str!("../../../../events/http-api-post.json");

type TestApp = App<RecordingQueue, MemoryStore, PagedDirectory>;

fn app() -> TestApp {
    App::new(
        RecordingQueue::default(),
        MemoryStore::default(),
        PagedDirectory::default(),
    )
}

fn event(json: &Value) -> LambdaRequest {
    serde_json::from_value(json.clone()).expect("an event lambda_http reads")
}

fn fixture(text: &str) -> Value {
    serde_json::from_str(text).unwrap()
}

/// The JSON the function hands back to Lambda for `event`.
async fn answer(app: &TestApp, event: LambdaRequest) -> Value {
    let response = app
        .handle_event(LambdaEvent::new(event, Context::default()))
        .await
        .unwrap();
    serde_json::to_value(response).unwrap()
}

/// The problem body of an answer, whichever header layout its origin uses.
fn problem_type(answer: &Value) -> String {
    let body: Value = serde_json::from_str(answer["body"].as_str().unwrap()).unwrap();
    body["type"].as_str().unwrap().to_owned()
}

fn valid_newsletter() -> String {
    json!({
        "subject": "Weekly digest",
        "sections": [{"topic": "rust", "title": "Release notes", "body": "Text"}]
    })
    .to_string()
}

#[test]
fn lambda_http_panics_on_both_fixtures() {
    // What main.rs used to hand every event to: if this stops panicking, the workarounds here
    // can go (after checking upstream's fix).
    for fixture in [CONSOLE_TEST, BAD_BASE64] {
        let converted = catch_unwind(|| lambda_http::request::from_str(fixture));
        assert!(
            converted.is_err(),
            "lambda_http no longer panics on {fixture}"
        );
    }
}

#[tokio::test]
async fn the_consoles_test_request_is_answered_not_a_502() {
    let app = app();
    let answer = answer(&app, event(&fixture(CONSOLE_TEST))).await;
    // Its path is /path/to/resource: nothing here.
    assert_eq!(answer["statusCode"], 404);
    assert_eq!(
        answer["multiValueHeaders"]["content-type"],
        json!(["application/problem+json"]),
        "the REST API layout"
    );
    assert_eq!(
        problem_type(&answer),
        "urn:newsletter-dispatch:problem:not-found"
    );
}

#[tokio::test]
async fn the_consoles_test_request_on_our_route_is_accepted() {
    let app = app();
    let mut console = fixture(CONSOLE_TEST);
    console["path"] = json!("/newsletters");
    console["resource"] = json!("/newsletters");
    console["headers"]["Content-Type"] = json!("application/json");
    console["body"] = json!(valid_newsletter());
    let answer = answer(&app, event(&console)).await;
    assert_eq!(answer["statusCode"], 202, "{answer}");
    assert_eq!(app.queue.sent.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn a_body_that_is_not_base64_is_a_400_naming_the_body() {
    let app = app();
    let answer = answer(&app, event(&fixture(BAD_BASE64))).await;
    assert_eq!(answer["statusCode"], 400);
    assert_eq!(
        answer["headers"]["content-type"], "application/problem+json",
        "the HTTP API layout"
    );
    let body: Value = serde_json::from_str(answer["body"].as_str().unwrap()).unwrap();
    assert_eq!(
        body,
        json!({
            "type": "urn:newsletter-dispatch:problem:body-not-base64",
            "title": "Body is not base64",
            "status": 400,
            "detail": "the request body is marked base64 (isBase64Encoded) but is not valid base64"
        })
    );
    assert!(app.queue.sent.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_base64_body_is_decoded_here_as_lambda_http_would() {
    let app = app();
    let answer = answer(&app, event(&fixture(BASE64))).await;
    assert_eq!(answer["statusCode"], 202, "{answer}");
    let request = into_request(event(&fixture(BASE64))).unwrap();
    let expected = lambda_http::request::from_str(BASE64).unwrap();
    assert_eq!(request.body().as_ref(), expected.body().as_ref());
    assert_eq!(request.uri(), expected.uri());
}

#[test]
fn events_lambda_http_reads_convert_as_it_converts_them() {
    for fixture in [HTTP_API_POST, BASE64] {
        let ours = into_request(serde_json::from_str(fixture).unwrap()).unwrap();
        let theirs = lambda_http::request::from_str(fixture).unwrap();
        assert_eq!(ours.method(), theirs.method());
        assert_eq!(ours.uri(), theirs.uri());
        assert_eq!(ours.headers(), theirs.headers());
        assert_eq!(ours.raw_http_path(), theirs.raw_http_path());
        assert_eq!(ours.body().as_ref(), theirs.body().as_ref());
    }
}

#[test]
fn hosts_that_cannot_be_in_a_uri_are_left_out() {
    for host in [
        "1234567890.execute-api.{dns_suffix}",
        "a b",
        "host:port",
        "host:65536",
        "user@host",
        "[::1",
        "",
    ] {
        let mut post = fixture(HTTP_API_POST);
        post["headers"]["host"] = json!(host);
        post["requestContext"]["domainName"] = json!(host);
        let request = into_request(event(&post)).unwrap_or_else(|err| panic!("{host}: {err}"));
        assert_eq!(request.uri(), "/newsletters", "{host}");
        assert!(request.headers().get(header::HOST).is_none());
    }
    for host in [
        "example.com:8443",
        "[::1]:443",
        "10.0.0.1",
        "under_score.example",
    ] {
        let mut post = fixture(HTTP_API_POST);
        post["headers"]["host"] = json!(host);
        let request = into_request(event(&post)).unwrap();
        assert_eq!(request.headers()[header::HOST], host, "kept");
        assert!(request.uri().host().is_some(), "{host}: {}", request.uri());
    }
    // A bad Host header with a good domain name: the URI gets the domain name.
    let mut post = fixture(HTTP_API_POST);
    post["headers"]["host"] = json!("{bad}");
    let request = into_request(event(&post)).unwrap();
    assert_eq!(
        request.uri(),
        "https://a1b2c3d4e5.execute-api.us-east-1.amazonaws.com/newsletters"
    );
}

#[tokio::test]
async fn anything_else_lambda_http_panics_on_is_a_400() {
    // A scheme that cannot start a URL (lambda_http unwraps the URL parse), and a raw query with
    // characters no URI holds (an HTTP API passes it on as the client sent it).
    let mut bad_query = fixture(HTTP_API_POST);
    bad_query["rawQueryString"] = json!("q=\"quoted\" and spaced");
    let mut post = fixture(HTTP_API_POST);
    post["headers"]["x-forwarded-proto"] = json!("ht tp");
    for event in [event(&bad_query), event(&post)] {
        assert!(matches!(into_request(event), Err(EventError::Unreadable)));
    }
    let app = app();
    let answer = answer(&app, event(&post)).await;
    assert_eq!(answer["statusCode"], 400);
    assert_eq!(
        problem_type(&answer),
        "urn:newsletter-dispatch:problem:unreadable-event"
    );
    assert!(app.queue.sent.lock().unwrap().is_empty());
}

#[test]
fn the_invocation_context_and_trace_reach_the_handler() {
    let mut context = Context::default();
    context.request_id = "c6af9ac6".into();
    context.deadline = 1_795_600_803_000;
    context.xray_trace_id = Some("Root=1-5759e988-bd862e3fe1be46a994272793".into());
    let request = with_context(
        into_request(event(&fixture(HTTP_API_POST))).unwrap(),
        context,
    );
    let attached = request.lambda_context_ref().expect("the context");
    assert_eq!(
        (attached.request_id.as_str(), attached.deadline),
        ("c6af9ac6", 1_795_600_803_000)
    );
    assert_eq!(
        request.headers()["x-amzn-trace-id"],
        "Root=1-5759e988-bd862e3fe1be46a994272793"
    );
}

//! `POST /newsletters` through the real handler and a real SQS protocol server.

use crate::helpers::{event_file, json_body, post_request, spawn_app};
use ::accept::App;
use newsletter::message::Message;
use newsletter_aws::dynamodb::DynamoStore;
use newsletter_aws::sqs::SqsQueue;
use serde_json::json;

#[tokio::test]
async fn accepted_newsletter_is_on_the_queue_with_its_task_id() {
    let app = spawn_app().await;

    let response = app.post_newsletter(&event_file("newsletter.json")).await;

    assert_eq!(response.status(), 202);
    let task_id = json_body(&response)["task_id"].as_str().unwrap().to_owned();
    let queued = app.drain_queue().await;
    assert_eq!(
        queued.len(),
        1,
        "exactly one message per accepted newsletter"
    );
    let Message::Job(job) = Message::decode(&queued[0]).expect("a valid message") else {
        panic!("expected a job message");
    };
    assert_eq!(job.task_id.to_string(), task_id);
    assert_eq!(job.newsletter.subject().as_str(), "Weekly digest");
    assert_eq!(job.newsletter.sections().len(), 2);
}

#[tokio::test]
async fn refused_requests_leave_the_queue_empty() {
    let app = spawn_app().await;
    let oversized = json!({"subject": "s", "sections": [{"topic": "a", "title": "t", "body": "x".repeat(300 * 1024)}]});
    let cases = [
        ("{not json", 400),
        (r#"{"subject": "", "sections": []}"#, 422),
        (
            r#"{"subject": "a\r\nBcc: x@example.com", "sections": [{"topic": "rust", "title": "t", "body": "b"}]}"#,
            422,
        ),
        (&oversized.to_string(), 413),
    ];
    for (body, status) in cases {
        assert_eq!(app.post_newsletter(body).await.status(), status);
    }
    for file in ["http-api-post-wrong-content-type.json", "http-api-get.json"] {
        let request = lambda_http::request::from_str(&event_file(file)).unwrap();
        assert!(
            app.accept.handle(request).await.status().is_client_error(),
            "{file}"
        );
    }
    assert_eq!(app.queue_depth().await, 0);
}

#[tokio::test]
async fn unreachable_queue_is_503_never_202() {
    let app = spawn_app().await;
    let closed_port = local_stack::moto::free_port().unwrap();
    let aws = local_stack::sdk_config(&closed(closed_port)).await;
    let queue_url = format!("http://127.0.0.1:{closed_port}/123456789012/newsletter-jobs");
    let accept = App::new(
        SqsQueue::new(aws_sdk_sqs::Client::new(&aws), queue_url),
        app.store.clone(),
        app.contact_list(),
    );

    let response = accept
        .handle(post_request(&event_file("newsletter.json")))
        .await;

    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "5");
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
}

#[tokio::test]
async fn unreachable_task_store_is_503_and_nothing_is_queued() {
    let app = spawn_app().await;
    let closed_port = local_stack::moto::free_port().unwrap();
    let aws = local_stack::sdk_config(&closed(closed_port)).await;
    let store = DynamoStore::new(aws_sdk_dynamodb::Client::new(&aws), "newsletter-tasks");
    let queue = SqsQueue::new(app.sqs.clone(), &app.stack.queue_url);
    let accept = App::new(queue, store, app.contact_list());

    let response = accept
        .handle(post_request(&event_file("newsletter.json")))
        .await;

    assert_eq!(response.status(), 503);
    assert_eq!(app.queue_depth().await, 0);
}

#[tokio::test]
async fn missing_queue_is_503() {
    let app = spawn_app().await;
    let missing = app
        .stack
        .queue_url
        .replace("newsletter-jobs", "no-such-queue");
    let queue = SqsQueue::new(app.sqs.clone(), missing);
    let accept = App::new(queue, app.store.clone(), app.contact_list());

    let response = accept
        .handle(post_request(&event_file("newsletter.json")))
        .await;

    assert_eq!(response.status(), 503);
    assert_eq!(app.queue_depth().await, 0);
}

/// Every local endpoint on a port nothing listens on.
fn closed(port: u16) -> local_stack::Endpoints {
    let endpoint = format!("http://127.0.0.1:{port}");
    local_stack::Endpoints {
        aws: endpoint.clone(),
        dynamodb: endpoint,
    }
}

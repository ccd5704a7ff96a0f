//! Every file in `events/` goes through the function that takes it, with the answer it must get,
//! so a fixture cannot rot unnoticed.

use crate::helpers::{event_file, json_body, spawn_app, spawn_app_with};
use aws_lambda_events::event::sqs::SqsEvent;
use lambda_http::{Context, LambdaEvent, request::LambdaRequest};
use local_stack::event_source::Invoke;
use local_stack::subscribers::ContactList;
use local_stack::{Settings, repository_root};
use newsletter::domain::TaskKind;
use newsletter::message::Message;
use newsletter::ports::TaskStore;

/// API Gateway and function URL requests for `accept`, and the status each must get.
const HTTP_EVENTS: &[(&str, u16)] = &[
    ("http-api-post.json", 202),
    ("rest-api-post.json", 202),
    ("function-url-post.json", 202),
    ("http-api-post-base64.json", 202),
    ("http-api-post-malformed-json.json", 400),
    ("http-api-post-invalid.json", 422),
    ("http-api-post-wrong-content-type.json", 415),
    ("http-api-get.json", 405),
    // What the API Gateway console's Test button sends (aws_lambda_events' own fixture): its Host
    // `1234567890.execute-api.{dns_suffix}` made lambda_http panic; its path is not ours.
    ("rest-api-console-test.json", 404),
    // `isBase64Encoded: true` with a JSON body: lambda_http's decoder panicked on it.
    ("http-api-post-bad-base64.json", 400),
    // The sample task's pause, resume and cancel (the test records the task first): its status,
    // no job. The cancel last: a cancelled task is not paused or resumed.
    ("http-api-pause.json", 202),
    ("http-api-resume.json", 202),
    ("http-api-cancel.json", 202),
    // A test send to a subscriber and an address not in the list: a job of its own.
    ("http-api-test-send.json", 202),
    // The email a subscriber would get: no job.
    ("http-api-preview.json", 200),
];

/// The HTTP events that control the sample task rather than accept a newsletter, and the status
/// each leaves it in.
const CONTROL_EVENTS: &[(&str, &str)] = &[
    ("http-api-pause.json", "paused"),
    ("http-api-resume.json", "accepted"),
    // Cancelling until its job comes (and finds it cancelled): nothing else of it is in flight.
    ("http-api-cancel.json", "cancelling"),
];

/// SQS batches for `worker`, and the message ids it must report failed.
/// The task every SQS sample names.
const SAMPLE_TASK: &str = "01a21247-9995-70f9-bc17-8ed0fa487837";

const SQS_EVENTS: &[(&str, &[&str])] = &[
    ("sqs-job.json", &[]),
    ("sqs-delivery.json", &[]),
    (
        "sqs-poison-batch.json",
        &["0c8c5a51-2222-4a4a-9a9a-000000000002"],
    ),
];

/// Direct invocations of `worker` by an operator: resuming the sample task once its pause's cause
/// is fixed.
const OPERATOR_EVENTS: &[&str] = &["resume-task.json"];

/// Files that are not Lambda events: the request body `make dev` prints a curl for.
const REQUEST_BODIES: &[&str] = &["newsletter.json"];

#[tokio::test]
async fn every_file_in_events_is_covered_here() {
    let mut covered: Vec<&str> = HTTP_EVENTS.iter().map(|(name, _)| *name).collect();
    covered.extend(SQS_EVENTS.iter().map(|(name, _)| *name));
    covered.extend(OPERATOR_EVENTS);
    covered.extend(REQUEST_BODIES);
    let directory = local_stack::repository_root().join("events");
    for entry in std::fs::read_dir(directory).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        assert!(
            covered.contains(&name.as_str()),
            "events/{name} is not exercised by any test"
        );
    }
}

#[tokio::test]
async fn http_events_get_their_answers_and_only_202s_enqueue() {
    let app = spawn_app().await;
    app.store
        .create(SAMPLE_TASK.parse().unwrap(), TaskKind::Newsletter)
        .await
        .unwrap();
    let mut accepted = Vec::new();
    for (file, status) in HTTP_EVENTS {
        // As the runtime hands it to main.rs: the event JSON in, the response JSON out.
        let event: LambdaRequest = serde_json::from_str(&event_file(file))
            .unwrap_or_else(|err| panic!("{file} is not an event lambda_http reads: {err}"));
        let response = app
            .accept
            .handle_event(LambdaEvent::new(event, Context::default()))
            .await
            .unwrap();
        let response = serde_json::to_value(response).unwrap();
        assert_eq!(response["statusCode"], *status, "{file}");
        let body: serde_json::Value =
            serde_json::from_str(response["body"].as_str().unwrap()).unwrap();
        if let Some((_, expected)) = CONTROL_EVENTS.iter().find(|(name, _)| name == file) {
            assert_eq!(body["task_id"], SAMPLE_TASK, "{file}");
            assert_eq!(body["status"], *expected, "{file}");
        } else if *status == 202 {
            accepted.push(body["task_id"].as_str().unwrap().to_owned());
        } else if *status == 200 {
            assert_eq!(body["as"], "linus@example.com", "{file}: a preview");
            assert!(body["html"].is_string(), "{file}: the email");
        } else {
            assert_eq!(body["status"], *status, "{file}: a problem+json body");
        }
    }
    let mut queued: Vec<String> = app
        .drain_queue()
        .await
        .iter()
        .map(|body| Message::decode(body).unwrap().task_id().to_string())
        .collect();
    queued.sort();
    accepted.sort();
    assert_eq!(queued, accepted);
}

#[tokio::test]
async fn invalid_event_names_every_bad_field() {
    let app = spawn_app().await;
    let request =
        lambda_http::request::from_str(&event_file("http-api-post-invalid.json")).unwrap();
    let problem = json_body(&app.accept.handle(request).await);
    let pointers: Vec<&str> = problem["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|error| error["pointer"].as_str().unwrap())
        .collect();
    assert_eq!(
        pointers,
        [
            "#/priority",
            "#/subject",
            "#/sections/0/topic",
            "#/sections/0/title"
        ]
    );
}

#[tokio::test]
async fn sqs_events_report_exactly_their_poison_messages() {
    let audience = ContactList::load(&repository_root().join("dev/subscribers.json")).unwrap();
    let app = spawn_app_with(
        Settings {
            audience,
            ..Settings::local().expect("template.yaml gives the local settings")
        },
        &[],
    )
    .await;
    // The samples' jobs and deliveries are delivered for a task that exists (as the accept
    // function records it); for a task without a record they are reported, not delivered.
    let job: SqsEvent = serde_json::from_str(&event_file("sqs-job.json")).unwrap();
    let unknown = app.worker.invoke(job).await.unwrap();
    assert_eq!(
        unknown.batch_item_failures.len(),
        1,
        "a job of a task nobody recorded"
    );
    assert!(
        app.drain_queue().await.is_empty(),
        "and nothing was planned for it"
    );
    app.store
        .create(SAMPLE_TASK.parse().unwrap(), TaskKind::Newsletter)
        .await
        .expect("the samples' task is recorded");
    for (file, poison) in SQS_EVENTS {
        let event: SqsEvent = serde_json::from_str(&event_file(file))
            .unwrap_or_else(|err| panic!("{file} is not an SQS event: {err}"));
        let response = app.worker.invoke(event).await.unwrap();
        let reported: Vec<&str> = response
            .batch_item_failures
            .iter()
            .map(|failure| failure.item_identifier.as_str())
            .collect();
        assert_eq!(reported, *poison, "{file}");
    }
    // The job was planned into a delivery; the deliveries reached their recipients.
    let planned = app.drain_queue().await;
    assert!(
        planned
            .iter()
            .any(|body| matches!(Message::decode(body), Ok(Message::Delivery(_))))
    );
    assert_eq!(
        app.recipients().await,
        ["ada@example.com", "grace@example.com", "linus@example.com"],
        "sqs-delivery.json's three recipients; sqs-poison-batch.json's delivery is for the same \
         task and chunk, which sqs-delivery.json finished, so it sends nothing"
    );
}

#[tokio::test]
async fn a_resume_event_answers_what_it_did_and_names_an_unknown_task() {
    let app = spawn_app().await;
    let event = event_file(OPERATOR_EVENTS[0]);
    let unknown = app.worker.invoke_json(&event).await;
    assert!(
        unknown.is_err_and(|err| err.to_string().contains(SAMPLE_TASK)),
        "a task nobody recorded is an error for the operator"
    );
    app.store
        .create(SAMPLE_TASK.parse().unwrap(), TaskKind::Newsletter)
        .await
        .unwrap();
    let answer = app.worker.invoke_json(&event).await.unwrap();
    assert_eq!(
        answer,
        serde_json::json!({"resumed": false, "requeued": 0}),
        "a task that is not paused is left as it is"
    );
}

//! One way to stand the system up for a test: a moto server of its own on a free port,
//! provisioned as `template.yaml` would be, and the handlers built as their `main`s build them.

use ::accept::App;
use aws_sdk_sqs::types::QueueAttributeName;
use lambda_http::{Body, Request, RequestExt, Response, http};
use local_stack::{MotoServer, Provisioned, Settings};
use newsletter::queue::SqsQueue;

pub struct TestApp {
    pub sqs: aws_sdk_sqs::Client,
    pub stack: Provisioned,
    pub accept: App<SqsQueue>,
    // Last, so the server outlives the clients that talk to it; dropping it stops the process.
    _moto: MotoServer,
}

pub async fn spawn_app() -> TestApp {
    let moto = MotoServer::start(0).expect("local AWS server starts");
    let aws = local_stack::sdk_config(&moto.endpoint()).await;
    let stack = local_stack::provision(&aws, &Settings::default())
        .await
        .expect("local AWS is provisioned");
    let sqs = aws_sdk_sqs::Client::new(&aws);
    let accept = App::new(SqsQueue::new(sqs.clone(), &stack.queue_url));
    TestApp {
        sqs,
        stack,
        accept,
        _moto: moto,
    }
}

impl TestApp {
    pub async fn post_newsletter(&self, body: &str) -> Response<Body> {
        self.accept.handle(post_request(body)).await
    }

    /// Receives everything on the jobs queue (hiding it for the rest of the test).
    pub async fn drain_queue(&self) -> Vec<String> {
        let mut bodies = Vec::new();
        loop {
            let received = self
                .sqs
                .receive_message()
                .queue_url(&self.stack.queue_url)
                .max_number_of_messages(10)
                .visibility_timeout(300)
                .send()
                .await
                .expect("receive from the jobs queue");
            let messages = received.messages.unwrap_or_default();
            if messages.is_empty() {
                return bodies;
            }
            bodies.extend(messages.into_iter().filter_map(|message| message.body));
        }
    }

    pub async fn queue_depth(&self) -> u64 {
        let attributes = self
            .sqs
            .get_queue_attributes()
            .queue_url(&self.stack.queue_url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .expect("read queue attributes")
            .attributes
            .unwrap_or_default();
        attributes
            .values()
            .map(|count| count.parse::<u64>().unwrap_or(0))
            .sum()
    }
}

pub fn post_request(body: &str) -> Request {
    http::Request::builder()
        .method("POST")
        .uri("/newsletters")
        .header("content-type", "application/json")
        .body(Body::Text(body.to_owned()))
        .expect("valid request")
        .with_raw_http_path("/newsletters")
}

pub fn json_body(response: &Response<Body>) -> serde_json::Value {
    serde_json::from_slice(response.body().as_ref()).expect("JSON response body")
}

/// A file under `events/` at the repository root.
pub fn event_file(name: &str) -> String {
    let path = local_stack::repository_root().join("events").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("read {}: {err}", path.display()))
}

//! One way to stand the system up for a test: a moto server of its own on a free port (SQS, SES),
//! a table of its own in the DynamoDB Local the test process shares, provisioned as
//! `template.yaml` would be, and the handlers built as their `main`s build them.

use ::accept::App;
use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use aws_sdk_sqs::types::QueueAttributeName;
use lambda_http::{Body, Request, RequestExt, Response, http};
use lambda_runtime::{Context, LambdaEvent};
use local_stack::event_source::{Invoke, SqsEventSource, Trigger};
use local_stack::outbox::SentEmail;
use local_stack::{Endpoints, MotoServer, Provisioned, Settings};
use newsletter_aws::dynamodb::DynamoStore;
use newsletter_aws::ses::SesContactList;
use newsletter_aws::sqs::SqsQueue;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use worker::{Config, SesFunction, WorkerEvent, WorkerResponse};

/// The accept handler as its `main` builds it.
pub type Accept = App<SqsQueue, DynamoStore, SesContactList>;

pub struct TestApp {
    pub sqs: aws_sdk_sqs::Client,
    /// The local SES, to change the account under the worker (unverify the sender, say).
    pub ses: aws_sdk_sesv2::Client,
    pub stack: Provisioned,
    pub settings: Settings,
    pub accept: Accept,
    pub store: DynamoStore,
    pub worker: InProcessWorker,
    /// moto's (SES's record of sent mail).
    endpoint: String,
    // Last, so the server outlives the clients that talk to it; dropping it stops the process.
    // (DynamoDB Local is the process's, and outlives every test.)
    _moto: MotoServer,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(
        Settings::local().expect("template.yaml gives the local settings"),
        &[],
    )
    .await
}

/// `moto_env` sets the local SES's fault injection (see `dev/moto_server.py`). The table name gets
/// a suffix that makes it unique among the test process's apps (`app.settings` has it).
pub async fn spawn_app_with(settings: Settings, moto_env: &[(&str, &str)]) -> TestApp {
    let dynamodb = local_stack::dynamodb_local::shared_endpoint().expect("DynamoDB Local starts");
    spawn_on(settings, moto_env, dynamodb, FAST_SEND_RATE).await
}

/// The worker's account send rate in tests: fast, so that tests take no time sending.
const FAST_SEND_RATE: f64 = 1000.0;

/// The app with a worker that sends at `emails_per_second` (one instance): slow enough, say, for
/// a pause to land in the middle of a chunk.
pub async fn spawn_app_sending_at(settings: Settings, emails_per_second: f64) -> TestApp {
    let dynamodb = local_stack::dynamodb_local::shared_endpoint().expect("DynamoDB Local starts");
    spawn_on(settings, &[], dynamodb, emails_per_second).await
}

/// The app on a moto server of its own and the DynamoDB endpoint `dynamodb` (DynamoDB Local, or
/// a proxy in front of it), with a table of its own there.
async fn spawn_on(
    mut settings: Settings,
    moto_env: &[(&str, &str)],
    dynamodb: String,
    max_send_rate: f64,
) -> TestApp {
    settings.table_name = local_stack::dynamodb_local::unique_table_name(&settings.table_name);
    let moto = MotoServer::start_with_env(0, moto_env).expect("local AWS server starts");
    let endpoint = moto.endpoint();
    let aws = local_stack::sdk_config(&Endpoints {
        aws: endpoint.clone(),
        dynamodb,
    })
    .await;
    let stack = local_stack::provision(&aws, &settings)
        .await
        .expect("local AWS is provisioned");
    let sqs = aws_sdk_sqs::Client::new(&aws);
    let store = DynamoStore::new(aws_sdk_dynamodb::Client::new(&aws), &settings.table_name);
    let ses = aws_sdk_sesv2::Client::new(&aws);
    let accept = App::new(
        SqsQueue::new(sqs.clone(), &stack.queue_url),
        store.clone(),
        SesContactList::new(ses.clone(), &settings.contact_list_name),
    );
    let config = Config {
        queue_url: stack.queue_url.clone(),
        table_name: settings.table_name.clone(),
        dead_letter_queue_url: stack.dead_letter_queue_url.clone(),
        function_timeout: Duration::from_secs(60),
        contact_list_name: settings.contact_list_name.clone(),
        from_address: settings.from_address.clone(),
        max_send_rate,
        max_concurrency: 1,
        max_in_flight: 16,
        configuration_set_name: None,
        recipient_hash_key: worker::SecretKey(local_stack::LOCAL_RECIPIENT_HASH_KEY.into()),
    };
    let worker = InProcessWorker {
        function: worker::build(&config, &aws).expect("the worker's configuration is valid"),
        events: Mutex::default(),
    };
    TestApp {
        sqs,
        ses,
        stack,
        settings,
        accept,
        store,
        worker,
        endpoint,
        _moto: moto,
    }
}

/// The worker handler called in-process, as the Lambda runtime would, recording every batch.
pub struct InProcessWorker {
    pub function: SesFunction,
    pub events: Mutex<Vec<(SqsEvent, SqsBatchResponse)>>,
}

impl Invoke for InProcessWorker {
    async fn invoke(&self, event: SqsEvent) -> anyhow::Result<SqsBatchResponse> {
        let mut context = Context::default();
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?;
        context.deadline = (now + Duration::from_secs(60)).as_millis() as u64;
        let answer = worker::handle(
            &self.function,
            LambdaEvent::new(WorkerEvent::Batch(event.clone()), context),
        )
        .await
        .map_err(|err| anyhow::anyhow!("{err}"))?;
        let WorkerResponse::Batch(response) = answer else {
            anyhow::bail!("a batch was answered as a sweep")
        };
        self.events.lock().unwrap().push((event, response.clone()));
        Ok(response)
    }
}

impl InProcessWorker {
    /// Runs the schedule's sweep of the dead-letter queue, as the template's schedule does.
    pub async fn sweep_dead_letters(&self) -> serde_json::Value {
        self.invoke_json(r#"{"sweep": "dead-letters"}"#)
            .await
            .expect("the sweep runs")
    }

    /// What an operator's `{"resume": "<task id>"}` invocation answers.
    pub async fn resume(&self, task_id: &str) -> serde_json::Value {
        self.invoke_json(&format!(r#"{{"resume": "{task_id}"}}"#))
            .await
            .expect("the resume runs")
    }

    /// Invokes the worker with a JSON event, as `aws lambda invoke` would.
    pub async fn invoke_json(
        &self,
        event: &str,
    ) -> Result<serde_json::Value, lambda_runtime::Error> {
        let event: WorkerEvent = serde_json::from_str(event)?;
        let mut context = Context::default();
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?;
        context.deadline = (now + Duration::from_secs(60)).as_millis() as u64;
        let answer = worker::handle(&self.function, LambdaEvent::new(event, context)).await?;
        Ok(serde_json::to_value(answer)?)
    }

    /// Every message body the worker was handed, in order.
    pub fn bodies(&self) -> Vec<String> {
        let events = self.events.lock().unwrap();
        events
            .iter()
            .flat_map(|(event, _)| event.records.iter().filter_map(|r| r.body.clone()))
            .collect()
    }
}

impl TestApp {
    pub async fn post_newsletter(&self, body: &str) -> Response<Body> {
        self.accept.handle(post_request(body)).await
    }

    pub async fn event_source(&self, batch_size: i32) -> SqsEventSource {
        let trigger = Trigger {
            batch_size,
            batching_window: Duration::ZERO,
            wait_time_seconds: 0,
        };
        SqsEventSource::new(self.sqs.clone(), &self.stack.queue_url, trigger)
            .await
            .expect("event source")
    }

    /// Feeds the worker from the queue, as Lambda's SQS trigger does, until the queue is empty.
    pub async fn run_worker_until_queue_is_empty(&self) {
        let source = self.event_source(10).await;
        for _ in 0..1000 {
            let outcome = source.poll(&self.worker).await.expect("poll the queue");
            assert_eq!(
                outcome.failed, 0,
                "no message should fail here: {:?}",
                outcome.bodies
            );
            if outcome.bodies.is_empty() && self.queue_depth().await == 0 {
                return;
            }
        }
        panic!("the queue did not drain");
    }

    pub async fn sent_emails(&self) -> Vec<SentEmail> {
        local_stack::outbox::sent_emails(&self.endpoint)
            .await
            .expect("read SES's outbox")
    }

    /// Everyone SES recorded an email for, sorted, once per email.
    pub async fn recipients(&self) -> Vec<String> {
        let mut recipients: Vec<String> = self
            .sent_emails()
            .await
            .into_iter()
            .flat_map(|email| email.destinations.to_addresses)
            .collect();
        recipients.sort();
        recipients
    }

    /// Feeds the worker from the queue until the dead-letter queue holds a message; returns every
    /// body handed to the worker on the way.
    pub async fn run_worker_until_something_is_dead_lettered(&self) -> Vec<String> {
        let source = self.event_source(10).await;
        let started = std::time::Instant::now();
        let mut handed = Vec::new();
        while self.dead_letter_depth().await == 0 {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "nothing reached the DLQ"
            );
            let outcome = source.poll(&self.worker).await.expect("poll the queue");
            if outcome.bodies.is_empty() {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            handed.extend(outcome.bodies);
        }
        handed
    }

    /// Takes everything off the jobs queue (receives and deletes it).
    pub async fn drain_queue(&self) -> Vec<String> {
        local_stack::drain_queue(&self.sqs, &self.stack.queue_url)
            .await
            .expect("drain the jobs queue")
    }

    pub async fn queue_depth(&self) -> u64 {
        depth(&self.sqs, &self.stack.queue_url).await
    }

    pub async fn dead_letter_depth(&self) -> u64 {
        depth(&self.sqs, &self.stack.dead_letter_queue_url).await
    }

    pub async fn enqueue_raw(&self, body: &str) -> String {
        self.sqs
            .send_message()
            .queue_url(&self.stack.queue_url)
            .message_body(body)
            .send()
            .await
            .expect("send to the jobs queue")
            .message_id
            .expect("a message id")
    }
}

async fn depth(sqs: &aws_sdk_sqs::Client, queue_url: &str) -> u64 {
    let attributes = sqs
        .get_queue_attributes()
        .queue_url(queue_url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesDelayed)
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

impl TestApp {
    /// Moves every message of the dead-letter queue back to the jobs queue, as
    /// `StartMessageMoveTask` does (moto does not implement it). Returns how many moved.
    pub async fn redrive_dead_letters(&self) -> usize {
        let bodies = local_stack::drain_queue(&self.sqs, &self.stack.dead_letter_queue_url)
            .await
            .expect("drain the dead-letter queue");
        for body in &bodies {
            self.enqueue_raw(body).await;
        }
        bodies.len()
    }
}

/// [`spawn_app_with`] (without SES faults), with a [`DynamoDbProxy`] between DynamoDB Local and
/// every DynamoDB client of the app (provisioning, the accept handler, the store, the worker), to
/// inject faults and count capacity. Its stats are reset once the app is provisioned.
///
/// [`DynamoDbProxy`]: local_stack::dynamodb_proxy::DynamoDbProxy
pub async fn spawn_app_behind_dynamodb_proxy(
    settings: Settings,
) -> (TestApp, local_stack::dynamodb_proxy::DynamoDbProxy) {
    let dynamodb = local_stack::dynamodb_local::shared_endpoint().expect("DynamoDB Local starts");
    let proxy = local_stack::dynamodb_proxy::DynamoDbProxy::start(&dynamodb)
        .await
        .expect("the DynamoDB proxy starts");
    let app = spawn_on(settings, &[], proxy.endpoint(), FAST_SEND_RATE).await;
    proxy.reset_stats();
    (app, proxy)
}

impl TestApp {
    /// An accept handler like `app.accept`, with the SDK timeouts the function ships with, whose
    /// SQS calls go through a [`SqsProxy`] in front of this app's moto (to lose or hold back
    /// `SendMessage` answers); the store is the app's.
    ///
    /// [`SqsProxy`]: local_stack::sqs_proxy::SqsProxy
    pub async fn accept_behind_sqs_proxy(&self) -> (Accept, local_stack::sqs_proxy::SqsProxy) {
        let proxy = local_stack::sqs_proxy::SqsProxy::start(&self.endpoint)
            .await
            .expect("the SQS proxy starts");
        let dynamodb = local_stack::dynamodb_local::shared_endpoint().expect("DynamoDB Local");
        let aws = local_stack::sdk_config(&Endpoints {
            aws: proxy.endpoint(),
            dynamodb,
        })
        .await
        .into_builder()
        .timeout_config(::accept::sdk_timeouts())
        .build();
        let queue = SqsQueue::new(aws_sdk_sqs::Client::new(&aws), &self.stack.queue_url);
        (
            App::new(queue, self.store.clone(), self.contact_list()),
            proxy,
        )
    }

    /// The contact list as accept reads it.
    pub fn contact_list(&self) -> SesContactList {
        SesContactList::new(self.ses.clone(), &self.settings.contact_list_name)
    }
}

/// `request` as Lambda hands it over: with an invocation deadline `time_limit` from now.
pub fn with_deadline(request: Request, time_limit: Duration) -> Request {
    let mut context = Context::default();
    let deadline = SystemTime::now() + time_limit;
    context.deadline = deadline
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as u64;
    request.with_lambda_context(context)
}

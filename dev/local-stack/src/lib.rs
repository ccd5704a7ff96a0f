//! The system on one machine: local AWS servers (moto for SQS and SES, AWS's DynamoDB Local for
//! DynamoDB), provisioned the way `template.yaml` provisions the cloud, for `make dev`, the
//! integration tests and the bench.

pub mod dynamodb_local;
pub mod dynamodb_proxy;
pub mod event_source;
pub mod functions;
pub mod lambda_host;
pub mod log_events;
pub mod moto;
pub mod outbox;
pub mod provision;
pub mod ses_endpoint;
pub mod sqs_proxy;
pub mod stack;
pub mod subscribers;

pub use dynamodb_local::DynamoDbLocal;
pub use moto::MotoServer;
pub use provision::{Provisioned, Settings, provision};

use aws_sdk_sqs::config::{BehaviorVersion, Credentials, Region};
use aws_types::service_config::{LoadServiceConfig, ServiceConfigKey};

/// The region everything local lives in.
pub const REGION: &str = "us-east-1";

/// Where local AWS listens: DynamoDB at DynamoDB Local, every other service (SQS, SES) at moto.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    /// moto's endpoint (or a stand-in in front of it, such as the bench's SES endpoint).
    pub aws: String,
    /// DynamoDB Local's endpoint.
    pub dynamodb: String,
}

/// SDK configuration for local AWS, with dummy credentials: every client built from it goes to
/// `endpoints.aws`, except DynamoDB clients, which go to `endpoints.dynamodb`.
pub async fn sdk_config(endpoints: &Endpoints) -> aws_config::SdkConfig {
    let config = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(REGION))
        .credentials_provider(credentials())
        .load()
        .await;
    // A client takes its endpoint from the config's service-config source before the shared one,
    // unless the shared one was set on the loader: then it wins for every service, DynamoDB too.
    // So it is set on the loaded config instead, and the source `load` set up (the environment:
    // `AWS_ENDPOINT_URL_<SERVICE>`, profiles) is replaced by one that gives each service its
    // endpoint: in-process clients go where `endpoints` says, whatever the environment holds.
    config
        .into_builder()
        .endpoint_url(&endpoints.aws)
        .service_config(ServiceEndpoints(endpoints.clone()))
        .build()
}

/// A DynamoDB client for DynamoDB Local at `endpoint`, with dummy credentials, without loading a
/// whole SDK configuration.
pub fn dynamodb_client(endpoint: &str) -> aws_sdk_dynamodb::Client {
    let config = aws_sdk_dynamodb::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new(REGION))
        .credentials_provider(credentials())
        .build();
    aws_sdk_dynamodb::Client::from_conf(config)
}

/// Dummy credentials: moto and DynamoDB Local accept any.
fn credentials() -> Credentials {
    Credentials::new("testing", "testing", None, None, "local")
}

/// Each service's endpoint URL, as `AWS_ENDPOINT_URL_<SERVICE>` would give it.
#[derive(Debug)]
struct ServiceEndpoints(Endpoints);

impl LoadServiceConfig for ServiceEndpoints {
    fn load_config(&self, key: ServiceConfigKey<'_>) -> Option<String> {
        match (key.profile(), key.service_id()) {
            ("endpoint_url", "DynamoDB") => Some(self.0.dynamodb.clone()),
            ("endpoint_url", _) => Some(self.0.aws.clone()),
            _ => None,
        }
    }
}

/// The environment variables that point an AWS SDK at local AWS, as a child process needs them:
/// `AWS_ENDPOINT_URL` for every client aws-config builds, and `AWS_ENDPOINT_URL_DYNAMODB`, which
/// takes precedence for DynamoDB clients.
pub fn sdk_environment(endpoints: &Endpoints) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ENDPOINT_URL", endpoints.aws.clone()),
        ("AWS_ENDPOINT_URL_DYNAMODB", endpoints.dynamodb.clone()),
        ("AWS_REGION", REGION.to_owned()),
        ("AWS_ACCESS_KEY_ID", "testing".to_owned()),
        ("AWS_SECRET_ACCESS_KEY", "testing".to_owned()),
    ]
}

/// Takes every message off a queue (receives and deletes it) and returns the bodies. PurgeQueue
/// would be one call, but SQS (and moto) allow it once a minute.
pub async fn drain_queue(
    sqs: &aws_sdk_sqs::Client,
    queue_url: &str,
) -> anyhow::Result<Vec<String>> {
    let mut bodies = Vec::new();
    loop {
        let messages = sqs
            .receive_message()
            .queue_url(queue_url)
            .max_number_of_messages(10)
            .send()
            .await?
            .messages
            .unwrap_or_default();
        if messages.is_empty() {
            return Ok(bodies);
        }
        let entries = messages
            .iter()
            .enumerate()
            .map(|(index, message)| {
                aws_sdk_sqs::types::DeleteMessageBatchRequestEntry::builder()
                    .id(index.to_string())
                    .receipt_handle(message.receipt_handle.clone().unwrap_or_default())
                    .build()
            })
            .collect::<Result<Vec<_>, _>>()?;
        sqs.delete_message_batch()
            .queue_url(queue_url)
            .set_entries(Some(entries))
            .send()
            .await?;
        bodies.extend(messages.into_iter().filter_map(|message| message.body));
    }
}

/// The repository root (this crate lives in `dev/local-stack`).
pub fn repository_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The environment the template gives the worker for `config`, with the SDK pointed at
/// `endpoints`: what a worker bootstrap run locally (under the Lambda host) needs.
/// The key that names recipients in local logs (deployments generate theirs in Secrets Manager).
pub const LOCAL_RECIPIENT_HASH_KEY: &str = "local-recipient-hash-key";

pub fn worker_environment(config: &worker::Config, endpoints: &Endpoints) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = sdk_environment(endpoints)
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value))
        .collect();
    env.extend(
        [
            ("QUEUE_URL", config.queue_url.clone()),
            (
                "DEAD_LETTER_QUEUE_URL",
                config.dead_letter_queue_url.clone(),
            ),
            ("TABLE_NAME", config.table_name.clone()),
            ("CONTACT_LIST_NAME", config.contact_list_name.clone()),
            ("FROM_ADDRESS", config.from_address.clone()),
            ("RECIPIENT_HASH_KEY", config.recipient_hash_key.0.clone()),
            ("MAX_SEND_RATE", config.max_send_rate.to_string()),
            ("MAX_CONCURRENCY", config.max_concurrency.to_string()),
            ("MAX_IN_FLIGHT", config.max_in_flight.to_string()),
            (
                "FUNCTION_TIMEOUT",
                config.function_timeout.as_secs().to_string(),
            ),
        ]
        .map(|(name, value)| (name.to_owned(), value)),
    );
    env.extend(
        config
            .configuration_set_name
            .iter()
            .map(|set| ("CONFIGURATION_SET_NAME".to_owned(), set.clone())),
    );
    env
}

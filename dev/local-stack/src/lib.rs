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
pub mod template;

pub use dynamodb_local::DynamoDbLocal;
pub use moto::MotoServer;
pub use provision::{Provisioned, Settings, provision};

use aws_sdk_sqs::config::{BehaviorVersion, Credentials, Region};
use aws_types::service_config::{LoadServiceConfig, ServiceConfigKey};
use template::{Locals, Template};

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

/// The key that names recipients in local logs (deployments generate theirs in Secrets Manager).
pub const LOCAL_RECIPIENT_HASH_KEY: &str = "local-recipient-hash-key";

/// The environment `function` gets: the SDK pointed at `endpoints` ([`sdk_environment`]), the
/// log format Lambda derives from the function's `LoggingConfig`, and the template's
/// `Environment.Variables` for it, resolved with `locals`. So a variable added to the template
/// reaches every local run, or stops it with an error naming the variable when it needs a local
/// value nobody gave.
pub fn function_environment(
    template: &Template,
    function: &str,
    locals: &Locals,
    endpoints: &Endpoints,
) -> anyhow::Result<Vec<(String, String)>> {
    let function = template.function(function)?;
    let mut env: Vec<(String, String)> = sdk_environment(endpoints)
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value))
        .collect();
    env.push(("AWS_LAMBDA_LOG_FORMAT".to_owned(), function.log_format()?));
    env.extend(function.environment(locals)?);
    Ok(env)
}

/// The local values of what the functions' environments refer to in the template: the queues
/// and the table as provisioned, the parameters as a local run sets them. [`LocalResources::locals`]
/// maps them to the template's names.
#[derive(Debug, Clone, Copy)]
pub struct LocalResources<'a> {
    pub queue_url: &'a str,
    pub dead_letter_queue_url: &'a str,
    pub table_name: &'a str,
    pub from_address: &'a str,
    pub contact_list_name: &'a str,
    pub max_send_rate: f64,
    pub max_concurrency: u32,
    pub configuration_set_name: Option<&'a str>,
}

impl LocalResources<'_> {
    /// The template's `!Ref`s to them, and the local key in place of the secret the template
    /// resolves at deploy time.
    pub fn locals(&self) -> Locals {
        let locals = Locals::new()
            // Resources: what CloudFormation would name or create, as provisioned locally.
            .with_ref(template::JOBS_QUEUE, self.queue_url)
            .with_ref(template::DEAD_LETTER_QUEUE, self.dead_letter_queue_url)
            .with_ref(template::TASKS_TABLE, self.table_name)
            // Parameters: the local values in place of a deployment's (or of their defaults).
            .with_ref("FromAddress", self.from_address)
            .with_ref("ContactListName", self.contact_list_name)
            .with_ref("MaxSendRate", self.max_send_rate)
            .with_ref("WorkerMaxConcurrency", self.max_concurrency)
            // The template resolves the key from Secrets Manager at deploy time.
            .with_variable("RECIPIENT_HASH_KEY", LOCAL_RECIPIENT_HASH_KEY);
        match self.configuration_set_name {
            Some(set) => locals.with_ref("ConfigurationSetName", set),
            None => locals,
        }
    }
}

/// The environment the template gives the worker for `config`, with the SDK pointed at
/// `endpoints`: what a worker bootstrap run locally (under the Lambda host) needs. The variables
/// are the template's ([`function_environment`]), with `config`'s values (its timeout too: runs
/// may shorten it) and its `MAX_IN_FLIGHT` (a setting the template leaves at its default). An
/// error names what `template.yaml` lacks, or the worker's variable that has no local value.
pub fn worker_environment(
    config: &worker::Config,
    endpoints: &Endpoints,
) -> anyhow::Result<Vec<(String, String)>> {
    let locals = LocalResources {
        queue_url: &config.queue_url,
        dead_letter_queue_url: &config.dead_letter_queue_url,
        table_name: &config.table_name,
        from_address: &config.from_address,
        contact_list_name: &config.contact_list_name,
        max_send_rate: config.max_send_rate,
        max_concurrency: config.max_concurrency,
        configuration_set_name: config.configuration_set_name.as_deref(),
    }
    .locals()
    .with_variable("RECIPIENT_HASH_KEY", &config.recipient_hash_key.0)
    .with_variable("FUNCTION_TIMEOUT", config.function_timeout.as_secs());
    let mut env = function_environment(
        Template::load()?,
        template::WORKER_FUNCTION,
        &locals,
        endpoints,
    )?;
    env.push(("MAX_IN_FLIGHT".to_owned(), config.max_in_flight.to_string()));
    Ok(env)
}

//! The system on one machine: a local AWS server (moto), provisioned the way `template.yaml`
//! provisions the cloud, for `make dev` and for the integration tests.

pub mod event_source;
pub mod functions;
pub mod log_events;
pub mod moto;
pub mod outbox;
pub mod provision;
pub mod stack;
pub mod subscribers;

pub use moto::MotoServer;
pub use provision::{Provisioned, Settings, provision};

use aws_sdk_sqs::config::{BehaviorVersion, Credentials, Region};

/// The region everything local lives in.
pub const REGION: &str = "us-east-1";

/// SDK configuration for a local AWS endpoint, with dummy credentials (moto accepts any).
pub async fn sdk_config(endpoint: &str) -> aws_config::SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new(REGION))
        .credentials_provider(Credentials::new("testing", "testing", None, None, "local"))
        .load()
        .await
}

/// The environment variables that point an AWS SDK at a local endpoint, as a child process needs
/// them (`AWS_ENDPOINT_URL` is honoured by every SDK client aws-config builds).
pub fn sdk_environment(endpoint: &str) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ENDPOINT_URL", endpoint.to_owned()),
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

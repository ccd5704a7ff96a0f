//! Creates locally what `template.yaml` creates in AWS: the jobs queue with its dead-letter queue
//! and redrive policy, the SES sender identity, the contact list with its topics (on moto), and
//! the tasks table (on DynamoDB Local).

use crate::subscribers::Audience;
use anyhow::Context;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
    TimeToLiveSpecification,
};
use aws_sdk_sqs::types::QueueAttributeName;

/// What to create. The defaults mirror `template.yaml`.
#[derive(Debug, Clone)]
pub struct Settings {
    pub queue_name: String,
    pub table_name: String,
    /// Seconds; the template sets 6× the worker timeout.
    pub visibility_timeout: u32,
    /// Receives before SQS moves a message to the dead-letter queue (the template's
    /// `Mappings.Constants.JobsQueue.MaxReceiveCount`).
    pub max_receive_count: u32,
    pub from_address: String,
    pub contact_list_name: String,
    /// The contact list's topics, and the subscribers to seed it with.
    pub audience: Audience,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            queue_name: "newsletter-jobs".into(),
            table_name: "newsletter-tasks".into(),
            visibility_timeout: 360,
            max_receive_count: 5,
            from_address: "newsletter@example.com".into(),
            contact_list_name: "newsletter-subscribers".into(),
            audience: Audience::default(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Provisioned {
    pub queue_url: String,
    pub dead_letter_queue_url: String,
}

/// `config` must point DynamoDB at DynamoDB Local ([`crate::sdk_config`] does).
pub async fn provision(
    config: &aws_config::SdkConfig,
    settings: &Settings,
) -> anyhow::Result<Provisioned> {
    let sqs = aws_sdk_sqs::Client::new(config);
    let queues = create_queues(
        &sqs,
        &settings.queue_name,
        settings.visibility_timeout,
        settings.max_receive_count,
    )
    .await?;

    let ses = aws_sdk_sesv2::Client::new(config);
    ses.create_email_identity()
        .email_identity(&settings.from_address)
        .send()
        .await
        .context("creating the sender identity")?;
    ses.create_contact_list()
        .contact_list_name(&settings.contact_list_name)
        .set_topics(Some(settings.audience.ses_topics()?))
        .send()
        .await
        .context("creating the contact list")?;
    settings
        .audience
        .seed(&ses, &settings.contact_list_name)
        .await?;

    create_tasks_table(&aws_sdk_dynamodb::Client::new(config), &settings.table_name).await?;

    Ok(queues)
}

/// The jobs queue `name` and its dead-letter queue (`<name>-dlq`, 14 days' retention), with the
/// template's redrive policy after `max_receive_count` receives.
pub async fn create_queues(
    sqs: &aws_sdk_sqs::Client,
    name: &str,
    visibility_timeout: u32,
    max_receive_count: u32,
) -> anyhow::Result<Provisioned> {
    let dead_letter_queue_url = sqs
        .create_queue()
        .queue_name(format!("{name}-dlq"))
        .attributes(QueueAttributeName::MessageRetentionPeriod, "1209600")
        .send()
        .await
        .context("creating the dead-letter queue")?
        .queue_url
        .context("no dead-letter queue URL")?;
    let dead_letter_queue_arn = sqs
        .get_queue_attributes()
        .queue_url(&dead_letter_queue_url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await?
        .attributes
        .and_then(|mut attributes| attributes.remove(&QueueAttributeName::QueueArn))
        .context("no dead-letter queue ARN")?;
    let redrive_policy = serde_json::json!({
        "deadLetterTargetArn": dead_letter_queue_arn,
        "maxReceiveCount": max_receive_count,
    });
    let queue_url = sqs
        .create_queue()
        .queue_name(name)
        .attributes(
            QueueAttributeName::VisibilityTimeout,
            visibility_timeout.to_string(),
        )
        .attributes(
            QueueAttributeName::RedrivePolicy,
            redrive_policy.to_string(),
        )
        .send()
        .await
        .context("creating the jobs queue")?
        .queue_url
        .context("no jobs queue URL")?;
    Ok(Provisioned {
        queue_url,
        dead_letter_queue_url,
    })
}

/// The tasks table as the template defines it: string key `pk`, on demand, TTL on `expires_at`.
pub async fn create_tasks_table(
    dynamodb: &aws_sdk_dynamodb::Client,
    name: &str,
) -> anyhow::Result<()> {
    dynamodb
        .create_table()
        .table_name(name)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("pk")
                .attribute_type(ScalarAttributeType::S)
                .build()?,
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("pk")
                .key_type(KeyType::Hash)
                .build()?,
        )
        .send()
        .await
        .with_context(|| format!("creating the tasks table {name}"))?;
    dynamodb
        .update_time_to_live()
        .table_name(name)
        .time_to_live_specification(
            TimeToLiveSpecification::builder()
                .attribute_name("expires_at")
                .enabled(true)
                .build()?,
        )
        .send()
        .await
        .context("enabling TTL on the tasks table")?;
    Ok(())
}

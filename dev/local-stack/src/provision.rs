//! Creates locally what `template.yaml` creates in AWS: the jobs queue with its dead-letter queue
//! and redrive policy, the SES sender identity, the contact list with its topics (on moto), and
//! the tasks table (on DynamoDB Local).

use crate::subscribers::ContactList;
use crate::template::{self, Template};
use anyhow::Context;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
    TimeToLiveSpecification,
};
use aws_sdk_sqs::types::QueueAttributeName;

/// What to create. The queue attributes come from `template.yaml` ([`Settings::from_template`]);
/// the names are local (the template lets CloudFormation name the queues and the table, and takes
/// the sender and the contact list as parameters without defaults).
#[derive(Debug, Clone)]
pub struct Settings {
    pub queue_name: String,
    pub table_name: String,
    /// Seconds: the template's `JobsQueue.VisibilityTimeout`.
    pub visibility_timeout: u32,
    /// Receives before SQS moves a message to the dead-letter queue: the template's
    /// `JobsQueue.RedrivePolicy.maxReceiveCount`.
    pub max_receive_count: u32,
    pub from_address: String,
    pub contact_list_name: String,
    /// The contact list's topics, and the subscribers to seed it with.
    pub audience: ContactList,
}

impl Settings {
    /// The jobs queue's attributes as `template` sets them, with local names.
    pub fn from_template(template: &Template) -> anyhow::Result<Self> {
        let jobs_queue = template.queue(template::JOBS_QUEUE)?;
        Ok(Self {
            queue_name: "newsletter-jobs".into(),
            table_name: "newsletter-tasks".into(),
            visibility_timeout: jobs_queue.visibility_timeout()?,
            max_receive_count: jobs_queue.max_receive_count()?,
            from_address: "newsletter@example.com".into(),
            contact_list_name: "newsletter-subscribers".into(),
            audience: ContactList::default(),
        })
    }
}

impl Settings {
    /// [`Settings::from_template`] on the repository's `template.yaml`: the local settings the
    /// tests and `make dev` start from.
    pub fn local() -> anyhow::Result<Self> {
        Self::from_template(Template::load()?)
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

/// The jobs queue `name` and its dead-letter queue (`<name>-dlq`, with the template's
/// `MessageRetentionPeriod`), with the template's redrive policy after `max_receive_count`
/// receives.
pub async fn create_queues(
    sqs: &aws_sdk_sqs::Client,
    name: &str,
    visibility_timeout: u32,
    max_receive_count: u32,
) -> anyhow::Result<Provisioned> {
    let template = Template::load()?;
    let dead_letter_queue = template.queue(template::JOBS_QUEUE)?.dead_letter_queue()?;
    let retention = template
        .queue(&dead_letter_queue)?
        .message_retention_period()?;
    let dead_letter_queue_url = sqs
        .create_queue()
        .queue_name(format!("{name}-dlq"))
        .attributes(
            QueueAttributeName::MessageRetentionPeriod,
            retention.to_string(),
        )
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

/// The tasks table as the template's `TasksTable` defines it: its key schema and attribute
/// types, its billing mode, and TTL on its TTL attribute (`pk`, on demand, `expires_at` today).
pub async fn create_tasks_table(
    dynamodb: &aws_sdk_dynamodb::Client,
    name: &str,
) -> anyhow::Result<()> {
    let template = Template::load()?;
    let table = template.table(template::TASKS_TABLE)?;
    let mut create = dynamodb
        .create_table()
        .table_name(name)
        .billing_mode(BillingMode::from(table.billing_mode()?.as_str()));
    for key in table.key_schema()? {
        create = create
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name(&key.name)
                    .attribute_type(ScalarAttributeType::from(key.attribute_type.as_str()))
                    .build()?,
            )
            .key_schema(
                KeySchemaElement::builder()
                    .attribute_name(&key.name)
                    .key_type(KeyType::from(key.key_type.as_str()))
                    .build()?,
            );
    }
    create
        .send()
        .await
        .with_context(|| format!("creating the tasks table {name}"))?;
    if let Some(attribute) = table.ttl_attribute()? {
        dynamodb
            .update_time_to_live()
            .table_name(name)
            .time_to_live_specification(
                TimeToLiveSpecification::builder()
                    .attribute_name(attribute)
                    .enabled(true)
                    .build()?,
            )
            .send()
            .await
            .context("enabling TTL on the tasks table")?;
    }
    Ok(())
}

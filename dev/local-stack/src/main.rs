//! `local-stack dev`: the whole system on this machine until Ctrl-C.
//! `local-stack outbox [TASK_ID]`: the emails the local SES recorded.

use anyhow::Context;
use local_stack::event_source::Trigger;
use local_stack::stack::{DynamoDb, LocalStack, StackOptions};
use local_stack::subscribers::ContactList;
use local_stack::template::Template;
use local_stack::{Settings, repository_root};
use newsletter::domain::TaskKind;
use newsletter::ports::TaskStore;
use std::sync::Arc;

const DEFAULT_AWS_PORT: u16 = 4566;
/// DynamoDB Local's own default port.
const DEFAULT_DYNAMODB_PORT: u16 = 8000;
const DEFAULT_LAMBDA_PORT: u16 = 9000;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("dev") => dev().await,
        Some("outbox") => outbox(args.get(1).map(String::as_str)).await,
        _ => anyhow::bail!("usage: local-stack dev | local-stack outbox [TASK_ID]"),
    }
}

fn port(variable: &str, default: u16) -> anyhow::Result<u16> {
    match std::env::var(variable) {
        Ok(value) => value
            .parse()
            .with_context(|| format!("{variable}={value} is not a port")),
        Err(_) => Ok(default),
    }
}

/// The task every SQS sample in `events/` names.
const SAMPLE_TASK_ID: &str = "01a21247-9995-70f9-bc17-8ed0fa487837";

async fn dev() -> anyhow::Result<()> {
    let root = repository_root();
    let subscribers = std::env::var("SUBSCRIBERS_FILE")
        .map(Into::into)
        .unwrap_or_else(|_| root.join("dev/subscribers.json"));
    let dynamodb_port = port("LOCAL_DYNAMODB_PORT", DEFAULT_DYNAMODB_PORT)?;
    // The queue, the trigger and the worker's rate as a deployment with the defaults gets them.
    let template = Template::load()?;
    let options = StackOptions {
        aws_port: port("LOCAL_AWS_PORT", DEFAULT_AWS_PORT)?,
        dynamodb: DynamoDb::Own {
            port: dynamodb_port,
            log_path: root.join(".dev/dynamodb-local.log"),
        },
        lambda_port: port("LAMBDA_PORT", DEFAULT_LAMBDA_PORT)?,
        settings: Settings {
            audience: ContactList::load(&subscribers)?,
            ..Settings::from_template(template)?
        },
        max_send_rate: template
            .parameter_default("MaxSendRate")?
            .parse()
            .context("MaxSendRate's Default")?,
        max_concurrency: template
            .parameter_default("WorkerMaxConcurrency")?
            .parse()
            .context("WorkerMaxConcurrency's Default")?,
        trigger: Trigger::from_template(template)?,
        reload_on_change: true,
        log_path: root.join(".dev/functions.log"),
    };
    // DynamoDB Local cannot bind one address: it listens on every interface of its port.
    println!(
        "Starting local AWS (moto for SQS and SES on 127.0.0.1:{}, DynamoDB Local on port {dynamodb_port}) \
         and both functions under cargo lambda watch on 127.0.0.1:{} (the first start compiles them)...",
        options.aws_port, options.lambda_port
    );
    // Ctrl-C during the start (which may compile for minutes) stops what has started so far.
    let stack = tokio::select! {
        stack = LocalStack::start(options, Arc::new(|line| println!("{line}"))) => stack?,
        _ = tokio::signal::ctrl_c() => return Ok(()),
    };
    // The SQS samples in events/ name this task: record it, as the accept function would have,
    // so that `cargo lambda invoke worker --data-file events/sqs-job.json` delivers (the worker
    // reports jobs of tasks without a record failed, never delivers them).
    let sample_task = SAMPLE_TASK_ID.parse().context("the samples' task id")?;
    let aws = local_stack::sdk_config(stack.endpoints()).await;
    newsletter_aws::dynamodb::DynamoStore::new(
        aws_sdk_dynamodb::Client::new(&aws),
        &stack.settings.table_name,
    )
    .create(sample_task, TaskKind::Newsletter)
    .await
    .context("recording the samples' task")?;
    let url = stack.newsletters_url();
    println!(
        "\nReady: {} subscribers from {} in contact list '{}'.\n\
         \nPOST newsletters to {url}\n\
         \n  curl -i -X POST {url} -H 'content-type: application/json' -d @events/newsletter.json\n\
         \nIts status: curl -i {url}/<task_id> (the task_id of the 202; its Location is the path behind API Gateway). Add -H 'Idempotency-Key: <key>' to make a POST safe to retry.\n\
         \nTasks table '{}' on DynamoDB Local at {}.\n\
         \nEmails sent: make outbox (or make outbox TASK=<task id>). Function logs: .dev/functions.log.\n\
         Locally there is no IAM authentication in front of accept. Ctrl-C stops everything.\n",
        stack.settings.audience.subscribers.len(),
        subscribers.display(),
        stack.settings.contact_list_name,
        stack.settings.table_name,
        stack.endpoints().dynamodb,
    );
    tokio::select! {
        result = stack.run_trigger() => result?,
        _ = tokio::signal::ctrl_c() => println!("\nStopping..."),
    }
    drop(stack);
    Ok(())
}

async fn outbox(task: Option<&str>) -> anyhow::Result<()> {
    let endpoint = format!(
        "http://127.0.0.1:{}",
        port("LOCAL_AWS_PORT", DEFAULT_AWS_PORT)?
    );
    let emails = local_stack::outbox::sent_emails(&endpoint)
        .await
        .with_context(|| format!("reading the local SES at {endpoint}: is `make dev` running?"))?;
    let mut shown = 0;
    for email in emails
        .iter()
        .filter(|email| task.is_none() || email.task_id() == task)
    {
        shown += 1;
        println!(
            "{:<32} task {:<36}  {:?}  sections: {}",
            email.destinations.to_addresses.join(", "),
            email.task_id().unwrap_or("?"),
            email.subject,
            email.section_titles().join(" | ")
        );
    }
    println!("{shown} email(s)");
    Ok(())
}

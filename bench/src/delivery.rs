//! Delivery throughput: the production worker (`worker::build`: SQS, SES v2 and DynamoDB
//! adapters, the send-rate limiter, leases and settlements) run as `instances` Lambda instances,
//! each fed batches from the local SQS by the local event source, sending through the bench's
//! SES endpoint.

use anyhow::{Context, bail};
use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use aws_sdk_sqs::types::QueueAttributeName;
use lambda_runtime::LambdaEvent;
use local_stack::dynamodb_proxy::DynamoDbProxy;
use local_stack::event_source::{Invoke, SqsEventSource, Trigger};
use local_stack::ses_endpoint::{SesBehaviour, SesEndpoint};
use newsletter::ports::{MessageQueue, PlanStore, TaskStore};
use newsletter_aws::dynamodb::DynamoStore;
use newsletter_aws::sqs::SqsQueue;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use worker::{SesFunction, WorkerEvent, WorkerResponse};

#[derive(Debug, Clone, Copy)]
pub struct Scenario {
    pub recipients: usize,
    /// `MAX_SEND_RATE`: the account's rate as the worker is configured with it.
    pub configured_rate: f64,
    /// `MAX_CONCURRENCY`: worker instances.
    pub instances: u32,
    /// `MAX_IN_FLIGHT`: sends in flight per instance.
    pub max_in_flight: usize,
    pub ses: SesBehaviour,
}

impl Scenario {
    /// The best any worker could do: the lower of the send rate it may use (its own or the
    /// endpoint's) and what its sends in flight allow at the endpoint's latency.
    pub fn bound(&self) -> f64 {
        let rate = self.configured_rate.min(self.ses.max_send_rate);
        let in_flight = f64::from(self.instances) * self.max_in_flight as f64;
        rate.min(in_flight / self.ses.latency.as_secs_f64())
    }
}

#[derive(Debug, Clone)]
pub struct Throughput {
    pub emails_per_second: f64,
    pub duplicates: usize,
    pub losses: usize,
    pub throttled: u64,
    /// DynamoDB write request units per email sent, as on-demand DynamoDB bills them (counted by
    /// the proxy in front of DynamoDB Local: transactional items at 2 units, refused conditional
    /// writes at 1).
    pub write_units_per_email: f64,
    /// Read request units per email sent.
    pub read_units_per_email: f64,
}

/// The local AWS server, provisioned, and the SES endpoint in front of it; `aws` sends DynamoDB
/// through the capacity-counting `dynamodb` proxy.
pub struct Stack<'a> {
    pub ses: &'a SesEndpoint,
    pub dynamodb: &'a DynamoDbProxy,
    pub aws: &'a aws_config::SdkConfig,
    pub queue_url: &'a str,
    pub dead_letter_queue_url: &'a str,
    pub settings: &'a local_stack::Settings,
    /// The worker's timeout and batch size as the template deploys them. The queue's visibility
    /// timeout must stay above the timeout (the template sets 6×): a batch still being sent when
    /// its messages reappear is sent twice. Under throttling, a shorter timeout leaves the worker
    /// too little time per batch.
    pub deployment: &'a crate::deployment::Deployment,
}

/// What a delivery run sends through, in front of the local AWS: an SES endpoint that behaves
/// as told, and the capacity-counting proxy before DynamoDB Local.
pub struct Fronts {
    ses: SesEndpoint,
    dynamodb: DynamoDbProxy,
    /// SQS and SES through the endpoint; DynamoDB through the proxy.
    aws: aws_config::SdkConfig,
}

impl Fronts {
    pub async fn start(
        behaviour: SesBehaviour,
        endpoints: &local_stack::Endpoints,
    ) -> anyhow::Result<Self> {
        let ses = SesEndpoint::start(behaviour, &endpoints.aws).await?;
        let dynamodb = DynamoDbProxy::start(&endpoints.dynamodb).await?;
        let aws = local_stack::sdk_config(&local_stack::Endpoints {
            aws: ses.endpoint(),
            dynamodb: dynamodb.endpoint(),
        })
        .await;
        Ok(Self { ses, dynamodb, aws })
    }

    /// The stack a run uses: these fronts, and the queues, settings and deployment given.
    pub fn stack<'a>(
        &'a self,
        queues: &'a local_stack::Provisioned,
        settings: &'a local_stack::Settings,
        deployment: &'a crate::deployment::Deployment,
    ) -> Stack<'a> {
        Stack {
            ses: &self.ses,
            dynamodb: &self.dynamodb,
            aws: &self.aws,
            queue_url: &queues.queue_url,
            dead_letter_queue_url: &queues.dead_letter_queue_url,
            settings,
            deployment,
        }
    }
}

/// Cap on one scenario, so that a stuck run fails instead of hanging.
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(600);

/// What a cancel during a send did.
#[derive(Debug, Clone)]
pub struct AfterCancel {
    /// Emails the SES endpoint accepted after the cancel was written.
    pub emails_after: usize,
    /// Emails it accepted before.
    pub emails_before: usize,
    /// From the cancel written to the task `cancelled` (every chunk counted).
    pub time_to_cancelled: Duration,
    /// `sent` on the task minus what the endpoint accepted, and the recipients no count holds:
    /// both 0 when the counts are exact.
    pub sent_miscount: i64,
    pub unaccounted: i64,
}

/// The worker instances, and a task planned with `scenario.recipients` whose deliveries are on
/// the queue, as accept and the planner leave it.
struct Prepared {
    instances: Vec<Instance>,
    expected: Vec<newsletter::message::Recipient>,
    store: DynamoStore,
    task_id: newsletter::TaskId,
}

async fn prepare(stack: &Stack<'_>, scenario: &Scenario) -> anyhow::Result<Prepared> {
    let config = worker::Config {
        queue_url: stack.queue_url.to_owned(),
        contact_list_name: stack.settings.contact_list_name.clone(),
        from_address: stack.settings.from_address.clone(),
        max_send_rate: scenario.configured_rate,
        max_concurrency: scenario.instances,
        max_in_flight: scenario.max_in_flight,
        configuration_set_name: None,
        recipient_hash_key: worker::SecretKey(local_stack::LOCAL_RECIPIENT_HASH_KEY.into()),
        table_name: stack.settings.table_name.clone(),
        dead_letter_queue_url: stack.dead_letter_queue_url.to_owned(),
        function_timeout: stack.deployment.timeout,
    };
    let instances = (0..scenario.instances)
        .map(|_| Ok(Instance(worker::build(&config, stack.aws)?)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let expected = crate::events::recipients(scenario.recipients)?;
    // A task accepted and planned with exactly these recipients, as the accept function and the
    // planner leave it, so that every lease and settlement is the production path.
    let store = DynamoStore::new(aws_sdk_dynamodb::Client::new(stack.aws), &config.table_name);
    let planned = crate::events::plan_task(
        &store,
        &crate::events::newsletter_body()?,
        expected.clone(),
        config.chunk_size()?,
    )
    .await?;
    SqsQueue::new(aws_sdk_sqs::Client::new(stack.aws), stack.queue_url)
        .send_all(&planned.messages)
        .await?;
    store.mark_page_enqueued(planned.task_id, 0).await?;
    stack.ses.take_received();
    stack.ses.take_throttled();
    // What sending costs, not planning and queueing (planning's plan write is ~0.04 units an
    // email at 1,000 contacts a page).
    stack.dynamodb.reset_stats();
    Ok(Prepared {
        instances,
        expected,
        store,
        task_id: planned.task_id,
    })
}

/// Runs every instance on the queue, as Lambda's SQS trigger does, until it is empty.
async fn drain(stack: &Stack<'_>, instances: &[Instance]) -> anyhow::Result<()> {
    let sqs = aws_sdk_sqs::Client::new(stack.aws);
    // Lambda's poller hands out batches as soon as they are there.
    let trigger = Trigger {
        batch_size: stack.deployment.batch_size,
        batching_window: Duration::ZERO,
        wait_time_seconds: 0,
    };
    let instances = instances.iter().map(|worker| async {
        let source = SqsEventSource::new(sqs.clone(), stack.queue_url, trigger.clone()).await?;
        // Stop once nothing is left, visible or in flight (moto's counts are exact).
        loop {
            if !source.poll(worker).await?.bodies.is_empty() {
                continue;
            }
            if queue_is_empty(&sqs, stack.queue_url).await? {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        anyhow::Ok(())
    });
    tokio::time::timeout(SCENARIO_TIMEOUT, futures::future::try_join_all(instances))
        .await
        .context("the delivery run did not finish in time")??;
    Ok(())
}

pub async fn run(stack: &Stack<'_>, scenario: &Scenario) -> anyhow::Result<Throughput> {
    let Prepared {
        instances,
        expected,
        ..
    } = prepare(stack, scenario).await?;
    let started = Instant::now();
    drain(stack, &instances).await?;

    let received = stack.ses.take_received();
    let last = received
        .last_accepted
        .context("the endpoint accepted no email")?;
    let sent: usize = received.per_recipient.values().map(|&n| n as usize).sum();
    let duplicates = sent - received.per_recipient.len();
    let losses = expected
        .iter()
        .filter(|recipient| {
            !received
                .per_recipient
                .contains_key(recipient.email.as_str())
        })
        .count();
    let capacity = stack.dynamodb.stats();
    Ok(Throughput {
        emails_per_second: sent as f64 / (last - started).as_secs_f64(),
        duplicates,
        losses,
        throttled: stack.ses.take_throttled(),
        write_units_per_email: capacity.estimated_write_units() / sent as f64,
        read_units_per_email: capacity.total.read_units / sent as f64,
    })
}

async fn queue_is_empty(sqs: &aws_sdk_sqs::Client, queue_url: &str) -> anyhow::Result<bool> {
    let attributes = sqs
        .get_queue_attributes()
        .queue_url(queue_url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await?
        .attributes
        .unwrap_or_default();
    Ok(attributes.values().all(|count| count == "0"))
}

/// One worker instance, invoked in-process as the Lambda runtime would invoke it.
struct Instance(SesFunction);

impl Invoke for Instance {
    async fn invoke(&self, event: SqsEvent) -> anyhow::Result<SqsBatchResponse> {
        let mut context = lambda_runtime::Context::default();
        // The function's timeout, as the runtime would give it.
        let deadline = SystemTime::now().duration_since(UNIX_EPOCH)? + self.0.time_limit;
        context.deadline = deadline.as_millis() as u64;
        match worker::handle(
            &self.0,
            LambdaEvent::new(WorkerEvent::Batch(event), context),
        )
        .await
        .map_err(|err| anyhow::anyhow!("{err}"))?
        {
            WorkerResponse::Batch(response) => Ok(response),
            other => bail!("a batch was answered as something else: {other:?}"),
        }
    }
}

/// Sends `scenario` and cancels the task once `cancel_at` emails are out, through the use case
/// accept's `DELETE /newsletters/{task_id}` runs; then counts what the endpoint accepted after
/// the cancel was written, and checks the task's final counts against it.
pub async fn cancel_during_send(
    stack: &Stack<'_>,
    scenario: &Scenario,
    cancel_at: usize,
) -> anyhow::Result<AfterCancel> {
    let Prepared {
        instances,
        store,
        task_id,
        ..
    } = prepare(stack, scenario).await?;
    let queue = SqsQueue::new(aws_sdk_sqs::Client::new(stack.aws), stack.queue_url);
    let cancelling = async {
        while stack.ses.received().total() < cancel_at {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        newsletter::control::cancel(&queue, &store, task_id).await?;
        anyhow::Ok(Instant::now())
    };
    let (cancelled_at, ()) = tokio::try_join!(cancelling, drain(stack, &instances))?;
    let emails_after = stack.ses.accepted_since(cancelled_at);
    let received = stack.ses.take_received();
    let task = store.get(task_id).await?.context("the task is gone")?;
    if task.status != newsletter::domain::TaskStatus::Cancelled {
        bail!("the task is {}, not cancelled", task.status.as_str());
    }
    let counts = task.recipients;
    let accounted = counts.sent + counts.skipped + counts.failed + counts.cancelled;
    Ok(AfterCancel {
        emails_after,
        emails_before: received.total() - emails_after,
        time_to_cancelled: cancelled_at.elapsed(),
        sent_miscount: counts.sent as i64 - received.total() as i64,
        unaccounted: counts.planned as i64 - accounted as i64,
    })
}

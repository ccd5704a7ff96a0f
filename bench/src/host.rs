//! The worker's own `bootstrap` run as Lambda runs an SQS-triggered function (local-stack's
//! Lambda host): instances started on demand up to the event source's maximum concurrency, a
//! deadline on every invocation (killed there), kills at seeded moments, and the queue's
//! visibility timeout and redrive policy for real. The worker sends through the counting SES
//! endpoint (in front of moto, which serves SQS) and keeps its tasks on DynamoDB Local.
//!
//! This is what the in-process runs (`delivery`) cannot show: whether an invocation overruns
//! its deadline, what is handed back when a batch does not fit one invocation, what a kill
//! costs, and the process's memory.

use crate::events::PlannedTask;
use anyhow::{Context, bail};
use bytes::Bytes;
use local_stack::event_source::Trigger;
use local_stack::lambda_host::{
    Ending, FunctionConfig, HostOptions, HostStats, Instance, KillPlan, SqsHost,
};
use local_stack::ses_endpoint::{Received, SesBehaviour, SesEndpoint};
use newsletter::domain::TaskRecord;
use newsletter::message::Recipient;
use newsletter::ports::{MessageQueue, PlanStore, TaskStore};
use newsletter_aws::dynamodb::DynamoStore;
use newsletter_aws::sqs::SqsQueue;
use serde::Deserialize;
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// What every run shares: the local AWS servers, provisioned, and the bootstrap to run.
pub struct Stack<'a> {
    /// SQS and SES at moto, DynamoDB at DynamoDB Local: the bench's own calls.
    pub aws: &'a aws_config::SdkConfig,
    pub endpoints: &'a local_stack::Endpoints,
    /// The tasks table, the sender and the contact list (deliveries do not read it).
    pub settings: &'a local_stack::Settings,
    /// How the template deploys the worker.
    pub deployment: &'a crate::deployment::Deployment,
    /// The worker's `bootstrap` (`target/<profile>/worker`).
    pub worker: &'a Path,
    pub logs: &'a Path,
}

/// How the function is deployed and triggered, in the template's terms.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Names the run's queues and its log file.
    pub name: &'static str,
    /// `Timeout` and `FUNCTION_TIMEOUT`.
    pub function_timeout: Duration,
    /// `MAX_SEND_RATE` (`MaxSendRate`).
    pub max_send_rate: f64,
    /// `MAX_CONCURRENCY` and the event source's `MaximumConcurrency` (`WorkerMaxConcurrency`).
    pub max_concurrency: u32,
    /// `MAX_IN_FLIGHT`.
    pub max_in_flight: usize,
    /// `BatchSize` and `MaximumBatchingWindowInSeconds`.
    pub trigger: Trigger,
    /// The jobs queue's `VisibilityTimeout` (the template: 6 × the function's timeout).
    pub visibility_timeout: Duration,
    pub kill_plan: Option<KillPlan>,
    pub ses: SesBehaviour,
    /// `MemorySize` (informative: the host does not enforce it).
    pub memory_size_mb: u32,
    /// How long the queue may take to drain before the run fails.
    pub limit: Duration,
}

impl Scenario {
    /// The worker's configuration, as the template's parameters give it.
    fn config(&self, stack: &Stack<'_>, queues: &Queues) -> worker::Config {
        worker::Config {
            queue_url: queues.jobs.clone(),
            table_name: stack.settings.table_name.clone(),
            dead_letter_queue_url: queues.dead_letters.clone(),
            function_timeout: self.function_timeout,
            contact_list_name: stack.settings.contact_list_name.clone(),
            from_address: stack.settings.from_address.clone(),
            max_send_rate: self.max_send_rate,
            max_concurrency: self.max_concurrency,
            max_in_flight: self.max_in_flight,
            configuration_set_name: None,
            recipient_hash_key: worker::SecretKey(local_stack::LOCAL_RECIPIENT_HASH_KEY.into()),
        }
    }
}

/// What to deliver: a request body for `POST /newsletters` and who gets it.
pub struct Workload {
    pub body: Vec<u8>,
    pub recipients: Vec<Recipient>,
    /// Delivery messages to queue at most (the first chunks of the plan); `None`: all of them.
    pub max_messages: Option<usize>,
}

/// The sweep's answer (`newsletter::dispatch::SweepReport`; what it deferred is what it saw and
/// did not account).
#[derive(Debug, Clone, Copy, Default, Deserialize)]
pub struct Swept {
    pub seen: usize,
    pub accounted: usize,
}

/// What one run did.
pub struct Run {
    pub received: Received,
    pub stats: HostStats,
    /// The task after the queue drained and the dead-letter sweep ran.
    pub task: TaskRecord,
    pub swept: Swept,
    /// Recipients the plan queued deliveries for.
    pub expected: Vec<String>,
    /// Delivery messages the plan queued.
    pub queued: usize,
    /// The largest of them, encoded, in bytes.
    pub largest_message: usize,
    pub chunk_size: usize,
    /// When the host started polling (the messages were on the queue already).
    pub started: Instant,
    pub log: PathBuf,
}

/// Plans the workload's task, queues its deliveries, lets the host drain the queue, then sweeps
/// the dead-letter queue as the template's schedule would, and reads the task.
pub async fn run(
    stack: &Stack<'_>,
    scenario: &Scenario,
    workload: Workload,
) -> anyhow::Result<Run> {
    let sqs = aws_sdk_sqs::Client::new(stack.aws);
    let queues = Queues::create(&sqs, stack, scenario).await?;
    let result = run_on(stack, scenario, workload, &queues).await;
    // Each run has queues of its own, so that no message of one reaches another.
    queues.delete(&sqs).await;
    result
}

async fn run_on(
    stack: &Stack<'_>,
    scenario: &Scenario,
    workload: Workload,
    queues: &Queues,
) -> anyhow::Result<Run> {
    let sqs = aws_sdk_sqs::Client::new(stack.aws);
    let store = DynamoStore::new(
        aws_sdk_dynamodb::Client::new(stack.aws),
        &stack.settings.table_name,
    );
    let config = scenario.config(stack, queues);
    let chunk_size = config.chunk_size()?;
    let mut planned =
        crate::events::plan_task(&store, &workload.body, workload.recipients, chunk_size).await?;
    if let Some(max) = workload.max_messages {
        planned.messages.truncate(max);
    }
    let expected = recipients_of(&planned);
    SqsQueue::new(sqs.clone(), &queues.jobs)
        .send_all(&planned.messages)
        .await?;
    store.mark_page_enqueued(planned.task_id, 0).await?;

    let ses = SesEndpoint::start(scenario.ses, &stack.endpoints.aws).await?;
    // SQS and SES through the counting endpoint (it passes everything but SendEmail to moto),
    // DynamoDB at DynamoDB Local.
    let endpoints = local_stack::Endpoints {
        aws: ses.endpoint(),
        dynamodb: stack.endpoints.dynamodb.clone(),
    };
    let log = stack.logs.join(format!("{}.log", scenario.name));
    let _ = std::fs::remove_file(&log);
    let mut function = FunctionConfig::new("worker", stack.worker, &log)
        .timeout(scenario.function_timeout)
        .env(local_stack::worker_environment(&config, &endpoints)?);
    function.memory_size_mb = scenario.memory_size_mb;
    let options = HostOptions {
        max_concurrency: scenario.max_concurrency as usize,
        trigger: scenario.trigger.clone(),
        kill_plan: scenario.kill_plan,
    };
    let host = SqsHost::start(sqs.clone(), &queues.jobs, function.clone(), options).await?;
    let started = host.started();
    let drained = host.wait_until_drained(scenario.limit).await;
    let stats = host.stop().await;
    drained.with_context(|| format!("see {}", log.display()))?;

    let swept = sweep(
        &function,
        stats.instances.len() as u64 + 1,
        &stack.deployment.sweep_input,
    )
    .await
    .with_context(|| format!("the dead-letter sweep; see {}", log.display()))?;
    let task = store
        .get(planned.task_id)
        .await?
        .context("the task has no record")?;
    Ok(Run {
        received: ses.received(),
        stats,
        task,
        swept,
        expected,
        queued: planned.messages.len(),
        largest_message: planned
            .messages
            .iter()
            .map(|message| message.encode().len())
            .max()
            .unwrap_or(0),
        chunk_size,
        started,
        log,
    })
}

fn recipients_of(planned: &PlannedTask) -> Vec<String> {
    planned
        .messages
        .iter()
        .filter_map(|message| match message {
            newsletter::message::Message::Delivery(delivery) => Some(&delivery.recipients),
            newsletter::message::Message::Job(_) => None,
        })
        .flatten()
        .map(|recipient| recipient.email.as_str().to_owned())
        .collect()
}

/// What the template's schedule does every 5 minutes: one invocation of a fresh instance with its
/// `input` (`{"sweep": "dead-letters"}`), which accounts on their tasks the messages in the DLQ.
async fn sweep(function: &FunctionConfig, id: u64, input: &str) -> anyhow::Result<Swept> {
    let mut sweeper = Instance::spawn(function, id).await?;
    if let Err(failure) = sweeper.ready().await {
        bail!("the sweeping instance did not start: {failure}");
    }
    let invoked = sweeper
        .invoke(
            Bytes::copy_from_slice(input.as_bytes()),
            std::future::pending(),
        )
        .await;
    sweeper.kill().await;
    match invoked?.ending {
        Ending::Response(answer) => Ok(serde_json::from_slice(&answer).with_context(|| {
            format!("the sweep's answer: {}", String::from_utf8_lossy(&answer))
        })?),
        other => bail!("the sweep did not answer: {other:?}"),
    }
}

/// The run's jobs queue and its dead-letter queue, with the template's redrive policy.
struct Queues {
    jobs: String,
    dead_letters: String,
}

impl Queues {
    async fn create(
        sqs: &aws_sdk_sqs::Client,
        stack: &Stack<'_>,
        scenario: &Scenario,
    ) -> anyhow::Result<Self> {
        let queues = local_stack::provision::create_queues(
            sqs,
            &format!("bench-{}-jobs", scenario.name),
            scenario.visibility_timeout.as_secs() as u32,
            stack.settings.max_receive_count,
        )
        .await?;
        let (jobs, dead_letters) = (queues.queue_url, queues.dead_letter_queue_url);
        Ok(Self { jobs, dead_letters })
    }

    /// Best effort: a queue left behind only holds moto's memory until the run ends.
    async fn delete(&self, sqs: &aws_sdk_sqs::Client) {
        for url in [&self.jobs, &self.dead_letters] {
            let _ = sqs.delete_queue().queue_url(url).send().await;
        }
    }
}

impl Run {
    /// Emails SES accepted beyond the first for each recipient.
    pub fn duplicates(&self) -> usize {
        self.received.total() - self.received.per_recipient.len()
    }

    /// Recipients of the plan SES never got an email for.
    pub fn losses(&self) -> usize {
        self.received
            .missing(self.expected.iter().map(String::as_str))
            .len()
    }

    /// From the host's start to the last email SES accepted.
    pub fn total_time(&self) -> Duration {
        self.received
            .accepted
            .last()
            .map_or(Duration::ZERO, |email| {
                email.at.saturating_duration_since(self.started)
            })
    }

    /// Emails per second from the host's start to the last email.
    pub fn overall_rate(&self) -> f64 {
        self.received.total() as f64 / self.total_time().as_secs_f64().max(1e-3)
    }

    /// Emails per second while every instance had work: from the moment the last of the
    /// `max_concurrency` instances took its first batch to the moment the first one answered
    /// its last. Before, instances are still starting; after, the work left is less than one
    /// round of chunks. `None` if some instance never got work (too few chunks).
    pub fn all_busy(&self, max_concurrency: u32) -> Option<(Duration, f64)> {
        let mut slots: BTreeMap<usize, (Instant, Instant)> = BTreeMap::new();
        for record in &self.stats.records {
            let span = slots
                .entry(record.slot)
                .or_insert((record.dispatched, record.ended));
            span.0 = span.0.min(record.dispatched);
            span.1 = span.1.max(record.ended);
        }
        if slots.len() < max_concurrency as usize {
            return None;
        }
        let from = slots.values().map(|span| span.0).max()?;
        let until = slots.values().map(|span| span.1).min()?;
        let window = until.checked_duration_since(from)?;
        let emails = self
            .received
            .accepted
            .iter()
            .filter(|email| email.at >= from && email.at < until)
            .count();
        Some((window, emails as f64 / window.as_secs_f64().max(1e-3)))
    }

    /// Messages the worker put on the queue itself: every message id the host handed out that
    /// the plan did not queue (batch records handed back at once, and chunks left unfinished
    /// at the deadline, each queued again as a new message).
    pub fn hand_backs(&self) -> usize {
        let ids: HashSet<&str> = self
            .stats
            .records
            .iter()
            .flat_map(|record| record.message_ids.iter().map(String::as_str))
            .collect();
        ids.len().saturating_sub(self.queued)
    }

    /// The worker's own account of its hand-backs, from its JSON log: (records handed back at
    /// once because they did not fit the invocation, chunks handed back unfinished).
    pub fn logged_hand_backs(&self) -> (u64, u64) {
        let Ok(log) = std::fs::read_to_string(&self.log) else {
            return (0, 0);
        };
        let (mut at_once, mut unfinished) = (0, 0);
        for line in log.lines() {
            let Ok(line) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            let fields = &line["fields"];
            match fields["message"].as_str() {
                Some("handed back what does not fit before the deadline") => {
                    at_once += fields["messages"].as_u64().unwrap_or(0);
                }
                Some("chunk delivered") if fields["finished"] == false => unfinished += 1,
                _ => {}
            }
        }
        (at_once, unfinished)
    }

    /// The most emails that reached SES within one of its latencies of each other: sends that
    /// were in flight at once (a lower bound: SES answers each after exactly that latency).
    pub fn most_sends_in_flight(&self, latency: Duration) -> usize {
        let arrivals: Vec<Instant> = self
            .received
            .accepted
            .iter()
            .map(|email| email.at)
            .collect();
        let mut first = 0;
        let mut most = 0;
        for (last, at) in arrivals.iter().enumerate() {
            while at.saturating_duration_since(arrivals[first]) >= latency {
                first += 1;
            }
            most = most.max(last + 1 - first);
        }
        most
    }

    /// The least time any answered invocation left before its deadline.
    pub fn least_slack(&self) -> Option<Duration> {
        self.stats
            .records
            .iter()
            .filter(|record| record.answered_in_time())
            .map(|record| record.slack())
            .min()
    }
}

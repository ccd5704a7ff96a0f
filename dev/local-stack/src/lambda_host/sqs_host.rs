//! An SQS-triggered function as Lambda runs it: pollers that receive batches from the queue
//! (the trigger's batch size and window, with the system attributes Lambda passes) and hand each
//! to a function instance, up to `max_concurrency` instances at once (the event source's
//! `ScalingConfig.MaximumConcurrency`).
//!
//! After an answer the poller deletes every message not in `batchItemFailures`. After an error
//! answer, a timeout (the instance is killed at its deadline), an injected kill, a crash or a
//! failed init it deletes nothing: the messages reappear after the queue's visibility timeout,
//! and SQS's redrive policy moves them to the dead-letter queue after `maxReceiveCount`
//! receives, exactly as with Lambda. The receiving, the event and the deletes are
//! [`crate::event_source::SqsEventSource`]'s, shared with `make dev`.

use super::instance::{Ending, FunctionConfig, Instance, Invoked, ProcessSet};
use super::kill_plan::KillPlan;
use crate::event_source::{Invoke, SqsEventSource, Trigger};
use anyhow::Context;
use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
use aws_sdk_sqs::types::QueueAttributeName;
use bytes::Bytes;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How the event source drives the function.
#[derive(Debug, Clone)]
pub struct HostOptions {
    /// Most instances invoked at once (`ScalingConfig.MaximumConcurrency`).
    pub max_concurrency: usize,
    /// Batch size, batching window and long-poll wait of each receive.
    pub trigger: Trigger,
    pub kill_plan: Option<KillPlan>,
}

/// How one invocation turned out, for the event source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A valid batch response: every message but `failed` (the `batchItemFailures`) deleted.
    Succeeded { failed: Vec<String> },
    /// An error answer, or a response Lambda counts as the whole batch failing (not JSON, an
    /// item identifier that is empty or not in the batch). Nothing deleted.
    Failed {
        error_type: Option<String>,
        message: String,
    },
    /// Killed at its deadline. Nothing deleted.
    TimedOut,
    /// Killed before its deadline by the kill plan. Nothing deleted.
    Killed,
    /// The process exited without answering. Nothing deleted.
    Crashed { status: String },
    /// The instance started for it never became ready. Nothing deleted.
    InitFailed { reason: String },
}

/// One invocation of the function with one batch.
#[derive(Debug, Clone)]
pub struct InvocationRecord {
    /// The poller (and so instance slot) that made it, 0-based.
    pub slot: usize,
    pub instance: u64,
    pub request_id: String,
    /// Whether it started a new instance (a cold start).
    pub cold: bool,
    pub message_ids: Vec<String>,
    /// `ApproximateReceiveCount` of each message, as the function was given it.
    pub receive_counts: Vec<u32>,
    /// When the function took the batch.
    pub dispatched: Instant,
    pub deadline: Instant,
    /// When it answered, was killed or was seen to have exited.
    pub ended: Instant,
    pub outcome: Outcome,
}

impl InvocationRecord {
    pub fn duration(&self) -> Duration {
        self.ended.saturating_duration_since(self.dispatched)
    }

    /// The function's timeout, as this invocation was given it.
    pub fn timeout(&self) -> Duration {
        self.deadline.saturating_duration_since(self.dispatched)
    }

    /// Time left before the deadline when it ended (zero when killed at it).
    pub fn slack(&self) -> Duration {
        self.deadline.saturating_duration_since(self.ended)
    }

    /// Whether the function answered (success or error) strictly before its deadline.
    pub fn answered_in_time(&self) -> bool {
        matches!(
            self.outcome,
            Outcome::Succeeded { .. } | Outcome::Failed { .. }
        ) && self.ended < self.deadline
    }
}

/// One function process.
#[derive(Debug, Clone)]
pub struct InstanceRecord {
    pub id: u64,
    pub slot: usize,
    pub pid: Option<u32>,
    /// Spawn to first poll, once ready.
    pub init: Option<Duration>,
    pub invocations: u64,
    /// Largest `VmHWM` read (after each answered invocation and before every kill), KiB.
    pub peak_rss_kib: Option<u64>,
    /// How it ended; `None` while it runs.
    pub end: Option<String>,
}

/// What the host did so far.
#[derive(Debug, Clone, Default)]
pub struct HostStats {
    /// Invocations handed to an instance, whatever their outcome (failed inits included).
    pub invocations: u64,
    /// Killed at the deadline.
    pub timeouts: u64,
    /// Killed by the kill plan.
    pub injected_kills: u64,
    /// Error answers and invalid batch responses.
    pub errors: u64,
    pub crashes: u64,
    pub init_failures: u64,
    /// Instances started.
    pub cold_starts: u64,
    pub messages_received: u64,
    pub messages_deleted: u64,
    /// Receives or deletes that failed (the poller waits a second and goes on).
    pub poll_errors: u64,
    /// Invocations running now.
    pub in_flight: usize,
    /// The most invocations that ever ran at once.
    pub max_concurrent: usize,
    pub records: Vec<InvocationRecord>,
    pub instances: Vec<InstanceRecord>,
}

impl HostStats {
    /// Invocations that ran until their deadline and were killed there: with a worker that
    /// keeps its deadline this is empty.
    pub fn past_deadline(&self) -> Vec<&InvocationRecord> {
        self.records
            .iter()
            .filter(|record| record.outcome == Outcome::TimedOut)
            .collect()
    }

    /// The largest peak RSS of any instance, in KiB.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        self.instances
            .iter()
            .filter_map(|instance| instance.peak_rss_kib)
            .max()
    }

    /// One line of counters, for logs and assertion messages.
    pub fn summary(&self) -> String {
        format!(
            "{} invocations ({} in flight, at most {} at once), {} cold starts, {} timeouts, \
             {} injected kills, {} errors, {} crashes, {} init failures; {} messages received, \
             {} deleted; {} poll errors",
            self.invocations,
            self.in_flight,
            self.max_concurrent,
            self.cold_starts,
            self.timeouts,
            self.injected_kills,
            self.errors,
            self.crashes,
            self.init_failures,
            self.messages_received,
            self.messages_deleted,
            self.poll_errors,
        )
    }

    fn instance(&mut self, id: u64) -> Option<&mut InstanceRecord> {
        self.instances.iter_mut().find(|instance| instance.id == id)
    }
}

/// A kill request to a busy slot; the slot answers once the kill is certain (the invocation
/// ends `Killed`). A request whose answer never comes reached an invocation that ended first.
type KillSwitch = oneshot::Sender<oneshot::Sender<()>>;

struct Shared {
    function: FunctionConfig,
    started: Instant,
    stats: Mutex<HostStats>,
    /// Per slot, while it runs an invocation: the switch that kills it.
    busy: Mutex<Vec<Option<KillSwitch>>>,
    processes: ProcessSet,
    next_instance: AtomicU64,
}

impl Shared {
    fn stats(&self) -> std::sync::MutexGuard<'_, HostStats> {
        lock(&self.stats)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The function, triggered from one queue. Dropping it kills every instance at once.
pub struct SqsHost {
    shared: Arc<Shared>,
    slots: Vec<Arc<Slot>>,
    tasks: Vec<JoinHandle<()>>,
    sqs: aws_sdk_sqs::Client,
    queue_url: String,
}

impl SqsHost {
    /// Starts polling `queue_url` at once. Instances start on demand (the first batch of each
    /// poller is a cold start), as on Lambda.
    pub async fn start(
        sqs: aws_sdk_sqs::Client,
        queue_url: &str,
        function: FunctionConfig,
        options: HostOptions,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(
            options.max_concurrency > 0,
            "max_concurrency must be at least 1"
        );
        let source =
            Arc::new(SqsEventSource::new(sqs.clone(), queue_url, options.trigger.clone()).await?);
        let shared = Arc::new(Shared {
            function,
            started: Instant::now(),
            stats: Mutex::default(),
            busy: Mutex::new((0..options.max_concurrency).map(|_| None).collect()),
            processes: ProcessSet::default(),
            next_instance: AtomicU64::new(1),
        });
        // Without a long poll an empty queue would be asked again at once, and moto serves the
        // worker's own calls too.
        let idle_pause = if options.trigger.wait_time_seconds > 0 {
            Duration::ZERO
        } else {
            Duration::from_millis(50)
        };
        let slots: Vec<Arc<Slot>> = (0..options.max_concurrency)
            .map(|index| {
                Arc::new(Slot {
                    index,
                    shared: shared.clone(),
                    instance: tokio::sync::Mutex::new(None),
                })
            })
            .collect();
        let mut tasks: Vec<JoinHandle<()>> = slots
            .iter()
            .map(|slot| tokio::spawn(poll(slot.clone(), source.clone(), idle_pause)))
            .collect();
        if let Some(plan) = options.kill_plan {
            tasks.push(tokio::spawn(kill(shared.clone(), plan)));
        }
        Ok(Self {
            shared,
            slots,
            tasks,
            sqs,
            queue_url: queue_url.to_owned(),
        })
    }

    /// A snapshot of the counters and records.
    pub fn stats(&self) -> HostStats {
        self.shared.stats().clone()
    }

    /// When the host started (the kill plan's instants count from here).
    pub fn started(&self) -> Instant {
        self.shared.started
    }

    /// Waits until the queue holds nothing (visible, in flight or delayed) and no invocation
    /// runs. Messages of a failed invocation count until they are handled or dead-lettered, so
    /// this also waits out visibility timeouts.
    pub async fn wait_until_drained(&self, timeout: Duration) -> anyhow::Result<HostStats> {
        let started = Instant::now();
        loop {
            if self.stats().in_flight == 0 && self.queue_is_empty().await? {
                return Ok(self.stats());
            }
            anyhow::ensure!(
                started.elapsed() < timeout,
                "the queue did not drain within {timeout:?}: {}",
                self.stats().summary()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until `condition` holds for the stats.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        condition: impl Fn(&HostStats) -> bool,
    ) -> anyhow::Result<HostStats> {
        let started = Instant::now();
        loop {
            let stats = self.stats();
            if condition(&stats) {
                return Ok(stats);
            }
            anyhow::ensure!(
                started.elapsed() < timeout,
                "the condition did not hold within {timeout:?}: {}",
                stats.summary()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops polling and kills every instance (an idle one has its peak RSS read first);
    /// returns the final stats. An invocation still running is cut short and not recorded.
    pub async fn stop(mut self) -> HostStats {
        for slot in &self.slots {
            if let Ok(mut guard) = slot.instance.try_lock()
                && let Some(mut instance) = guard.take()
            {
                instance.kill().await;
                slot.retire(&instance, "stopped");
            }
        }
        for task in &self.tasks {
            task.abort();
        }
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
        self.shared.processes.kill_all();
        self.stats()
    }

    async fn queue_is_empty(&self) -> anyhow::Result<bool> {
        let attributes = self
            .sqs
            .get_queue_attributes()
            .queue_url(&self.queue_url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesDelayed)
            .send()
            .await
            .context("reading the queue's depth")?
            .attributes
            .unwrap_or_default();
        Ok(attributes.values().all(|count| count == "0"))
    }
}

impl Drop for SqsHost {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        // The aborted tasks drop their instances (and kill them) only when next polled: kill
        // every process now, so none outlives the host.
        self.shared.processes.kill_all();
    }
}

/// One poller and the instance it invokes.
struct Slot {
    index: usize,
    shared: Arc<Shared>,
    instance: tokio::sync::Mutex<Option<Instance>>,
}

async fn poll(slot: Arc<Slot>, source: Arc<SqsEventSource>, idle_pause: Duration) {
    loop {
        match source.poll(slot.as_ref()).await {
            Ok(outcome) if outcome.bodies.is_empty() => {
                if !idle_pause.is_zero() {
                    tokio::time::sleep(idle_pause).await;
                }
            }
            Ok(outcome) => {
                let mut stats = slot.shared.stats();
                stats.messages_received += outcome.bodies.len() as u64;
                stats.messages_deleted += (outcome.bodies.len() - outcome.failed) as u64;
            }
            Err(err) => {
                slot.shared.stats().poll_errors += 1;
                eprintln!("lambda host, poller {}: {err:#}", slot.index);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

impl Invoke for Slot {
    async fn invoke(&self, event: SqsEvent) -> anyhow::Result<SqsBatchResponse> {
        let message_ids: Vec<String> = event
            .records
            .iter()
            .filter_map(|record| record.message_id.clone())
            .collect();
        let receive_counts: Vec<u32> = event
            .records
            .iter()
            .map(|record| {
                record
                    .attributes
                    .get("ApproximateReceiveCount")
                    .and_then(|count| count.parse().ok())
                    .unwrap_or(0)
            })
            .collect();
        let payload = Bytes::from(serde_json::to_vec(&event)?);
        let record = |instance, cold, invoked: Option<&Invoked>, outcome| {
            let now = Instant::now();
            InvocationRecord {
                slot: self.index,
                instance,
                request_id: invoked.map(|i| i.request_id.clone()).unwrap_or_default(),
                cold,
                message_ids: message_ids.clone(),
                receive_counts: receive_counts.clone(),
                dispatched: invoked.map_or(now, |i| i.dispatched),
                deadline: invoked.map_or(now + self.shared.function.timeout, |i| i.deadline),
                ended: invoked.map_or(now, |i| i.ended),
                outcome,
            }
        };

        let mut guard = self.instance.lock().await;
        // An instance that died since its last invocation is replaced, as Lambda replaces it.
        if let Some(mut stale) = guard.take_if(|instance| !instance.check_alive()) {
            stale.kill().await;
            self.retire(&stale, "exited while idle");
        }
        let cold = guard.is_none();
        if cold {
            let id = self.shared.next_instance.fetch_add(1, Ordering::Relaxed);
            let started = Instance::spawn(&self.shared.function, id).await;
            let instance = match started {
                Ok(instance) => instance,
                Err(err) => {
                    let reason = format!("{err:#}");
                    self.finish(record(
                        id,
                        true,
                        None,
                        Outcome::InitFailed {
                            reason: reason.clone(),
                        },
                    ));
                    anyhow::bail!("instance {id} did not start: {reason}");
                }
            };
            self.shared.processes.track(&instance);
            {
                let mut stats = self.shared.stats();
                stats.cold_starts += 1;
                stats.instances.push(InstanceRecord {
                    id,
                    slot: self.index,
                    pid: instance.pid(),
                    init: None,
                    invocations: 0,
                    peak_rss_kib: None,
                    end: None,
                });
            }
            *guard = Some(instance);
        }
        let instance = guard.as_mut().context("no instance")?;
        let id = instance.id();
        if let Err(failure) = instance.ready().await {
            let reason = failure.to_string();
            self.finish(record(
                id,
                cold,
                None,
                Outcome::InitFailed {
                    reason: reason.clone(),
                },
            ));
            if let Some(instance) = guard.take() {
                self.retire(&instance, &format!("init failed: {reason}"));
            }
            anyhow::bail!("instance {id} failed its init: {reason}");
        }
        if cold && let Some(entry) = self.shared.stats().instance(id) {
            entry.init = instance.init_duration();
        }

        let (switch, kill_requests) = oneshot::channel::<oneshot::Sender<()>>();
        self.begin(switch);
        let kill = async move {
            match kill_requests.await {
                // Completing this future makes the invocation end `Killed`: say so.
                Ok(acknowledge) => {
                    let _ = acknowledge.send(());
                }
                // The switch was dropped: no kill for this invocation.
                Err(_) => std::future::pending().await,
            }
        };
        let invoked = instance.invoke(payload, kill).await;
        self.end();
        let invoked = invoked?;
        let outcome = outcome_of(&invoked, &message_ids);
        if let Some(entry) = self.shared.stats().instance(id) {
            entry.invocations = instance.invocations();
            entry.peak_rss_kib = instance.peak_rss_kib();
        }
        self.finish(record(id, cold, Some(&invoked), outcome.clone()));
        if invoked.ending.ends_the_instance()
            && let Some(instance) = guard.take()
        {
            let end = match &outcome {
                Outcome::TimedOut => "killed at its deadline".to_owned(),
                Outcome::Killed => "killed by the kill plan".to_owned(),
                Outcome::Crashed { status } => format!("exited ({status})"),
                _ => "ended".to_owned(),
            };
            self.retire(&instance, &end);
        }
        drop(guard);

        match outcome {
            Outcome::Succeeded { failed } => {
                let mut response = SqsBatchResponse::default();
                response.batch_item_failures = failed
                    .into_iter()
                    .map(|id| {
                        let mut failure = BatchItemFailure::default();
                        failure.item_identifier = id;
                        failure
                    })
                    .collect();
                Ok(response)
            }
            Outcome::Failed {
                error_type,
                message,
            } => anyhow::bail!(
                "{} answered an error ({}): {message}",
                invoked.request_id,
                error_type.as_deref().unwrap_or("no type")
            ),
            other => anyhow::bail!("{}: {other:?}", invoked.request_id),
        }
    }
}

impl Slot {
    fn begin(&self, switch: KillSwitch) {
        lock(&self.shared.busy)[self.index] = Some(switch);
        let mut stats = self.shared.stats();
        stats.in_flight += 1;
        stats.max_concurrent = stats.max_concurrent.max(stats.in_flight);
    }

    fn end(&self) {
        lock(&self.shared.busy)[self.index] = None;
        self.shared.stats().in_flight -= 1;
    }

    fn finish(&self, record: InvocationRecord) {
        let mut stats = self.shared.stats();
        stats.invocations += 1;
        match &record.outcome {
            Outcome::Succeeded { .. } => {}
            Outcome::Failed { .. } => stats.errors += 1,
            Outcome::TimedOut => stats.timeouts += 1,
            Outcome::Killed => stats.injected_kills += 1,
            Outcome::Crashed { .. } => stats.crashes += 1,
            Outcome::InitFailed { .. } => stats.init_failures += 1,
        }
        stats.records.push(record);
    }

    fn retire(&self, instance: &Instance, end: &str) {
        self.shared.processes.forget(instance.id());
        if let Some(entry) = self.shared.stats().instance(instance.id()) {
            entry.end = Some(end.to_owned());
            entry.invocations = instance.invocations();
            entry.peak_rss_kib = instance.peak_rss_kib();
        }
    }
}

fn outcome_of(invoked: &Invoked, message_ids: &[String]) -> Outcome {
    match &invoked.ending {
        Ending::Response(body) => match batch_item_failures(body, message_ids) {
            Ok(failed) => Outcome::Succeeded { failed },
            Err(message) => Outcome::Failed {
                error_type: Some("InvalidBatchResponse".into()),
                message,
            },
        },
        Ending::Error(error) => Outcome::Failed {
            error_type: error.error_type.clone(),
            message: error.message(),
        },
        Ending::TimedOut => Outcome::TimedOut,
        Ending::Killed => Outcome::Killed,
        Ending::Exited(status) => Outcome::Crashed {
            status: status.to_string(),
        },
    }
}

/// The message ids a response reports failed, by Lambda's rules for `ReportBatchItemFailures`:
/// an empty or null response, `{}` and an empty or null list are complete successes; a response
/// that is not JSON, or an item identifier that is missing, empty or not in the batch, is a
/// complete failure (`Err`).
fn batch_item_failures(body: &[u8], message_ids: &[String]) -> Result<Vec<String>, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Vec::new());
    }
    let response: serde_json::Value = serde_json::from_slice(body).map_err(|err| {
        format!(
            "the response is not JSON ({err}): {}",
            String::from_utf8_lossy(body)
        )
    })?;
    let failures = match &response["batchItemFailures"] {
        serde_json::Value::Null => return Ok(Vec::new()),
        serde_json::Value::Array(failures) => failures,
        other => return Err(format!("batchItemFailures is not a list: {other}")),
    };
    failures
        .iter()
        .map(|failure| match failure["itemIdentifier"].as_str() {
            Some(id) if message_ids.iter().any(|known| known == id) => Ok(id.to_owned()),
            Some(id) => Err(format!("itemIdentifier {id:?} is not in the batch")),
            None => Err(format!("a failure without an itemIdentifier: {failure}")),
        })
        .collect()
}

/// Runs the kill plan: at each instant, kills a random busy instance, waiting for one if none
/// is busy.
async fn kill(shared: Arc<Shared>, plan: KillPlan) {
    let mut draws = plan.draws();
    for offset in plan.schedule() {
        tokio::time::sleep_until((shared.started + offset).into()).await;
        loop {
            let switch = {
                let mut busy = lock(&shared.busy);
                let candidates: Vec<usize> = busy
                    .iter()
                    .enumerate()
                    .filter(|(_, switch)| switch.is_some())
                    .map(|(index, _)| index)
                    .collect();
                if candidates.is_empty() {
                    None
                } else {
                    busy[candidates[draws.below(candidates.len())]].take()
                }
            };
            if let Some(switch) = switch {
                let (acknowledge, acknowledged) = oneshot::channel();
                if switch.send(acknowledge).is_ok() && acknowledged.await.is_ok() {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(1 + draws.below(20) as u64)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> Vec<String> {
        vec!["a".into(), "b".into()]
    }

    #[test]
    fn empty_and_null_responses_are_complete_successes() {
        for body in [
            "",
            "null",
            "{}",
            r#"{"batchItemFailures":[]}"#,
            r#"{"batchItemFailures":null}"#,
        ] {
            assert_eq!(
                batch_item_failures(body.as_bytes(), &ids()),
                Ok(vec![]),
                "{body}"
            );
        }
    }

    #[test]
    fn reported_items_are_the_failures() {
        let body = r#"{"batchItemFailures":[{"itemIdentifier":"b"}]}"#;
        assert_eq!(
            batch_item_failures(body.as_bytes(), &ids()),
            Ok(vec!["b".into()])
        );
    }

    #[test]
    fn bad_responses_fail_the_whole_batch() {
        for body in [
            "not json",
            r#"{"batchItemFailures":[{"itemIdentifier":""}]}"#,
            r#"{"batchItemFailures":[{"itemIdentifier":"zz"}]}"#,
            r#"{"batchItemFailures":[{"id":"a"}]}"#,
            r#"{"batchItemFailures":"a"}"#,
        ] {
            assert!(
                batch_item_failures(body.as_bytes(), &ids()).is_err(),
                "{body}"
            );
        }
    }
}

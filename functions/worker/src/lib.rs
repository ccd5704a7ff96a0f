//! SQS adapter for the worker: run each batch through the domain and report the records that
//! failed, so SQS retries only those; and, on a schedule, sweep the dead-letter queue.

mod config;

pub use config::{Config, SecretKey};

use aws_config::SdkConfig;
use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
use lambda_runtime::{Error, LambdaEvent};
use newsletter::TaskId;
use newsletter::dispatch::{Dispatcher, QueueRecord, ResumeReport, SweepReport};
use newsletter::domain::RecipientRefs;
use newsletter::ports::{
    ChunkStore, ContactDirectory, DeadLetterQueue, Mailer, MessageQueue, PauseStore, PlanStore,
    TaskStore,
};
use newsletter::sending::{SendPolicy, Sender};
use newsletter_aws::dynamodb::DynamoStore;
use newsletter_aws::ses::{self, SesContactList, SesMailer};
use newsletter_aws::sqs::SqsQueue;
use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What the function holds from init on.
pub struct Function<Q, D, M, S, L> {
    pub dispatcher: Dispatcher<Q, D, M, S>,
    pub dead_letters: L,
    /// The function's timeout: the deadline to assume when the runtime gives none.
    pub time_limit: Duration,
}

/// The function as deployed.
pub type SesFunction = Function<SqsQueue, SesContactList, SesMailer, DynamoStore, SqsQueue>;

/// Builds the worker's clients once, at init. Makes no network call.
pub fn build(
    config: &Config,
    aws: &SdkConfig,
) -> Result<SesFunction, newsletter::config::ConfigError> {
    let sqs = aws_sdk_sqs::Client::new(aws);
    let dispatcher = Dispatcher::new(
        SqsQueue::new(sqs.clone(), &config.queue_url),
        SesContactList::new(ses::contact_list_client(aws), &config.contact_list_name),
        Sender::new(
            SesMailer::new(
                ses::sending_client(aws),
                &config.from_address,
                &config.contact_list_name,
                config.configuration_set_name.clone(),
            ),
            SendPolicy::per_instance(
                config.max_send_rate,
                config.max_concurrency,
                config.max_in_flight,
            ),
        )
        .with_recipient_refs(RecipientRefs::new(config.recipient_hash_key.0.as_bytes())),
        DynamoStore::new(aws_sdk_dynamodb::Client::new(aws), &config.table_name),
        config.chunk_size()?,
    );
    Ok(Function {
        dispatcher,
        dead_letters: SqsQueue::new(sqs, &config.dead_letter_queue_url),
        time_limit: config.function_timeout,
    })
}

/// What the worker is invoked with: a batch from the jobs queue, the schedule's sweep, or an
/// operator's resume of a paused task.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum WorkerEvent {
    /// `{"sweep": "dead-letters"}`, from the template's schedule.
    Sweep(SweepRequest),
    /// `{"resume": "<task id>"}` (`events/resume-task.json`), once the cause of a pause is fixed.
    Resume(ResumeRequest),
    Batch(SqsEvent),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResumeRequest {
    pub resume: TaskId,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepRequest {
    pub sweep: SweepTarget,
}

#[derive(Debug, Deserialize)]
pub enum SweepTarget {
    #[serde(rename = "dead-letters")]
    DeadLetters,
}

#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum WorkerResponse {
    Batch(SqsBatchResponse),
    Sweep(SweepReport),
    Resume(ResumeReport),
}

/// Handles one invocation. A batch's failed records are reported by message id, and a failure
/// never affects its batch-mates.
pub async fn handle<Q, D, M, S, L>(
    function: &Function<Q, D, M, S, L>,
    event: LambdaEvent<WorkerEvent>,
) -> Result<WorkerResponse, Error>
where
    Q: MessageQueue,
    D: ContactDirectory,
    M: Mailer,
    S: TaskStore + PlanStore + ChunkStore + PauseStore,
    L: DeadLetterQueue,
{
    let deadline = invocation_deadline(event.context.deadline, function.time_limit);
    let batch = match event.payload {
        WorkerEvent::Sweep(_) => {
            let report = function
                .dispatcher
                .sweep_dead_letters(&function.dead_letters, deadline)
                .await;
            return Ok(WorkerResponse::Sweep(report));
        }
        WorkerEvent::Resume(ResumeRequest { resume }) => {
            // An error goes back to the operator who invoked it; running it again is safe.
            let report = function.dispatcher.resume(resume).await?;
            return Ok(WorkerResponse::Resume(report));
        }
        WorkerEvent::Batch(batch) => batch,
    };
    let records: Vec<QueueRecord<'_>> = batch
        .records
        .iter()
        .map(|record| QueueRecord {
            message_id: record.message_id.as_deref().unwrap_or("<none>"),
            body: record.body.as_deref().unwrap_or_default(),
        })
        .collect();
    let failed = function.dispatcher.process_batch(&records, deadline).await;

    let mut response = SqsBatchResponse::default();
    for position in failed {
        match batch.records[position].message_id.as_deref() {
            Some(id) => {
                let mut failure = BatchItemFailure::default();
                failure.item_identifier = id.to_owned();
                response.batch_item_failures.push(failure);
            }
            // Without an id the record cannot be reported alone; failing the invocation makes
            // SQS retry the whole batch rather than lose this message.
            None => return Err("an SQS record without a message id failed".into()),
        }
    }
    Ok(WorkerResponse::Batch(response))
}

/// The invocation's deadline, from the context's milliseconds since the epoch.
fn invocation_deadline(deadline_ms: u64, time_limit: Duration) -> SystemTime {
    let deadline = UNIX_EPOCH + Duration::from_millis(deadline_ms);
    // Lambda always sends a deadline in the future. `cargo lambda watch` sends a duration
    // (600000) instead of a timestamp, which reads as long past: fall back to the timeout.
    if deadline > SystemTime::now() {
        deadline
    } else {
        SystemTime::now() + time_limit
    }
}

#[cfg(test)]
mod tests;

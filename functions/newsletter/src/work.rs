//! What the worker does with one queue message: plan a page of a job, or deliver a chunk; and,
//! when a message has failed for the last time, record that on its task.

use crate::audience::Audience;
use crate::deliver::{Deadline, Mailer, Sender};
use crate::directory::{ContactDirectory, DirectoryError};
use crate::domain::TaskId;
use crate::message::{DecodeError, Delivery, Job, Message};
use crate::planning::plan_page;
use crate::queue::{MessageQueue, QueueError};
use crate::tasks::{Claim, ClaimStore, PageCounts, PartFailure, Settlement, StoreError, TaskStore};
use std::time::{Duration, Instant, SystemTime};
use tracing::Instrument;

/// Time kept back from the invocation's deadline to settle, re-enqueue owed recipients and report.
const DEADLINE_MARGIN: Duration = Duration::from_secs(5);

/// Why a message must be reported failed, so SQS retries it (and, after `maxReceiveCount`
/// receives, moves it to the dead-letter queue).
#[derive(Debug, thiserror::Error)]
pub enum WorkError {
    #[error("poison message: {0}")]
    Poison(#[from] DecodeError),
    #[error(transparent)]
    Directory(#[from] DirectoryError),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("none of the {0} recipient(s) could be sent to; the whole message is retried")]
    NothingDelivered(usize),
}

/// One invocation's limits, from the Lambda context.
#[derive(Debug, Clone, Copy)]
pub struct Invocation {
    /// When Lambda stops the invocation.
    pub deadline: SystemTime,
    /// SQS will not deliver this message again if it fails now: it goes to the dead-letter queue.
    pub last_attempt: bool,
}

impl Invocation {
    fn sending_deadline(&self) -> Deadline {
        let remaining = self
            .deadline
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        let margin = DEADLINE_MARGIN.min(remaining / 4);
        Deadline {
            stop_sending: Instant::now() + remaining.saturating_sub(margin),
            claims_lapse: self.deadline,
        }
    }
}

pub struct Worker<Q, D, M, S> {
    queue: Q,
    directory: D,
    sender: Sender<M>,
    store: S,
}

impl<Q, D, M, S> Worker<Q, D, M, S>
where
    Q: MessageQueue,
    D: ContactDirectory,
    M: Mailer,
    S: TaskStore + ClaimStore,
{
    pub fn new(queue: Q, directory: D, sender: Sender<M>, store: S) -> Self {
        Self {
            queue,
            directory,
            sender,
            store,
        }
    }

    pub fn queue(&self) -> &Q {
        &self.queue
    }

    pub fn sender(&self) -> &Sender<M> {
        &self.sender
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    /// Processes one message body. `Ok` means the message is done and may be deleted.
    pub async fn process(&self, body: &str, invocation: Invocation) -> Result<(), WorkError> {
        let message = match Message::decode(body) {
            Ok(message) => message,
            Err(err) => {
                let err = WorkError::from(err);
                if invocation.last_attempt {
                    self.record_unreadable(body, &err).await;
                }
                return Err(err);
            }
        };
        let span = tracing::info_span!("task", task_id = %message.task_id());
        async {
            let result = match &message {
                Message::Job(job) => self.plan(job).await,
                Message::Delivery(delivery) => self.deliver(delivery, invocation).await,
            };
            if let Err(err) = &result {
                tracing::error!(error = %err, last_attempt = invocation.last_attempt, "message failed");
                if invocation.last_attempt {
                    self.give_up(&message, err, invocation).await;
                }
            }
            result
        }
        .instrument(span)
        .await
    }

    /// Plans the page the job points at. The page's counts are recorded first (once per page,
    /// however often this is retried), then its deliveries and the job for the next page are
    /// queued: a retry re-sends the same messages with the same chunk ids, never different ones.
    async fn plan(&self, job: &Job) -> Result<(), WorkError> {
        let audience = Audience::new(&job.newsletter, self.directory.topic_defaults().await?);
        let unknown = audience.unknown_topics();
        if !unknown.is_empty() {
            tracing::warn!(topics = ?unknown, "no topic of the contact list matches; these sections reach nobody");
        }
        // SES filters on one topic at most; with several, every contact is read and filtered here.
        let topics = job.newsletter.topics();
        let only_topic = match topics.as_slice() {
            [only] => Some(*only),
            _ => None,
        };
        let token = job.cursor.as_ref().map(|cursor| cursor.next_token.as_str());
        let page = self.directory.page(token, only_topic).await?;
        let contacts = page.contacts.len();
        let plan = plan_page(job, &audience, page.contacts, page.next_token);
        let counts = PageCounts {
            page: job.cursor.as_ref().map_or(0, |cursor| cursor.page),
            planned: contacts as u64,
            skipped: plan.skipped as u64,
            failed: plan.invalid_addresses as u64,
            last: plan.continuation.is_none(),
        };
        tracing::info!(
            page = counts.page,
            contacts,
            recipients = plan.recipients,
            skipped = plan.skipped,
            invalid_addresses = plan.invalid_addresses,
            deliveries = plan.deliveries.len(),
            more_pages = !counts.last,
            "page planned"
        );
        self.store.record_page(job.task_id, counts).await?;
        self.queue.send_all(&plan.into_messages()).await?;
        self.complete_if_done(job.task_id).await
    }

    /// Sends a chunk. Recipients still owed an email go back on the queue on their own, so a
    /// retry never reaches those who already got it; if nobody could be sent to, the message
    /// itself is retried.
    async fn deliver(&self, delivery: &Delivery, invocation: Invocation) -> Result<(), WorkError> {
        let report = self
            .sender
            .deliver(delivery, &self.store, invocation.sending_deadline())
            .await?;
        tracing::info!(
            chunk = %delivery.chunk_id,
            attempt = delivery.attempt,
            sent = report.sent,
            rejected = report.rejected,
            already_settled = report.already_settled,
            throttled = report.throttled,
            emails_per_second = self.sender.current_rate(),
            owed = report.owed.len(),
            "chunk delivered"
        );
        if !report.owed.is_empty() {
            if !report.made_progress() {
                return Err(WorkError::NothingDelivered(report.owed.len()));
            }
            let retry = Delivery {
                attempt: delivery.attempt + 1,
                recipients: report.owed,
                ..delivery.clone()
            };
            self.queue.send_all(&[Message::Delivery(retry)]).await?;
        }
        self.complete_if_done(delivery.task_id).await
    }

    /// Moves the task to its final status if every recipient is accounted for. Many invocations
    /// may try; the store lets exactly one succeed, and that one logs the completion.
    async fn complete_if_done(&self, task_id: TaskId) -> Result<(), WorkError> {
        let Some(task) = self.store.get(task_id).await? else {
            tracing::warn!("no status record for this task");
            return Ok(());
        };
        if let Some(status) = task.completion()
            && self.store.finish(task_id, status).await?
        {
            tracing::info!(
                status = status.as_str(),
                planned = task.recipients.planned,
                sent = task.recipients.sent,
                skipped = task.recipients.skipped,
                failed = task.recipients.failed,
                "task completed"
            );
        }
        Ok(())
    }

    /// The message is on its way to the dead-letter queue: say so on its task, count its
    /// unsettled recipients as failed, and let the task complete (with errors).
    async fn give_up(&self, message: &Message, err: &WorkError, invocation: Invocation) {
        let task_id = message.task_id();
        let result = async {
            let (part, stops_planning) = match message {
                Message::Job(job) => (
                    format!(
                        "planning page {}",
                        job.cursor.as_ref().map_or(0, |c| c.page)
                    ),
                    true,
                ),
                Message::Delivery(delivery) => {
                    self.fail_unsettled(delivery, invocation).await?;
                    (
                        format!(
                            "delivery {} attempt {}",
                            delivery.chunk_id, delivery.attempt
                        ),
                        false,
                    )
                }
            };
            let failure = PartFailure {
                part,
                error: err.to_string(),
            };
            self.store
                .record_failure(task_id, failure, stops_planning)
                .await?;
            self.complete_if_done(task_id).await
        }
        .await;
        if let Err(record_err) = result {
            tracing::error!(error = %record_err, "could not record the failure on the task");
        }
    }

    /// Settles as failed every recipient of `delivery` that nobody has settled yet.
    async fn fail_unsettled(
        &self,
        delivery: &Delivery,
        invocation: Invocation,
    ) -> Result<(), WorkError> {
        let mut failed = Vec::new();
        for recipient in &delivery.recipients {
            if self
                .store
                .claim(delivery.task_id, &recipient.email, invocation.deadline)
                .await?
                == Claim::Acquired
            {
                failed.push(Settlement::Rejected(recipient.email.clone()));
            }
        }
        for batch in failed.chunks(crate::tasks::MAX_SETTLEMENTS) {
            self.store.settle(delivery.task_id, batch).await?;
        }
        Ok(())
    }

    /// A message that cannot be read is recorded on its task when its task id can be found.
    async fn record_unreadable(&self, body: &str, err: &WorkError) {
        let Some((task_id, is_job)) = Message::salvage(body) else {
            return;
        };
        let failure = PartFailure {
            part: "unreadable message".into(),
            error: err.to_string(),
        };
        let result = async {
            self.store.record_failure(task_id, failure, is_job).await?;
            self.complete_if_done(task_id).await
        }
        .await;
        if let Err(record_err) = result {
            tracing::error!(%task_id, error = %record_err, "could not record the failure on the task");
        }
    }
}
#[cfg(test)]
mod tests;

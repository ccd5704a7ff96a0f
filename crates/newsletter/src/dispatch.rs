//! What the worker does with a batch of queue messages: plan a page of a job, deliver a chunk,
//! and hand back at once what cannot be done before the invocation's deadline. On a schedule,
//! it accounts for the messages that reached the dead-letter queue.

use crate::audience::{Audience, select_addresses};
use crate::control::{self, ControlError};
use crate::domain::{EmailAddress, PartFailure, PauseCode, TaskId, TaskStatus};
use crate::message::{DecodeError, Delivery, Job, Message};
use crate::planning::{PagePlan, plan_page, plan_selected};
use crate::ports::{
    Accounting, ChunkStore, ContactDirectory, DeadLetterQueue, DirectoryError, Holder, Mailer,
    MessageQueue, PageState, PauseStore, PlanStore, QueueError, StoreError, TaskStore,
};
use crate::sending::{Budget, ChunkOutcome, Halt, SendReport, Sender};
use crate::status::complete_if_done;
use std::time::{Duration, SystemTime};
use tracing::Instrument;

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
    #[error("task {0} has no status record: its messages are not delivered")]
    UnknownTask(TaskId),
    #[error("chunk {0} is leased to another invocation; this message is retried after it")]
    Busy(String),
    #[error("none of the {0} recipient(s) left could be sent to; the message is retried later")]
    Stalled(usize),
}

/// One SQS record of a batch.
#[derive(Debug, Clone, Copy)]
pub struct QueueRecord<'a> {
    pub message_id: &'a str,
    pub body: &'a str,
}

/// What a resume did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ResumeReport {
    /// The task was paused, and now sends again.
    pub resumed: bool,
    /// Parked chunks put back on the queue.
    pub requeued: usize,
}

/// What one sweep of the dead-letter queue found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct SweepReport {
    /// Messages read (all left in the queue).
    pub seen: usize,
    /// Of those, the ones accounted on their task now or before.
    pub accounted: usize,
    /// Held by a live invocation, or not accountable yet (the store failed): next sweep.
    pub deferred: usize,
}

pub struct Dispatcher<Q, D, M, S> {
    queue: Q,
    directory: D,
    sender: Sender<M>,
    store: S,
    max_recipients_per_chunk: usize,
}

impl<Q, D, M, S> Dispatcher<Q, D, M, S>
where
    Q: MessageQueue,
    D: ContactDirectory,
    M: Mailer,
    S: TaskStore + PlanStore + ChunkStore + PauseStore,
{
    /// `max_recipients_per_chunk`: what planning puts in one delivery message (see
    /// `config::chunk_size`).
    pub fn new(
        queue: Q,
        directory: D,
        sender: Sender<M>,
        store: S,
        max_recipients_per_chunk: usize,
    ) -> Self {
        Self {
            queue,
            directory,
            sender,
            store,
            max_recipients_per_chunk,
        }
    }

    #[cfg(test)]
    pub(crate) fn sender(&self) -> &Sender<M> {
        &self.sender
    }

    #[cfg(test)]
    pub(crate) fn store(&self) -> &S {
        &self.store
    }

    #[cfg(test)]
    pub(crate) fn queue(&self) -> &Q {
        &self.queue
    }

    /// Processes a batch that must be done by `deadline`, one record after another (they share
    /// the instance's send rate, and one chunk at a time keeps the crash window to one chunk's).
    /// Records whose sends do not fit before the deadline are handed back to the queue at once,
    /// as new messages, so other instances take them now. Returns the positions of the records
    /// to report failed.
    pub async fn process_batch(
        &self,
        records: &[QueueRecord<'_>],
        deadline: SystemTime,
    ) -> Vec<usize> {
        let budget = Budget::until(deadline);
        let holder = Holder {
            token: uuid::Uuid::now_v7().to_string(),
            lapses: budget.lapses,
        };
        let mut capacity = self.sender.capacity(&budget);
        let mut failed = Vec::new();
        let mut taken = Vec::new();
        // What does not fit, by position and message (kept apart to queue them without a copy).
        let (mut handed_back, mut messages) = (Vec::new(), Vec::new());
        for (position, record) in records.iter().enumerate() {
            let message = match Message::decode(record.body) {
                Ok(message) => message,
                Err(err) => {
                    // The id and the reason, never the body: it holds subscriber data.
                    tracing::error!(message_id = record.message_id, error = %err, "poison message");
                    failed.push(position);
                    continue;
                }
            };
            let sends = match &message {
                Message::Job(_) => 0,
                Message::Delivery(delivery) => delivery.recipients.len(),
            };
            let first_delivery =
                sends > 0 && !taken.iter().any(|(_, m)| matches!(m, Message::Delivery(_)));
            if sends <= capacity || first_delivery {
                capacity = capacity.saturating_sub(sends);
                taken.push((position, message));
            } else {
                handed_back.push(position);
                messages.push(message);
            }
        }
        if !messages.is_empty() {
            match self.queue.send_all(&messages).await {
                Ok(()) => tracing::info!(
                    messages = messages.len(),
                    "handed back what does not fit before the deadline"
                ),
                Err(err) => {
                    tracing::error!(error = %err, "could not hand messages back; they are retried");
                    failed.extend(handed_back);
                }
            }
        }
        // Jobs first: planning is short, and the chunks it queues can go to other instances.
        taken.sort_by_key(|(_, message)| matches!(message, Message::Delivery(_)));
        for (position, message) in taken {
            let span = tracing::info_span!("task", task_id = %message.task_id());
            let result = self
                .process(&message, &budget, &holder)
                .instrument(span.clone())
                .await;
            if let Err(err) = result {
                span.in_scope(|| {
                    tracing::error!(message_id = records[position].message_id, error = %err, "message failed");
                });
                failed.push(position);
            }
        }
        failed.sort_unstable();
        failed
    }

    async fn process(
        &self,
        message: &Message,
        budget: &Budget,
        holder: &Holder,
    ) -> Result<(), WorkError> {
        match message {
            Message::Job(job) => self.plan(job).await,
            Message::Delivery(delivery) => self.deliver(delivery, budget, holder).await,
        }
    }

    /// Plans the page the job points at, once: the plan is stored and counted before any of its
    /// messages is queued, so a retry at any step queues the same messages again (duplicates of
    /// deliveries change nothing; a duplicate of the next page's job finds that page planned).
    ///
    /// A cancelled task plans no new page: planning stops at the first page not recorded yet.
    /// A page recorded already is queued all the same, so that its chunks are accounted.
    async fn plan(&self, job: &Job) -> Result<(), WorkError> {
        let stopped = self.planning_stopped(job).await?;
        if stopped == Some(TaskStatus::Withdrawn) {
            return self.stop_planning(job).await;
        }
        let plan = match self.store.page_state(job.task_id, job.page()).await? {
            PageState::Enqueued => {
                tracing::info!(page = job.page(), "page already planned and queued");
                return self.complete_if_done(job.task_id).await;
            }
            PageState::Planned(plan) => plan,
            PageState::Unplanned if stopped.is_some() => return self.stop_planning(job).await,
            PageState::Unplanned => {
                let plan = self.read_page(job).await?;
                match self.store.record_page(job.task_id, plan).await {
                    Ok(plan) => plan,
                    // Withdrawn or cancelled since the look above: why the page was refused.
                    Err(_) if self.planning_stopped(job).await?.is_some() => {
                        return self.stop_planning(job).await;
                    }
                    Err(err) => return Err(err.into()),
                }
            }
        };
        self.enqueue_page(job, &plan).await
    }

    /// The status of the job's task if it plans nothing more: withdrawn (its accept answered
    /// 503, so it is never planned: the job is dropped) or cancelled. A job of a task that has
    /// no record is not planned either, but fails, so that it ends in the dead-letter queue for
    /// someone to look at.
    async fn planning_stopped(&self, job: &Job) -> Result<Option<TaskStatus>, WorkError> {
        let Some(task) = self.store.get(job.task_id).await? else {
            return Err(WorkError::UnknownTask(job.task_id));
        };
        Ok(
            (task.status == TaskStatus::Withdrawn || task.status.is_cancelled())
                .then_some(task.status),
        )
    }

    /// Ends planning before the job's page: a withdrawn task's job is dropped; a cancelled
    /// task counts as planned with the pages it has, and may be done now.
    async fn stop_planning(&self, job: &Job) -> Result<(), WorkError> {
        if self.planning_stopped(job).await? == Some(TaskStatus::Withdrawn) {
            tracing::info!(page = job.page(), "job of a withdrawn task dropped");
            return Ok(());
        }
        self.store.stop_planning(job.task_id, job.page()).await?;
        tracing::info!(
            page = job.page(),
            "task cancelled: planning stopped before this page"
        );
        self.complete_if_done(job.task_id).await
    }

    /// Reads the page the job points at and plans it.
    async fn read_page(&self, job: &Job) -> Result<PagePlan, WorkError> {
        if let Some(to) = &job.to {
            return self.plan_test(job, to.addresses()).await;
        }
        let audience = Audience::new(&job.newsletter, self.directory.topic_defaults().await?);
        let unknown = audience.unmatched_topics();
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
        let plan = plan_page(
            job,
            &audience,
            page.contacts,
            page.next_token,
            self.max_recipients_per_chunk,
        );
        tracing::info!(
            page = plan.page,
            contacts = plan.contacts,
            recipients = plan.recipients(),
            skipped = plan.skipped,
            invalid_addresses = plan.invalid_addresses,
            deliveries = plan.chunks.len(),
            more_pages = !plan.is_last(),
            "page planned"
        );
        Ok(plan)
    }

    /// A test send's one page: its addresses, each looked up in the list (never a page of it).
    async fn plan_test(&self, job: &Job, to: &[EmailAddress]) -> Result<PagePlan, WorkError> {
        let (audience, selected) = select_addresses(&self.directory, &job.newsletter, to).await?;
        let plan = plan_selected(
            job,
            &audience,
            selected,
            None,
            self.max_recipients_per_chunk,
        );
        tracing::info!(
            addresses = plan.contacts,
            recipients = plan.recipients(),
            skipped = plan.skipped,
            "test send planned"
        );
        Ok(plan)
    }

    async fn enqueue_page(&self, job: &Job, plan: &PagePlan) -> Result<(), WorkError> {
        self.queue.send_all(&plan.messages(job)).await?;
        self.store
            .mark_page_enqueued(job.task_id, plan.page)
            .await?;
        self.complete_if_done(job.task_id).await
    }

    /// Sends a chunk. What is left when the invocation's time is up goes back on the queue at
    /// once (the same chunk, a new message; who got it is in the store); if sends were tried
    /// and nobody could be sent to, the message is reported failed and SQS retries it later.
    async fn deliver(
        &self,
        delivery: &Delivery,
        budget: &Budget,
        holder: &Holder,
    ) -> Result<(), WorkError> {
        let Some(task) = self.store.get(delivery.task_id).await? else {
            return Err(WorkError::UnknownTask(delivery.task_id));
        };
        // The same decision the sender makes during the chunk (`Halt`), made before it starts.
        match Halt::of(task.status) {
            Some(Halt::Paused) if self.park(delivery).await? => return Ok(()),
            Some(Halt::Cancelled) => return self.cancel_chunk(delivery).await,
            _ => {}
        }
        let outcome = self
            .sender
            .send_chunk(delivery, &self.store, holder, budget)
            .await?;
        let log = |report: &SendReport, finished: bool| {
            tracing::info!(
                chunk = %delivery.chunk_id,
                attempt = delivery.attempt,
                sent = report.sent,
                rejected = report.rejected,
                already_settled = report.already_settled,
                throttled = report.throttled,
                unsent = report.unsent,
                emails_per_second = self.sender.current_rate(),
                finished,
                "chunk delivered"
            );
        };
        match outcome {
            // A duplicate of a message being worked on, or this very message back from a holder
            // that died before its lease lapsed (a visibility timeout shorter than the lease):
            // either way it must come back later, never be dropped. The template's visibility
            // timeout (6 x the function timeout) is longer than any lease.
            ChunkOutcome::Busy => Err(WorkError::Busy(delivery.chunk_id.clone())),
            ChunkOutcome::Finished(report) => {
                log(&report, true);
                self.complete_if_done(delivery.task_id).await
            }
            ChunkOutcome::Unfinished(report) if report.stalled() => {
                log(&report, false);
                Err(WorkError::Stalled(report.unsent))
            }
            ChunkOutcome::Refused(report, code) => {
                log(&report, false);
                self.pause(delivery, code).await
            }
            ChunkOutcome::Halted(report, Halt::Paused) => {
                log(&report, false);
                self.park_or_hand_back(delivery).await
            }
            ChunkOutcome::Halted(report, Halt::Cancelled) => {
                log(&report, false);
                self.cancel_chunk(delivery).await
            }
            ChunkOutcome::Unfinished(report) => {
                log(&report, false);
                self.hand_back(delivery).await
            }
        }
    }

    /// The chunk again, as a new message, for what is left of it.
    async fn hand_back(&self, delivery: &Delivery) -> Result<(), WorkError> {
        let rest = Delivery {
            attempt: delivery.attempt + 1,
            ..delivery.clone()
        };
        Ok(self.queue.send_all(&[Message::Delivery(rest)]).await?)
    }

    /// SES refuses the account's sends: pause the task (other instances park its chunks as
    /// they come), and park this one. Nobody is counted failed for it.
    async fn pause(&self, delivery: &Delivery, code: PauseCode) -> Result<(), WorkError> {
        if self.store.pause(delivery.task_id, code).await? {
            tracing::error!(
                code = code.as_str(),
                reason = code.message(),
                "task paused: SES refuses sends account-wide; resume it once fixed"
            );
        }
        self.park_or_hand_back(delivery).await
    }

    /// Parks the chunk of a paused task; if the task is no longer paused (resumed since, or
    /// never pausable: it is finishing), the chunk goes on elsewhere.
    async fn park_or_hand_back(&self, delivery: &Delivery) -> Result<(), WorkError> {
        if self.park(delivery).await? {
            return Ok(());
        }
        self.hand_back(delivery).await
    }

    /// Keeps the chunk in the store while its task is paused; `false` if it is not paused.
    async fn park(&self, delivery: &Delivery) -> Result<bool, WorkError> {
        let message = Message::Delivery(delivery.clone()).encode();
        let parked = self
            .store
            .park(delivery.task_id, &delivery.chunk_id, &message)
            .await?;
        if parked {
            tracing::info!(chunk = %delivery.chunk_id, "task paused: chunk parked until it resumes");
        }
        Ok(parked)
    }

    /// The chunk's task is cancelled: what it has not sent is counted cancelled, and the task
    /// may be done. A live lease on it (a duplicate message while another invocation sends it,
    /// which sees the cancel within a check) sends the message back to SQS for later.
    async fn cancel_chunk(&self, delivery: &Delivery) -> Result<(), WorkError> {
        let (task_id, chunk_id) = (delivery.task_id, &delivery.chunk_id);
        let size = delivery.recipients.len();
        match self.store.cancel_unsettled(task_id, chunk_id, size).await? {
            Accounting::Accounted => {
                tracing::info!(chunk = %chunk_id, "task cancelled: chunk accounted, not sent further");
                self.complete_if_done(task_id).await
            }
            Accounting::Held => Err(WorkError::Busy(chunk_id.clone())),
        }
    }

    /// Resumes a paused task where it stopped (see [`control::resume`], which accept's
    /// `POST /newsletters/{task_id}/resume` runs too).
    pub async fn resume(&self, task_id: TaskId) -> Result<ResumeReport, ControlError> {
        let resumed = control::resume(&self.queue, &self.store, task_id).await?;
        Ok(ResumeReport {
            resumed: resumed.resumed,
            requeued: resumed.requeued,
        })
    }

    /// Moves the task to its final status if every recipient is accounted for (see
    /// [`complete_if_done`]).
    async fn complete_if_done(&self, task_id: TaskId) -> Result<(), WorkError> {
        match complete_if_done(&self.store, task_id).await? {
            Some(_) => Ok(()),
            None => Err(WorkError::UnknownTask(task_id)),
        }
    }

    /// Accounts for every message in the dead-letter queue on its task, and leaves each there
    /// (for a redrive). Runs on a schedule; accounting is idempotent, so a message seen on
    /// every sweep is accounted once.
    pub async fn sweep_dead_letters(
        &self,
        dead_letters: &impl DeadLetterQueue,
        deadline: SystemTime,
    ) -> SweepReport {
        let budget = Budget::until(deadline);
        // Hidden until the sweep ends, so that it reads each message once.
        let hidden_for = deadline
            .duration_since(SystemTime::now())
            .unwrap_or_default()
            + Duration::from_secs(1);
        let mut report = SweepReport::default();
        let mut receipts = Vec::new();
        while budget.sending_time() > Duration::ZERO {
            let letters = match dead_letters.receive(hidden_for).await {
                Ok(letters) if letters.is_empty() => break,
                Ok(letters) => letters,
                Err(err) => {
                    tracing::error!(error = %err, "could not read the dead-letter queue");
                    break;
                }
            };
            for letter in letters {
                report.seen += 1;
                receipts.push(letter.receipt);
                match self.account(&letter.body).await {
                    Ok(true) => report.accounted += 1,
                    Ok(false) => report.deferred += 1,
                    Err(err) => {
                        tracing::error!(error = %err, "could not account a dead letter; next sweep");
                        report.deferred += 1;
                    }
                }
            }
        }
        if let Err(err) = dead_letters.put_back(&receipts).await {
            // They become visible again when their visibility timeout ends.
            tracing::warn!(error = %err, "dead letters not put back at once");
        }
        tracing::info!(
            seen = report.seen,
            accounted = report.accounted,
            deferred = report.deferred,
            "dead-letter queue swept"
        );
        report
    }

    /// Accounts one dead-lettered message on its task. `false` when it cannot be yet (an
    /// invocation holds its chunk).
    async fn account(&self, body: &str) -> Result<bool, WorkError> {
        let message = match Message::decode(body) {
            Ok(message) => message,
            Err(err) => {
                let Some(salvaged) = Message::salvage(body) else {
                    return Ok(true); // nothing names a task: the DLQ alarm is all there is
                };
                if self.store.get(salvaged.task_id).await?.is_none() {
                    return Ok(true);
                }
                // The reason stays in the log; the task shows a code.
                tracing::warn!(task_id = %salvaged.task_id, error = %WorkError::from(err), "unreadable dead letter");
                let failure = PartFailure::unreadable();
                self.store
                    .record_failure(salvaged.task_id, failure, salvaged.job_page)
                    .await?;
                self.complete_if_done(salvaged.task_id).await?;
                return Ok(true);
            }
        };
        let task_id = message.task_id();
        let span = tracing::info_span!("task", %task_id);
        async {
            let cancelled = match self.store.get(task_id).await? {
                None => {
                    tracing::warn!(
                        "a dead letter names a task without a record; nothing to account"
                    );
                    return Ok(true);
                }
                // Final, and nothing of it is delivered: there is nothing to account either.
                Some(task) if task.status == TaskStatus::Withdrawn => {
                    tracing::info!("a dead letter of a withdrawn task; nothing to account");
                    return Ok(true);
                }
                Some(task) => task.status.is_cancelled(),
            };
            match &message {
                // Not failed: nobody would have sent it anyway.
                Message::Delivery(delivery) if cancelled => {
                    let size = delivery.recipients.len();
                    let accounting = self
                        .store
                        .cancel_unsettled(task_id, &delivery.chunk_id, size)
                        .await?;
                    if accounting == Accounting::Held {
                        return Ok(false);
                    }
                }
                Message::Delivery(delivery) => {
                    let failure = PartFailure::delivery(&delivery.chunk_id);
                    let accounting = self
                        .store
                        .fail_unsettled(
                            task_id,
                            &delivery.chunk_id,
                            delivery.recipients.len(),
                            failure,
                        )
                        .await?;
                    if accounting == Accounting::Held {
                        return Ok(false);
                    }
                }
                Message::Job(job) => match self.store.page_state(task_id, job.page()).await? {
                    PageState::Enqueued => {}
                    // It was counted: finish queueing its messages rather than failing them.
                    PageState::Planned(plan) => {
                        return self.enqueue_page(job, &plan).await.map(|()| true);
                    }
                    PageState::Unplanned => {
                        let failure = PartFailure::planning(job.page());
                        self.store
                            .record_failure(task_id, failure, Some(job.page()))
                            .await?;
                    }
                },
            }
            self.complete_if_done(task_id).await.map(|()| true)
        }
        .instrument(span)
        .await
    }
}

#[cfg(test)]
mod tests;

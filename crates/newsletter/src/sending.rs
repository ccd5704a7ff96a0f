//! Sending a delivery chunk's emails, each recipient once: under a lease on the chunk,
//! concurrently, under the account's send rate, starting nothing that cannot finish (and be
//! recorded) before the invocation's deadline, and recording who was sent what in small groups.

use crate::domain::{PauseCode, RecipientRefs, TaskRecord, TaskStatus, Topic};
use crate::message::Delivery;
use crate::ports::{
    ChunkProgress, ChunkStore, Holder, Lease, Mailer, SendError, Settled, StoreError, TaskStore,
};
use crate::render::{RenderedEmail, render};
use futures::future::OptionFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use pace::AdaptiveRate;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};
use tokio::time::Instant;

mod pace;

/// Settled recipients recorded per write. With at most `max_in_flight` sends out at once, a
/// worker killed at any instant leaves at most `max_in_flight + SETTLE_GROUP` recipients whose
/// email SES may have accepted without a record of it (the crash window: they may get the
/// email twice). A chunk of 50 then costs 1 lease + 6 record writes + 1 closing transaction.
pub const SETTLE_GROUP: usize = 8;
/// Tries of one store write (each is idempotent) before the chunk stops: a transaction
/// conflict, throttling or a lost answer costs a retry, not a duplicate email.
const STORE_ATTEMPTS: u32 = 5;
const STORE_BACKOFF: Duration = Duration::from_millis(25);
/// Rendered emails kept per chunk, by topic set: enough for the common case of a few topic
/// sets, while memory stays bounded by what is in flight when every recipient's set differs.
const RENDERED_KEPT: usize = 4;

/// The longest one `SendEmail` may take; it is abandoned after that (SES may still have taken
/// it: the recipient is then in the crash window).
pub const SEND_TIMEOUT: Duration = Duration::from_secs(3);
/// Kept free at the end of an invocation for the last record write, the hand-back of what is
/// left and the answer to Lambda.
pub const SETTLE_RESERVE: Duration = Duration::from_secs(3);
/// Kept free after all that, as a margin against a slow scheduler.
pub const SAFETY_MARGIN: Duration = Duration::from_secs(1);
/// Added to a lease's lapse, against clock skew between Lambda hosts.
const LEASE_SKEW: Duration = Duration::from_secs(2);

/// How often a chunk being sent reads its task again (one `GetItem`), to see a pause (or any
/// other [`Halt`]) made since the chunk started; the chunk's start reads it too. There is no
/// read per email: an instance sending at `r` emails per second reads about `1000 / (r × 2)`
/// times per 1,000 emails on top of one read per chunk. At the template's defaults
/// (`MaxSendRate` 14 over `WorkerMaxConcurrency` 5: 2.8 emails/s per instance, chunks of 50,
/// each about 18 s of sending) that is 8 checks + 1 start read per chunk, about 180 strongly
/// consistent reads (180 read units: the task item is under 4 KB) per 1,000 emails, against
/// 1,000 for a read per email. What an instance may still start after a pause is written:
/// its sends already under way (at most `MAX_IN_FLIGHT`; about rate × SES's latency, under one
/// at the defaults) plus what the rate lets it start before its next check, rate × (interval +
/// the limiter's 1 s burst) = 2.8 × 3 ≈ 8 at the defaults, and never more than the chunk it is
/// on (50). 2 s keeps that under ten emails per instance while costing a fifth of a read per
/// email; halving it doubles the reads for 3 fewer emails.
pub const CONTROL_CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// Why a chunk stops for its task's sake, not its own: the task's status says to send nothing
/// more. The chunk records what settled and gives its lease up; the dispatcher parks it or
/// accounts it cancelled. One place decides it, at the chunk's start and during it, so that a
/// pause and a cancel stop chunks by the same path, within the same bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Halt {
    /// Paused (on request, or by SES refusing the account): the chunk is parked until resumed.
    Paused,
    /// Cancelled: what the chunk did not send is counted cancelled, and it is done.
    Cancelled,
}

impl Halt {
    /// Whether a task in `status` must not be sent to now.
    pub fn of(status: TaskStatus) -> Option<Self> {
        match status {
            TaskStatus::Paused => Some(Self::Paused),
            TaskStatus::Cancelling | TaskStatus::Cancelled => Some(Self::Cancelled),
            _ => None,
        }
    }
}

/// Account-wide refusals in a row (no email sent or rejected in between) after which the chunk
/// stops and its task pauses: few enough that a broken account costs a handful of calls, more
/// than one so that a single odd answer does not pause a campaign.
pub const ACCOUNT_FAILURES_TO_PAUSE: usize = 3;

/// Tries of one email that fails transiently (a timeout, a 5xx) before it is left owed.
const TRANSIENT_ATTEMPTS: u32 = 3;
/// Wait before the first retry of a transient failure; doubled for each further one.
const TRANSIENT_BACKOFF: Duration = Duration::from_millis(100);

/// What an invocation may still do, from its deadline. No send starts after `stop_starting`,
/// so every send ends (answer or [`SEND_TIMEOUT`]) and is recorded before `hard_stop`, which is
/// [`SAFETY_MARGIN`] before Lambda's deadline. Short deadlines (tests) scale the reserves down.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    pub stop_starting: Instant,
    pub hard_stop: Instant,
    pub send_timeout: Duration,
    /// When this invocation's leases lapse: its deadline, plus skew.
    pub lapses: SystemTime,
}

impl Budget {
    pub fn until(deadline: SystemTime) -> Self {
        let remaining = deadline
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        let (sending, send_timeout, reserve) = Self::split(remaining);
        let now = Instant::now();
        Self {
            stop_starting: now + sending,
            hard_stop: now + sending + send_timeout + reserve,
            send_timeout,
            lapses: deadline + LEASE_SKEW,
        }
    }

    /// Of `time_limit`, how long sends may start for, how long each may take, and what is kept
    /// for recording and handing back (the safety margin is what remains).
    pub fn split(time_limit: Duration) -> (Duration, Duration, Duration) {
        let margin = SAFETY_MARGIN.min(time_limit / 10);
        let send_timeout = SEND_TIMEOUT.min(time_limit / 5);
        let reserve = SETTLE_RESERVE.min(time_limit / 5);
        let sending = time_limit.saturating_sub(margin + send_timeout + reserve);
        (sending, send_timeout, reserve)
    }

    /// How long sends may still start for.
    pub fn sending_time(&self) -> Duration {
        self.stop_starting.saturating_duration_since(Instant::now())
    }
}

/// Calls `attempt` until it succeeds, [`STORE_ATTEMPTS`] times at most and while there is time
/// before `until`, backing off with jitter in between. For idempotent store writes only.
pub(crate) async fn with_retries<T, Fut>(
    until: Instant,
    mut attempt: impl FnMut() -> Fut,
) -> Result<T, StoreError>
where
    Fut: Future<Output = Result<T, StoreError>>,
{
    let mut backoff = STORE_BACKOFF;
    let mut tries = 0;
    loop {
        tries += 1;
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(err) if tries < STORE_ATTEMPTS && Instant::now() + backoff * 2 < until => {
                tracing::warn!(error = %err, tries, "store write failed; retrying");
                // Jitter keeps instances that conflicted on one item from retrying in step.
                let jitter = f64::from(
                    SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |t| t.subsec_nanos())
                        % 1000,
                ) / 1000.0;
                tokio::time::sleep(backoff.mul_f64(1.0 + jitter)).await;
                backoff *= 2;
            }
            Err(err) => return Err(err),
        }
    }
}

/// How fast one worker instance may send.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SendPolicy {
    /// Emails per second for this instance.
    pub emails_per_second: f64,
    /// Sends in flight at once; beyond what the rate needs, more only costs memory.
    pub max_in_flight: usize,
}

impl SendPolicy {
    /// The account's rate split evenly across the worker's maximum concurrency, so that all
    /// instances together stay within it.
    pub fn per_instance(
        account_emails_per_second: f64,
        max_instances: u32,
        max_in_flight: usize,
    ) -> Self {
        Self {
            emails_per_second: account_emails_per_second / f64::from(max_instances.max(1)),
            max_in_flight: max_in_flight.max(1),
        }
    }
}

/// What one chunk's invocation did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SendReport {
    pub sent: usize,
    pub rejected: usize,
    /// Recipients an earlier attempt had settled: skipped, not sent again.
    pub already_settled: usize,
    /// Throttling answers, each followed by a slower send to the same recipient.
    pub throttled: usize,
    /// Recipients left for another invocation: out of time, or failing transiently.
    pub unsent: usize,
    /// Transient failures (timeouts, 5xx) among the sends.
    pub transient_failures: usize,
    /// Sends SES refused account-wide (their recipients are among `unsent`).
    pub refused_account_wide: usize,
}

impl SendReport {
    /// Nothing was settled although sends were tried and failed: retrying at once would only
    /// fail again, so the message is left to SQS's retries (and, in the end, its DLQ).
    pub fn stalled(&self) -> bool {
        self.sent + self.rejected == 0 && self.transient_failures > 0
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChunkOutcome {
    /// Every recipient is settled and counted on the task.
    Finished(SendReport),
    /// Recipients are left (`report.unsent`); the lease is given up, so another invocation can
    /// go on at once.
    Unfinished(SendReport),
    /// Another invocation holds a live lease on the chunk: nothing was sent. The message must
    /// come back later (if the holder died, it may be the only copy of the chunk's message).
    Busy,
    /// SES refused [`ACCOUNT_FAILURES_TO_PAUSE`] sends in a row account-wide: the chunk stopped
    /// (what was settled is recorded, the lease given up) and its task should pause.
    Refused(SendReport, PauseCode),
    /// A check during the chunk found its task halted (paused, cancelled): the chunk stopped
    /// starting sends, waited for those in flight, recorded what settled and gave its lease up.
    /// Nobody is counted failed for it; the recipients left are in `report.unsent`.
    Halted(SendReport, Halt),
}

pub struct Sender<M> {
    mailer: M,
    rate: AdaptiveRate,
    max_in_flight: usize,
    refs: RecipientRefs,
}

/// What became of one recipient's email in this invocation.
#[derive(Debug)]
enum SendOutcome {
    Sent,
    Rejected(String),
    Unsent { transient_failures: usize },
    Refused(PauseCode),
}

/// Each distinct email rendered once while its topic set keeps coming; at most
/// [`RENDERED_KEPT`] kept (the sends in flight hold their own).
struct Renders<'a> {
    delivery: &'a Delivery,
    kept: VecDeque<(&'a [Topic], Arc<RenderedEmail>)>,
}

impl<'a> Renders<'a> {
    fn new(delivery: &'a Delivery) -> Self {
        Self {
            delivery,
            kept: VecDeque::with_capacity(RENDERED_KEPT),
        }
    }

    fn get(&mut self, topics: &'a [Topic]) -> Arc<RenderedEmail> {
        if let Some(index) = self.kept.iter().position(|(kept, _)| *kept == topics) {
            let entry = self.kept.remove(index);
            if let Some(entry) = entry {
                let email = entry.1.clone();
                self.kept.push_front(entry);
                return email;
            }
        }
        let email = Arc::new(render(&self.delivery.newsletter, topics));
        self.kept.truncate(RENDERED_KEPT - 1);
        self.kept.push_front((topics, email.clone()));
        email
    }
}

/// The chunk's stop for its task's sake, as the sends waiting for their turn see it: they wake
/// at once, not at their turn (up to `window / rate` later: seconds at low rates), so the chunk
/// gives its lease up, and is parked or counted, as soon as its sends under way have ended.
#[derive(Default)]
struct Halting {
    halted: AtomicBool,
    wake: tokio::sync::Notify,
}

impl Halting {
    fn halt(&self) {
        self.halted.store(true, Ordering::Relaxed);
        self.wake.notify_waiters();
    }

    /// Waits until `slot`; `false` if the chunk halted before (or while) it waited.
    async fn wait_until(&self, slot: Instant) -> bool {
        // Registered before the flag is read: a halt in between still wakes it.
        let woken = self.wake.notified();
        if self.halted.load(Ordering::Relaxed) {
            return false;
        }
        tokio::select! {
            () = tokio::time::sleep_until(slot) => !self.halted.load(Ordering::Relaxed),
            () = woken => false,
        }
    }
}

type Recording<'a> = Pin<Box<dyn Future<Output = (Settled, Result<(), StoreError>)> + Send + 'a>>;
type Checking<'a> =
    Pin<Box<dyn Future<Output = Result<Option<TaskRecord>, StoreError>> + Send + 'a>>;

impl<M: Mailer> Sender<M> {
    pub fn new(mailer: M, policy: SendPolicy) -> Self {
        Self {
            mailer,
            rate: AdaptiveRate::new(policy.emails_per_second),
            max_in_flight: policy.max_in_flight,
            refs: RecipientRefs::default(),
        }
    }

    /// Names recipients in logs by their keyed hash under `refs` (see [`RecipientRefs`]).
    pub fn with_recipient_refs(self, refs: RecipientRefs) -> Self {
        Self { refs, ..self }
    }

    /// Emails per second this sender allows itself now (lower than its policy after throttling).
    pub(crate) fn current_rate(&self) -> f64 {
        self.rate.current()
    }

    #[cfg(test)]
    pub(crate) fn mailer(&self) -> &M {
        &self.mailer
    }

    /// About how many emails this sender can start within `budget`.
    pub fn capacity(&self, budget: &Budget) -> usize {
        (self.rate.current() * budget.sending_time().as_secs_f64()) as usize
    }

    /// Sends `delivery`'s chunk to every recipient it still owes that can be reached within
    /// `budget`, under a lease for `holder`. Recipients are recorded [`SETTLE_GROUP`] at a time
    /// while sends go on, and the chunk is closed (counted on its task) or released at the end.
    /// An error means the store failed even after retries: the lease is left to lapse, and
    /// the recipients not recorded (at most the crash window) may be sent again.
    ///
    /// While it sends, it reads the task every [`CONTROL_CHECK_INTERVAL`]; a task found halted
    /// ([`Halt`]) stops the chunk: [`ChunkOutcome::Halted`].
    pub async fn send_chunk<S: ChunkStore + TaskStore>(
        &self,
        delivery: &Delivery,
        store: &S,
        holder: &Holder,
        budget: &Budget,
    ) -> Result<ChunkOutcome, StoreError> {
        let (task_id, chunk) = (delivery.task_id, delivery.chunk_id.as_str());
        let size = delivery.recipients.len();
        let lease = with_retries(budget.hard_stop, || {
            store.lease(task_id, chunk, size, holder)
        })
        .await?;
        let progress = match lease {
            Lease::Busy => return Ok(ChunkOutcome::Busy),
            Lease::Finished => {
                return Ok(ChunkOutcome::Finished(SendReport {
                    already_settled: size,
                    ..SendReport::default()
                }));
            }
            Lease::Held(progress) => progress,
        };
        let mut pending: VecDeque<u16> = (0..size as u16).filter(|p| progress.owes(*p)).collect();
        let mut report = SendReport {
            already_settled: size - pending.len(),
            ..SendReport::default()
        };
        // A chunk owing fewer recipients than the threshold pauses when all of them are refused.
        let refusals_to_stop = ACCOUNT_FAILURES_TO_PAUSE.min(pending.len()).max(1);
        let mut refused_in_a_row = 0;
        let mut refused = None;

        // Set with `halted`: sends booked on the rate but still waiting for their turn see it
        // and do not start (a send under way is not cut off: SES may have taken it).
        let halting = Halting::default();
        let mut renders = Renders::new(delivery);
        let mut sends = FuturesUnordered::new();
        let mut unrecorded = Settled::default();
        let mut recording: Option<Recording<'_>> = None;
        let mut recording_len = 0;
        let mut recorded = Settled::default();
        // Out of time, the store is failing, SES refuses the account, or the task halted: start
        // nothing more.
        let mut stopped = false;
        let mut halted = None;
        // The dispatcher read the task just before the chunk started.
        let mut next_check = Instant::now() + CONTROL_CHECK_INTERVAL;
        let mut checking: Option<Checking<'_>> = None;
        // After a record write failed for good, only the last write (close or release) tries again.
        let mut store_failing = false;
        let window = self.max_in_flight + SETTLE_GROUP;
        loop {
            while !stopped
                && sends.len() < self.max_in_flight
                && sends.len() + unrecorded.len() + recording_len < window
            {
                let Some(&position) = pending.front() else {
                    break;
                };
                let Some(slot) = self.rate.reserve(budget.stop_starting) else {
                    stopped = true;
                    break;
                };
                pending.pop_front();
                let recipient = &delivery.recipients[usize::from(position)];
                let email = renders.get(&recipient.topics);
                sends.push(self.send_one(position, delivery, email, slot, budget, &halting));
            }
            if checking.is_none() && !stopped && Instant::now() >= next_check {
                checking = Some(Box::pin(store.get(task_id)));
            }
            if recording.is_none() && !store_failing && unrecorded.len() >= SETTLE_GROUP {
                let batch = std::mem::take(&mut unrecorded);
                recording_len = batch.len();
                recording = Some(Box::pin(async move {
                    let result = with_retries(budget.hard_stop, || {
                        store.record(task_id, chunk, holder, &batch)
                    })
                    .await;
                    (batch, result)
                }));
            }
            if sends.is_empty() && recording.is_none() {
                break;
            }
            tokio::select! {
                Some((position, outcome, throttled)) = sends.next(), if !sends.is_empty() => {
                    report.throttled += throttled;
                    match outcome {
                        SendOutcome::Sent => {
                            refused_in_a_row = 0;
                            report.sent += 1;
                            unrecorded.sent.push(position);
                        }
                        SendOutcome::Rejected(reason) => {
                            refused_in_a_row = 0;
                            let recipient = self.refs.of(&delivery.recipients[usize::from(position)].email);
                            tracing::warn!(chunk, position, %recipient, %reason, "email rejected; not retried");
                            report.rejected += 1;
                            unrecorded.rejected.push(position);
                        }
                        SendOutcome::Unsent { transient_failures } => {
                            report.unsent += 1;
                            report.transient_failures += transient_failures;
                        }
                        SendOutcome::Refused(code) => {
                            report.unsent += 1;
                            report.refused_account_wide += 1;
                            refused_in_a_row += 1;
                            if refused_in_a_row >= refusals_to_stop && refused.is_none() {
                                tracing::error!(chunk, code = code.as_str(), refused_in_a_row, "SES refuses sends account-wide; stopping the chunk");
                                refused = Some(code);
                                stopped = true;
                            }
                        }
                    }
                }
                Some(task) = OptionFuture::from(checking.as_mut()) => {
                    checking = None;
                    next_check = Instant::now() + CONTROL_CHECK_INTERVAL;
                    match task {
                        Ok(Some(task)) => {
                            if let Some(halt) = Halt::of(task.status) {
                                tracing::info!(chunk, status = task.status.as_str(), "task halted; stopping the chunk");
                                halted = Some(halt);
                                halting.halt();
                                stopped = true;
                            }
                        }
                        // Gone: the chunk's own writes will say so; sending on is what it did.
                        Ok(None) => {}
                        // A missed check delays a pause by one interval; it stops nothing.
                        Err(err) => tracing::warn!(chunk, error = %err, "could not read the task to check for a pause; sending on"),
                    }
                }
                // Wakes the loop for a check when no send or record ends before it is due.
                () = tokio::time::sleep_until(next_check), if checking.is_none() && !stopped => {}
                Some((batch, result)) = OptionFuture::from(recording.as_mut()) => {
                    recording = None;
                    recording_len = 0;
                    match result {
                        Ok(()) => recorded.append(batch),
                        Err(err) => {
                            tracing::error!(chunk, error = %err, "recording sends failed; stopping the chunk");
                            stopped = true;
                            store_failing = true;
                            unrecorded.append(batch);
                        }
                    }
                }
            }
        }
        report.unsent += pending.len();

        let mut after: ChunkProgress = progress.clone();
        after.apply(&recorded);
        after.apply(&unrecorded);
        if refused.is_none() && report.unsent == 0 {
            with_retries(budget.hard_stop, || {
                store.close(task_id, chunk, holder, &unrecorded, &after)
            })
            .await?;
            return Ok(ChunkOutcome::Finished(report));
        }
        with_retries(budget.hard_stop, || {
            store.release_lease(task_id, chunk, holder, &unrecorded)
        })
        .await?;
        Ok(match (refused, halted) {
            (Some(code), _) => ChunkOutcome::Refused(report, code),
            (None, Some(halt)) => ChunkOutcome::Halted(report, halt),
            (None, None) => ChunkOutcome::Unfinished(report),
        })
    }

    /// Sends to one recipient at `slot` (a turn of the rate), until SES takes or refuses the
    /// email, or a transient failure persists, or no turn is left before the stop. Retrying here,
    /// under the lease, is what lets a throttled send go out within this invocation.
    async fn send_one(
        &self,
        position: u16,
        delivery: &Delivery,
        email: Arc<RenderedEmail>,
        slot: Instant,
        budget: &Budget,
        halting: &Halting,
    ) -> (u16, SendOutcome, usize) {
        let recipient = &delivery.recipients[usize::from(position)];
        let topic = match recipient.topics.as_slice() {
            [only] => Some(only),
            _ => None,
        };
        let (mut slot, mut throttled, mut transient_failures) = (slot, 0, 0);
        loop {
            // The task halted while this send waited for its turn: it does not start.
            if !halting.wait_until(slot).await {
                return (
                    position,
                    SendOutcome::Unsent { transient_failures },
                    throttled,
                );
            }
            let answer = tokio::time::timeout(
                budget.send_timeout,
                self.mailer
                    .send(delivery.task_id, &recipient.email, &email, topic),
            )
            .await
            .unwrap_or_else(|_| Err(SendError::Transient("no answer in time".into())));
            let not_before = match answer {
                Ok(()) => return (position, SendOutcome::Sent, throttled),
                Err(SendError::Permanent(reason)) => {
                    return (position, SendOutcome::Rejected(reason), throttled);
                }
                // Retrying cannot help until the account is fixed.
                Err(SendError::AccountWide(code)) => {
                    return (position, SendOutcome::Refused(code), throttled);
                }
                Err(SendError::Throttled(_)) => {
                    self.rate.throttled();
                    throttled += 1;
                    Instant::now()
                }
                Err(SendError::Transient(reason)) => {
                    transient_failures += 1;
                    if transient_failures == TRANSIENT_ATTEMPTS as usize {
                        let recipient = self.refs.of(&recipient.email);
                        tracing::warn!(position, %recipient, %reason, "email not sent; left for a retry");
                        return (
                            position,
                            SendOutcome::Unsent { transient_failures },
                            throttled,
                        );
                    }
                    Instant::now() + TRANSIENT_BACKOFF * 2u32.pow(transient_failures as u32 - 1)
                }
            };
            // A retry takes a turn of its own, and only one that starts in time.
            match self.rate.reserve(budget.stop_starting) {
                Some(next) if next.max(not_before) <= budget.stop_starting => {
                    slot = next.max(not_before);
                }
                _ => {
                    return (
                        position,
                        SendOutcome::Unsent { transient_failures },
                        throttled,
                    );
                }
            }
        }
    }
}

//! The ports: every capability the use cases need from the outside world, as traits with their
//! contracts. The adapters in `newsletter-aws` implement them on AWS; `testing::fakes` implements
//! them in memory for tests, and `testing::contract` holds the scenarios every store must pass.
//!
//! A contract here is what every implementation MUST do, whatever it stands on; a use case relies
//! on nothing else. Every port:
//! - MUST be safe to share between concurrent calls (`Send + Sync`, `&self`), and MUST NOT make
//!   a network call when it is built: the functions build their adapters at init.
//! - MUST answer an `Err` of the port's own error type, with the adapter's cause kept inside
//!   ([`Cause`]), for anything it could not do; it MUST NOT panic on what a service answers.
//! - MUST treat an error as "may or may not have happened" where the method says so: the use
//!   cases retry, and the methods that write are idempotent or conditional for that reason.
//!
//! The store ports' scenarios, run on the in-memory store and on DynamoDB Local, are in
//! `testing::contract` (feature `testing`).

use crate::audience::{Contact, TopicDefaults};
use crate::domain::{
    EmailAddress, PartFailure, PauseCode, TaskId, TaskKind, TaskRecord, TaskStatus, Topic,
};
use crate::message::Message;
use crate::planning::PagePlan;
use crate::render::RenderedEmail;
use std::collections::BTreeSet;
use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What an adapter failed with, kept whole: its text is what the port's error shows (and logs
/// carry), and its chain of sources, down to the SDK's, stays walkable through
/// [`std::error::Error::source`]. A `&str` or `String` converts into one (`.into()`).
pub type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

// --- the jobs queue --------------------------------------------------------------------------

/// Where work goes to be done later.
///
/// # Contract
/// - `send` and `send_all` MUST return `Ok` only once the queue has durably stored every message
///   (accept answers `202` on it). An `Err` means some messages may have been stored and some
///   not: callers send again, and the worker tolerates duplicates.
/// - Messages MUST arrive as encoded ([`Message::encode`]), at least once, in any order.
pub trait MessageQueue: Send + Sync {
    fn send(&self, message: &Message) -> impl Future<Output = Result<(), QueueError>> + Send;

    /// Sends all `messages`; an error means some may not have been stored.
    fn send_all(&self, messages: &[Message])
    -> impl Future<Output = Result<(), QueueError>> + Send;
}

/// A message waiting in the dead-letter queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Identifies this receive of the message, to hand it back.
    pub receipt: String,
    pub body: String,
}

/// The dead-letter queue, read without taking anything out of it.
///
/// # Contract
/// - Nothing MUST leave the queue through this port: every message stays there for an
///   operator's redrive (`StartMessageMoveTask`) or until its retention ends.
/// - `receive` MUST return at most 10 messages and hide them from other readers for
///   `hidden_for`; `put_back` MUST make the given receipts visible again at once.
pub trait DeadLetterQueue: Send + Sync {
    /// Up to 10 messages, hidden from other readers for `hidden_for`.
    fn receive(
        &self,
        hidden_for: Duration,
    ) -> impl Future<Output = Result<Vec<DeadLetter>, QueueError>> + Send;
    /// Makes received messages visible again at once.
    fn put_back(&self, receipts: &[String]) -> impl Future<Output = Result<(), QueueError>> + Send;
}

/// The queue did not confirm it stored the message: unreachable, throttled, or access denied.
/// The cause names what failed (the SDK's error chain) but never a message body.
#[derive(Debug, thiserror::Error)]
#[error("the jobs queue did not accept the message: {0}")]
pub struct QueueError(#[source] pub Cause);

// --- the contact list ------------------------------------------------------------------------

/// One page of contacts and the token of the next page, if any.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContactPage {
    pub contacts: Vec<Contact>,
    pub next_token: Option<String>,
}

/// The contact list could not be read: it is missing, access was denied, or the service failed.
#[derive(Debug, thiserror::Error)]
#[error("the contact list could not be read: {0}")]
pub struct DirectoryError(#[source] pub Cause);

/// The contact list, read one page at a time.
///
/// # Contract
/// - `page(None, ..)` MUST return the first page, and following `next_token` MUST visit every
///   contact of the list once; the last page has no `next_token`.
/// - The `opted_into` hint MAY be ignored: callers select the recipients themselves.
/// - `topic_defaults` MUST name every topic of the list with its default subscription.
/// - `contact` MUST answer the list's contact of that address, with its preferences as `page`
///   gives them, or `None` when the address is not in the list; an `Err` only when it could not
///   tell (a missing list is an `Err` of `topic_defaults`, which callers ask first).
pub trait ContactDirectory: Send + Sync {
    /// Each topic's default subscription status.
    fn topic_defaults(&self) -> impl Future<Output = Result<TopicDefaults, DirectoryError>> + Send;

    /// The page at `token` (the first page when `None`). `opted_into` is a hint: when set, the
    /// directory may return only contacts opted into that topic; callers filter again anyway.
    fn page(
        &self,
        token: Option<&str>,
        opted_into: Option<&Topic>,
    ) -> impl Future<Output = Result<ContactPage, DirectoryError>> + Send;

    /// The contact of `address`, if the list has one.
    fn contact(
        &self,
        address: &EmailAddress,
    ) -> impl Future<Output = Result<Option<Contact>, DirectoryError>> + Send;
}

// --- sending email ---------------------------------------------------------------------------

/// Why one email was not sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The service refused this email for good (e.g. a rejected address): do not retry.
    #[error("rejected: {0}")]
    Permanent(String),
    /// The account's send rate is exceeded: slow down and send again.
    #[error("throttled: {0}")]
    Throttled(String),
    /// Timed out, a server error: worth another try later.
    #[error("not sent, retryable: {0}")]
    Transient(String),
    /// SES refuses every email of the account, whoever it is to: nobody is to blame, and
    /// nothing sends until the cause is fixed.
    #[error("refused account-wide: {}", .0.as_str())]
    AccountWide(PauseCode),
}

/// Sends one email. `topic` names the list topic the email is for, when there is exactly one.
///
/// # Contract
/// - `Ok` MUST mean the service accepted the email for delivery.
/// - An `Err` MUST classify the failure ([`SendError`]): `Permanent` for this address only,
///   `AccountWide` when no email of the account can go out, `Throttled` to slow down, and
///   `Transient` for anything else, which the caller retries.
/// - `send` MUST NOT retry by itself: the caller paces, retries within its deadline and records
///   who was sent what.
/// - Error texts MUST NOT carry the recipient's address (logs name recipients by a keyed hash).
/// - The send MUST carry `task_id` where the service's events show it (SES: the `task_id`
///   message tag), so a sent email traces back to its task; nothing of it goes into the email's
///   content, which is the same for every task ([`RenderedEmail`]).
pub trait Mailer: Send + Sync {
    fn send(
        &self,
        task_id: TaskId,
        to: &EmailAddress,
        email: &RenderedEmail,
        topic: Option<&Topic>,
    ) -> impl Future<Output = Result<(), SendError>> + Send;
}

// --- the task store --------------------------------------------------------------------------

/// The store could not be read or written, or refused a write whose condition no longer holds
/// (a lease that another invocation took over).
#[derive(Debug, thiserror::Error)]
#[error("the task store failed: {0}")]
pub struct StoreError(#[source] pub Cause);

/// Task status and counters.
///
/// # Contract
/// - A final status ([`TaskStatus::is_finished`]) MUST stay final, and every status change MUST
///   be one conditional write on the status it changes from.
/// - Writes MUST be idempotent where the method says so: a retry after a lost answer changes
///   nothing twice.
pub trait TaskStore: Send + Sync {
    /// Records a new task of `kind` as accepted. Task ids are fresh for every request, so
    /// creating one that exists is a retry (an earlier try's answer was lost) and succeeds.
    fn create(
        &self,
        task_id: TaskId,
        kind: TaskKind,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    fn get(
        &self,
        task_id: TaskId,
    ) -> impl Future<Output = Result<Option<TaskRecord>, StoreError>> + Send;
    /// Records a part of the task that ended in the dead-letter queue, under `failure.part`
    /// (recording the same part again changes nothing). `stops_planning_at`: the part was the
    /// planning of this page, which never got planned, so planning ends before it.
    fn record_failure(
        &self,
        task_id: TaskId,
        failure: PartFailure,
        stops_planning_at: Option<u32>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Moves the task to the final `status` unless it is there already, completed or cancelled,
    /// ending any pause. `true` for the one caller that made the move.
    fn finish(
        &self,
        task_id: TaskId,
        status: TaskStatus,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// Withdraws a task whose job accept could not confirm on the queue: one conditional write
    /// from `accepted` to `withdrawn`, after which the task is never planned (the move from
    /// `accepted` that [`PlanStore::record_page`] makes is refused on a withdrawn task), so
    /// nothing of it is delivered. `Withdrawn` also when it was withdrawn already (a retry) or
    /// has no record (nothing will plan it: the worker refuses jobs of unknown tasks);
    /// `Started` when the worker has moved it on: its job was queued after all.
    fn withdraw(
        &self,
        task_id: TaskId,
    ) -> impl Future<Output = Result<Withdrawal, StoreError>> + Send;
    /// Cancels an accepted, planning or sending task (paused or not): one conditional write to
    /// `cancelling`, ending any pause. From then on no page of it is planned (the move that
    /// [`PlanStore::record_page`] makes is refused), no chunk of it parks, and it does not
    /// pause; its chunks are accounted by [`ChunkStore::cancel_unsettled`]. `false`, changing
    /// nothing, if it is cancelling already, finished, or has no record.
    fn cancel(&self, task_id: TaskId) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// Planning of a cancelled task stops before `page`, which was never planned: the task counts
    /// as planned once its earlier pages are (as after [`TaskStore::record_failure`] with
    /// `stops_planning_at`). Idempotent.
    fn stop_planning(
        &self,
        task_id: TaskId,
        page: u32,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// The answer to [`TaskStore::withdraw`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Withdrawal {
    /// The task is withdrawn: nothing of it will be delivered.
    Withdrawn,
    /// Planning has started: the job is on the queue and the task will be delivered.
    Started,
}

/// How a request with an Idempotency-Key relates to earlier ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reservation {
    /// First use of the key: the caller goes on to create the task.
    New,
    /// The key was used before (within its lifetime) for `task_id`.
    Existing {
        task_id: TaskId,
        fingerprint: String,
        queued: bool,
        /// Until when the request that holds the key may still be running (its invocation's
        /// deadline, plus skew): a reservation still pending after that was left by a request
        /// that died, and may be recovered ([`IdempotencyStore::take_over`]). `None` on a
        /// reservation that does not say (recorded before this was): never recovered.
        running_until: Option<SystemTime>,
    },
}

impl Reservation {
    /// Whether this is a pending reservation whose request can no longer be running at `now`.
    pub fn abandoned(&self, now: SystemTime) -> bool {
        matches!(
            self,
            Self::Existing {
                queued: false,
                running_until: Some(until),
                ..
            } if *until < now
        )
    }
}

/// The Idempotency-Keys of accept's requests, each for 24 hours from its first use.
///
/// # Contract
/// - Of concurrent `reserve` calls for one new key, exactly one MUST get `New`; the others MUST
///   get `Existing` with the winner's task id and fingerprint.
/// - Every state change (`mark_queued`, `release`, `take_over`) MUST be conditional on the state
///   it changes from, so a late or repeated call cannot undo another request's.
pub trait IdempotencyStore: Send + Sync {
    /// Reserves `key` for `task_id` and the request `fingerprint`, by a request that may run
    /// until `running_until`, unless it is already taken. A key reserved for this same
    /// `task_id` is a retry (an earlier try's answer was lost): `New`.
    fn reserve(
        &self,
        key: &str,
        fingerprint: &str,
        task_id: TaskId,
        running_until: SystemTime,
    ) -> impl Future<Output = Result<Reservation, StoreError>> + Send;
    /// The reservation's job is on the queue: replays may now answer with its task id.
    fn mark_queued(&self, key: &str) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Gives the key up after the job could not be queued, so a retry can use it.
    fn release(&self, key: &str) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Moves a pending reservation of `key` from the task `from` (of a request that died; its
    /// task is withdrawn) to `task_id`, of a request that may run until `running_until`; the
    /// fingerprint stays. One conditional write: `false` when the key is no longer pending for
    /// `from` (another request took it over first, or it was released, queued or expired).
    /// A retry after a lost answer finds the key moved to `task_id`: `true`.
    fn take_over(
        &self,
        key: &str,
        from: TaskId,
        task_id: TaskId,
        running_until: SystemTime,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
}

/// Where planning of one page stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PageState {
    /// Nothing is recorded: the page is to be read and planned.
    Unplanned,
    /// The plan is stored and counted on the task; its messages may not all be queued yet.
    Planned(PagePlan),
    /// Every message of the plan is queued.
    Enqueued,
}

/// The plan of each page, so that planning is idempotent: a retried step queues the stored plan
/// again instead of re-reading a contact list that may have changed.
///
/// # Contract
/// - The first plan recorded for a page MUST win, and its counts MUST reach the task exactly
///   once, in the same atomic write.
/// - A page MUST go only from unplanned to planned to enqueued.
pub trait PlanStore: Send + Sync {
    fn page_state(
        &self,
        task_id: TaskId,
        page: u32,
    ) -> impl Future<Output = Result<PageState, StoreError>> + Send;
    /// Stores `plan` and adds its counts to the task, atomically and once. If a plan of this page
    /// is stored already, it is returned (and counted already); otherwise `plan` is returned.
    /// Recording a page also clears a planning failure of that page, and reopens planning.
    /// Refused (an error: nothing counted, the page stays unplanned) on a task that has no
    /// record, is withdrawn ([`TaskStore::withdraw`]) or cancelled ([`TaskStore::cancel`]).
    fn record_page(
        &self,
        task_id: TaskId,
        plan: PagePlan,
    ) -> impl Future<Output = Result<PagePlan, StoreError>> + Send;
    /// Every message of the page's plan is on the queue.
    fn mark_page_enqueued(
        &self,
        task_id: TaskId,
        page: u32,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// An invocation's right to send a chunk, until it lapses (the invocation's deadline, when
/// Lambda would have stopped it, plus a clock-skew allowance).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// Unique per invocation.
    pub token: String,
    pub lapses: SystemTime,
}

/// Positions (in the chunk's recipient list) of the chunk's recipients by state. A position is in
/// at most one set; one in none is still to be sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChunkProgress {
    pub sent: BTreeSet<u16>,
    pub rejected: BTreeSet<u16>,
    /// Given up on when the chunk reached the dead-letter queue: sent again after a redrive.
    pub failed: BTreeSet<u16>,
    /// Never to be sent: the task was cancelled first (counted on the task as `cancelled`).
    pub cancelled: BTreeSet<u16>,
    /// What has been counted on the task so far: (sent, failed or rejected).
    pub counted: (u64, u64),
}

impl ChunkProgress {
    /// Whether the recipient at `position` still needs the email (never settled, or failed).
    pub fn owes(&self, position: u16) -> bool {
        !self.sent.contains(&position)
            && !self.rejected.contains(&position)
            && !self.cancelled.contains(&position)
    }

    /// The positions of a chunk of `size` that nothing has settled or given up on yet.
    pub fn unsettled(&self, size: usize) -> Vec<u16> {
        (0..size as u16)
            .filter(|position| self.owes(*position) && !self.failed.contains(position))
            .collect()
    }

    /// What the task's counters should hold for this chunk: (sent, failed or rejected).
    pub fn totals(&self) -> (u64, u64) {
        (
            self.sent.len() as u64,
            (self.rejected.len() + self.failed.len()) as u64,
        )
    }

    /// Applies a settlement made under the lease.
    pub fn apply(&mut self, settled: &Settled) {
        for position in &settled.sent {
            self.failed.remove(position);
            self.sent.insert(*position);
        }
        for position in &settled.rejected {
            self.failed.remove(position);
            self.rejected.insert(*position);
        }
    }
}

/// Recipients settled since the last write, by position.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settled {
    /// SES accepted their email.
    pub sent: Vec<u16>,
    /// SES refused their address for good.
    pub rejected: Vec<u16>,
}

impl Settled {
    pub fn len(&self) -> usize {
        self.sent.len() + self.rejected.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn append(&mut self, other: Settled) {
        self.sent.extend(other.sent);
        self.rejected.extend(other.rejected);
    }
}

/// The answer to a lease request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lease {
    /// The caller holds the chunk until its lease lapses; this is what is settled so far.
    Held(ChunkProgress),
    /// Another invocation holds a live lease on the chunk.
    Busy,
    /// Every recipient was sent or rejected, and counted: nothing is left to do.
    Finished,
}

/// What a dead-lettered chunk's accounting did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accounting {
    /// Its unsettled recipients are now failed and counted (or were already).
    Accounted,
    /// An invocation holds a live lease on it: account it later.
    Held,
}

/// Exactly-once delivery, per chunk: one lease per invocation that works on a chunk, one write
/// per few settled recipients, and one transaction when the chunk is done (the only write to the
/// task's counters). SES has no idempotency token, so what is in the window between a send and
/// its settlement may be sent again if the invocation dies.
///
/// # Contract
/// - At most one holder MUST hold a live lease on a chunk at any time, also when two
///   invocations ask at the same instant; a lapsed lease MUST be free to take over.
/// - A recipient recorded sent or rejected MUST stay so, and MUST be counted on the task exactly
///   once, however often `record`, `close` or `fail_unsettled` are repeated.
/// - Writes that need the lease MUST fail, writing nothing, when the caller no longer holds it.
pub trait ChunkStore: Send + Sync {
    /// Leases the chunk (of `size` recipients) to `holder`, unless another holder's lease is
    /// live. A lease left behind by an invocation that died is taken over once it has lapsed.
    fn lease(
        &self,
        task_id: TaskId,
        chunk_id: &str,
        size: usize,
        holder: &Holder,
    ) -> impl Future<Output = Result<Lease, StoreError>> + Send;
    /// Records `settled` (idempotent: recording it twice is recording it once). Fails, and
    /// records nothing, if `holder` no longer holds the lease.
    fn record(
        &self,
        task_id: TaskId,
        chunk_id: &str,
        holder: &Holder,
        settled: &Settled,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Records `settled` and gives the lease up: recipients are left for another invocation.
    /// Idempotent: a retry after a lost answer succeeds though the lease is gone.
    fn release_lease(
        &self,
        task_id: TaskId,
        chunk_id: &str,
        holder: &Holder,
        settled: &Settled,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Every recipient is settled: records `settled`, gives the lease up, and adds to the task's
    /// counters what `progress` (the chunk with `settled` applied) has beyond what they hold for
    /// it, all at once. Idempotent: after a lost answer, calling it again succeeds and counts
    /// nothing twice. Clears the chunk's failure record when no failed recipient is left.
    fn close(
        &self,
        task_id: TaskId,
        chunk_id: &str,
        holder: &Holder,
        settled: &Settled,
        progress: &ChunkProgress,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// The chunk's message is in the dead-letter queue: every recipient not settled becomes
    /// failed, is counted, and `failure` is recorded on the task, all at once, unless a live
    /// lease is held. Idempotent.
    fn fail_unsettled(
        &self,
        task_id: TaskId,
        chunk_id: &str,
        size: usize,
        failure: PartFailure,
    ) -> impl Future<Output = Result<Accounting, StoreError>> + Send;
    /// The chunk's task is cancelled: every recipient not settled (nor failed) becomes
    /// cancelled, the chunk is done (leasing it answers [`Lease::Finished`]), and the task's
    /// counters get what the chunk settled beyond what they hold for it plus the cancelled
    /// recipients, all at once, unless a live lease is held. A chunk is cancelled once:
    /// calling it again, or on a finished chunk, changes nothing.
    fn cancel_unsettled(
        &self,
        task_id: TaskId,
        chunk_id: &str,
        size: usize,
    ) -> impl Future<Output = Result<Accounting, StoreError>> + Send;
}

/// Pausing a task (its sends SES refuses account-wide, or a caller asked), and resuming it
/// where it stopped: the chunks that arrive while it is paused are parked here (their messages
/// leave the queue, so they do not burn their receives into the dead-letter queue), and queued
/// again on resume.
///
/// # Contract
/// - A pause MUST NOT hide the task's own status from planning: planning goes on writing it.
/// - A pause MUST NOT outlive the task: moving it to a final status ([`TaskStore::finish`],
///   [`TaskStore::withdraw`]) or cancelling it ([`TaskStore::cancel`]) ends the pause, and a
///   finished or cancelled task never pauses.
/// - A parked chunk's message MUST be kept until `unpark`, and MUST be returned by `parked`
///   until then, whatever the task's status.
pub trait PauseStore: Send + Sync {
    /// Pauses an accepted, planning or sending task for `code`. `false`, changing nothing, if
    /// the task is paused already (the first reason stays), finished, or has no record.
    fn pause(
        &self,
        task_id: TaskId,
        code: PauseCode,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// Keeps the chunk's `message` (its queue message, encoded) while the task is paused. `false`
    /// if the task is not paused (any more): the caller sends the chunk instead. Parking a chunk
    /// again replaces its message.
    fn park(
        &self,
        task_id: TaskId,
        chunk_id: &str,
        message: &str,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// Moves a paused task back to sending, keeping what is parked. `false` if it was not paused.
    fn unpause(&self, task_id: TaskId) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// The parked chunks' messages, by chunk id.
    fn parked(
        &self,
        task_id: TaskId,
    ) -> impl Future<Output = Result<Vec<(String, String)>, StoreError>> + Send;
    /// Forgets a parked chunk whose message is back on the queue. Idempotent.
    fn unpark(
        &self,
        task_id: TaskId,
        chunk_id: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

// --- stored times ----------------------------------------------------------------------------

/// Seconds since the epoch (DynamoDB's TTL attributes, for one).
pub fn epoch_seconds(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

/// Milliseconds since the epoch: stores MUST keep times to at least the millisecond.
pub fn epoch_millis(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

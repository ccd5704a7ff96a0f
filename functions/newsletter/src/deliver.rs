//! Sending a delivery message's emails: concurrently, under the account's send rate, stopping
//! before the invocation's deadline, and sorting out who is still owed an email.

use crate::domain::{EmailAddress, TaskId, Topic};
use crate::message::{Delivery, Recipient};
use crate::render::{RenderedEmail, render};
use crate::tasks::{Claim, ClaimStore, MAX_SETTLEMENTS, Settlement, StoreError};
use futures::{StreamExt, stream};
use pace::AdaptiveRate;
use std::collections::HashMap;
use std::future::Future;
use std::time::{Duration, Instant, SystemTime};

mod pace;

/// Tries of one email that fails transiently (a timeout, a 5xx) before it is left owed.
const TRANSIENT_ATTEMPTS: u32 = 3;
/// Wait before the first retry of a transient failure; doubled for each further one.
const TRANSIENT_BACKOFF: Duration = Duration::from_millis(100);

/// Why one email was not sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The service refused this email for good (e.g. a rejected address): do not retry.
    #[error("rejected: {0}")]
    Permanent(String),
    /// The account's send rate is exceeded: slow down and send again.
    #[error("throttled: {0}")]
    Throttled(String),
    /// Timed out, a server error, sending paused: worth another try later.
    #[error("not sent, retryable: {0}")]
    Transient(String),
}

/// Sends one email. `topic` names the list topic the email is for, when there is exactly one.
pub trait Mailer: Send + Sync {
    fn send(
        &self,
        to: &EmailAddress,
        email: &RenderedEmail,
        topic: Option<&Topic>,
    ) -> impl Future<Output = Result<(), SendError>> + Send;
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

/// The outcome of one delivery message.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct DeliveryReport {
    pub sent: usize,
    pub rejected: usize,
    /// Recipients an earlier attempt had already settled: skipped, not sent again.
    pub already_settled: usize,
    /// Throttling answers, each followed by a slower send to the same recipient.
    pub throttled: usize,
    /// Recipients still owed the email: retryable failures, those another invocation is sending
    /// to, and those not tried before the deadline.
    pub owed: Vec<Recipient>,
}

impl DeliveryReport {
    /// Whether anything was settled, so that re-enqueueing the owed ones makes progress.
    pub fn made_progress(&self) -> bool {
        self.sent + self.rejected + self.already_settled > 0
    }
}

pub struct Sender<M> {
    mailer: M,
    rate: AdaptiveRate,
    max_in_flight: usize,
}

/// What became of one recipient, and how many throttling answers it took.
struct Outcome {
    index: usize,
    kind: OutcomeKind,
    throttled: usize,
}

enum OutcomeKind {
    Settle(Settlement),
    AlreadySettled,
    /// Owed without holding a claim (busy elsewhere, out of time, or the store failed).
    Owed,
}

/// When an invocation must stop starting sends, and when its claims lapse.
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    pub stop_sending: Instant,
    pub claims_lapse: SystemTime,
}

impl<M: Mailer> Sender<M> {
    pub fn new(mailer: M, policy: SendPolicy) -> Self {
        Self {
            mailer,
            rate: AdaptiveRate::new(policy.emails_per_second),
            max_in_flight: policy.max_in_flight,
        }
    }

    /// Emails per second this sender allows itself now (lower than its policy after throttling).
    pub fn current_rate(&self) -> f64 {
        self.rate.current()
    }

    pub fn mailer(&self) -> &M {
        &self.mailer
    }

    /// Sends to every recipient of `delivery` that can be reached before the deadline, each at
    /// most once: a recipient is claimed before its send and settled after it, in batches. If a
    /// settlement fails, the emails sent since the last one may be sent again on a retry.
    pub async fn deliver(
        &self,
        delivery: &Delivery,
        claims: &impl ClaimStore,
        deadline: Deadline,
    ) -> Result<DeliveryReport, StoreError> {
        // Many recipients share a set of topics: render each distinct email once.
        let mut emails: HashMap<&[Topic], RenderedEmail> = HashMap::new();
        for recipient in &delivery.recipients {
            emails
                .entry(recipient.topics.as_slice())
                .or_insert_with(|| {
                    render(delivery.task_id, &delivery.newsletter, &recipient.topics)
                });
        }

        // Futures are built up front (they do nothing until polled) so the stream holds named
        // types; `buffer_unordered` then runs at most `max_in_flight` of them at once.
        let sends: Vec<_> = delivery
            .recipients
            .iter()
            .enumerate()
            .map(|(index, recipient)| {
                let email = &emails[recipient.topics.as_slice()];
                self.send_one(delivery.task_id, index, recipient, email, claims, deadline)
            })
            .collect();
        let mut outcomes = stream::iter(sends).buffer_unordered(self.max_in_flight);

        let mut report = DeliveryReport::default();
        let mut owed_indexes = Vec::new();
        let mut unsettled = Vec::new();
        while let Some(Outcome {
            index,
            kind,
            throttled,
        }) = outcomes.next().await
        {
            report.throttled += throttled;
            match kind {
                OutcomeKind::Settle(settlement) => {
                    match &settlement {
                        Settlement::Sent(_) => report.sent += 1,
                        Settlement::Rejected(_) => report.rejected += 1,
                        Settlement::Released(_) => owed_indexes.push(index),
                    }
                    unsettled.push(settlement);
                    if unsettled.len() == MAX_SETTLEMENTS {
                        claims
                            .settle(delivery.task_id, &std::mem::take(&mut unsettled))
                            .await?;
                    }
                }
                OutcomeKind::AlreadySettled => report.already_settled += 1,
                OutcomeKind::Owed => owed_indexes.push(index),
            }
        }
        claims.settle(delivery.task_id, &unsettled).await?;

        owed_indexes.sort_unstable();
        report.owed = owed_indexes
            .into_iter()
            .map(|index| delivery.recipients[index].clone())
            .collect();
        Ok(report)
    }

    async fn send_one(
        &self,
        task_id: TaskId,
        index: usize,
        recipient: &Recipient,
        email: &RenderedEmail,
        claims: &impl ClaimStore,
        deadline: Deadline,
    ) -> Outcome {
        let outcome = |kind, throttled| Outcome {
            index,
            kind,
            throttled,
        };
        if Instant::now() >= deadline.stop_sending {
            return outcome(OutcomeKind::Owed, 0);
        }
        match claims
            .claim(task_id, &recipient.email, deadline.claims_lapse)
            .await
        {
            Ok(Claim::Acquired) => {}
            Ok(Claim::Sent | Claim::Rejected) => return outcome(OutcomeKind::AlreadySettled, 0),
            Ok(Claim::Busy) => return outcome(OutcomeKind::Owed, 0),
            Err(err) => {
                tracing::warn!(error = %err, "claim failed; recipient stays owed");
                return outcome(OutcomeKind::Owed, 0);
            }
        }
        let (settlement, throttled) = self.send_claimed(recipient, email, deadline).await;
        outcome(OutcomeKind::Settle(settlement), throttled)
    }

    /// Sends to a claimed recipient until SES takes or refuses the email, or until a transient
    /// failure persists or the deadline comes. Retrying here, while holding the claim, is what
    /// lets a throttled send go out within this invocation instead of waiting for a redelivery.
    async fn send_claimed(
        &self,
        recipient: &Recipient,
        email: &RenderedEmail,
        deadline: Deadline,
    ) -> (Settlement, usize) {
        let address = recipient.email.clone();
        let topic = match recipient.topics.as_slice() {
            [only] => Some(only),
            _ => None,
        };
        let (mut throttled, mut transient_failures) = (0, 0);
        loop {
            self.rate.ready().await;
            if Instant::now() >= deadline.stop_sending {
                return (Settlement::Released(address), throttled);
            }
            let reason = match self.mailer.send(&recipient.email, email, topic).await {
                Ok(()) => return (Settlement::Sent(address), throttled),
                Err(SendError::Permanent(reason)) => {
                    tracing::warn!(recipient = %recipient.email, %reason, "email rejected; not retried");
                    return (Settlement::Rejected(address), throttled);
                }
                Err(SendError::Throttled(_)) => {
                    self.rate.throttled();
                    throttled += 1;
                    continue;
                }
                Err(SendError::Transient(reason)) => reason,
            };
            transient_failures += 1;
            if transient_failures == TRANSIENT_ATTEMPTS {
                tracing::warn!(recipient = %recipient.email, %reason, "email not sent; will retry later");
                return (Settlement::Released(address), throttled);
            }
            tokio::time::sleep(TRANSIENT_BACKOFF * 2u32.pow(transient_failures - 1)).await;
        }
    }
}

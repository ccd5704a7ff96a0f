//! Sending a delivery message's emails: concurrently, under the account's send rate, stopping
//! before the invocation's deadline, and sorting out who is still owed an email.

use crate::domain::{EmailAddress, TaskId, Topic};
use crate::message::{Delivery, Recipient};
use crate::render::{RenderedEmail, render};
use crate::tasks::{Claim, ClaimStore, MAX_SETTLEMENTS, Settlement, StoreError};
use futures::{StreamExt, stream};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use std::collections::HashMap;
use std::future::Future;
use std::num::NonZeroU32;
use std::time::{Duration, Instant, SystemTime};

/// Why one email was not sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The service refused this email for good (e.g. a rejected address): do not retry.
    #[error("rejected: {0}")]
    Permanent(String),
    /// Throttled, timed out or failed after the SDK's own retries: worth another try later.
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
    limiter: DefaultDirectRateLimiter,
    max_in_flight: usize,
}

enum Outcome {
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
        let rate = policy.emails_per_second.max(0.001);
        let period = Duration::from_secs_f64(1.0 / rate);
        // Allow up to one second's worth of sends at once, as SES's own limit does.
        let burst = NonZeroU32::new(rate.floor() as u32).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::with_period(period)
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(burst);
        Self {
            mailer,
            limiter: RateLimiter::direct(quota),
            max_in_flight: policy.max_in_flight,
        }
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
        while let Some((index, outcome)) = outcomes.next().await {
            match outcome {
                Outcome::Settle(settlement) => {
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
                Outcome::AlreadySettled => report.already_settled += 1,
                Outcome::Owed => owed_indexes.push(index),
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
    ) -> (usize, Outcome) {
        if Instant::now() >= deadline.stop_sending {
            return (index, Outcome::Owed);
        }
        match claims
            .claim(task_id, &recipient.email, deadline.claims_lapse)
            .await
        {
            Ok(Claim::Acquired) => {}
            Ok(Claim::Sent | Claim::Rejected) => return (index, Outcome::AlreadySettled),
            Ok(Claim::Busy) => return (index, Outcome::Owed),
            Err(err) => {
                tracing::warn!(error = %err, "claim failed; recipient stays owed");
                return (index, Outcome::Owed);
            }
        }
        let address = recipient.email.clone();
        self.limiter.until_ready().await;
        if Instant::now() >= deadline.stop_sending {
            return (index, Outcome::Settle(Settlement::Released(address)));
        }
        let topic = match recipient.topics.as_slice() {
            [only] => Some(only),
            _ => None,
        };
        let settlement = match self.mailer.send(&recipient.email, email, topic).await {
            Ok(()) => Settlement::Sent(address),
            Err(SendError::Permanent(reason)) => {
                tracing::warn!(recipient = %recipient.email, %reason, "email rejected; not retried");
                Settlement::Rejected(address)
            }
            Err(SendError::Transient(reason)) => {
                tracing::warn!(recipient = %recipient.email, %reason, "email not sent; will retry");
                Settlement::Released(address)
            }
        };
        (index, Outcome::Settle(settlement))
    }
}

//! Sending a delivery message's emails: concurrently, under the account's send rate, stopping
//! before the invocation's deadline, and sorting out who is still owed an email.

use crate::domain::{EmailAddress, Topic};
use crate::message::{Delivery, Recipient};
use crate::render::{RenderedEmail, render};
use futures::{StreamExt, stream};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use std::collections::HashMap;
use std::future::Future;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

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
    /// Recipients still owed the email: retryable failures, and those not tried before the deadline.
    pub owed: Vec<Recipient>,
}

pub struct Sender<M> {
    mailer: M,
    limiter: DefaultDirectRateLimiter,
    max_in_flight: usize,
}

enum Outcome {
    Sent,
    Rejected,
    Owed,
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

    /// Sends to every recipient of `delivery` that can be reached before `deadline`.
    pub async fn deliver(&self, delivery: &Delivery, deadline: Instant) -> DeliveryReport {
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
                self.send_one(
                    index,
                    recipient,
                    &emails[recipient.topics.as_slice()],
                    deadline,
                )
            })
            .collect();
        let outcomes: Vec<(usize, Outcome)> = stream::iter(sends)
            .buffer_unordered(self.max_in_flight)
            .collect()
            .await;

        let mut report = DeliveryReport::default();
        let mut owed_indexes = Vec::new();
        for (index, outcome) in outcomes {
            match outcome {
                Outcome::Sent => report.sent += 1,
                Outcome::Rejected => report.rejected += 1,
                Outcome::Owed => owed_indexes.push(index),
            }
        }
        owed_indexes.sort_unstable();
        report.owed = owed_indexes
            .into_iter()
            .map(|index| delivery.recipients[index].clone())
            .collect();
        report
    }

    async fn send_one(
        &self,
        index: usize,
        recipient: &Recipient,
        email: &RenderedEmail,
        deadline: Instant,
    ) -> (usize, Outcome) {
        if Instant::now() >= deadline {
            return (index, Outcome::Owed);
        }
        self.limiter.until_ready().await;
        if Instant::now() >= deadline {
            return (index, Outcome::Owed);
        }
        let topic = match recipient.topics.as_slice() {
            [only] => Some(only),
            _ => None,
        };
        match self.mailer.send(&recipient.email, email, topic).await {
            Ok(()) => (index, Outcome::Sent),
            Err(SendError::Permanent(reason)) => {
                tracing::warn!(recipient = %recipient.email, %reason, "email rejected; not retried");
                (index, Outcome::Rejected)
            }
            Err(SendError::Transient(reason)) => {
                tracing::warn!(recipient = %recipient.email, %reason, "email not sent; will retry");
                (index, Outcome::Owed)
            }
        }
    }
}

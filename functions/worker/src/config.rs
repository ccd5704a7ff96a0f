use newsletter::config::{self, ConfigError};
use newsletter::planning::MAX_RECIPIENTS_PER_DELIVERY;
use newsletter::sending::Budget;
use std::time::Duration;

/// The worker's settings, from the environment the template sets.
#[derive(Debug, Clone)]
pub struct Config {
    pub queue_url: String,
    /// The DynamoDB table of task status, page plans and chunk leases (`TABLE_NAME`).
    pub table_name: String,
    /// The jobs queue's dead-letter queue (`DEAD_LETTER_QUEUE_URL`), swept on a schedule to
    /// account for what reached it.
    pub dead_letter_queue_url: String,
    /// The function's timeout (`FUNCTION_TIMEOUT`, seconds, default
    /// [`Config::DEFAULT_FUNCTION_TIMEOUT`]): the invocation's deadline when the runtime gives
    /// none, and the time the send rate is planned over.
    pub function_timeout: Duration,
    pub contact_list_name: String,
    pub from_address: String,
    /// Emails per second for the whole SES account (`MAX_SEND_RATE`, default
    /// [`Config::DEFAULT_MAX_SEND_RATE`]).
    pub max_send_rate: f64,
    /// The SQS event source's `ScalingConfig.MaximumConcurrency` (`MAX_CONCURRENCY`, default
    /// [`Config::DEFAULT_MAX_CONCURRENCY`]).
    pub max_concurrency: u32,
    /// Sends in flight per instance (`MAX_IN_FLIGHT`, default 16).
    pub max_in_flight: usize,
    /// SES configuration set for bounce and complaint events (`CONFIGURATION_SET_NAME`).
    pub configuration_set_name: Option<String>,
    /// The key of the hash that names recipients in logs (`RECIPIENT_HASH_KEY`, at least 16
    /// characters; the template generates it in Secrets Manager).
    pub recipient_hash_key: SecretKey,
}

/// A key that never shows in `Debug` output (the config is logged on init errors).
#[derive(Clone)]
pub struct SecretKey(pub String);

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<secret>")
    }
}

const MIN_HASH_KEY_CHARS: usize = 16;

impl Config {
    /// `FUNCTION_TIMEOUT` when unset: the template's `WorkerFunction` `Timeout`. A copy, because
    /// the worker must start without the variable; local-stack's `tests/template_copies.rs`
    /// holds it to `template.yaml`.
    pub const DEFAULT_FUNCTION_TIMEOUT: Duration = Duration::from_secs(60);
    /// `MAX_SEND_RATE` when unset: the template's `MaxSendRate` default (14, the usual starting
    /// quota of an SES account out of the sandbox). Held to `template.yaml` as above.
    pub const DEFAULT_MAX_SEND_RATE: f64 = 14.0;
    /// `MAX_CONCURRENCY` when unset: the template's `WorkerMaxConcurrency` default. Held to
    /// `template.yaml` as above.
    pub const DEFAULT_MAX_CONCURRENCY: u32 = 5;

    pub fn from_env() -> Result<Self, ConfigError> {
        let config = Self {
            queue_url: config::required("QUEUE_URL")?,
            table_name: config::required("TABLE_NAME")?,
            dead_letter_queue_url: config::required("DEAD_LETTER_QUEUE_URL")?,
            function_timeout: Duration::from_secs(config::parsed_or(
                "FUNCTION_TIMEOUT",
                Self::DEFAULT_FUNCTION_TIMEOUT.as_secs(),
            )?),
            contact_list_name: config::required("CONTACT_LIST_NAME")?,
            from_address: config::required("FROM_ADDRESS")?,
            max_send_rate: config::parsed_or("MAX_SEND_RATE", Self::DEFAULT_MAX_SEND_RATE)?,
            max_concurrency: config::parsed_or("MAX_CONCURRENCY", Self::DEFAULT_MAX_CONCURRENCY)?,
            max_in_flight: config::parsed_or("MAX_IN_FLIGHT", 16)?,
            configuration_set_name: config::optional("CONFIGURATION_SET_NAME"),
            recipient_hash_key: SecretKey(config::required("RECIPIENT_HASH_KEY")?),
        };
        if config.recipient_hash_key.0.chars().count() < MIN_HASH_KEY_CHARS {
            return Err(ConfigError::Invalid {
                name: "RECIPIENT_HASH_KEY",
                reason: format!("must be at least {MIN_HASH_KEY_CHARS} characters"),
            });
        }
        let positive = |name, ok: bool| {
            if ok {
                Ok(())
            } else {
                Err(ConfigError::Invalid {
                    name,
                    reason: "must be greater than 0".into(),
                })
            }
        };
        positive(
            "MAX_SEND_RATE",
            config.max_send_rate > 0.0 && config.max_send_rate.is_finite(),
        )?;
        positive("MAX_CONCURRENCY", config.max_concurrency > 0)?;
        positive("MAX_IN_FLIGHT", config.max_in_flight > 0)?;
        positive("FUNCTION_TIMEOUT", !config.function_timeout.is_zero())?;
        config.chunk_size()?;
        Ok(config)
    }

    /// Emails per second one instance may send: the account's rate split across the instances
    /// that may run at once.
    pub fn rate_per_instance(&self) -> f64 {
        self.max_send_rate / f64::from(self.max_concurrency.max(1))
    }

    /// Recipients per delivery message: [`MAX_RECIPIENTS_PER_DELIVERY`], or fewer when one
    /// instance cannot send that many within one invocation, so that a chunk always fits one.
    /// A configuration in which an invocation cannot send even one email is refused (at init,
    /// naming the parameters), rather than failing at send time.
    pub fn chunk_size(&self) -> Result<usize, ConfigError> {
        let (sending, _, _) = Budget::split(self.function_timeout);
        let per_invocation = self.rate_per_instance() * sending.as_secs_f64();
        if per_invocation < 1.0 {
            return Err(ConfigError::Invalid {
                name: "MAX_SEND_RATE",
                reason: format!(
                    "MAX_SEND_RATE {} / MAX_CONCURRENCY {} is {:.4} emails/s per instance, which \
                     cannot send one email in the {:.0} s an invocation of FUNCTION_TIMEOUT {} s \
                     may send for; raise MaxSendRate or lower WorkerMaxConcurrency",
                    self.max_send_rate,
                    self.max_concurrency,
                    self.rate_per_instance(),
                    sending.as_secs_f64(),
                    self.function_timeout.as_secs()
                ),
            });
        }
        Ok((per_invocation as usize).min(MAX_RECIPIENTS_PER_DELIVERY))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(max_send_rate: f64, max_concurrency: u32, timeout_seconds: u64) -> Config {
        Config {
            queue_url: "q".into(),
            table_name: "t".into(),
            dead_letter_queue_url: "d".into(),
            function_timeout: Duration::from_secs(timeout_seconds),
            contact_list_name: "c".into(),
            from_address: "f@x.io".into(),
            max_send_rate,
            max_concurrency,
            max_in_flight: 16,
            configuration_set_name: None,
            recipient_hash_key: SecretKey("a-test-key-of-16+chars".into()),
        }
    }

    #[test]
    fn chunks_fit_one_invocation_at_the_per_instance_rate() {
        // The template's defaults: 14/s over 5 instances is 2.8/s, 53 s of sending: 148 emails.
        let defaults = config(
            Config::DEFAULT_MAX_SEND_RATE,
            Config::DEFAULT_MAX_CONCURRENCY,
            Config::DEFAULT_FUNCTION_TIMEOUT.as_secs(),
        );
        assert_eq!(defaults.chunk_size().unwrap(), 50);
        // 1/s over 2 instances: 26 emails an invocation, so chunks of 26.
        assert_eq!(config(1.0, 2, 60).chunk_size().unwrap(), 26);
    }

    #[test]
    fn a_rate_split_that_cannot_send_one_email_an_invocation_is_refused_naming_the_parameters() {
        let err = config(1.0, 1000, 60).chunk_size().unwrap_err().to_string();
        for name in [
            "MAX_SEND_RATE",
            "MAX_CONCURRENCY",
            "FUNCTION_TIMEOUT",
            "WorkerMaxConcurrency",
        ] {
            assert!(err.contains(name), "{err}");
        }
    }
}

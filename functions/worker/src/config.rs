use newsletter::config::{self, ConfigError};

/// The worker's settings, from the environment the template sets.
#[derive(Debug, Clone)]
pub struct Config {
    pub queue_url: String,
    /// The DynamoDB table of task status and recipient claims (`TABLE_NAME`).
    pub table_name: String,
    /// The jobs queue's redrive `maxReceiveCount` (`MAX_RECEIVE_COUNT`, default 5): a message
    /// failing on that receive goes to the dead-letter queue, so its task is told.
    pub max_receive_count: u32,
    pub contact_list_name: String,
    pub from_address: String,
    /// Emails per second for the whole SES account (`MAX_SEND_RATE`, default 14: the usual
    /// starting quota of an SES account out of the sandbox).
    pub max_send_rate: f64,
    /// The SQS event source's `ScalingConfig.MaximumConcurrency` (`MAX_CONCURRENCY`, default 5).
    pub max_concurrency: u32,
    /// Sends in flight per instance (`MAX_IN_FLIGHT`, default 16).
    pub max_in_flight: usize,
    /// SES configuration set for bounce and complaint events (`CONFIGURATION_SET_NAME`).
    pub configuration_set_name: Option<String>,
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        let config = Self {
            queue_url: config::required("QUEUE_URL")?,
            table_name: config::required("TABLE_NAME")?,
            max_receive_count: config::parsed_or("MAX_RECEIVE_COUNT", 5)?,
            contact_list_name: config::required("CONTACT_LIST_NAME")?,
            from_address: config::required("FROM_ADDRESS")?,
            max_send_rate: config::parsed_or("MAX_SEND_RATE", 14.0)?,
            max_concurrency: config::parsed_or("MAX_CONCURRENCY", 5)?,
            max_in_flight: config::parsed_or("MAX_IN_FLIGHT", 16)?,
            configuration_set_name: config::optional("CONFIGURATION_SET_NAME"),
        };
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
        positive("MAX_RECEIVE_COUNT", config.max_receive_count > 0)?;
        Ok(config)
    }
}

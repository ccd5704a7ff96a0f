//! How `template.yaml` deploys the worker, read once per run: the bench's scenarios use these
//! values, or ratios of them, instead of copies.

use local_stack::template::{self, Template};
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Deployment {
    /// `WorkerFunction`'s `Timeout` (and its `FUNCTION_TIMEOUT`).
    pub timeout: Duration,
    /// `WorkerFunction`'s `MemorySize`.
    pub memory_size_mb: u32,
    /// The `Jobs` event's `BatchSize`.
    pub batch_size: i32,
    /// The `Jobs` event's `MaximumBatchingWindowInSeconds`.
    pub batching_window: Duration,
    /// The `Jobs` event's `ScalingConfig.MaximumConcurrency` (`WorkerMaxConcurrency`'s default).
    pub max_concurrency: u32,
    /// `MaxSendRate`'s default: the account's SES rate the worker is deployed with.
    pub max_send_rate: f64,
    /// `JobsQueue`'s `VisibilityTimeout`.
    pub visibility_timeout: Duration,
    /// The `DeadLetterSweep` schedule's `Input`.
    pub sweep_input: String,
}

impl Deployment {
    pub fn read(template: &Template) -> anyhow::Result<Self> {
        let worker = template.function(template::WORKER_FUNCTION)?;
        let jobs = worker.sqs_event(template::JOBS_EVENT)?;
        let queue = template.queue(&jobs.queue)?;
        Ok(Self {
            timeout: worker.timeout()?,
            memory_size_mb: worker.memory_size_mb()?,
            batch_size: jobs.batch_size.try_into()?,
            batching_window: jobs.batching_window,
            max_concurrency: jobs.maximum_concurrency.ok_or_else(|| {
                anyhow::anyhow!("template.yaml: the worker's Jobs event sets no MaximumConcurrency")
            })?,
            max_send_rate: template.parameter_default("MaxSendRate")?.parse()?,
            visibility_timeout: Duration::from_secs(queue.visibility_timeout()?.into()),
            sweep_input: worker.schedule_input(template::DEAD_LETTER_SWEEP_EVENT)?,
        })
    }

    /// The queue's visibility timeout over the function's timeout (the template keeps it at 6).
    pub fn visibility_ratio(&self) -> f64 {
        self.visibility_timeout.as_secs_f64() / self.timeout.as_secs_f64()
    }
}

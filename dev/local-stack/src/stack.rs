//! The whole system on one machine: local AWS (moto, DynamoDB Local) provisioned as the template
//! provisions AWS, both functions under `cargo lambda watch` with the template's environment, and
//! the SQS trigger.

use crate::event_source::{HttpInvoker, SqsEventSource, Trigger};
use crate::functions::{CargoLambdaWatch, EventSink};
use crate::template::{self, Template};
use crate::{DynamoDbLocal, Endpoints, LocalResources, MotoServer, Provisioned, Settings};
use anyhow::Context;
use std::path::PathBuf;
use std::time::Duration;

/// Which DynamoDB Local serves the stack's table.
#[derive(Debug, Clone)]
pub enum DynamoDb {
    /// One of the stack's own on `port` (0: any free port), stopped with the stack.
    Own { port: u16, log_path: PathBuf },
    /// The one this process shares ([`crate::dynamodb_local::shared_endpoint`]): the settings'
    /// table name must be unique in the process.
    Shared,
}

#[derive(Clone)]
pub struct StackOptions {
    /// Port of the local AWS server, moto (0: any free port).
    pub aws_port: u16,
    /// Where DynamoDB is served.
    pub dynamodb: DynamoDb,
    /// Port of `cargo lambda watch` (0: any free port).
    pub lambda_port: u16,
    pub settings: Settings,
    /// The template's `MaxSendRate` and `WorkerMaxConcurrency` parameters (the worker's
    /// `MAX_SEND_RATE` and `MAX_CONCURRENCY`).
    pub max_send_rate: f64,
    pub max_concurrency: u32,
    pub trigger: Trigger,
    pub reload_on_change: bool,
    pub log_path: PathBuf,
}

pub struct LocalStack {
    pub settings: Settings,
    pub provisioned: Provisioned,
    pub sqs: aws_sdk_sqs::Client,
    trigger: Trigger,
    /// What the template's dead-letter schedule invokes the worker with.
    sweep_event: serde_json::Value,
    endpoints: Endpoints,
    // Dropped in this order: the functions first, then the AWS servers they talk to.
    functions: CargoLambdaWatch,
    moto: MotoServer,
    _dynamodb: Option<DynamoDbLocal>,
}

impl LocalStack {
    pub async fn start(options: StackOptions, events: EventSink) -> anyhow::Result<Self> {
        // Read first: a template the stack cannot use stops it before anything starts.
        let template = Template::load()?;
        let (dynamodb, dynamodb_endpoint) = match &options.dynamodb {
            DynamoDb::Own { port, log_path } => {
                let server = DynamoDbLocal::start(*port, log_path)?;
                let endpoint = server.endpoint();
                (Some(server), endpoint)
            }
            DynamoDb::Shared => (None, crate::dynamodb_local::shared_endpoint()?),
        };
        let moto = MotoServer::start(resolve(options.aws_port)?)?;
        let endpoints = Endpoints {
            aws: moto.endpoint(),
            dynamodb: dynamodb_endpoint,
        };
        let aws = crate::sdk_config(&endpoints).await;
        let provisioned = crate::provision(&aws, &options.settings).await?;

        let env = functions_environment(template, &options, &provisioned, &endpoints)?;
        let sweep_event = template
            .function(template::WORKER_FUNCTION)?
            .schedule_input(template::DEAD_LETTER_SWEEP_EVENT)?;
        let sweep_event = serde_json::from_str(&sweep_event)
            .with_context(|| format!("the dead-letter sweep's Input {sweep_event}"))?;

        let mut functions = CargoLambdaWatch::start(
            resolve(options.lambda_port)?,
            &env,
            options.reload_on_change,
            &options.log_path,
            events,
        )?;
        functions.wait_until_ready(Duration::from_secs(900)).await?;
        Ok(Self {
            settings: options.settings,
            provisioned,
            sqs: aws_sdk_sqs::Client::new(&aws),
            trigger: options.trigger,
            sweep_event,
            endpoints,
            functions,
            moto,
            _dynamodb: dynamodb,
        })
    }

    /// moto's endpoint (SQS, SES and its record of sent mail).
    pub fn aws_endpoint(&self) -> String {
        self.moto.endpoint()
    }

    pub fn endpoints(&self) -> &Endpoints {
        &self.endpoints
    }

    /// Where to POST newsletters (the accept function's URL under `cargo lambda watch`).
    pub fn newsletters_url(&self) -> String {
        format!(
            "{}/lambda-url/accept/newsletters",
            self.functions.endpoint()
        )
    }

    /// Feeds the worker from the jobs queue, as Lambda's SQS trigger does, and sweeps the
    /// dead-letter queue every [`SWEEP_INTERVAL`], as the template's schedule does, until dropped.
    pub async fn run_trigger(&self) -> anyhow::Result<()> {
        let source = SqsEventSource::new(
            self.sqs.clone(),
            &self.provisioned.queue_url,
            self.trigger.clone(),
        )
        .await?;
        let worker = HttpInvoker::new(self.functions.endpoint(), "worker");
        let feed = async {
            loop {
                if let Err(err) = source.poll(&worker).await {
                    eprintln!("SQS trigger: {err:#}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        };
        let sweep = async {
            let mut every = tokio::time::interval(SWEEP_INTERVAL);
            loop {
                every.tick().await;
                if let Err(err) = worker.invoke_json(&self.sweep_event).await {
                    eprintln!("dead-letter sweep: {err:#}");
                }
            }
        };
        tokio::join!(feed, sweep);
        Ok(())
    }
}

/// How often `make dev` sweeps the dead-letter queue; the template's schedule does every 5
/// minutes, which is long to wait for at a desk.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(30);

fn resolve(port: u16) -> anyhow::Result<u16> {
    if port == 0 {
        crate::moto::free_port()
    } else {
        Ok(port)
    }
}

/// The environment of both functions under `cargo lambda watch`, which gives all of its functions
/// one: each function's variables as the template sets them ([`crate::function_environment`]),
/// with the local overrides (the SDK's endpoints, the local queues and table, the local key),
/// merged. A variable the two functions set to different values is an error: one environment
/// cannot hold both.
fn functions_environment(
    template: &Template,
    options: &StackOptions,
    provisioned: &Provisioned,
    endpoints: &Endpoints,
) -> anyhow::Result<Vec<(String, String)>> {
    let locals = LocalResources {
        queue_url: &provisioned.queue_url,
        dead_letter_queue_url: &provisioned.dead_letter_queue_url,
        table_name: &options.settings.table_name,
        from_address: &options.settings.from_address,
        contact_list_name: &options.settings.contact_list_name,
        max_send_rate: options.max_send_rate,
        max_concurrency: options.max_concurrency,
        configuration_set_name: None,
    }
    .locals();
    let mut env: Vec<(String, String)> = Vec::new();
    for function in [template::ACCEPT_FUNCTION, template::WORKER_FUNCTION] {
        for (name, value) in crate::function_environment(template, function, &locals, endpoints)? {
            match env.iter().find(|(set, _)| *set == name) {
                Some((_, set)) => anyhow::ensure!(
                    *set == value,
                    "{function} sets {name} to {value:?} and another function to {set:?}: \
                     `cargo lambda watch` gives all functions one environment"
                ),
                None => env.push((name, value)),
            }
        }
    }
    Ok(env)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_functions_get_every_variable_of_theirs_in_one_environment() {
        let template = Template::load().unwrap();
        let options = StackOptions {
            aws_port: 0,
            dynamodb: DynamoDb::Shared,
            lambda_port: 0,
            settings: Settings::from_template(template).unwrap(),
            max_send_rate: 25.0,
            max_concurrency: 3,
            trigger: Trigger::from_template(template).unwrap(),
            reload_on_change: false,
            log_path: PathBuf::new(),
        };
        let provisioned = Provisioned {
            queue_url: "http://127.0.0.1:1/queue/jobs".into(),
            dead_letter_queue_url: "http://127.0.0.1:1/queue/jobs-dlq".into(),
        };
        let endpoints = Endpoints {
            aws: "http://127.0.0.1:1".into(),
            dynamodb: "http://127.0.0.1:2".into(),
        };
        let env = functions_environment(template, &options, &provisioned, &endpoints).unwrap();
        for function in [template::ACCEPT_FUNCTION, template::WORKER_FUNCTION] {
            for name in template
                .function(function)
                .unwrap()
                .variable_names()
                .unwrap()
            {
                let set: Vec<_> = env.iter().filter(|(set, _)| *set == name).collect();
                assert_eq!(set.len(), 1, "{function}'s {name}: {set:?}");
            }
        }
        let value = |name: &str| {
            env.iter()
                .find(|(set, _)| set == name)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(value("QUEUE_URL"), Some("http://127.0.0.1:1/queue/jobs"));
        assert_eq!(value("MAX_SEND_RATE"), Some("25"));
        assert_eq!(value("MAX_CONCURRENCY"), Some("3"));
        let timeout = template
            .function(template::WORKER_FUNCTION)
            .unwrap()
            .timeout();
        assert_eq!(
            value("FUNCTION_TIMEOUT"),
            Some(timeout.unwrap().as_secs().to_string().as_str())
        );
        assert_eq!(value("AWS_LAMBDA_LOG_FORMAT"), Some("JSON"));
    }
}

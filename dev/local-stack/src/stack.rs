//! The whole system on one machine: local AWS (moto, DynamoDB Local) provisioned as the template
//! provisions AWS, both functions under `cargo lambda watch` with the template's environment, and
//! the SQS trigger.

use crate::event_source::{HttpInvoker, SqsEventSource, Trigger};
use crate::functions::{CargoLambdaWatch, EventSink};
use crate::{DynamoDbLocal, Endpoints, MotoServer, Provisioned, Settings};
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
    /// The worker's `MAX_SEND_RATE` and `MAX_CONCURRENCY`, as the template passes them.
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
    endpoints: Endpoints,
    // Dropped in this order: the functions first, then the AWS servers they talk to.
    functions: CargoLambdaWatch,
    moto: MotoServer,
    _dynamodb: Option<DynamoDbLocal>,
}

impl LocalStack {
    pub async fn start(options: StackOptions, events: EventSink) -> anyhow::Result<Self> {
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

        let mut env: Vec<(String, String)> = crate::sdk_environment(&endpoints)
            .into_iter()
            .map(|(name, value)| (name.to_owned(), value))
            .collect();
        env.extend(
            [
                ("QUEUE_URL", provisioned.queue_url.clone()),
                ("TABLE_NAME", options.settings.table_name.clone()),
                (
                    "DEAD_LETTER_QUEUE_URL",
                    provisioned.dead_letter_queue_url.clone(),
                ),
                ("FUNCTION_TIMEOUT", FUNCTION_TIMEOUT.as_secs().to_string()),
                (
                    "CONTACT_LIST_NAME",
                    options.settings.contact_list_name.clone(),
                ),
                ("FROM_ADDRESS", options.settings.from_address.clone()),
                (
                    "RECIPIENT_HASH_KEY",
                    crate::LOCAL_RECIPIENT_HASH_KEY.to_owned(),
                ),
                ("MAX_SEND_RATE", options.max_send_rate.to_string()),
                ("MAX_CONCURRENCY", options.max_concurrency.to_string()),
                ("AWS_LAMBDA_LOG_FORMAT", "JSON".to_owned()),
            ]
            .map(|(name, value)| (name.to_owned(), value)),
        );

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
                let event = serde_json::json!({"sweep": "dead-letters"});
                if let Err(err) = worker.invoke_json(&event).await {
                    eprintln!("dead-letter sweep: {err:#}");
                }
            }
        };
        tokio::join!(feed, sweep);
        Ok(())
    }
}

/// The worker's timeout, as `template.yaml` sets it (`Mappings.Constants.Dispatcher.Timeout`).
pub const FUNCTION_TIMEOUT: Duration = Duration::from_secs(60);
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

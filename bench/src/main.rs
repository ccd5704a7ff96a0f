//! `make bench`: cold start, memory, accept load, delivery throughput and size of the functions,
//! each as a ratio against a baseline measured in the same run. Prints a table and writes
//! `target/bench/report.json`. `--smoke` runs every benchmark tiny, on debug builds, for
//! `make test`.

mod artifacts;
mod cold_start;
mod delivery;
mod deployment;
mod events;
mod function;
mod host;
mod host_sections;
mod report;
mod stats;
mod tls_proxy;
mod worst_case;

use anyhow::{Context, bail};
use cold_start::{ColdStart, Plan};
use delivery::Scenario;
use deployment::Deployment;
use events::Invocations;
use function::FunctionSpec;
use local_stack::ses_endpoint::SesBehaviour;
use local_stack::template::{self, Template};
use newsletter_aws::dynamodb::DynamoStore;
use report::{Machine, Report, Row, Target};
use stats::ms;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tls_proxy::TlsProxy;

const USAGE: &str = "usage: bench [--smoke] [--profile release|debug] [--cold-build] [--only cold-start|delivery|lambda-host|memory|size]";

/// The sections, in the order they run.
const SECTIONS: [&str; 5] = ["cold-start", "delivery", "lambda-host", "memory", "size"];

#[derive(Debug)]
struct Options {
    smoke: bool,
    /// Which build of the bootstraps to measure (`target/<profile>/`).
    profile: String,
    /// Also time a cold build (minutes): once, then kept in `target/bench/cold-build.json`.
    cold_build: bool,
    /// Run one section only, while working on it.
    only: Option<String>,
}

impl Options {
    fn runs(&self, section: &str) -> bool {
        self.only.as_deref().is_none_or(|only| only == section)
    }
}

impl Options {
    fn parse(mut args: impl Iterator<Item = String>) -> anyhow::Result<Self> {
        let mut options = Self {
            smoke: false,
            profile: "release".into(),
            cold_build: false,
            only: None,
        };
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--smoke" => options.smoke = true,
                "--cold-build" => options.cold_build = true,
                "--profile" => options.profile = args.next().context(USAGE)?,
                "--only" => {
                    let section = args.next().context(USAGE)?;
                    if !SECTIONS.contains(&section.as_str()) {
                        bail!("no section {section:?}\n{USAGE}");
                    }
                    options.only = Some(section);
                }
                _ => bail!("unknown argument {arg:?}\n{USAGE}"),
            }
        }
        Ok(options)
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1).peekable();
    if args.peek().map(String::as_str) == Some(artifacts::RNG_PROBE) {
        return artifacts::rng_probe();
    }
    let options = Options::parse(args)?;
    // Everything the run starts (moto, DynamoDB Local, bootstraps, servers) is owned by `run`'s
    // future: dropping it on Ctrl-C stops them all.
    tokio::select! {
        result = run(&options) => result,
        _ = tokio::signal::ctrl_c() => bail!("interrupted"),
    }
}

struct Paths {
    target: PathBuf,
    binaries: PathBuf,
    out: PathBuf,
    logs: PathBuf,
}

async fn run(options: &Options) -> anyhow::Result<()> {
    let target = local_stack::repository_root()
        .canonicalize()?
        .join("target");
    let out = target.join("bench");
    let paths = Paths {
        binaries: target.join(&options.profile),
        logs: out.join("logs"),
        out,
        target,
    };
    let _ = std::fs::remove_dir_all(&paths.logs);
    std::fs::create_dir_all(&paths.logs)?;

    // Started here, on the thread that runs the whole bench: PR_SET_PDEATHSIG stops each server
    // when the thread that started it exits.
    let dynamodb = local_stack::DynamoDbLocal::start(0, &paths.logs.join("dynamodb-local.log"))?;
    let moto = local_stack::MotoServer::start(0)?;
    let endpoints = local_stack::Endpoints {
        aws: moto.endpoint(),
        dynamodb: dynamodb.endpoint(),
    };
    let aws = local_stack::sdk_config(&endpoints).await;
    // The queue, the functions and the trigger as the template deploys them.
    let template = Template::load()?;
    let deployment = Deployment::read(template)?;
    let settings = local_stack::Settings::from_template(template)?;
    let stack = local_stack::provision(&aws, &settings).await?;
    // DynamoDB Local is a JVM, slow to answer until it has compiled its code: warmed up first, so
    // that this is not counted as the functions' time (~3,000 requests here: ~2 ms each after).
    let warm_up_rounds = if options.smoke { 10 } else { 500 };
    let dynamodb_client = local_stack::dynamodb_client(&endpoints.dynamodb);
    local_stack::dynamodb_local::warm_up(&dynamodb_client, warm_up_rounds).await?;
    // The accept runs enqueue thousands of jobs: on a queue of their own, so that the worker's
    // throughput runs start from an empty one.
    let accept_queue_url = aws_sdk_sqs::Client::new(&aws)
        .create_queue()
        .queue_name("bench-accept-jobs")
        .send()
        .await?
        .queue_url
        .context("no queue URL")?;

    let mut rows = Vec::new();
    let mut notes = Vec::new();
    let queues = (
        accept_queue_url.as_str(),
        stack.queue_url.as_str(),
        stack.dead_letter_queue_url.as_str(),
    );
    if options.runs("cold-start") {
        let deployed = (template, &deployment, &settings);
        rows.extend(cold_starts(options, &paths, (&endpoints, &aws), queues, deployed).await?);
        rows.extend(artifacts::rng_first_use(options.smoke).await?);
        match artifacts::criterion_figures(&paths.target)? {
            Some(row) => rows.push(row),
            None => notes.push(
                "no criterion results yet: `cargo bench -p bench --bench accept_request` (make bench runs it)"
                    .into(),
            ),
        }
    }
    if options.runs("delivery") {
        rows.extend(throughput(options, &endpoints, &stack, &settings, &deployment).await?);
    }
    let worker = paths.binaries.join("worker");
    let host_stack = host::Stack {
        aws: &aws,
        endpoints: &endpoints,
        settings: &settings,
        deployment: &deployment,
        worker: &worker,
        logs: &paths.logs,
    };
    if options.runs("lambda-host") {
        let (host_rows, host_notes) =
            host_sections::lambda_host(&host_stack, options.smoke).await?;
        rows.extend(host_rows);
        notes.extend(host_notes);
    }
    if options.runs("memory") {
        let (memory_rows, memory_notes) = host_sections::memory(&host_stack, options.smoke).await?;
        rows.extend(memory_rows);
        notes.extend(memory_notes);
    }
    if options.runs("size") {
        rows.extend(artifacts::sizes(&paths.binaries, &paths.target)?);
        match artifacts::cold_build(&paths, options.cold_build).await? {
            Some(cold) => rows.extend(cold),
            None => notes.push(
                "cold build not measured yet: `make bench COLD_BUILD=1` measures it once".into(),
            ),
        }
    }
    notes.push(format!(
        "bootstraps from target/{}; function logs in {}",
        options.profile,
        paths.logs.display()
    ));

    let report = Report {
        machine: Machine::detect(&options.profile),
        taken_at: SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs(),
        rows,
        notes,
    };
    report.print();
    let file = paths.out.join(match (&options.only, options.smoke) {
        (Some(section), _) => format!("report-{section}.json"),
        (None, true) => "smoke-report.json".into(),
        (None, false) => "report.json".into(),
    });
    report.write_json(&file)?;
    println!("\nwritten to {}", file.display());
    if let Some(row) = report.rows.iter().find(|row| row.is_correctness_failure()) {
        bail!("{} is {}, not as it must be", row.figure, row.value);
    }
    Ok(())
}

/// `timeout`: each invocation's deadline (the function's template `Timeout` for the worker).
fn spec(
    name: &'static str,
    paths: &Paths,
    bin: &str,
    env: Vec<(String, String)>,
    timeout: Duration,
) -> FunctionSpec {
    FunctionSpec {
        name,
        binary: paths.binaries.join(bin),
        env,
        timeout,
        log: paths.logs.join(format!("{name}.log")),
    }
}

/// Section 1 (and the warm half of 2): each function started fresh several times, over plain
/// HTTP to the local AWS server and over HTTPS as on Lambda, against the hello-world floor.
async fn cold_starts(
    options: &Options,
    paths: &Paths,
    (endpoints, aws): (&local_stack::Endpoints, &aws_config::SdkConfig),
    (accept_queue_url, worker_queue_url, dead_letter_queue_url): (&str, &str, &str),
    (template, deployment, settings): (&Template, &Deployment, &local_stack::Settings),
) -> anyhow::Result<Vec<Row>> {
    let (accept_plan, worker_plan, recipients) = if options.smoke {
        let plan = Plan {
            cold_runs: 1,
            warm_invocations: 2,
        };
        (plan, plan, 3)
    } else {
        let worker_plan = Plan {
            cold_runs: 5,
            warm_invocations: 3,
        };
        let accept_plan = Plan {
            cold_runs: 9,
            warm_invocations: 100,
        };
        (
            accept_plan,
            worker_plan,
            newsletter::planning::MAX_RECIPIENTS_PER_DELIVERY,
        )
    };
    let proxy = TlsProxy::start(endpoints, &paths.out.join("ca-bundle.pem")).await?;
    // Each function's environment as the template sets it, with the local queues and table;
    // for HTTPS, the endpoints behind the proxy and the CA bundle that trusts it.
    let env = |tls: Option<&TlsProxy>, function: &str, queue_url: &str| {
        let locals = local_stack::LocalResources {
            queue_url,
            dead_letter_queue_url,
            table_name: &settings.table_name,
            from_address: &settings.from_address,
            contact_list_name: &settings.contact_list_name,
            // One worker instance at a rate that does not hold the sends back: the figure is the
            // worker's own cost.
            max_send_rate: 1000.0,
            max_concurrency: 1,
            configuration_set_name: None,
        }
        .locals();
        let endpoints = tls.map_or(endpoints, TlsProxy::endpoints);
        let mut env = local_stack::function_environment(template, function, &locals, endpoints)?;
        if let Some(proxy) = tls {
            env.push((
                "AWS_CA_BUNDLE".into(),
                proxy.ca_bundle().display().to_string(),
            ));
        }
        anyhow::Ok(env)
    };
    let accept_env = |tls| env(tls, template::ACCEPT_FUNCTION, accept_queue_url);
    let worker_env = |tls| env(tls, template::WORKER_FUNCTION, worker_queue_url);
    let accept_event = Invocations::Same(events::accept_request()?);
    // The worker refuses a delivery for a task without a record: each invocation gets one for a
    // task accepted and planned just before it, on the tasks table the worker uses.
    let store = DynamoStore::new(
        local_stack::dynamodb_client(&endpoints.dynamodb),
        &settings.table_name,
    );
    let worker_event = Invocations::FreshDelivery {
        store: &store,
        recipients,
    };
    let hello_event = Invocations::Same(bytes::Bytes::from_static(b"{\"hello\":\"world\"}"));

    let floor = cold_start::measure(
        &spec("hello", paths, "hello", vec![], function::STEP_TIMEOUT),
        async || hello_event.next().await,
        events::check_any,
        accept_plan,
        async || Ok(()),
    )
    .await?;
    // moto's SendMessage slows down as its queue fills (27 ms with ~1,500 messages queued against
    // 3.5 ms near empty, traced), which SQS does not: each run starts from an empty queue.
    let sqs = aws_sdk_sqs::Client::new(aws);
    let accept_http = measure_from_empty_queue(
        &sqs,
        &spec(
            "accept-http",
            paths,
            "accept",
            accept_env(None)?,
            function::STEP_TIMEOUT,
        ),
        &accept_event,
        events::check_accepted,
        accept_plan,
        accept_queue_url,
    )
    .await?;
    let accept_https = measure_from_empty_queue(
        &sqs,
        &spec(
            "accept-https",
            paths,
            "accept",
            accept_env(Some(&proxy))?,
            function::STEP_TIMEOUT,
        ),
        &accept_event,
        events::check_accepted,
        accept_plan,
        accept_queue_url,
    )
    .await?;
    let worker_http = measure_from_empty_queue(
        &sqs,
        &spec(
            "worker-http",
            paths,
            "worker",
            worker_env(None)?,
            deployment.timeout,
        ),
        &worker_event,
        events::check_delivered,
        worker_plan,
        worker_queue_url,
    )
    .await?;
    let worker_https = measure_from_empty_queue(
        &sqs,
        &spec(
            "worker-https",
            paths,
            "worker",
            worker_env(Some(&proxy))?,
            deployment.timeout,
        ),
        &worker_event,
        events::check_delivered,
        worker_plan,
        worker_queue_url,
    )
    .await?;

    let mut rows = accept_rows("accept (HTTP)", &accept_http, &floor);
    rows.extend(accept_rows("accept (HTTPS)", &accept_https, &floor));
    let sends = format!("{recipients} emails");
    for (name, worker) in [
        ("worker (HTTP)", &worker_http),
        ("worker (HTTPS)", &worker_https),
    ] {
        rows.extend([
            Row::new(format!("{name} init"), "ms", ms(worker.init))
                .against("floor init", ms(floor.init)),
            Row::new(
                format!("{name} first invocation, {sends}"),
                "ms",
                ms(worker.first),
            )
            .against("its warm median", ms(worker.warm_median)),
            Row::new(
                format!("{name} peak RSS while sending"),
                "MiB",
                worker.peak_rss_mib,
            )
            .against("floor", floor.peak_rss_mib)
            .target(Target::AtMost(16.0)),
        ]);
    }
    Ok(rows)
}

/// [`cold_start::measure`], each fresh process starting from an empty `queue_url`.
async fn measure_from_empty_queue(
    sqs: &aws_sdk_sqs::Client,
    spec: &FunctionSpec,
    event: &Invocations<'_>,
    check: cold_start::Check,
    plan: Plan,
    queue_url: &str,
) -> anyhow::Result<ColdStart> {
    let empty_queue = async || {
        local_stack::drain_queue(sqs, queue_url).await?;
        anyhow::Ok(())
    };
    cold_start::measure(spec, async || event.next().await, check, plan, empty_queue).await
}

fn accept_rows(name: &str, accept: &ColdStart, floor: &ColdStart) -> Vec<Row> {
    vec![
        Row::new(format!("{name} init"), "ms", ms(accept.init))
            .against("floor init", ms(floor.init))
            .target(Target::RatioAtMost(2.0)),
        Row::new(format!("{name} first request"), "ms", ms(accept.first))
            .against("its warm median", ms(accept.warm_median)),
        Row::new(
            format!("{name} cold caller: init + first"),
            "ms",
            ms(accept.cold_caller),
        )
        .against("floor", ms(floor.cold_caller))
        .target(Target::AtMost(15.0)),
        Row::new(
            format!("{name} warm request, median"),
            "ms",
            ms(accept.warm_median),
        )
        .against("floor", ms(floor.warm_median)),
        Row::new(
            format!("{name} warm requests/s, one instance"),
            "req/s",
            accept.warm_per_second,
        )
        .against("floor", floor.warm_per_second),
        Row::new(format!("{name} peak RSS"), "MiB", accept.peak_rss_mib)
            .against("floor", floor.peak_rss_mib)
            .target(Target::AtMost(10.0)),
    ]
}

/// Section 3: the worker delivering through the bench's SES endpoint, within its rate and above
/// the endpoint's limit (throttled).
async fn throughput(
    options: &Options,
    endpoints: &local_stack::Endpoints,
    queues: &local_stack::Provisioned,
    settings: &local_stack::Settings,
    deployment: &Deployment,
) -> anyhow::Result<Vec<Row>> {
    let ses = |latency_ms, max_send_rate| SesBehaviour {
        latency: Duration::from_millis(latency_ms),
        max_send_rate,
    };
    let scenario = |recipients, configured_rate, ses| Scenario {
        recipients,
        configured_rate,
        instances: 2,
        max_in_flight: 16,
        ses,
    };
    let scenarios = if options.smoke {
        vec![
            ("within rate", scenario(100, 1000.0, ses(5, 2000.0))),
            ("throttled", scenario(100, 400.0, ses(5, 100.0))),
        ]
    } else {
        vec![
            ("within rate", scenario(1_000, 500.0, ses(20, 600.0))),
            ("within rate", scenario(10_000, 500.0, ses(20, 600.0))),
            ("throttled", scenario(2_000, 800.0, ses(20, 400.0))),
        ]
    };
    let mut rows = Vec::new();
    for (kind, scenario) in scenarios {
        let fronts = delivery::Fronts::start(scenario.ses, endpoints).await?;
        let result = delivery::run(&fronts.stack(queues, settings, deployment), &scenario).await?;
        let name = format!(
            "delivery N={}, {kind} (rate {}/s, SES limit {}/s, {} ms)",
            scenario.recipients,
            scenario.configured_rate,
            scenario.ses.max_send_rate,
            scenario.ses.latency.as_millis()
        );
        rows.extend([
            Row::new(format!("{name}: emails/s"), "1/s", result.emails_per_second)
                .against("min(rate, in flight/latency)", scenario.bound())
                .target(Target::RatioAtLeast(0.9)),
            Row::new(format!("{name}: duplicates"), "", result.duplicates as f64)
                .target(Target::Exactly(0.0)),
            Row::new(format!("{name}: losses"), "", result.losses as f64)
                .target(Target::Exactly(0.0)),
            Row::new(
                format!("{name}: throttled answers"),
                "",
                result.throttled as f64,
            ),
            Row::new(
                format!("{name}: DynamoDB write units per email"),
                "WRU",
                result.write_units_per_email,
            )
            .target(Target::AtMost(0.5)),
            Row::new(
                format!("{name}: DynamoDB read units per email"),
                "RRU",
                result.read_units_per_email,
            ),
            // On-demand prices (us-east-1): $0.625 per million write units, $0.125 per million
            // read units; SES: $0.10 per 1,000 emails, $100 per million.
            Row::new(
                format!("{name}: DynamoDB $ per 1,000,000 emails"),
                "$",
                result.write_units_per_email * 0.625 + result.read_units_per_email * 0.125,
            )
            .against("SES $100", 100.0),
        ]);
    }
    rows.extend(after_cancel(options, endpoints, queues, settings, deployment).await?);
    Ok(rows)
}

/// Section 3, continued: a cancel in the middle of a send at the template's defaults
/// (`MaxSendRate` over `WorkerMaxConcurrency` instances): how many emails still go out, against
/// the bound the README derives (each instance: its sends under way, plus what its rate starts
/// before its next control check, rate x (interval + the limiter's 1 s burst)).
async fn after_cancel(
    options: &Options,
    endpoints: &local_stack::Endpoints,
    queues: &local_stack::Provisioned,
    settings: &local_stack::Settings,
    deployment: &Deployment,
) -> anyhow::Result<Vec<Row>> {
    let (recipients, cancel_at) = if options.smoke {
        (100, 10)
    } else {
        (1_000, 100)
    };
    let scenario = Scenario {
        recipients,
        configured_rate: deployment.max_send_rate,
        instances: deployment.max_concurrency,
        max_in_flight: 16,
        // SES answers in 20 ms, well within its limit: only the worker's own rate holds it back.
        ses: SesBehaviour {
            latency: Duration::from_millis(20),
            max_send_rate: 100.0,
        },
    };
    let fronts = delivery::Fronts::start(scenario.ses, endpoints).await?;
    let stack = fronts.stack(queues, settings, deployment);
    let result = delivery::cancel_during_send(&stack, &scenario, cancel_at).await?;
    let per_instance = scenario.configured_rate / f64::from(scenario.instances);
    let window = newsletter::sending::CONTROL_CHECK_INTERVAL.as_secs_f64() + 1.0;
    let in_flight = (per_instance * scenario.ses.latency.as_secs_f64()).ceil();
    let bound = f64::from(scenario.instances) * (per_instance * window + in_flight);
    let name = format!(
        "cancel at the defaults (rate {}/s over {} instances, N={recipients}, after {} sent)",
        scenario.configured_rate, scenario.instances, result.emails_before
    );
    Ok(vec![
        Row::new(
            format!("{name}: emails sent after the cancel"),
            "",
            result.emails_after as f64,
        )
        .against("bound: instances x (rate x 3 s + in flight)", bound)
        .target(Target::RatioAtMost(1.0)),
        Row::new(
            format!("{name}: cancel to every chunk counted, task `cancelled`"),
            "ms",
            ms(result.time_to_cancelled),
        ),
        Row::new(
            format!("{name}: task's sent minus SES's count"),
            "",
            result.sent_miscount as f64,
        )
        .target(Target::Exactly(0.0)),
        Row::new(
            format!("{name}: planned recipients not accounted"),
            "",
            result.unaccounted as f64,
        )
        .target(Target::Exactly(0.0)),
    ])
}

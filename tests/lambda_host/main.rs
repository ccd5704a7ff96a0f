//! The worker's own `bootstrap`, run as Lambda runs an SQS-triggered function (the Lambda host
//! of `local-stack`): two instances fed from the jobs queue, sending through an SES endpoint
//! that counts every recipient.
//!
//! The bootstrap is built with cargo (debug; `LAMBDA_HOST_PROFILE=release` for the release
//! build), or taken from `WORKER_BOOTSTRAP`.

use local_stack::event_source::Trigger;
use local_stack::lambda_host::{self, FunctionConfig, HostOptions, SqsHost};
use local_stack::ses_endpoint::{SesBehaviour, SesEndpoint};
use local_stack::subscribers::{Audience, Status, Subscriber, TopicSpec};
use local_stack::{Endpoints, MotoServer, Provisioned, Settings};
use newsletter::dynamo::DynamoStore;
use newsletter::queue::SqsQueue;
use newsletter::tasks::{TaskStatus, TaskStore};
use std::path::PathBuf;
use std::time::{Duration, Instant};

const CONTACTS: usize = 300;
const FUNCTION_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_SEND_RATE: f64 = 1000.0;
const MAX_CONCURRENCY: usize = 2;

fn worker_bootstrap() -> PathBuf {
    if let Some(path) = std::env::var_os("WORKER_BOOTSTRAP") {
        return path.into();
    }
    let profile = std::env::var("LAMBDA_HOST_PROFILE").unwrap_or_else(|_| "debug".into());
    // Features resolved as for `make bench-smoke` (debug) and `make bench` (release), so that
    // their builds and this one share artifacts.
    lambda_host::build_bootstrap("worker", &["accept", "worker", "bench"], &profile)
        .expect("the worker bootstrap builds")
}

fn audience() -> Audience {
    Audience {
        topics: vec![TopicSpec {
            name: "rust".into(),
            default: Status::OptIn,
        }],
        subscribers: (0..CONTACTS)
            .map(|n| Subscriber {
                email: format!("reader{n:04}@example.com"),
                topics: Default::default(),
                unsubscribe_all: false,
            })
            .collect(),
    }
}

/// The worker's environment, as the template sets it, pointed at the local endpoints.
fn worker_environment(
    endpoints: &Endpoints,
    settings: &Settings,
    provisioned: &Provisioned,
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = local_stack::sdk_environment(endpoints)
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value))
        .collect();
    env.extend(
        [
            ("QUEUE_URL", provisioned.queue_url.clone()),
            (
                "DEAD_LETTER_QUEUE_URL",
                provisioned.dead_letter_queue_url.clone(),
            ),
            ("TABLE_NAME", settings.table_name.clone()),
            ("CONTACT_LIST_NAME", settings.contact_list_name.clone()),
            ("FROM_ADDRESS", settings.from_address.clone()),
            ("MAX_SEND_RATE", MAX_SEND_RATE.to_string()),
            ("MAX_CONCURRENCY", MAX_CONCURRENCY.to_string()),
            ("MAX_IN_FLIGHT", "16".into()),
            ("FUNCTION_TIMEOUT", FUNCTION_TIMEOUT.as_secs().to_string()),
        ]
        .map(|(name, value)| (name.to_owned(), value)),
    );
    env
}

#[tokio::test]
async fn the_worker_bootstrap_under_the_lambda_host_sends_every_contact_exactly_one_email() {
    let bootstrap = worker_bootstrap();
    let dynamodb = local_stack::dynamodb_local::shared_endpoint().expect("DynamoDB Local starts");
    let moto = MotoServer::start(0).expect("local AWS starts");
    let aws = local_stack::sdk_config(&Endpoints {
        aws: moto.endpoint(),
        dynamodb: dynamodb.clone(),
    })
    .await;
    let settings = Settings {
        table_name: local_stack::dynamodb_local::unique_table_name("lambda-host-tasks"),
        audience: audience(),
        // The template's rule: 6x the function timeout.
        visibility_timeout: 6 * FUNCTION_TIMEOUT.as_secs() as u32,
        ..Settings::default()
    };
    let provisioned = local_stack::provision(&aws, &settings)
        .await
        .expect("local AWS is provisioned");
    let ses = SesEndpoint::start(
        SesBehaviour {
            latency: Duration::from_millis(5),
            max_send_rate: 10_000.0,
        },
        &moto.endpoint(),
    )
    .await
    .expect("the SES endpoint starts");

    let sqs = aws_sdk_sqs::Client::new(&aws);
    let store = DynamoStore::new(aws_sdk_dynamodb::Client::new(&aws), &settings.table_name);
    local_stack::dynamodb_local::warm_up(&aws_sdk_dynamodb::Client::new(&aws), 20)
        .await
        .expect("DynamoDB Local warms up");
    let newsletter = std::fs::read(local_stack::repository_root().join("events/newsletter.json"))
        .expect("the sample newsletter");
    let queue = SqsQueue::new(sqs.clone(), &provisioned.queue_url);
    let task_id = newsletter::submit::submit(&queue, &store, &newsletter, None)
        .await
        .expect("the newsletter is accepted");

    let log = local_stack::repository_root().join("target/lambda-host/worker-smoke.log");
    let _ = std::fs::remove_file(&log);
    // SQS and SES through the counting SES endpoint (in front of moto), DynamoDB at DynamoDB Local.
    let endpoints = Endpoints {
        aws: ses.endpoint(),
        dynamodb,
    };
    let mut function = FunctionConfig::new("worker", &bootstrap, &log)
        .timeout(FUNCTION_TIMEOUT)
        .env(worker_environment(&endpoints, &settings, &provisioned));
    function.memory_size_mb = 256;
    let options = HostOptions {
        max_concurrency: MAX_CONCURRENCY,
        trigger: Trigger {
            batch_size: 2,
            batching_window: Duration::ZERO,
            wait_time_seconds: 1,
        },
        kill_plan: None,
    };
    let started = Instant::now();
    let host = SqsHost::start(sqs, &provisioned.queue_url, function, options)
        .await
        .expect("the host starts");
    let drained = host.wait_until_drained(Duration::from_secs(25)).await;
    let stats = host.stop().await;
    let stats = match drained {
        Ok(_) => stats,
        Err(err) => panic!("{err:#}; see {}", log.display()),
    };

    let received = ses.received();
    let expected: Vec<String> = settings
        .audience
        .subscribers
        .iter()
        .map(|subscriber| subscriber.email.clone())
        .collect();
    assert_eq!(received.duplicates(), vec![], "nobody gets two emails");
    assert_eq!(
        received.missing(expected.iter().map(String::as_str)),
        Vec::<&str>::new(),
        "everybody gets one"
    );
    assert_eq!(received.total(), CONTACTS);

    let summary = stats.summary();
    assert!(stats.past_deadline().is_empty(), "{summary}");
    assert_eq!(
        (
            stats.timeouts,
            stats.errors,
            stats.crashes,
            stats.init_failures
        ),
        (0, 0, 0, 0),
        "{summary}"
    );
    assert!(stats.records.iter().all(|record| record.answered_in_time()));
    assert_eq!(stats.messages_received, stats.messages_deleted, "{summary}");
    assert!(stats.max_concurrent <= MAX_CONCURRENCY, "{summary}");
    assert!(stats.cold_starts <= MAX_CONCURRENCY as u64, "{summary}");

    let task = store
        .get(task_id)
        .await
        .expect("the task store answers")
        .expect("the task exists");
    assert_eq!(task.status, TaskStatus::Completed, "{task:?}");
    assert_eq!(task.recipients.sent, CONTACTS as u64, "{task:?}");

    let first = received.accepted.first().map(|email| email.at).unwrap();
    let last = received.accepted.last().map(|email| email.at).unwrap();
    let sending = (last - first).as_secs_f64().max(0.001);
    let rate = CONTACTS as f64 / sending;
    let peak_rss_mib = stats.peak_rss_kib().unwrap_or(0) as f64 / 1024.0;
    println!(
        "{CONTACTS} emails in {:.2} s of sending ({rate:.0}/s), {:.2} s from host start to \
         drained; {summary}; peak RSS {peak_rss_mib:.1} MiB",
        sending,
        started.elapsed().as_secs_f64(),
    );
    for record in &stats.records {
        println!(
            "  slot {} instance {} {:?}: {} message(s), {:.0} ms of {:.0} ms{}",
            record.slot,
            record.instance,
            record.outcome,
            record.message_ids.len(),
            record.duration().as_secs_f64() * 1000.0,
            record.timeout().as_secs_f64() * 1000.0,
            if record.cold { ", cold" } else { "" },
        );
    }
    // A floor far below what this machine gives, for a loaded CI machine; still well above one
    // email at a time.
    assert!(rate >= 100.0, "{rate:.0} emails/s");
}

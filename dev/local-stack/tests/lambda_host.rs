//! The Lambda host against a function that misbehaves on request (`probe-function`): Lambda's
//! headers and environment, deadlines and kills, crashes, init failures, and the SQS event
//! source's deletes, retries and dead-lettering through a real (moto) queue.

use aws_sdk_sqs::types::QueueAttributeName;
use local_stack::MotoServer;
use local_stack::event_source::Trigger;
use local_stack::lambda_host::{
    Ending, FunctionConfig, HostOptions, InitFailure, Instance, KillPlan, Outcome, SqsHost,
};
use serde_json::Value;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const PROBE: &str = env!("CARGO_BIN_EXE_probe-function");

fn log_path(test: &str) -> PathBuf {
    std::env::temp_dir()
        .join(format!("lambda-host-{}", std::process::id()))
        .join(format!("{test}.log"))
}

fn probe(test: &str) -> FunctionConfig {
    FunctionConfig::new("probe", PROBE, log_path(test))
}

/// Whether a process is running (a zombie, killed but not yet reaped, is not).
fn is_running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let after_name = stat.rsplit_once(')')?.1.trim_start().to_owned();
            after_name.chars().next()
        })
        .is_some_and(|state| state != 'Z' && state != 'X')
}

fn never() -> std::future::Pending<()> {
    std::future::pending()
}

fn epoch_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[tokio::test]
async fn an_instance_gets_lambdas_headers_and_environment_and_stays_warm() {
    let config = probe("headers")
        .timeout(Duration::from_secs(2))
        .env([("PROBE_MARK", "set by the caller")]);
    let mut instance = Instance::spawn(&config, 1).await.unwrap();
    let pid = instance.pid().unwrap();
    let init = instance.ready().await.unwrap();
    assert!(init > Duration::ZERO && init < config.init_timeout);

    let before = epoch_ms();
    let invoked = instance
        .invoke(r#"{"echo": true}"#.into(), never())
        .await
        .unwrap();
    let Ending::Response(body) = &invoked.ending else {
        panic!("expected a response, got {:?}", invoked.ending);
    };
    let echo: Value = serde_json::from_slice(body).unwrap();
    assert_eq!(echo["request_id"], invoked.request_id.as_str());
    let deadline_ms = echo["deadline_ms"].as_u64().unwrap();
    assert_eq!(deadline_ms, invoked.deadline_ms);
    assert!(
        (before + 2000 - 5..=epoch_ms() + 2000).contains(&deadline_ms),
        "deadline {deadline_ms} is not 2 s after {before}"
    );
    assert_eq!(
        echo["function_arn"],
        "arn:aws:lambda:us-east-1:123456789012:function:probe"
    );
    assert!(echo["trace_id"].as_str().unwrap().starts_with("Root=1-"));
    let env = &echo["env"];
    assert!(
        env["AWS_LAMBDA_RUNTIME_API"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    assert_eq!(env["AWS_LAMBDA_FUNCTION_NAME"], "probe");
    assert_eq!(env["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"], "128");
    assert_eq!(env["AWS_LAMBDA_FUNCTION_VERSION"], "$LATEST");
    assert_eq!(env["AWS_LAMBDA_LOG_FORMAT"], "JSON");
    assert_eq!(env["AWS_LAMBDA_LOG_GROUP_NAME"], "/aws/lambda/probe");
    assert_eq!(env["PROBE_MARK"], "set by the caller");
    assert!(invoked.answered_in_time());

    // Warm: the same process takes the next event, with a fresh request id and deadline.
    let again = instance
        .invoke(r#"{"echo": true}"#.into(), never())
        .await
        .unwrap();
    assert!(matches!(again.ending, Ending::Response(_)));
    assert_ne!(again.request_id, invoked.request_id);
    assert_eq!(instance.pid(), Some(pid));
    assert_eq!(instance.invocations(), 2);
    assert!(instance.peak_rss_kib().is_some_and(|kib| kib > 0));

    drop(instance);
    assert!(!is_running(pid), "dropping the instance stops its process");
    let log = std::fs::read_to_string(&config.log).unwrap();
    assert!(log.contains("probe invoked"), "{log}");
    assert!(log.contains(r#""type":"host.start""#), "{log}");
}

#[tokio::test]
async fn an_instance_is_killed_at_its_deadline_or_when_told_and_reports_errors_and_crashes() {
    let timeout = Duration::from_millis(300);
    let config = probe("deadline").timeout(timeout);

    let mut instance = Instance::spawn(&config, 1).await.unwrap();
    instance.ready().await.unwrap();
    let pid = instance.pid().unwrap();
    let invoked = instance
        .invoke(r#"{"sleep_ms": 5000}"#.into(), never())
        .await
        .unwrap();
    assert!(matches!(invoked.ending, Ending::TimedOut), "{invoked:?}");
    assert!(invoked.duration() >= timeout, "{:?}", invoked.duration());
    assert!(invoked.duration() < timeout + Duration::from_millis(200));
    assert!(!invoked.answered_in_time());
    assert!(!instance.is_alive());
    assert!(!is_running(pid), "a timed-out instance is killed");
    assert!(instance.peak_rss_kib().is_some(), "read before the kill");

    let mut instance = Instance::spawn(&config, 2).await.unwrap();
    instance.ready().await.unwrap();
    let invoked = instance
        .invoke(r#"{"error": "boom"}"#.into(), never())
        .await
        .unwrap();
    let Ending::Error(error) = &invoked.ending else {
        panic!("expected an error answer, got {:?}", invoked.ending);
    };
    assert_eq!(error.error_type.as_deref(), Some("Probe.Error"));
    assert_eq!(error.message(), "boom");
    assert!(instance.is_alive(), "an error answer keeps the instance");

    let started = Instant::now();
    let invoked = instance
        .invoke(
            r#"{"sleep_ms": 5000}"#.into(),
            tokio::time::sleep(Duration::from_millis(100)),
        )
        .await
        .unwrap();
    assert!(matches!(invoked.ending, Ending::Killed), "{invoked:?}");
    assert!(
        started.elapsed() < timeout,
        "killed when told, before the deadline"
    );
    assert!(!instance.is_alive());

    let mut instance = Instance::spawn(&config, 3).await.unwrap();
    instance.ready().await.unwrap();
    let invoked = instance
        .invoke(r#"{"crash": 3}"#.into(), never())
        .await
        .unwrap();
    let Ending::Exited(status) = invoked.ending else {
        panic!("expected an exit, got {:?}", invoked.ending);
    };
    assert_eq!(status.code(), Some(3));
    assert!(!instance.is_alive());
}

#[tokio::test]
async fn init_errors_exits_and_timeouts_stop_the_instance() {
    let config = probe("init").env([("PROBE_INIT_ERROR", "no config")]);
    let mut instance = Instance::spawn(&config, 1).await.unwrap();
    match instance.ready().await {
        Err(InitFailure::Error(error)) => {
            assert_eq!(error.error_type.as_deref(), Some("Probe.InitError"));
            assert_eq!(error.message(), "no config");
        }
        other => panic!("expected an init error, got {other:?}"),
    }
    assert!(!instance.is_alive());

    let mut config = probe("init").env([("PROBE_INIT_MS", "5000")]);
    config.init_timeout = Duration::from_millis(300);
    let mut instance = Instance::spawn(&config, 2).await.unwrap();
    let pid = instance.pid().unwrap();
    assert!(matches!(
        instance.ready().await,
        Err(InitFailure::TimedOut(_))
    ));
    assert!(!is_running(pid));

    let config = FunctionConfig::new("missing", "/bin/false", log_path("init"));
    let mut instance = Instance::spawn(&config, 3).await.unwrap();
    assert!(matches!(
        instance.ready().await,
        Err(InitFailure::Exited(_))
    ));
}

/// A queue with a dead-letter queue, as the template makes them.
struct Queues {
    sqs: aws_sdk_sqs::Client,
    url: String,
    dead_letter_url: String,
}

async fn queues(moto: &MotoServer, visibility_timeout: u32, max_receive_count: u32) -> Queues {
    // Only SQS here: no DynamoDB Local needed.
    let aws = local_stack::sdk_config(&local_stack::Endpoints {
        aws: moto.endpoint(),
        dynamodb: moto.endpoint(),
    })
    .await;
    let sqs = aws_sdk_sqs::Client::new(&aws);
    let dead_letter_url = sqs
        .create_queue()
        .queue_name("probe-dlq")
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    let dead_letter_arn = sqs
        .get_queue_attributes()
        .queue_url(&dead_letter_url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes
        .unwrap()
        .remove(&QueueAttributeName::QueueArn)
        .unwrap();
    let redrive = serde_json::json!({
        "deadLetterTargetArn": dead_letter_arn,
        "maxReceiveCount": max_receive_count,
    });
    let url = sqs
        .create_queue()
        .queue_name("probe")
        .attributes(
            QueueAttributeName::VisibilityTimeout,
            visibility_timeout.to_string(),
        )
        .attributes(QueueAttributeName::RedrivePolicy, redrive.to_string())
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    Queues {
        sqs,
        url,
        dead_letter_url,
    }
}

impl Queues {
    async fn send(&self, bodies: &[&str]) {
        for body in bodies {
            self.sqs
                .send_message()
                .queue_url(&self.url)
                .message_body(*body)
                .send()
                .await
                .unwrap();
        }
    }

    async fn dead_lettered(&self) -> Vec<String> {
        let mut bodies = local_stack::drain_queue(&self.sqs, &self.dead_letter_url)
            .await
            .unwrap();
        bodies.sort();
        bodies
    }
}

fn one_at_a_time(max_concurrency: usize) -> HostOptions {
    HostOptions {
        max_concurrency,
        trigger: Trigger {
            batch_size: 1,
            batching_window: Duration::ZERO,
            wait_time_seconds: 1,
        },
        kill_plan: None,
    }
}

#[tokio::test]
async fn the_host_deletes_what_succeeded_and_failures_end_in_the_dead_letter_queue() {
    let moto = MotoServer::start(0).unwrap();
    let timeout = Duration::from_millis(300);
    // Visibility above 6x the timeout, as the template sets it; dead-lettered after 2 receives.
    let queues = queues(&moto, 2, 2).await;
    let good = r#"{"sleep_ms": 20}"#;
    let bad = [
        r#"{"fail": true}"#,
        r#"{"sleep_ms": 5000}"#,
        r#"{"crash": 1}"#,
        r#"{"error": "boom"}"#,
    ];
    queues.send(&[good; 5]).await;
    queues
        .sqs
        .send_message()
        .queue_url(&queues.url)
        .message_body(good)
        .message_attributes(
            "kind",
            aws_sdk_sqs::types::MessageAttributeValue::builder()
                .data_type("String")
                .string_value("marked")
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    queues.send(&bad).await;

    let host = SqsHost::start(
        queues.sqs.clone(),
        &queues.url,
        probe("sqs").timeout(timeout),
        one_at_a_time(2),
    )
    .await
    .unwrap();
    let stats = host
        .wait_until_drained(Duration::from_secs(30))
        .await
        .unwrap();
    let stats_after_stop = host.stop().await;
    assert_eq!(stats_after_stop.invocations, stats.invocations);

    let mut expected_dead: Vec<String> = bad.iter().map(|body| body.to_string()).collect();
    expected_dead.sort();
    assert_eq!(queues.dead_lettered().await, expected_dead);
    let summary = stats.summary();
    assert_eq!(stats.messages_deleted, 6, "{summary}");
    assert_eq!(stats.messages_received, 6 + 2 * 4, "{summary}");
    assert_eq!(stats.invocations, 6 + 2 * 4, "{summary}");
    assert_eq!(stats.timeouts, 2, "{summary}");
    assert_eq!(stats.crashes, 2, "{summary}");
    assert_eq!(stats.errors, 2, "{summary}");
    assert_eq!(stats.injected_kills, 0, "{summary}");
    assert!(stats.max_concurrent <= 2, "{summary}");
    assert_eq!(stats.in_flight, 0);

    let reported: Vec<&Outcome> = stats
        .records
        .iter()
        .map(|record| &record.outcome)
        .filter(|outcome| matches!(outcome, Outcome::Succeeded { failed } if !failed.is_empty()))
        .collect();
    assert_eq!(reported.len(), 2, "the reported failure, on both receives");

    // Each record as Lambda passes it, message attributes included.
    let log = std::fs::read_to_string(log_path("sqs")).unwrap();
    let events: Vec<Value> = log
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line["message"] == "probe invoked")
        .map(|line| line["event"].clone())
        .collect();
    assert_eq!(events.len(), stats.invocations as usize);
    let records: Vec<&Value> = events
        .iter()
        .flat_map(|event| event["Records"].as_array().unwrap())
        .collect();
    for record in &records {
        assert_eq!(record["eventSource"], "aws:sqs");
        assert!(
            record["eventSourceARN"]
                .as_str()
                .unwrap()
                .ends_with(":probe")
        );
        assert_eq!(record["awsRegion"], "us-east-1");
        for attribute in [
            "ApproximateReceiveCount",
            "SentTimestamp",
            "SenderId",
            "ApproximateFirstReceiveTimestamp",
        ] {
            assert!(
                record["attributes"][attribute].is_string(),
                "{attribute}: {record}"
            );
        }
        assert!(record["receiptHandle"].is_string() && record["md5OfBody"].is_string());
    }
    let marked: Vec<&&Value> = records
        .iter()
        .filter(|record| !record["messageAttributes"].as_object().unwrap().is_empty())
        .collect();
    assert_eq!(marked.len(), 1, "{records:?}");
    let kind = &marked[0]["messageAttributes"]["kind"];
    assert_eq!(kind["stringValue"], "marked");
    assert_eq!(kind["dataType"], "String");

    // The messages that failed were received twice, and told so.
    let mut counts: HashMap<u32, usize> = HashMap::new();
    for record in &stats.records {
        assert_eq!(record.receive_counts.len(), 1);
        *counts.entry(record.receive_counts[0]).or_default() += 1;
    }
    assert_eq!(counts, HashMap::from([(1, 10), (2, 4)]));

    // Only the timeouts ran to their deadline; everything else answered before it.
    let past = stats.past_deadline();
    assert_eq!(past.len(), 2);
    assert!(past.iter().all(|record| record.duration() >= timeout));
    for record in &stats.records {
        let answered = matches!(
            record.outcome,
            Outcome::Succeeded { .. } | Outcome::Failed { .. }
        );
        assert_eq!(record.answered_in_time(), answered, "{record:?}");
        assert_eq!(record.timeout(), timeout);
    }

    // After a timeout or a crash the slot's next invocation is a cold start; otherwise warm.
    for slot in 0..2 {
        let records: Vec<_> = stats.records.iter().filter(|r| r.slot == slot).collect();
        if let Some(first) = records.first() {
            assert!(first.cold);
        }
        for pair in records.windows(2) {
            let ended = matches!(pair[0].outcome, Outcome::TimedOut | Outcome::Crashed { .. });
            assert_eq!(
                pair[1].cold, ended,
                "{:?} then {:?}",
                pair[0].outcome, pair[1]
            );
        }
    }
    let cold = stats.records.iter().filter(|r| r.cold).count() as u64;
    assert_eq!(stats.cold_starts, cold);
    assert!(stats.peak_rss_kib().is_some());
    // Stopping the host stops every instance.
    let instances = &stats_after_stop.instances;
    assert!(
        instances.iter().all(|instance| instance.end.is_some()),
        "{instances:?}"
    );
    for instance in instances {
        assert!(!is_running(instance.pid.unwrap()), "{instance:?}");
    }
}

#[tokio::test]
async fn a_kill_plan_kills_busy_instances_and_their_messages_are_retried() {
    let moto = MotoServer::start(0).unwrap();
    let timeout = Duration::from_secs(1);
    let queues = queues(&moto, 2, 5).await;
    let bodies: Vec<String> = (0..12)
        .map(|n| format!(r#"{{"sleep_ms": 150, "n": {n}}}"#))
        .collect();
    let bodies: Vec<&str> = bodies.iter().map(String::as_str).collect();
    queues.send(&bodies).await;

    let plan = KillPlan {
        seed: 42,
        kills: 3,
        window: Duration::from_millis(600),
    };
    let options = HostOptions {
        kill_plan: Some(plan),
        ..one_at_a_time(2)
    };
    let host = SqsHost::start(
        queues.sqs.clone(),
        &queues.url,
        probe("kills").timeout(timeout),
        options,
    )
    .await
    .unwrap();
    let stats = host
        .wait_until_drained(Duration::from_secs(30))
        .await
        .unwrap();
    drop(host);

    let summary = stats.summary();
    assert_eq!(stats.injected_kills, 3, "{summary}");
    assert_eq!(
        stats.messages_deleted, 12,
        "every killed batch is retried: {summary}"
    );
    assert_eq!(stats.messages_received, 12 + 3, "{summary}");
    assert!(stats.past_deadline().is_empty(), "{summary}");
    assert!(queues.dead_lettered().await.is_empty());
    let killed: Vec<_> = stats
        .records
        .iter()
        .filter(|r| r.outcome == Outcome::Killed)
        .collect();
    assert!(killed.iter().all(|record| record.ended < record.deadline));
    // Each kill ends an instance: the slots' first instances plus one per kill.
    let slots_used = (0..2)
        .filter(|slot| stats.records.iter().any(|r| r.slot == *slot))
        .count() as u64;
    assert_eq!(stats.cold_starts, slots_used + 3, "{summary}");
    assert!(
        stats.max_concurrent == 2,
        "both instances were busy at once: {summary}"
    );
}

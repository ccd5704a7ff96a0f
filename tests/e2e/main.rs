//! End to end on one machine, as `make dev` runs it: a newsletter POSTed to the accept function
//! under `cargo lambda watch` reaches each subscriber through the SQS trigger, the worker and SES.

use local_stack::event_source::Trigger;
use local_stack::outbox::SentEmail;
use local_stack::stack::{DynamoDb, LocalStack, StackOptions};
use local_stack::subscribers::{ContactList, Subscriber};
use local_stack::{Settings, repository_root};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

mod contract;

async fn start_stack(name: &str, visibility_timeout: u32) -> LocalStack {
    let demo = ContactList::load(&repository_root().join("dev/subscribers.json"))
        .expect("demo subscribers");
    start_stack_with(name, visibility_timeout, demo, 100.0).await
}

/// The stack of `make dev` with the contact list `audience`, its worker sending at
/// `max_send_rate` emails per second.
async fn start_stack_with(
    name: &str,
    visibility_timeout: u32,
    audience: ContactList,
    max_send_rate: f64,
) -> LocalStack {
    let root = repository_root();
    let settings = Settings {
        audience,
        visibility_timeout,
        // The tests' stacks share one DynamoDB Local.
        table_name: local_stack::dynamodb_local::unique_table_name("newsletter-tasks"),
        ..Settings::local().expect("template.yaml gives the local settings")
    };
    let options = StackOptions {
        aws_port: 0,
        dynamodb: DynamoDb::Shared,
        lambda_port: 0,
        settings,
        max_send_rate,
        max_concurrency: 1,
        trigger: Trigger {
            batch_size: 10,
            batching_window: Duration::from_millis(200),
            wait_time_seconds: 1,
        },
        reload_on_change: false,
        log_path: root.join(format!("target/e2e/{name}.log")),
    };
    LocalStack::start(options, Arc::new(|_| {}))
        .await
        .expect("the local stack starts")
}

async fn post_newsletter(stack: &LocalStack) -> String {
    let body = std::fs::read_to_string(repository_root().join("events/newsletter.json")).unwrap();
    let response = reqwest::Client::new()
        .post(stack.newsletters_url())
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("accept answers");
    assert_eq!(response.status(), 202);
    let accepted: serde_json::Value = response.json().await.unwrap();
    accepted["task_id"].as_str().unwrap().to_owned()
}

/// Runs the SQS trigger until `done` holds, for at most `limit`.
async fn run_until<F, Fut>(stack: &LocalStack, limit: Duration, done: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = bool>,
{
    let wait = async {
        while !done().await {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    };
    tokio::select! {
        result = stack.run_trigger() => panic!("the trigger stopped: {result:?}"),
        finished = tokio::time::timeout(limit, wait) => finished.expect("the system finished in time"),
    }
}

async fn emails_of(stack: &LocalStack, task_id: &str) -> Vec<SentEmail> {
    let emails = local_stack::outbox::sent_emails(&stack.aws_endpoint())
        .await
        .unwrap();
    emails
        .into_iter()
        .filter(|email| email.task_id() == Some(task_id))
        .collect()
}

/// (recipient, section titles) the demo subscribers must get for events/newsletter.json.
fn expected_emails(stack: &LocalStack) -> Vec<(String, Vec<&'static str>)> {
    let sections = [("rust", "Release notes"), ("aws", "Lambda news")];
    let topics: Vec<&str> = sections.iter().map(|(topic, _)| *topic).collect();
    let audience = &stack.settings.audience;
    let mut expected: Vec<(String, Vec<&str>)> = audience
        .subscribers
        .iter()
        .map(|subscriber| {
            let wanted = subscriber.wants(audience, &topics);
            let titles = sections
                .iter()
                .filter(|(t, _)| wanted.contains(t))
                .map(|(_, title)| *title)
                .collect();
            (subscriber.email.clone(), titles)
        })
        .filter(|(_, titles): &(String, Vec<&str>)| !titles.is_empty())
        .collect();
    expected.sort();
    expected
}

fn received(emails: &[SentEmail]) -> Vec<(String, Vec<&str>)> {
    let mut received: Vec<(String, Vec<&str>)> = emails
        .iter()
        .map(|email| {
            (
                email.destinations.to_addresses.join(","),
                email.section_titles(),
            )
        })
        .collect();
    received.sort();
    received
}

#[tokio::test]
async fn a_posted_newsletter_reaches_each_subscriber_as_their_preferences_say() {
    let stack = start_stack("delivery", 360).await;
    let expected = expected_emails(&stack);
    assert_eq!(
        expected.len(),
        3,
        "the demo list has three interested subscribers"
    );

    let task_id = post_newsletter(&stack).await;
    let status_url = format!("{}/{task_id}", stack.newsletters_url());
    let status = || async {
        let response = reqwest::get(&status_url).await.expect("the status answers");
        response
            .json::<serde_json::Value>()
            .await
            .expect("a JSON status")
    };
    run_until(&stack, Duration::from_secs(120), || async {
        status().await["status"] == "completed"
    })
    .await;

    let emails = emails_of(&stack, &task_id).await;
    assert_eq!(received(&emails), expected);
    assert_eq!(
        status().await["recipients"],
        serde_json::json!({"planned": 6, "sent": 3, "skipped": 3, "failed": 0, "cancelled": 0})
    );
}

#[tokio::test]
async fn a_poison_job_ends_in_the_dead_letter_queue_and_the_jobs_around_it_are_delivered() {
    let stack = start_stack("poison", 1).await;
    let expected = expected_emails(&stack).len();
    let before = post_newsletter(&stack).await;
    stack
        .sqs
        .send_message()
        .queue_url(&stack.provisioned.queue_url)
        .message_body(r#"{"version": 1, "kind": "job", "task_id": "not-a-uuid"}"#)
        .send()
        .await
        .unwrap();
    let after = post_newsletter(&stack).await;

    let dead_letters = || async {
        stack
            .sqs
            .receive_message()
            .queue_url(&stack.provisioned.dead_letter_queue_url)
            .visibility_timeout(0)
            .send()
            .await
            .unwrap()
            .messages
            .unwrap_or_default()
    };
    run_until(&stack, Duration::from_secs(120), || async {
        !dead_letters().await.is_empty()
            && emails_of(&stack, &before).await.len() >= expected
            && emails_of(&stack, &after).await.len() >= expected
    })
    .await;

    let dead = dead_letters().await;
    assert_eq!(dead.len(), 1);
    assert!(dead[0].body().unwrap_or_default().contains("not-a-uuid"));
    assert_eq!(emails_of(&stack, &before).await.len(), expected);
    assert_eq!(emails_of(&stack, &after).await.len(), expected);
}

/// Emails per second of the worker in the cancel test: slow enough that the task runs for a
/// while (120 recipients: 12 s), so the cancel lands mid-send.
const SLOW_SEND_RATE: f64 = 10.0;

#[tokio::test]
async fn a_running_task_cancelled_through_the_api_stops_and_ends_cancelled_with_exact_counts() {
    let demo = ContactList::load(&repository_root().join("dev/subscribers.json"))
        .expect("demo subscribers");
    let readers = ContactList {
        subscribers: (0..120)
            .map(|i| Subscriber {
                email: format!("reader{i:03}@example.com"),
                topics: Default::default(),
                unsubscribe_all: false,
            })
            .collect(),
        ..demo
    };
    let stack = start_stack_with("cancel", 360, readers, SLOW_SEND_RATE).await;
    let task_id = post_newsletter(&stack).await;
    let task_url = format!("{}/{task_id}", stack.newsletters_url());
    let status = || async {
        let response = reqwest::get(&task_url).await.expect("the status answers");
        response
            .json::<serde_json::Value>()
            .await
            .expect("a JSON status")
    };

    // Under way: some emails are out when the cancel comes.
    run_until(&stack, Duration::from_secs(120), || async {
        emails_of(&stack, &task_id).await.len() >= 10
    })
    .await;
    let sent_before = emails_of(&stack, &task_id).await.len();
    let response = reqwest::Client::new()
        .delete(&task_url)
        .send()
        .await
        .expect("accept answers");
    assert_eq!(response.status(), 202);
    let cancelled: serde_json::Value = response.json().await.unwrap();
    assert_eq!(cancelled["status"], "cancelling", "{cancelled}");

    run_until(&stack, Duration::from_secs(120), || async {
        status().await["status"] == "cancelled"
    })
    .await;
    let sent = emails_of(&stack, &task_id).await.len();
    // What the worker may still start after the cancel: rate x (check interval + the limiter's
    // 1 s burst), plus the few in flight (moto answers in milliseconds).
    let bound = (SLOW_SEND_RATE * 3.0) as usize + 2;
    assert!(
        sent - sent_before <= bound,
        "{} sent after the cancel, bound {bound}",
        sent - sent_before
    );
    let done = status().await;
    let counts = &done["recipients"];
    assert_eq!(counts["sent"], sent, "{done}");
    assert_eq!(counts["planned"], 120);
    assert_eq!(counts["cancelled"], 120 - sent, "{done}");
    assert_eq!(counts["failed"], 0);
}

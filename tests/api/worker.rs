//! The worker handler on real SQS and SES protocols: plan, fan out, send, retry narrowly.

use crate::helpers::{TestApp, json_body, spawn_app_with};
use local_stack::Settings;
use local_stack::subscribers::{ContactList, Status, Subscriber, TopicSpec};
use newsletter::message::Message;
use serde_json::json;
use std::collections::{BTreeMap, HashMap};

fn topic(name: &str, default: Status) -> TopicSpec {
    TopicSpec {
        name: name.into(),
        default,
    }
}

fn subscriber(email: String, preferences: &[(&str, Status)], unsubscribe_all: bool) -> Subscriber {
    Subscriber {
        email,
        topics: preferences
            .iter()
            .map(|(t, s)| (t.to_string(), *s))
            .collect::<BTreeMap<_, _>>(),
        unsubscribe_all,
    }
}

/// 260 contacts in six preference patterns, over three topics.
pub fn mixed_audience() -> ContactList {
    use Status::{OptIn, OptOut};
    let subscribers = (0..260)
        .map(|i| {
            let email = format!("reader{i:03}@example.com");
            match i % 6 {
                0 => subscriber(email, &[], false), // rust by default
                1 => subscriber(email, &[("aws", OptIn)], false), // rust and aws
                2 => subscriber(email, &[("rust", OptOut), ("aws", OptIn)], false), // aws only
                3 => subscriber(email, &[("rust", OptOut)], false), // nothing
                4 => subscriber(email, &[("aws", OptIn)], true), // unsubscribed
                _ => subscriber(email, &[("rust", OptOut), ("go", OptIn)], false), // go: not in it
            }
        })
        .collect();
    ContactList {
        topics: vec![
            topic("rust", OptIn),
            topic("aws", OptOut),
            topic("go", OptOut),
        ],
        subscribers,
    }
}

const SECTIONS: &[(&str, &str)] = &[
    ("rust", "Rust 1.95 released"),
    ("aws", "Lambda news"),
    ("cobol", "Nobody follows this"),
    ("rust", "Crate of the week"),
];

pub fn newsletter_body() -> String {
    let sections: Vec<_> = SECTIONS
        .iter()
        .map(|(topic, title)| json!({"topic": topic, "title": title, "body": format!("About *{topic}*.")}))
        .collect();
    json!({"subject": "Weekly digest", "sections": sections}).to_string()
}

/// Which section titles each recipient got, in the order they appear in the email.
fn titles_by_recipient(
    app_emails: &[local_stack::outbox::SentEmail],
) -> HashMap<String, Vec<Vec<&'static str>>> {
    let mut received: HashMap<String, Vec<Vec<&'static str>>> = HashMap::new();
    for email in app_emails {
        let mut titles: Vec<(usize, &'static str)> = SECTIONS
            .iter()
            .filter_map(|(_, title)| email.body.find(title).map(|at| (at, *title)))
            .collect();
        titles.sort();
        for to in &email.destinations.to_addresses {
            received
                .entry(to.clone())
                .or_default()
                .push(titles.iter().map(|(_, title)| *title).collect());
        }
    }
    received
}

async fn app_with(audience: ContactList, moto_env: &[(&str, &str)]) -> TestApp {
    let settings = Settings {
        audience,
        ..Settings::local().expect("template.yaml gives the local settings")
    };
    spawn_app_with(settings, moto_env).await
}

#[tokio::test]
async fn every_interested_contact_gets_exactly_one_email_with_exactly_their_sections() {
    let app = app_with(mixed_audience(), &[]).await;
    let accepted = app.post_newsletter(&newsletter_body()).await;
    assert_eq!(accepted.status(), 202);

    app.run_worker_until_queue_is_empty().await;

    let emails = app.sent_emails().await;
    let received = titles_by_recipient(&emails);
    let newsletter_topics: Vec<&str> = SECTIONS.iter().map(|(topic, _)| *topic).collect();
    let mut expected_recipients = 0;
    for subscriber in &app.settings.audience.subscribers {
        let wanted = subscriber.wants(&app.settings.audience, &newsletter_topics);
        let expected: Vec<&str> = SECTIONS
            .iter()
            .filter(|(topic, _)| wanted.contains(topic))
            .map(|(_, title)| *title)
            .collect();
        match received.get(&subscriber.email) {
            None => assert!(
                expected.is_empty(),
                "{} got nothing, wanted {expected:?}",
                subscriber.email
            ),
            Some(got) => {
                assert_eq!(
                    got,
                    &vec![expected.clone()],
                    "{}: one email with exactly their sections",
                    subscriber.email
                );
                expected_recipients += 1;
            }
        }
    }
    // 260 contacts: patterns 0, 1 and 2 (44 + 44 + 43) want something.
    assert_eq!(expected_recipients, 131);
    assert_eq!(emails.len(), 131, "nobody else got an email");
    assert!(emails.iter().all(|email| email.subject == "Weekly digest"));

    // The job fanned out into delivery messages of at most 50 recipients each.
    let bodies = app.worker.bodies();
    let deliveries: Vec<usize> = bodies
        .iter()
        .filter_map(|body| match Message::decode(body).unwrap() {
            Message::Delivery(delivery) => Some(delivery.recipients.len()),
            Message::Job(_) => None,
        })
        .collect();
    assert_eq!(deliveries.iter().sum::<usize>(), 131);
    assert!(
        deliveries.len() >= 3 && deliveries.iter().all(|&n| n <= 50),
        "{deliveries:?}"
    );
}

#[tokio::test]
async fn a_poison_message_is_the_only_one_reported() {
    let app = app_with(mixed_audience(), &[]).await;
    let good = newsletter_body();
    let task_ids: Vec<String> = accept_twice(&app, &good).await;
    // The accept function queued two jobs; a poison message joins them in the same batch.
    let poison_id = app
        .enqueue_raw("{\"version\": 1, \"kind\": \"job\", \"oops\": true}")
        .await;

    let source = app.event_source(10).await;
    let outcome = source.poll(&app.worker).await.unwrap();

    assert_eq!(outcome.bodies.len(), 3);
    assert_eq!(outcome.failed, 1);
    let reported: Vec<String> = app.worker.events.lock().unwrap()[0]
        .1
        .batch_item_failures
        .iter()
        .map(|failure| failure.item_identifier.clone())
        .collect();
    assert_eq!(reported, [poison_id]);
    // Both good jobs were planned: their deliveries are on the queue, tagged with their task ids.
    let planned: Vec<String> = app
        .drain_queue()
        .await
        .iter()
        .filter_map(|body| Message::decode(body).ok())
        .map(|message| message.task_id().to_string())
        .collect();
    for task_id in task_ids {
        assert!(planned.contains(&task_id), "task {task_id} was planned");
    }
}

async fn accept_twice(app: &TestApp, body: &str) -> Vec<String> {
    let mut ids = Vec::new();
    for _ in 0..2 {
        let response = app.post_newsletter(body).await;
        ids.push(json_body(&response)["task_id"].as_str().unwrap().to_owned());
    }
    ids
}

#[tokio::test]
async fn when_ses_fails_for_some_recipients_only_they_are_retried() {
    let subscribers = ["ok1", "flaky1", "ok2", "bounce1", "flaky2", "ok3"]
        .iter()
        .map(|name| subscriber(format!("{name}@example.com"), &[], false))
        .collect();
    let audience = ContactList {
        topics: vec![topic("rust", Status::OptIn)],
        subscribers,
    };
    let app = app_with(
        audience,
        &[
            ("LOCAL_SES_FAIL_FIRST", "^flaky"),
            ("LOCAL_SES_REJECT", "^bounce"),
        ],
    )
    .await;
    let body = json!({"subject": "S", "sections": [{"topic": "rust", "title": "T", "body": "B"}]})
        .to_string();
    assert_eq!(app.post_newsletter(&body).await.status(), 202);

    app.run_worker_until_queue_is_empty().await;

    assert_eq!(
        app.recipients().await,
        [
            "flaky1@example.com",
            "flaky2@example.com",
            "ok1@example.com",
            "ok2@example.com",
            "ok3@example.com"
        ],
        "each deliverable recipient exactly once; the rejected address never"
    );
    // The chunk was handed back once, whole (the store knows who got it), and its retry sent
    // to the flaky recipients only: SES saw each of them twice (a failure, then the email) and
    // everyone else once.
    let retries: Vec<u32> = app
        .worker
        .bodies()
        .iter()
        .filter_map(|body| match Message::decode(body).unwrap() {
            Message::Delivery(delivery) if delivery.attempt > 0 => Some(delivery.attempt),
            _ => None,
        })
        .collect();
    assert_eq!(retries, [1]);
}

#[tokio::test]
async fn a_message_that_keeps_failing_ends_in_the_dead_letter_queue() {
    let settings = Settings {
        audience: mixed_audience(),
        visibility_timeout: 1,
        ..Settings::local().expect("template.yaml gives the local settings")
    };
    let app = spawn_app_with(settings, &[]).await;
    app.enqueue_raw("this is not JSON").await;
    assert_eq!(app.post_newsletter(&newsletter_body()).await.status(), 202);

    let handed = app.run_worker_until_something_is_dead_lettered().await;

    let receives_of_poison = handed
        .iter()
        .filter(|body| *body == "this is not JSON")
        .count();
    assert_eq!(
        receives_of_poison, 5,
        "maxReceiveCount receives, then the DLQ"
    );
    assert_eq!(app.queue_depth().await, 0);
    assert_eq!(
        app.sent_emails().await.len(),
        131,
        "the good job around it was delivered"
    );
}

/// Every log line the test's thread writes, as the JSON the functions log in Lambda.
#[derive(Clone, Default)]
struct CapturedLogs(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for CapturedLogs {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn logs_name_recipients_by_their_keyed_hash_never_by_address() {
    use lambda_runtime::tracing::{Dispatch, dispatcher, subscriber};
    let logs = CapturedLogs::default();
    let writer = logs.clone();
    let _capture = dispatcher::set_default(&Dispatch::new(
        subscriber::fmt()
            .json()
            .with_writer(move || writer.clone())
            .finish(),
    ));
    let addresses = ["ok1@example.com", "bounce1@example.com"];
    let audience = ContactList {
        topics: vec![topic("rust", Status::OptIn)],
        subscribers: addresses
            .iter()
            .map(|address| subscriber(address.to_string(), &[], false))
            .collect(),
    };
    // The local SES refuses bounce1 as SES does, quoting the address in its error text.
    let app = app_with(audience, &[("LOCAL_SES_REJECT", "^bounce")]).await;
    let body = json!({"subject": "S", "sections": [{"topic": "rust", "title": "T", "body": "B"}]})
        .to_string();
    assert_eq!(app.post_newsletter(&body).await.status(), 202);
    app.run_worker_until_queue_is_empty().await;

    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    for address in addresses {
        assert!(!text.contains(address), "{address} in the logs:\n{text}");
    }
    let bounced =
        newsletter::domain::RecipientRefs::new(local_stack::LOCAL_RECIPIENT_HASH_KEY.as_bytes())
            .of(&newsletter::domain::EmailAddress::parse("bounce1@example.com").unwrap());
    let rejected: Vec<&str> = text
        .lines()
        .filter(|line| line.contains("email rejected"))
        .collect();
    assert_eq!(rejected.len(), 1, "{text}");
    assert!(
        rejected[0].contains(bounced.as_str()) && rejected[0].contains("<recipient>"),
        "the line names the recipient by hash and keeps SES's reason without the address: {}",
        rejected[0]
    );
}

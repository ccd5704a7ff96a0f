use super::*;
use crate::audience::{Contact, Subscription, TopicDefaults};
use crate::deliver::{SendError, SendPolicy};
use crate::directory::ContactPage;
use crate::domain::{EmailAddress, Newsletter, TaskId, Topic};
use crate::fakes::{ClaimState, MemoryStore, PagedDirectory, RecordingMailer, RecordingQueue};
use crate::message::Recipient;
use crate::tasks::{Recipients, TaskStatus};
use Subscription::{OptIn, OptOut};
use serde_json::json;

type TestWorker = Worker<RecordingQueue, PagedDirectory, RecordingMailer, MemoryStore>;

const FAST: SendPolicy = SendPolicy {
    emails_per_second: 100_000.0,
    max_in_flight: 8,
};

fn invocation() -> Invocation {
    Invocation {
        deadline: SystemTime::now() + Duration::from_secs(60),
        last_attempt: false,
    }
}

fn last_attempt() -> Invocation {
    Invocation {
        last_attempt: true,
        ..invocation()
    }
}

fn newsletter(topics: &[&str]) -> Newsletter {
    let sections: Vec<_> = topics
        .iter()
        .map(|topic| json!({"topic": topic, "title": format!("About {topic}"), "body": "text"}))
        .collect();
    Newsletter::from_json(&json!({"subject": "Weekly", "sections": sections})).unwrap()
}

fn contact(email: &str, preferences: &[(&str, Subscription)]) -> Contact {
    Contact {
        email: email.into(),
        unsubscribe_all: false,
        preferences: preferences
            .iter()
            .map(|(t, s)| (t.to_string(), *s))
            .collect(),
    }
}

fn directory(pages: Vec<Vec<Contact>>) -> PagedDirectory {
    PagedDirectory {
        defaults: TopicDefaults([("rust".into(), OptIn), ("aws".into(), OptOut)].into()),
        pages: pages
            .into_iter()
            .map(|contacts| ContactPage {
                contacts,
                next_token: None,
            })
            .collect(),
        ..Default::default()
    }
}

fn worker_with(
    directory: PagedDirectory,
    mailer: RecordingMailer,
    policy: SendPolicy,
) -> TestWorker {
    Worker::new(
        RecordingQueue::default(),
        directory,
        Sender::new(mailer, policy),
        MemoryStore::default(),
    )
}

fn worker(directory: PagedDirectory, mailer: RecordingMailer) -> TestWorker {
    worker_with(directory, mailer, FAST)
}

/// A job for a task the accept function has recorded.
async fn job(worker: &TestWorker, topics: &[&str]) -> Message {
    let task_id = TaskId::generate();
    worker.store.create(task_id).await.unwrap();
    Message::Job(Job {
        task_id,
        newsletter: newsletter(topics),
        cursor: None,
    })
}

/// A delivery to `emails` for a task that is fully planned with exactly them.
async fn delivery(worker: &TestWorker, emails: &[&str]) -> Delivery {
    let task_id = TaskId::generate();
    worker.store.create(task_id).await.unwrap();
    let counts = PageCounts::only_page(emails.len() as u64);
    worker.store.record_page(task_id, counts).await.unwrap();
    Delivery {
        task_id,
        chunk_id: "p0-c0".into(),
        attempt: 0,
        newsletter: newsletter(&["rust"]),
        recipients: emails
            .iter()
            .map(|email| Recipient {
                email: EmailAddress::parse(email).unwrap(),
                topics: vec![Topic::parse("rust").unwrap()],
            })
            .collect(),
    }
}

async fn process(worker: &TestWorker, message: &Message) -> Result<(), WorkError> {
    worker.process(&message.encode(), invocation()).await
}

/// Runs the worker on `first` and on every message it enqueues, until none are left.
async fn run_to_completion(worker: &TestWorker, first: Message) {
    let mut pending = vec![first];
    while let Some(message) = pending.pop() {
        process(worker, &message).await.unwrap();
        pending.extend(worker.queue.take());
    }
}

async fn task(worker: &TestWorker, task_id: TaskId) -> crate::tasks::TaskRecord {
    worker.store.get(task_id).await.unwrap().unwrap()
}

fn sent_to(worker: &TestWorker) -> Vec<String> {
    let mut recipients = worker.sender.mailer().recipients();
    recipients.sort();
    recipients
}

#[tokio::test]
async fn planning_pages_through_the_list_one_page_per_message() {
    let pages = vec![
        vec![
            contact("a@x.io", &[]),
            contact("b@x.io", &[("rust", OptOut)]),
        ],
        vec![contact("c@x.io", &[("aws", OptIn)])],
        vec![contact("d@x.io", &[("rust", OptIn)])],
    ];
    let worker = worker(directory(pages), RecordingMailer::default());
    let job = job(&worker, &["rust", "aws"]).await;

    process(&worker, &job).await.unwrap();
    let first = worker.queue.take();
    assert_eq!(
        first.len(),
        2,
        "one delivery and the job for the next page: {first:?}"
    );
    let Message::Job(next) = &first[1] else {
        panic!("expected a continuation")
    };
    assert_eq!(next.cursor.as_ref().unwrap().page, 1);
    assert_eq!(
        task(&worker, job.task_id()).await.status,
        TaskStatus::Planning
    );

    run_to_completion(&worker, first[1].clone()).await;
    run_to_completion(&worker, first[0].clone()).await;
    let tokens: Vec<Option<String>> = worker
        .directory
        .requests
        .lock()
        .unwrap()
        .iter()
        .map(|(t, _)| t.clone())
        .collect();
    assert_eq!(tokens, [None, Some("page-1".into()), Some("page-2".into())]);
    let done = task(&worker, job.task_id()).await;
    assert_eq!(
        done.recipients,
        Recipients {
            planned: 4,
            sent: 3,
            skipped: 1,
            failed: 0
        }
    );
    assert_eq!(done.status, TaskStatus::Completed);
}

#[tokio::test]
async fn each_subscriber_gets_one_email_with_exactly_their_sections_and_the_task_completes() {
    let pages = vec![
        vec![
            contact("default-rust@x.io", &[]),
            contact("both@x.io", &[("aws", OptIn)]),
            contact("aws-only@x.io", &[("rust", OptOut), ("aws", OptIn)]),
            contact("nothing@x.io", &[("rust", OptOut)]),
            Contact {
                unsubscribe_all: true,
                ..contact("gone@x.io", &[("rust", OptIn)])
            },
            contact("not-an-address", &[]),
        ],
        (0..120)
            .map(|i| contact(&format!("bulk{i}@x.io"), &[]))
            .collect(),
    ];
    let worker = worker(directory(pages), RecordingMailer::default());
    let job = job(&worker, &["rust", "aws"]).await;

    run_to_completion(&worker, job.clone()).await;

    let sent = worker.sender.mailer().sent.lock().unwrap().clone();
    let titles = |email: &str| -> Vec<bool> {
        let (_, rendered, _) = sent.iter().find(|(to, _, _)| to.as_str() == email).unwrap();
        vec![
            rendered.html.contains("About rust"),
            rendered.html.contains("About aws"),
        ]
    };
    assert_eq!(titles("default-rust@x.io"), [true, false]);
    assert_eq!(titles("both@x.io"), [true, true]);
    assert_eq!(titles("aws-only@x.io"), [false, true]);
    let mut recipients = sent_to(&worker);
    assert_eq!(recipients.len(), 123);
    recipients.dedup();
    assert_eq!(recipients.len(), 123, "nobody gets two emails");
    // A single-topic recipient's email names its topic, so SES unsubscribes from just that.
    let (_, _, topic) = sent
        .iter()
        .find(|(to, _, _)| to.as_str() == "aws-only@x.io")
        .unwrap();
    assert_eq!(topic.as_ref().map(Topic::as_str), Some("aws"));

    let done = task(&worker, job.task_id()).await;
    assert_eq!(
        done.recipients,
        Recipients {
            planned: 126,
            sent: 123,
            skipped: 2,
            failed: 1
        }
    );
    assert_eq!(
        done.status,
        TaskStatus::CompletedWithErrors,
        "the invalid address failed"
    );
}

#[tokio::test]
async fn a_single_topic_job_asks_for_the_filter_and_still_filters_itself() {
    // The directory ignores the filter (as the local SES does) and returns an opted-out contact.
    let pages = vec![vec![
        contact("in@x.io", &[]),
        contact("out@x.io", &[("rust", OptOut)]),
    ]];
    let worker = worker(directory(pages), RecordingMailer::default());
    let job = job(&worker, &["rust"]).await;

    run_to_completion(&worker, job).await;

    let requests = worker.directory.requests.lock().unwrap();
    assert_eq!(requests[0].1.as_ref().map(Topic::as_str), Some("rust"));
    assert_eq!(sent_to(&worker), ["in@x.io"]);
}

#[tokio::test]
async fn several_topics_read_the_list_unfiltered() {
    let worker = worker(directory(vec![vec![]]), RecordingMailer::default());
    let job = job(&worker, &["rust", "aws"]).await;
    run_to_completion(&worker, job.clone()).await;
    assert_eq!(worker.directory.requests.lock().unwrap()[0].1, None);
    assert_eq!(
        task(&worker, job.task_id()).await.status,
        TaskStatus::Completed,
        "nobody to send to"
    );
}

#[tokio::test]
async fn a_retried_planning_step_counts_its_page_once() {
    let worker = worker(
        directory(vec![vec![contact("a@x.io", &[])]]),
        RecordingMailer::default(),
    );
    let job = job(&worker, &["rust"]).await;
    process(&worker, &job).await.unwrap();
    process(&worker, &job).await.unwrap();
    let deliveries = worker.queue.take();
    assert_eq!(
        deliveries.len(),
        2,
        "the retry re-enqueues the same delivery"
    );
    assert_eq!(deliveries[0], deliveries[1]);
    for message in &deliveries {
        process(&worker, message).await.unwrap();
    }
    assert_eq!(
        sent_to(&worker),
        ["a@x.io"],
        "the duplicate delivery sends nothing"
    );
    let done = task(&worker, job.task_id()).await;
    assert_eq!(
        done.recipients,
        Recipients {
            planned: 1,
            sent: 1,
            skipped: 0,
            failed: 0
        }
    );
    assert_eq!(done.status, TaskStatus::Completed);
}

#[tokio::test]
async fn only_recipients_with_retryable_failures_are_retried() {
    let mailer = RecordingMailer::failing([
        (
            "throttled@x.io".to_string(),
            SendError::Transient("TooManyRequests".into()),
        ),
        (
            "bounced@x.io".to_string(),
            SendError::Permanent("MessageRejected".into()),
        ),
    ]);
    let worker = worker(directory(vec![]), mailer);
    let original = delivery(
        &worker,
        &["ok1@x.io", "throttled@x.io", "bounced@x.io", "ok2@x.io"],
    )
    .await;

    process(&worker, &Message::Delivery(original.clone()))
        .await
        .unwrap();

    assert_eq!(sent_to(&worker), ["ok1@x.io", "ok2@x.io"]);
    let retried = worker.queue.take();
    let [Message::Delivery(retry)] = retried.as_slice() else {
        panic!("expected one retry: {retried:?}")
    };
    let owed: Vec<String> = retry
        .recipients
        .iter()
        .map(|r| r.email.to_string())
        .collect();
    assert_eq!(owed, ["throttled@x.io"]);
    assert_eq!(retry.attempt, 1);
    assert_eq!(
        (retry.task_id, &retry.chunk_id),
        (original.task_id, &original.chunk_id)
    );
    let counts = task(&worker, original.task_id).await.recipients;
    assert_eq!((counts.sent, counts.failed), (2, 1));
    // The throttled recipient's claim was given back: the retry may claim it at once.
    let claims = worker.store.claims.lock().unwrap();
    assert!(!claims.contains_key(&(original.task_id, "throttled@x.io".to_string())));
}

#[tokio::test]
async fn throttled_sends_slow_down_and_go_out_in_the_same_invocation() {
    let throttling = (0..5).map(|_| SendError::Throttled("TooManyRequests".into()));
    let policy = SendPolicy {
        emails_per_second: 1_000.0,
        max_in_flight: 4,
    };
    let worker = worker_with(
        directory(vec![]),
        RecordingMailer::answering_first(throttling),
        policy,
    );
    let chunk = Message::Delivery(delivery(&worker, &["a@x.io", "b@x.io", "c@x.io"]).await);

    process(&worker, &chunk).await.unwrap();

    let mut sent = sent_to(&worker);
    sent.sort();
    assert_eq!(sent, ["a@x.io", "b@x.io", "c@x.io"], "each once");
    let mailer = worker.sender.mailer();
    assert_eq!(mailer.attempts.load(std::sync::atomic::Ordering::SeqCst), 8);
    assert!(
        worker.queue.take().is_empty(),
        "nobody owed, nothing re-enqueued"
    );
    assert!(
        worker.sender.current_rate() < 1_000.0,
        "the rate was cut: {}",
        worker.sender.current_rate()
    );
    let done = task(&worker, chunk.task_id()).await;
    assert_eq!(
        (done.recipients.sent, done.status),
        (3, TaskStatus::Completed)
    );
}

#[tokio::test]
async fn a_transient_failure_is_retried_a_few_times_before_the_recipient_is_owed() {
    let timeouts = |n| (0..n).map(|_| SendError::Transient("timeout".into()));
    let recovers = worker(
        directory(vec![]),
        RecordingMailer::answering_first(timeouts(2)),
    );
    let chunk = Message::Delivery(delivery(&recovers, &["a@x.io"]).await);
    process(&recovers, &chunk).await.unwrap();
    assert_eq!(sent_to(&recovers), ["a@x.io"], "sent on the third try");

    // One at a time, so that the three timeouts all go to the first recipient.
    let one_at_a_time = SendPolicy {
        max_in_flight: 1,
        ..FAST
    };
    let persists = worker_with(
        directory(vec![]),
        RecordingMailer::answering_first(timeouts(3)),
        one_at_a_time,
    );
    let chunk = Message::Delivery(delivery(&persists, &["a@x.io", "b@x.io"]).await);
    process(&persists, &chunk).await.unwrap();
    let mailer = persists.sender.mailer();
    assert_eq!(mailer.attempts.load(std::sync::atomic::Ordering::SeqCst), 4);
    let retried = persists.queue.take();
    let [Message::Delivery(retry)] = retried.as_slice() else {
        panic!("expected one retry: {retried:?}")
    };
    assert_eq!(
        retry.recipients[0].email.as_str(),
        "a@x.io",
        "failed 3 times: owed"
    );
    assert_eq!(sent_to(&persists), ["b@x.io"]);
}

#[tokio::test]
async fn a_redelivered_message_sends_only_to_those_not_yet_sent() {
    // SES fails for one recipient and the re-enqueue of the owed recipient is lost, so SQS
    // redelivers the whole original message.
    let mailer = RecordingMailer::failing([(
        "flaky@x.io".to_string(),
        SendError::Transient("timeout".into()),
    )]);
    let worker = Worker::new(
        RecordingQueue {
            fail: true,
            ..Default::default()
        },
        directory(vec![]),
        Sender::new(mailer, FAST),
        MemoryStore::default(),
    );
    let original = Message::Delivery(delivery(&worker, &["a@x.io", "flaky@x.io", "b@x.io"]).await);

    assert!(matches!(
        process(&worker, &original).await,
        Err(WorkError::Queue(_))
    ));
    assert_eq!(sent_to(&worker), ["a@x.io", "b@x.io"]);

    worker.sender.mailer().sent.lock().unwrap().clear();
    let _ = process(&worker, &original).await;
    assert!(
        sent_to(&worker).is_empty(),
        "a and b are not sent again; flaky still fails"
    );
    let counts = task(&worker, original.task_id()).await.recipients;
    assert_eq!((counts.sent, counts.failed), (2, 0), "counted once");
}

#[tokio::test]
async fn a_claim_held_by_a_live_invocation_is_left_alone_and_a_lapsed_one_is_taken_over() {
    let worker = worker(directory(vec![]), RecordingMailer::default());
    let chunk = delivery(&worker, &["live@x.io", "dead@x.io", "free@x.io"]).await;
    let key = |email: &str| (chunk.task_id, email.to_string());
    {
        let mut claims = worker.store.claims.lock().unwrap();
        let future = SystemTime::now() + Duration::from_secs(30);
        let past = SystemTime::now() - Duration::from_secs(1);
        claims.insert(key("live@x.io"), (ClaimState::Sending, future));
        claims.insert(key("dead@x.io"), (ClaimState::Sending, past));
    }

    process(&worker, &Message::Delivery(chunk.clone()))
        .await
        .unwrap();

    assert_eq!(sent_to(&worker), ["dead@x.io", "free@x.io"]);
    let retried = worker.queue.take();
    let [Message::Delivery(retry)] = retried.as_slice() else {
        panic!("expected the live claim's recipient owed: {retried:?}")
    };
    assert_eq!(retry.recipients[0].email.as_str(), "live@x.io");
}

#[tokio::test]
async fn a_chunk_nobody_could_be_sent_to_fails_as_a_whole() {
    let mailer =
        RecordingMailer::failing([("a@x.io".to_string(), SendError::Transient("timeout".into()))]);
    let worker = worker(directory(vec![]), mailer);
    let chunk = Message::Delivery(delivery(&worker, &["a@x.io"]).await);
    let result = process(&worker, &chunk).await;
    assert!(matches!(result, Err(WorkError::NothingDelivered(1))));
    assert!(worker.queue.take().is_empty());
}

#[tokio::test]
async fn past_the_deadline_nothing_is_sent_and_the_message_is_retried() {
    let worker = worker(directory(vec![]), RecordingMailer::default());
    let chunk = Message::Delivery(delivery(&worker, &["a@x.io", "b@x.io"]).await);
    let expired = Invocation {
        deadline: SystemTime::now(),
        last_attempt: false,
    };
    let result = worker.process(&chunk.encode(), expired).await;
    assert!(matches!(result, Err(WorkError::NothingDelivered(2))));
    assert!(worker.sender.mailer().recipients().is_empty());
}

#[tokio::test]
async fn on_its_last_attempt_a_failing_chunk_is_recorded_and_the_task_completes_with_errors() {
    let mailer =
        RecordingMailer::failing([("a@x.io".to_string(), SendError::Transient("timeout".into()))]);
    let worker = worker(directory(vec![]), mailer);
    let chunk = Message::Delivery(delivery(&worker, &["a@x.io"]).await);

    let result = worker.process(&chunk.encode(), last_attempt()).await;

    assert!(
        result.is_err(),
        "still reported, so SQS moves it to the DLQ"
    );
    let done = task(&worker, chunk.task_id()).await;
    assert_eq!(
        done.recipients,
        Recipients {
            planned: 1,
            sent: 0,
            skipped: 0,
            failed: 1
        }
    );
    assert_eq!(done.status, TaskStatus::CompletedWithErrors);
    assert_eq!(done.failures[0].part, "delivery p0-c0 attempt 0");
}

#[tokio::test]
async fn an_unreadable_job_on_its_last_attempt_ends_its_task_with_errors() {
    let worker = worker(directory(vec![]), RecordingMailer::default());
    let task_id = TaskId::generate();
    worker.store.create(task_id).await.unwrap();
    let body =
        format!(r#"{{"version": 1, "kind": "job", "task_id": "{task_id}", "newsletter": "oops"}}"#);

    assert!(matches!(
        worker.process(&body, last_attempt()).await,
        Err(WorkError::Poison(_))
    ));

    let done = task(&worker, task_id).await;
    assert_eq!(done.status, TaskStatus::CompletedWithErrors);
    assert_eq!(done.failures[0].part, "unreadable message");
}

#[tokio::test]
async fn a_store_outage_fails_the_message() {
    let worker = Worker::new(
        RecordingQueue::default(),
        directory(vec![vec![contact("a@x.io", &[])]]),
        Sender::new(RecordingMailer::default(), FAST),
        MemoryStore {
            fail: true,
            ..Default::default()
        },
    );
    let job = Message::Job(Job {
        task_id: TaskId::generate(),
        newsletter: newsletter(&["rust"]),
        cursor: None,
    });
    assert!(matches!(
        process(&worker, &job).await,
        Err(WorkError::Store(_))
    ));
    assert!(
        worker.queue.take().is_empty(),
        "nothing planned without its counts recorded"
    );
}

#[tokio::test]
async fn poison_messages_are_errors_not_panics() {
    let worker = worker(directory(vec![]), RecordingMailer::default());
    for body in [
        "",
        "{}",
        r#"{"version": 9, "kind": "job"}"#,
        r#"{"version": 1, "kind": "job"}"#,
    ] {
        let result = worker.process(body, invocation()).await;
        assert!(matches!(result, Err(WorkError::Poison(_))), "{body}");
    }
}

#[tokio::test]
async fn sends_never_exceed_the_in_flight_bound() {
    let policy = SendPolicy {
        emails_per_second: 100_000.0,
        max_in_flight: 3,
    };
    let worker = worker_with(directory(vec![]), RecordingMailer::default(), policy);
    let emails: Vec<String> = (0..40).map(|i| format!("u{i}@x.io")).collect();
    let emails: Vec<&str> = emails.iter().map(String::as_str).collect();
    let chunk = Message::Delivery(delivery(&worker, &emails).await);
    process(&worker, &chunk).await.unwrap();
    let mailer = worker.sender.mailer();
    assert_eq!(mailer.recipients().len(), 40);
    let peak = mailer
        .max_in_flight_seen
        .load(std::sync::atomic::Ordering::SeqCst);
    assert!((2..=3).contains(&peak), "peak in flight {peak}");
}

#[tokio::test]
async fn the_send_rate_is_held_to_the_policy() {
    // 40 emails/s with a burst of 40: 100 emails cannot finish in under (100 - 40) / 40 = 1.5 s.
    let policy = SendPolicy {
        emails_per_second: 40.0,
        max_in_flight: 16,
    };
    let worker = worker_with(directory(vec![]), RecordingMailer::default(), policy);
    let emails: Vec<String> = (0..100).map(|i| format!("u{i}@x.io")).collect();
    let emails: Vec<&str> = emails.iter().map(String::as_str).collect();
    let chunk = Message::Delivery(delivery(&worker, &emails).await);
    let started = Instant::now();
    process(&worker, &chunk).await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(1400),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(worker.sender.mailer().recipients().len(), 100);
}

#[test]
fn the_account_rate_is_split_across_instances() {
    let policy = SendPolicy::per_instance(14.0, 5, 16);
    assert!((policy.emails_per_second - 2.8).abs() < 1e-9);
    assert_eq!(
        SendPolicy::per_instance(10.0, 0, 0),
        SendPolicy {
            emails_per_second: 10.0,
            max_in_flight: 1
        }
    );
}

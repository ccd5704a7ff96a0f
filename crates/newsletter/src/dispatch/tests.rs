use super::*;
use crate::audience::{Contact, Subscription, TopicDefaults};
use crate::domain::TaskKind;
use crate::domain::{
    EmailAddress, Newsletter, PauseCode, Recipients, TaskId, TaskRecord, TaskStatus, Topic,
};
use crate::message::Recipient;
use crate::ports::{ContactPage, PauseStore, SendError};
use crate::render::RenderedEmail;
use crate::sending::{ACCOUNT_FAILURES_TO_PAUSE, SETTLE_GROUP, SendPolicy};
use crate::testing::fakes::{
    Fault, FaultyStore, MemoryDeadLetters, MemoryStore, PagedDirectory, RecordingMailer,
    RecordingQueue,
};
use Subscription::{OptIn, OptOut};
use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::time::Instant;

type TestWorker<S = MemoryStore, M = RecordingMailer> =
    Dispatcher<RecordingQueue, PagedDirectory, M, S>;

const FAST: SendPolicy = SendPolicy {
    emails_per_second: 100_000.0,
    max_in_flight: 8,
};

fn in_a_minute() -> SystemTime {
    SystemTime::now() + Duration::from_secs(60)
}

fn budget() -> Budget {
    Budget::until(in_a_minute())
}

fn holder(budget: &Budget) -> Holder {
    Holder {
        token: uuid::Uuid::now_v7().to_string(),
        lapses: budget.lapses,
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

fn worker_of<S, M: Mailer>(
    queue: RecordingQueue,
    directory: PagedDirectory,
    mailer: M,
    policy: SendPolicy,
    store: S,
) -> TestWorker<S, M>
where
    S: TaskStore + PlanStore + ChunkStore + PauseStore,
{
    Dispatcher::new(queue, directory, Sender::new(mailer, policy), store, 50)
}

fn worker_with(
    directory: PagedDirectory,
    mailer: RecordingMailer,
    policy: SendPolicy,
) -> TestWorker {
    worker_of(
        RecordingQueue::default(),
        directory,
        mailer,
        policy,
        MemoryStore::default(),
    )
}

fn worker(directory: PagedDirectory, mailer: RecordingMailer) -> TestWorker {
    worker_with(directory, mailer, FAST)
}

/// A job for a task the accept function has recorded.
async fn job<S: TaskStore + PlanStore + ChunkStore + PauseStore, M: Mailer>(
    worker: &TestWorker<S, M>,
    topics: &[&str],
) -> Message {
    let task_id = TaskId::generate();
    worker
        .store
        .create(task_id, TaskKind::Newsletter)
        .await
        .unwrap();
    Message::Job(Job {
        task_id,
        newsletter: newsletter(topics),
        cursor: None,
        to: None,
    })
}

fn recipients(emails: &[&str]) -> Vec<Recipient> {
    emails
        .iter()
        .map(|email| Recipient {
            email: EmailAddress::parse(email).unwrap(),
            topics: vec![Topic::parse("rust").unwrap()],
        })
        .collect()
}

fn emails(count: usize) -> Vec<String> {
    (0..count).map(|i| format!("u{i}@x.io")).collect()
}

/// A delivery of chunk `p0-c0` to `emails`, for a task planned with exactly that chunk.
async fn delivery<S: TaskStore + PlanStore + ChunkStore + PauseStore, M: Mailer>(
    worker: &TestWorker<S, M>,
    emails: &[&str],
) -> Delivery {
    let task_id = TaskId::generate();
    worker
        .store
        .create(task_id, TaskKind::Newsletter)
        .await
        .unwrap();
    let plan = PagePlan {
        chunks: vec![recipients(emails)],
        contacts: emails.len() as u64,
        ..PagePlan::default()
    };
    worker.store.record_page(task_id, plan).await.unwrap();
    Delivery {
        task_id,
        chunk_id: "p0-c0".into(),
        attempt: 0,
        newsletter: newsletter(&["rust"]),
        recipients: recipients(emails),
    }
}

async fn process<S: TaskStore + PlanStore + ChunkStore + PauseStore, M: Mailer>(
    worker: &TestWorker<S, M>,
    message: &Message,
) -> Result<(), WorkError> {
    let budget = budget();
    worker.process(message, &budget, &holder(&budget)).await
}

/// Runs the worker on `first` and on every message it enqueues, until none are left.
async fn run_to_completion<S: TaskStore + PlanStore + ChunkStore + PauseStore, M: Mailer>(
    worker: &TestWorker<S, M>,
    first: Message,
) {
    let mut pending = vec![first];
    while let Some(message) = pending.pop() {
        process(worker, &message).await.unwrap();
        pending.extend(worker.queue.take());
    }
}

async fn task<S: TaskStore + PlanStore + ChunkStore + PauseStore, M: Mailer>(
    worker: &TestWorker<S, M>,
    task_id: TaskId,
) -> TaskRecord {
    worker.store.get(task_id).await.unwrap().unwrap()
}

fn sent_to<S>(worker: &TestWorker<S>) -> Vec<String> {
    let mut recipients = worker.sender.mailer().recipients();
    recipients.sort();
    recipients
}

fn counts(planned: u64, sent: u64, skipped: u64, failed: u64) -> Recipients {
    Recipients {
        planned,
        sent,
        skipped,
        failed,
        cancelled: 0,
    }
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
    assert_eq!(next.page(), 1);
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
    assert_eq!(done.recipients, counts(4, 3, 1, 0));
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
    assert_eq!(done.recipients, counts(126, 123, 2, 1));
    assert_eq!(
        done.status,
        TaskStatus::CompletedWithErrors,
        "the invalid address failed"
    );
}

#[tokio::test]
async fn topics_no_list_topic_matches_are_named_on_the_task() {
    let pages = vec![vec![contact("reader@x.io", &[])]];
    let worker = worker(directory(pages), RecordingMailer::default());
    let job = job(&worker, &["cobol", "rust", "fortran"]).await;

    run_to_completion(&worker, job.clone()).await;

    let done = task(&worker, job.task_id()).await;
    assert_eq!(done.status, TaskStatus::Completed);
    assert_eq!(done.unmatched_topics, ["cobol", "fortran"]);
    assert_eq!(
        sent_to(&worker),
        ["reader@x.io"],
        "the rust section still goes out"
    );
    let shown = serde_json::to_value(&done).unwrap();
    assert_eq!(shown["unmatched_topics"], json!(["cobol", "fortran"]));
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

/// Three pages of 60 contacts each; every contact opted into "rust" by default.
fn three_pages() -> PagedDirectory {
    directory(
        (0..3)
            .map(|page| {
                (0..60)
                    .map(|i| contact(&format!("p{page}-{i}@x.io"), &[]))
                    .collect()
            })
            .collect(),
    )
}

#[tokio::test]
async fn a_job_retried_after_each_of_its_steps_gives_one_planning_chain() {
    // Each step of planning page 0 fails once (before or after taking effect), then the job is
    // retried, as SQS would redeliver it; then everything queued is run, duplicates included.
    type StoreFaults = Vec<(&'static str, Vec<Fault>)>;
    let steps: [(&str, RecordingQueue, StoreFaults); 5] = [
        (
            "counting fails",
            RecordingQueue::default(),
            vec![("record_page", vec![Fault::Fail])],
        ),
        (
            "counted, answer lost",
            RecordingQueue::default(),
            vec![("record_page", vec![Fault::LoseAnswer])],
        ),
        (
            "queueing fails",
            RecordingQueue::failing_next([Fault::Fail]),
            vec![],
        ),
        (
            "queued, answer lost",
            RecordingQueue::failing_next([Fault::LoseAnswer]),
            vec![],
        ),
        (
            "queued, marking fails",
            RecordingQueue::default(),
            vec![("mark_page_enqueued", vec![Fault::Fail])],
        ),
    ];
    for (step, queue, faults) in steps {
        let worker = worker_of(
            queue,
            three_pages(),
            RecordingMailer::default(),
            FAST,
            FaultyStore::new(MemoryStore::default(), faults),
        );
        let job = job(&worker, &["rust"]).await;
        assert!(
            process(&worker, &job).await.is_err(),
            "{step}: the fault is seen"
        );
        process(&worker, &job).await.unwrap();

        let mut pending = worker.queue.take();
        let mut plannings_that_queued = 0;
        while let Some(message) = pending.pop() {
            process(&worker, &message).await.unwrap();
            let queued = worker.queue.take();
            if matches!(message, Message::Job(_)) && !queued.is_empty() {
                plannings_that_queued += 1;
            }
            pending.extend(queued);
        }

        assert_eq!(
            plannings_that_queued, 2,
            "{step}: pages 1 and 2 are each planned by one job, duplicates do nothing"
        );
        let mut sent = sent_to(&worker);
        assert_eq!(sent.len(), 180, "{step}");
        sent.dedup();
        assert_eq!(sent.len(), 180, "{step}: nobody twice");
        let done = task(&worker, job.task_id()).await;
        assert_eq!(done.recipients, counts(180, 180, 0, 0), "{step}");
        assert_eq!(done.status, TaskStatus::Completed, "{step}");
    }
}

#[tokio::test]
async fn a_retried_page_uses_its_stored_plan_when_the_list_has_changed() {
    let worker = worker_of(
        RecordingQueue::failing_next([Fault::Fail]),
        directory(vec![vec![contact("a@x.io", &[]), contact("b@x.io", &[])]]),
        RecordingMailer::default(),
        FAST,
        MemoryStore::default(),
    );
    let job = job(&worker, &["rust"]).await;
    assert!(process(&worker, &job).await.is_err());
    // Between the attempts one contact leaves and two join.
    let changed = directory(vec![vec![
        contact("b@x.io", &[]),
        contact("c@x.io", &[]),
        contact("d@x.io", &[]),
    ]]);
    let worker = Dispatcher {
        directory: changed,
        ..worker
    };
    run_to_completion(&worker, job.clone()).await;
    assert_eq!(
        sent_to(&worker),
        ["a@x.io", "b@x.io"],
        "the plan that was counted"
    );
    let done = task(&worker, job.task_id()).await;
    assert_eq!(done.recipients, counts(2, 2, 0, 0));
    assert_eq!(done.status, TaskStatus::Completed);
}

#[tokio::test]
async fn only_recipients_with_retryable_failures_are_sent_again() {
    let mailer = RecordingMailer::failing([
        (
            "flaky@x.io".to_string(),
            SendError::Transient("timeout".into()),
        ),
        (
            "bounced@x.io".to_string(),
            SendError::Permanent("MessageRejected".into()),
        ),
    ]);
    let worker = worker(directory(vec![]), mailer);
    let original = delivery(
        &worker,
        &["ok1@x.io", "flaky@x.io", "bounced@x.io", "ok2@x.io"],
    )
    .await;

    process(&worker, &Message::Delivery(original.clone()))
        .await
        .unwrap();

    assert_eq!(sent_to(&worker), ["ok1@x.io", "ok2@x.io"]);
    let retried = worker.queue.take();
    let [Message::Delivery(retry)] = retried.as_slice() else {
        panic!("expected the chunk handed back: {retried:?}")
    };
    assert_eq!(retry.attempt, 1);
    assert_eq!(
        (retry.task_id, &retry.chunk_id),
        (original.task_id, &original.chunk_id)
    );
    let progress = worker.store.chunk(original.task_id, "p0-c0").unwrap();
    assert_eq!(progress.sent.len() + progress.rejected.len(), 3);
    assert!(progress.owes(1), "flaky is owed");
    assert_eq!(
        task(&worker, original.task_id).await.recipients.sent,
        0,
        "counted when the chunk closes"
    );

    // The retry's lease is free at once (the first invocation gave it up), and it sends to
    // flaky alone; flaky fails again, and that attempt makes no progress: SQS retries it later.
    let again = process(&worker, &Message::Delivery(retry.clone())).await;
    assert!(matches!(again, Err(WorkError::Stalled(1))), "{again:?}");
    assert_eq!(sent_to(&worker), ["ok1@x.io", "ok2@x.io"], "nobody twice");
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

    assert_eq!(
        sent_to(&worker),
        ["a@x.io", "b@x.io", "c@x.io"],
        "each once"
    );
    let mailer = worker.sender.mailer();
    assert_eq!(mailer.attempts.load(Ordering::SeqCst), 8);
    assert!(
        worker.queue.take().is_empty(),
        "nobody owed, nothing handed back"
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
async fn account_wide_refusals_pause_the_task_failing_nobody_and_a_resume_sends_the_rest_once() {
    let contacts = (0..120)
        .map(|i| contact(&format!("u{i}@x.io"), &[]))
        .collect();
    let mailer = RecordingMailer::refusing_after(10, PauseCode::SenderNotVerified);
    let worker = worker(directory(vec![contacts]), mailer);
    let job = job(&worker, &["rust"]).await;
    let task_id = job.task_id();

    // Planning queues 3 chunks; the first stops after 10 sends, the others are parked unsent.
    run_to_completion(&worker, job).await;

    let paused = task(&worker, task_id).await;
    assert_eq!(paused.status, TaskStatus::Paused);
    assert_eq!(
        paused.pause.as_ref().map(|pause| pause.code),
        Some(PauseCode::SenderNotVerified)
    );
    assert_eq!(paused.recipients.failed, 0, "nobody failed for the account");
    assert_eq!(sent_to(&worker).len(), 10);
    let attempts = worker.sender.mailer().attempts.load(Ordering::SeqCst);
    assert!(
        attempts <= 10 + ACCOUNT_FAILURES_TO_PAUSE + FAST.max_in_flight,
        "a few refusals, not the list: {attempts} calls"
    );
    assert_eq!(worker.store.parked(task_id).await.unwrap().len(), 3);
    assert!(
        worker.queue.take().is_empty(),
        "nothing left to burn its receives"
    );

    // Fixed: the resume puts the parked chunks back, and each owed recipient gets one email.
    worker.sender.mailer().stop_refusing();
    let report = worker.resume(task_id).await.unwrap();
    assert_eq!(
        report,
        ResumeReport {
            resumed: true,
            requeued: 3
        }
    );
    let mut pending = worker.queue.take();
    while let Some(message) = pending.pop() {
        process(&worker, &message).await.unwrap();
        pending.extend(worker.queue.take());
    }
    let done = task(&worker, task_id).await;
    assert_eq!(done.status, TaskStatus::Completed);
    assert_eq!(done.recipients, counts(120, 120, 0, 0));
    assert_eq!(done.pause, None);
    let mut recipients = sent_to(&worker);
    recipients.dedup();
    assert_eq!(recipients.len(), 120, "nobody twice, nobody missed");
    assert!(
        matches!(
            worker.resume(task_id).await,
            Err(ControlError::Finished(TaskStatus::Completed))
        ),
        "nothing is left to resume once the task completed"
    );
}

#[tokio::test]
async fn a_transient_failure_is_retried_a_few_times_before_the_recipient_is_left() {
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
    assert_eq!(persists.sender.mailer().attempts.load(Ordering::SeqCst), 4);
    assert_eq!(persists.queue.take().len(), 1, "handed back for a@x.io");
    assert_eq!(sent_to(&persists), ["b@x.io"]);
}

#[tokio::test]
async fn a_redelivered_message_sends_only_to_those_not_yet_sent() {
    // SES fails for one recipient and the hand-back is lost, so SQS redelivers the original.
    let mailer = RecordingMailer::failing([(
        "flaky@x.io".to_string(),
        SendError::Transient("timeout".into()),
    )]);
    let worker = worker_of(
        RecordingQueue {
            fail: true,
            ..Default::default()
        },
        directory(vec![]),
        mailer,
        FAST,
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
}

#[tokio::test]
async fn a_chunk_held_by_a_live_invocation_is_left_alone_and_a_lapsed_lease_is_taken_over() {
    let worker = worker(directory(vec![]), RecordingMailer::default());
    let chunk = delivery(&worker, &["a@x.io", "b@x.io"]).await;
    let alive = Holder {
        token: "alive".into(),
        lapses: in_a_minute(),
    };
    worker.store.hold(chunk.task_id, "p0-c0", alive);
    let busy = process(&worker, &Message::Delivery(chunk.clone())).await;
    assert!(matches!(busy, Err(WorkError::Busy(_))), "{busy:?}");
    assert!(
        sent_to(&worker).is_empty(),
        "a copy of a message being worked on sends nothing"
    );
    assert!(
        worker.queue.take().is_empty(),
        "and is reported failed, so SQS brings it back after the visibility timeout: if the \
         holder died, it is the only copy left"
    );

    let dead = Holder {
        token: "dead".into(),
        lapses: SystemTime::now() - Duration::from_secs(1),
    };
    worker.store.hold(chunk.task_id, "p0-c0", dead);
    process(&worker, &Message::Delivery(chunk.clone()))
        .await
        .unwrap();
    assert_eq!(sent_to(&worker), ["a@x.io", "b@x.io"]);
    assert_eq!(
        task(&worker, chunk.task_id).await.status,
        TaskStatus::Completed
    );
}

#[tokio::test]
async fn a_chunk_nobody_could_be_sent_to_fails_as_a_whole() {
    let mailer =
        RecordingMailer::failing([("a@x.io".to_string(), SendError::Transient("timeout".into()))]);
    let worker = worker(directory(vec![]), mailer);
    let chunk = Message::Delivery(delivery(&worker, &["a@x.io"]).await);
    let result = process(&worker, &chunk).await;
    assert!(matches!(result, Err(WorkError::Stalled(1))), "{result:?}");
    assert!(worker.queue.take().is_empty());
}

#[tokio::test]
async fn a_delivery_for_a_task_without_a_record_is_not_sent() {
    let worker = worker(directory(vec![]), RecordingMailer::default());
    let mut chunk = delivery(&worker, &["a@x.io"]).await;
    chunk.task_id = TaskId::generate();
    let result = process(&worker, &Message::Delivery(chunk)).await;
    assert!(
        matches!(result, Err(WorkError::UnknownTask(_))),
        "{result:?}"
    );
    assert!(sent_to(&worker).is_empty());
}

#[tokio::test(start_paused = true)]
async fn nothing_starts_that_cannot_finish_before_the_deadline_and_the_rest_is_handed_back() {
    // 10 emails/s, 80 recipients, 10 s: sends may start for 10 - 1 - 2 - 2 = 5 s, which is the
    // one-second burst (10) and 5 s at 10/s (50) at most.
    let policy = SendPolicy {
        emails_per_second: 10.0,
        max_in_flight: 4,
    };
    let worker = worker_with(directory(vec![]), RecordingMailer::default(), policy);
    let all = emails(80);
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    let chunk = Message::Delivery(delivery(&worker, &all).await);
    let body = chunk.encode();
    let started = Instant::now();
    let failed = worker
        .process_batch(
            &[QueueRecord {
                message_id: "m1",
                body: &body,
            }],
            SystemTime::now() + Duration::from_secs(10),
        )
        .await;
    let took = started.elapsed();

    assert!(failed.is_empty(), "running out of time is not a failure");
    assert!(
        took <= Duration::from_secs(9),
        "done before the deadline, with its margin: {took:?}"
    );
    let sent = sent_to(&worker).len();
    assert!((55..=61).contains(&sent), "sent {sent}");
    let handed_back = worker.queue.take();
    let [Message::Delivery(rest)] = handed_back.as_slice() else {
        panic!("the rest goes back on the queue: {handed_back:?}")
    };
    // The lease was given up: the next invocation goes on at once, with the rest.
    run_to_completion(&worker, Message::Delivery(rest.clone())).await;
    let mut all_sent = sent_to(&worker);
    all_sent.dedup();
    assert_eq!(all_sent.len(), 80, "everyone once");
    assert_eq!(worker.sender.mailer().recipients().len(), 80);
    assert_eq!(
        task(&worker, chunk.task_id()).await.status,
        TaskStatus::Completed
    );
}

#[tokio::test(start_paused = true)]
async fn records_that_do_not_fit_the_invocation_are_handed_back_at_once() {
    // 10 emails/s for 10 s: about 50 sends fit; of three chunks of 30, the first is taken.
    let policy = SendPolicy {
        emails_per_second: 10.0,
        max_in_flight: 4,
    };
    let worker = worker_with(directory(vec![]), RecordingMailer::default(), policy);
    let mut bodies = Vec::new();
    for chunk in 0..3 {
        let all: Vec<String> = (0..30).map(|i| format!("c{chunk}-{i}@x.io")).collect();
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        bodies.push(Message::Delivery(delivery(&worker, &all).await).encode());
    }
    let records: Vec<QueueRecord> = bodies
        .iter()
        .map(|body| QueueRecord {
            message_id: "m",
            body,
        })
        .collect();
    let failed = worker
        .process_batch(&records, SystemTime::now() + Duration::from_secs(10))
        .await;
    assert!(failed.is_empty());
    assert_eq!(sent_to(&worker).len(), 30, "the first chunk, whole");
    let handed_back = worker.queue.take();
    assert_eq!(
        handed_back.len(),
        2,
        "the other two, before the first was sent"
    );
    assert!(
        handed_back
            .iter()
            .all(|m| matches!(m, Message::Delivery(d) if d.attempt == 0))
    );
}

/// A mailer that checks the crash window on every send: of the emails it has accepted, all but
/// the window must be recorded in the store by the time it accepts another.
struct WindowCheckingMailer {
    store: MemoryStore,
    task_id: TaskId,
    accepted: AtomicUsize,
    worst: AtomicUsize,
}

impl Mailer for WindowCheckingMailer {
    async fn send(
        &self,
        _: TaskId,
        _: &EmailAddress,
        _: &RenderedEmail,
        _: Option<&Topic>,
    ) -> Result<(), SendError> {
        tokio::task::yield_now().await;
        let accepted = self.accepted.fetch_add(1, Ordering::SeqCst) + 1;
        let recorded = self
            .store
            .chunk(self.task_id, "p0-c0")
            .map_or(0, |p| p.sent.len());
        self.worst.fetch_max(accepted - recorded, Ordering::SeqCst);
        Ok(())
    }
}

#[tokio::test]
async fn at_any_instant_at_most_the_sends_in_flight_and_one_group_are_unrecorded() {
    let store = MemoryStore::default();
    let setup = worker(directory(vec![]), RecordingMailer::default());
    let all = emails(50);
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    let chunk = delivery(&setup, &all).await;
    // The task lives in `setup`'s store: copy it over by planning it again in `store`.
    store
        .create(chunk.task_id, TaskKind::Newsletter)
        .await
        .unwrap();
    let plan = PagePlan {
        chunks: vec![chunk.recipients.clone()],
        contacts: 50,
        ..PagePlan::default()
    };
    store.record_page(chunk.task_id, plan).await.unwrap();
    let policy = SendPolicy {
        emails_per_second: 100_000.0,
        max_in_flight: 6,
    };
    let mailer = WindowCheckingMailer {
        store: store.clone(),
        task_id: chunk.task_id,
        accepted: AtomicUsize::new(0),
        worst: AtomicUsize::new(0),
    };
    let worker = worker_of(
        RecordingQueue::default(),
        directory(vec![]),
        mailer,
        policy,
        store.clone(),
    );
    process(&worker, &Message::Delivery(chunk.clone()))
        .await
        .unwrap();
    let mailer = worker.sender.mailer();
    assert_eq!(mailer.accepted.load(Ordering::SeqCst), 50);
    let worst = mailer.worst.load(Ordering::SeqCst);
    assert!(
        worst <= 6 + SETTLE_GROUP,
        "unrecorded sends reached {worst}"
    );
    assert_eq!(
        store
            .get(chunk.task_id)
            .await
            .unwrap()
            .unwrap()
            .recipients
            .sent,
        50
    );
}

#[tokio::test]
async fn store_faults_in_the_middle_of_a_chunk_send_nobody_twice_and_leave_no_lease() {
    let faults = [
        (
            "a conflict on a record",
            vec![("record", vec![Fault::Fail, Fault::Fail])],
        ),
        (
            "a record applied, its answer lost",
            vec![("record", vec![Fault::LoseAnswer])],
        ),
        (
            "a conflict on the close",
            vec![("close", vec![Fault::Fail])],
        ),
        (
            "the close applied, its answer lost",
            vec![("close", vec![Fault::LoseAnswer])],
        ),
        (
            "the lease applied, its answer lost",
            vec![("lease", vec![Fault::LoseAnswer])],
        ),
    ];
    for (fault, faults) in faults {
        let worker = worker_of(
            RecordingQueue::default(),
            directory(vec![]),
            RecordingMailer::default(),
            FAST,
            FaultyStore::new(MemoryStore::default(), faults),
        );
        let all = emails(30);
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        let chunk = delivery(&worker, &all).await;
        process(&worker, &Message::Delivery(chunk.clone()))
            .await
            .unwrap();
        assert!(
            worker
                .store
                .injected
                .lock()
                .unwrap()
                .values()
                .sum::<usize>()
                > 0,
            "{fault}: injected"
        );
        let mut sent = sent_to(&worker);
        sent.dedup();
        assert_eq!(sent.len(), 30, "{fault}");
        assert_eq!(
            worker.sender.mailer().recipients().len(),
            30,
            "{fault}: nobody twice"
        );
        let done = task(&worker, chunk.task_id).await;
        assert_eq!(done.recipients, counts(30, 30, 0, 0), "{fault}");
        assert_eq!(done.status, TaskStatus::Completed, "{fault}");
        assert!(worker.queue.take().is_empty(), "{fault}: nothing left");
    }
}

#[tokio::test]
async fn a_store_that_keeps_failing_stops_the_chunk_within_the_window() {
    // Every record write fails: the chunk stops starting sends, and what was sent unrecorded
    // is at most the window; the message fails, and its retry (after the lease lapses) sends
    // those again and nobody else twice.
    let worker = worker_of(
        RecordingQueue::default(),
        directory(vec![]),
        RecordingMailer::default(),
        SendPolicy {
            emails_per_second: 100_000.0,
            max_in_flight: 4,
        },
        FaultyStore::new(
            MemoryStore::default(),
            [
                ("record", vec![Fault::Fail; 5]),
                ("release", vec![Fault::Fail; 5]),
            ],
        ),
    );
    let all = emails(50);
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    let chunk = delivery(&worker, &all).await;
    let result = process(&worker, &Message::Delivery(chunk.clone())).await;
    assert!(matches!(result, Err(WorkError::Store(_))), "{result:?}");
    assert_eq!(
        worker.store.injected.lock().unwrap()["record"],
        5,
        "one record write, retried"
    );
    let unrecorded = sent_to(&worker).len();
    assert!(
        unrecorded <= 4 + SETTLE_GROUP,
        "{unrecorded} sent before stopping"
    );

    let lapsed = Holder {
        token: "the dead invocation".into(),
        lapses: SystemTime::now() - Duration::from_secs(1),
    };
    worker.store.inner.hold(chunk.task_id, "p0-c0", lapsed);
    process(&worker, &Message::Delivery(chunk.clone()))
        .await
        .unwrap();
    let total = worker.sender.mailer().recipients().len();
    assert_eq!(total, 50 + unrecorded, "only the unrecorded ones twice");
    assert_eq!(task(&worker, chunk.task_id).await.recipients.sent, 50);
}

#[tokio::test]
async fn a_dead_lettered_delivery_is_accounted_once_and_left_for_a_redrive() {
    let mailer = RecordingMailer::failing([(
        "down@x.io".to_string(),
        SendError::Transient("SES is down".into()),
    )]);
    let worker = worker(directory(vec![]), mailer);
    let chunk = Message::Delivery(delivery(&worker, &["ok@x.io", "down@x.io", "late@x.io"]).await);
    // Its retries ran out (SES down, kills or timeouts: the sweep cannot tell, and need not).
    let dlq = MemoryDeadLetters::holding([chunk.encode()]);

    for _ in 0..2 {
        let report = worker.sweep_dead_letters(&dlq, in_a_minute()).await;
        assert_eq!((report.seen, report.accounted, report.deferred), (1, 1, 0));
    }
    assert_eq!(dlq.bodies(), [chunk.encode()], "left in the queue");
    let done = task(&worker, chunk.task_id()).await;
    assert_eq!(done.recipients, counts(3, 0, 0, 3), "counted once");
    assert_eq!(done.status, TaskStatus::CompletedWithErrors);
    assert_eq!(done.failures[0].part, "delivery p0-c0");

    // The outage ends; a redrive moves the message back and it is delivered to everyone, once.
    let healed = Dispatcher {
        sender: Sender::new(RecordingMailer::default(), FAST),
        ..worker
    };
    process(&healed, &chunk).await.unwrap();
    process(&healed, &chunk).await.unwrap();
    assert_eq!(sent_to(&healed), ["down@x.io", "late@x.io", "ok@x.io"]);
    let redriven = task(&healed, chunk.task_id()).await;
    assert_eq!(redriven.recipients, counts(3, 3, 0, 0));
    assert_eq!(redriven.status, TaskStatus::Completed);
    assert!(redriven.failures.is_empty());
}

#[tokio::test]
async fn a_dead_lettered_delivery_of_a_cancelled_task_is_counted_cancelled_not_failed() {
    let worker = worker(directory(vec![]), RecordingMailer::default());
    let chunk = Message::Delivery(delivery(&worker, &["a@x.io", "b@x.io"]).await);
    assert!(worker.store.cancel(chunk.task_id()).await.unwrap());
    let dlq = MemoryDeadLetters::holding([chunk.encode()]);
    let report = worker.sweep_dead_letters(&dlq, in_a_minute()).await;
    assert_eq!((report.seen, report.accounted), (1, 1));
    let done = task(&worker, chunk.task_id()).await;
    assert_eq!(done.recipients.cancelled, 2);
    assert_eq!(done.recipients.failed, 0);
    assert!(done.failures.is_empty(), "{:?}", done.failures);
    assert_eq!(done.status, TaskStatus::Cancelled);
    // A redrive of it sends nothing.
    process(&worker, &chunk).await.unwrap();
    assert!(sent_to(&worker).is_empty());
}

#[tokio::test]
async fn a_chunk_still_being_sent_is_not_accounted_by_the_sweep() {
    let worker = worker(directory(vec![]), RecordingMailer::default());
    let chunk = delivery(&worker, &["a@x.io"]).await;
    worker.store.hold(
        chunk.task_id,
        "p0-c0",
        Holder {
            token: "alive".into(),
            lapses: in_a_minute(),
        },
    );
    let dlq = MemoryDeadLetters::holding([Message::Delivery(chunk.clone()).encode()]);
    let report = worker.sweep_dead_letters(&dlq, in_a_minute()).await;
    assert_eq!((report.accounted, report.deferred), (0, 1));
    assert_eq!(task(&worker, chunk.task_id).await.recipients.failed, 0);
}

#[tokio::test]
async fn a_dead_lettered_job_stops_planning_or_finishes_queueing_what_it_counted() {
    // Page 1's job died before planning anything: planning ends at page 0.
    let worker = worker(three_pages(), RecordingMailer::default());
    let first = job(&worker, &["rust"]).await;
    process(&worker, &first).await.unwrap();
    let queued = worker.queue.take();
    let continuation = queued.last().unwrap().clone();
    for message in &queued[..queued.len() - 1] {
        process(&worker, message).await.unwrap();
    }
    let dlq = MemoryDeadLetters::holding([continuation.encode()]);
    worker.sweep_dead_letters(&dlq, in_a_minute()).await;
    let stopped = task(&worker, first.task_id()).await;
    assert_eq!(stopped.recipients, counts(60, 60, 0, 0));
    assert_eq!(stopped.status, TaskStatus::CompletedWithErrors);
    assert_eq!(stopped.failures[0].part, "planning page 1");

    // A redrive of that job plans the rest: the task reopens and completes cleanly.
    run_to_completion(&worker, continuation).await;
    let redriven = task(&worker, first.task_id()).await;
    assert_eq!(redriven.recipients, counts(180, 180, 0, 0));
    assert_eq!(redriven.status, TaskStatus::Completed);

    // A job that counted its page and died before queueing it: the sweep queues the plan.
    let worker = worker_of(
        RecordingQueue::failing_next([Fault::Fail]),
        directory(vec![vec![contact("a@x.io", &[])]]),
        RecordingMailer::default(),
        FAST,
        MemoryStore::default(),
    );
    let job = job(&worker, &["rust"]).await;
    assert!(process(&worker, &job).await.is_err());
    let dlq = MemoryDeadLetters::holding([job.encode()]);
    worker.sweep_dead_letters(&dlq, in_a_minute()).await;
    let queued = worker.queue.take();
    assert_eq!(queued.len(), 1, "the counted page's delivery");
    run_to_completion(&worker, queued[0].clone()).await;
    assert_eq!(
        task(&worker, job.task_id()).await.status,
        TaskStatus::Completed
    );
}

#[tokio::test]
async fn an_unreadable_dead_letter_is_recorded_on_its_task() {
    let worker = worker(directory(vec![]), RecordingMailer::default());
    let task_id = TaskId::generate();
    worker
        .store
        .create(task_id, TaskKind::Newsletter)
        .await
        .unwrap();
    let body =
        format!(r#"{{"version": 1, "kind": "job", "task_id": "{task_id}", "newsletter": "oops"}}"#);
    let dlq = MemoryDeadLetters::holding([body, "not even json".to_string()]);
    let report = worker.sweep_dead_letters(&dlq, in_a_minute()).await;
    assert_eq!((report.seen, report.accounted), (2, 2));
    let done = task(&worker, task_id).await;
    assert_eq!(done.status, TaskStatus::CompletedWithErrors);
    assert_eq!(done.failures[0].part, "unreadable message");
}

#[tokio::test]
async fn a_store_outage_fails_the_message() {
    let worker = worker_of(
        RecordingQueue::default(),
        directory(vec![vec![contact("a@x.io", &[])]]),
        RecordingMailer::default(),
        FAST,
        MemoryStore::unreachable(),
    );
    let job = Message::Job(Job {
        task_id: TaskId::generate(),
        newsletter: newsletter(&["rust"]),
        cursor: None,
        to: None,
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
async fn poison_records_are_reported_alone_not_panics() {
    let worker = worker(
        directory(vec![vec![contact("a@x.io", &[])]]),
        RecordingMailer::default(),
    );
    let good = job(&worker, &["rust"]).await.encode();
    let bodies = [
        "",
        "{}",
        r#"{"version": 9, "kind": "job"}"#,
        good.as_str(),
        r#"{"version": 1, "kind": "job"}"#,
    ];
    let records: Vec<QueueRecord> = bodies
        .iter()
        .map(|body| QueueRecord {
            message_id: "m",
            body,
        })
        .collect();
    let failed = worker.process_batch(&records, in_a_minute()).await;
    assert_eq!(failed, [0, 1, 2, 4]);
    assert_eq!(worker.queue.take().len(), 1, "the good job was planned");
}

#[tokio::test]
async fn sends_never_exceed_the_in_flight_bound() {
    let policy = SendPolicy {
        emails_per_second: 100_000.0,
        max_in_flight: 3,
    };
    let worker = worker_with(directory(vec![]), RecordingMailer::default(), policy);
    let all = emails(40);
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    let chunk = Message::Delivery(delivery(&worker, &all).await);
    process(&worker, &chunk).await.unwrap();
    let mailer = worker.sender.mailer();
    assert_eq!(mailer.recipients().len(), 40);
    let peak = mailer.max_in_flight_seen.load(Ordering::SeqCst);
    assert!((2..=3).contains(&peak), "peak in flight {peak}");
}

#[tokio::test(start_paused = true)]
async fn the_send_rate_is_held_to_the_policy() {
    // 40 emails/s with a burst of 40: 100 emails cannot finish in under (100 - 40) / 40 = 1.5 s.
    let policy = SendPolicy {
        emails_per_second: 40.0,
        max_in_flight: 16,
    };
    let worker = worker_with(directory(vec![]), RecordingMailer::default(), policy);
    let all = emails(100);
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    let chunk = Message::Delivery(delivery(&worker, &all).await);
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

#[test]
fn the_budget_keeps_a_reserve_and_a_margin_before_the_deadline() {
    let (sending, send_timeout, reserve) = Budget::split(Duration::from_secs(60));
    assert_eq!(
        (sending, send_timeout, reserve),
        (
            Duration::from_secs(53),
            Duration::from_secs(3),
            Duration::from_secs(3)
        )
    );
    // A short deadline (a test's) scales the reserves down rather than leaving no time at all.
    let (sending, send_timeout, reserve) = Budget::split(Duration::from_secs(5));
    assert_eq!(
        sending + send_timeout + reserve,
        Duration::from_millis(4500)
    );
    assert!(sending >= Duration::from_millis(2500));
}

#[tokio::test]
async fn a_job_of_a_withdrawn_task_is_dropped_without_reading_the_contact_list() {
    let worker = worker(
        directory(vec![vec![contact("a@x.io", &[])]]),
        RecordingMailer::default(),
    );
    let job = job(&worker, &["rust"]).await;
    worker.store.withdraw(job.task_id()).await.unwrap();

    process(&worker, &job)
        .await
        .expect("dropped, not failed: nothing is retried");

    assert!(worker.queue.take().is_empty(), "no delivery is queued");
    assert!(worker.directory.requests.lock().unwrap().is_empty());
    let withdrawn = task(&worker, job.task_id()).await;
    assert_eq!(withdrawn.status, TaskStatus::Withdrawn);
    assert_eq!(withdrawn.recipients, Recipients::default());
}

#[tokio::test]
async fn a_job_for_a_task_without_a_record_fails_without_reading_the_contact_list() {
    let worker = worker(
        directory(vec![vec![contact("a@x.io", &[])]]),
        RecordingMailer::default(),
    );
    let job = Message::Job(Job {
        task_id: TaskId::generate(),
        newsletter: newsletter(&["rust"]),
        cursor: None,
        to: None,
    });

    let result = process(&worker, &job).await;

    assert!(
        matches!(result, Err(WorkError::UnknownTask(_))),
        "reported failed, so it ends in the dead-letter queue: {result:?}"
    );
    assert!(worker.queue.take().is_empty());
    assert!(worker.directory.requests.lock().unwrap().is_empty());
}

/// A contact list whose read withdraws a task first, as an accept that gives up on its job
/// does while the worker plans it.
struct WithdrawingDirectory {
    inner: PagedDirectory,
    store: MemoryStore,
    task_id: TaskId,
}

impl ContactDirectory for WithdrawingDirectory {
    async fn topic_defaults(&self) -> Result<TopicDefaults, DirectoryError> {
        self.inner.topic_defaults().await
    }

    async fn page(
        &self,
        token: Option<&str>,
        opted_into: Option<&Topic>,
    ) -> Result<ContactPage, DirectoryError> {
        self.store.withdraw(self.task_id).await.unwrap();
        self.inner.page(token, opted_into).await
    }

    async fn contact(&self, address: &EmailAddress) -> Result<Option<Contact>, DirectoryError> {
        self.inner.contact(address).await
    }
}

#[tokio::test]
async fn a_task_withdrawn_while_its_page_is_read_is_not_planned() {
    let store = MemoryStore::default();
    let task_id = TaskId::generate();
    store.create(task_id, TaskKind::Newsletter).await.unwrap();
    let directory = WithdrawingDirectory {
        inner: directory(vec![vec![contact("a@x.io", &[])]]),
        store: store.clone(),
        task_id,
    };
    let worker = Dispatcher::new(
        RecordingQueue::default(),
        directory,
        Sender::new(RecordingMailer::default(), FAST),
        store.clone(),
        50,
    );
    let job = Message::Job(Job {
        task_id,
        newsletter: newsletter(&["rust"]),
        cursor: None,
        to: None,
    });
    let budget = budget();

    worker
        .process(&job, &budget, &holder(&budget))
        .await
        .expect("dropped, not failed");

    assert!(worker.queue.take().is_empty(), "no delivery is queued");
    let withdrawn = store.get(task_id).await.unwrap().unwrap();
    assert_eq!(withdrawn.status, TaskStatus::Withdrawn);
    assert_eq!(withdrawn.recipients.planned, 0, "nothing counted");
    assert_eq!(
        store.page_state(task_id, 0).await.unwrap(),
        PageState::Unplanned
    );
}

#[tokio::test]
async fn a_dead_lettered_job_of_a_withdrawn_task_leaves_it_withdrawn() {
    let worker = worker(directory(vec![]), RecordingMailer::default());
    let job = job(&worker, &["rust"]).await;
    worker.store.withdraw(job.task_id()).await.unwrap();
    let dlq = MemoryDeadLetters::holding([job.encode()]);

    let report = worker.sweep_dead_letters(&dlq, in_a_minute()).await;

    assert_eq!((report.seen, report.accounted), (1, 1));
    let withdrawn = task(&worker, job.task_id()).await;
    assert_eq!(withdrawn.status, TaskStatus::Withdrawn, "not completed");
    assert!(withdrawn.failures.is_empty(), "{:?}", withdrawn.failures);
}

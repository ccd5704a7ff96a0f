//! `submit` and the worker on one in-memory queue and store, with the queue losing answers
//! where SQS can: after it stored the job. What counts is what subscribers get.

use super::*;
use crate::audience::{Contact, Subscription, TopicDefaults};
use crate::dispatch::{Dispatcher, QueueRecord};
use crate::domain::{TaskKind, TaskStatus};
use crate::ports::ContactPage;
use crate::sending::{SendPolicy, Sender};
use crate::testing::fakes::{Fault, FaultyStore, MemoryStore, PagedDirectory, RecordingMailer};
use serde_json::json;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::UNIX_EPOCH;

const SUBSCRIBERS: [&str; 3] = ["a@x.io", "b@x.io", "c@x.io"];

/// The jobs queue, shared by accept and the worker as SQS is.
#[derive(Debug, Default, Clone)]
struct Sqs(Arc<Mutex<VecDeque<Message>>>);

impl MessageQueue for Sqs {
    async fn send(&self, message: &Message) -> Result<(), QueueError> {
        self.send_all(std::slice::from_ref(message)).await
    }

    async fn send_all(&self, messages: &[Message]) -> Result<(), QueueError> {
        self.0.lock().unwrap().extend(messages.iter().cloned());
        Ok(())
    }
}

type TestWorker = Dispatcher<Sqs, PagedDirectory, RecordingMailer, MemoryStore>;

struct System {
    sqs: Sqs,
    store: MemoryStore,
    worker: TestWorker,
}

impl System {
    fn new() -> Self {
        let sqs = Sqs::default();
        let store = MemoryStore::default();
        let directory = PagedDirectory {
            defaults: TopicDefaults([("rust".into(), Subscription::OptIn)].into()),
            pages: vec![ContactPage {
                contacts: SUBSCRIBERS
                    .iter()
                    .map(|email| Contact {
                        email: (*email).into(),
                        unsubscribe_all: false,
                        preferences: Vec::new(),
                    })
                    .collect(),
                next_token: None,
            }],
            ..Default::default()
        };
        let policy = SendPolicy {
            emails_per_second: 100_000.0,
            max_in_flight: 8,
        };
        let worker = Dispatcher::new(
            sqs.clone(),
            directory,
            Sender::new(RecordingMailer::default(), policy),
            store.clone(),
            50,
        );
        Self { sqs, store, worker }
    }

    /// Runs the worker on everything queued, as Lambda's trigger does, until nothing is left;
    /// returns how many messages it reported failed (each would be retried, then dead-lettered).
    async fn drain(&self) -> usize {
        let mut failed = 0;
        loop {
            let Some(message) = self.sqs.0.lock().unwrap().pop_front() else {
                return failed;
            };
            let body = message.encode();
            let record = QueueRecord {
                message_id: "m",
                body: &body,
            };
            let deadline = SystemTime::now() + Duration::from_secs(60);
            failed += self.worker.process_batch(&[record], deadline).await.len();
        }
    }

    /// Every email sent, by recipient, sorted.
    fn emails(&self) -> Vec<String> {
        let mut recipients = self.worker.sender().mailer().recipients();
        recipients.sort();
        recipients
    }

    fn queued(&self) -> usize {
        self.sqs.0.lock().unwrap().len()
    }
}

/// How accept's `SendMessage` goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Send {
    /// Stored and answered.
    Answered,
    /// Stored; the answer is lost.
    Lost,
    /// Stored, and the worker is quick: it has done the job by the time accept's SDK gives up
    /// waiting for the lost answer.
    LostAfterTheWorkerRan,
    /// Stored; the answer never comes.
    Stalled,
}

/// Accept's view of the jobs queue: the system's, with the answers `sends` says.
struct AcceptQueue<'a> {
    system: &'a System,
    sends: Mutex<VecDeque<Send>>,
}

impl<'a> AcceptQueue<'a> {
    fn new(system: &'a System, sends: impl IntoIterator<Item = Send>) -> Self {
        Self {
            system,
            sends: Mutex::new(sends.into_iter().collect()),
        }
    }
}

impl MessageQueue for AcceptQueue<'_> {
    async fn send(&self, message: &Message) -> Result<(), QueueError> {
        self.send_all(std::slice::from_ref(message)).await
    }

    async fn send_all(&self, messages: &[Message]) -> Result<(), QueueError> {
        let send = self.sends.lock().unwrap().pop_front();
        self.system.sqs.send_all(messages).await?;
        match send.unwrap_or(Send::Answered) {
            Send::Answered => Ok(()),
            Send::Lost => Err(QueueError("timed out waiting for the answer".into())),
            Send::LostAfterTheWorkerRan => {
                self.system.drain().await;
                Err(QueueError("timed out waiting for the answer".into()))
            }
            Send::Stalled => std::future::pending().await,
        }
    }
}

fn body() -> Vec<u8> {
    json!({
        "subject": "Weekly",
        "sections": [{"topic": "rust", "title": "News", "body": "text"}]
    })
    .to_string()
    .into_bytes()
}

fn key() -> IdempotencyKey {
    IdempotencyKey::parse("order-42").unwrap()
}

async fn post<S: TaskStore + IdempotencyStore>(
    queue: &AcceptQueue<'_>,
    store: &S,
    key: Option<&IdempotencyKey>,
) -> Result<TaskId, SubmitError> {
    submit(queue, store, &body(), key, &Deadline::of_invocation(None)).await
}

async fn status(system: &System, task_id: TaskId) -> Option<TaskStatus> {
    Some(system.store.get(task_id).await.unwrap()?.status)
}

#[tokio::test]
async fn a_keyed_retry_after_a_lost_answer_never_sends_twice_when_the_worker_was_quick() {
    let system = System::new();
    let queue = AcceptQueue::new(&system, [Send::LostAfterTheWorkerRan]);

    let first = post(&queue, &system.store, Some(&key())).await;
    let retry = post(&queue, &system.store, Some(&key())).await;
    system.drain().await;

    let first = first.expect("the worker had started the job: it is accepted after all");
    assert_eq!(retry.unwrap(), first, "the retry is a replay");
    assert_eq!(system.emails(), SUBSCRIBERS, "one email each");
    assert_eq!(status(&system, first).await, Some(TaskStatus::Completed));
}

#[tokio::test]
async fn a_keyed_retry_after_a_lost_answer_never_sends_twice_when_the_job_waits() {
    let system = System::new();
    let queue = AcceptQueue::new(&system, [Send::Lost]);

    let first = post(&queue, &system.store, Some(&key())).await;
    assert!(matches!(first, Err(SubmitError::Queue(_))), "{first:?}");
    let retry = post(&queue, &system.store, Some(&key()))
        .await
        .expect("the key was given back with the task withdrawn");
    assert_eq!(system.queued(), 2, "the lost one's job is on the queue too");
    assert_eq!(
        system.drain().await,
        0,
        "the withdrawn job is dropped, not failed"
    );

    assert_eq!(system.emails(), SUBSCRIBERS, "one email each");
    assert_eq!(status(&system, retry).await, Some(TaskStatus::Completed));
}

#[tokio::test]
async fn without_a_key_a_503_is_never_followed_by_a_delivery() {
    let system = System::new();
    let queue = AcceptQueue::new(&system, [Send::Lost]);

    let result = post(&queue, &system.store, None).await;
    assert!(matches!(result, Err(SubmitError::Queue(_))), "{result:?}");
    assert_eq!(system.queued(), 1, "SQS stored the job");
    system.drain().await;

    assert!(system.emails().is_empty(), "{:?}", system.emails());
    assert_eq!(system.store.task_count(), 1);
}

#[tokio::test]
async fn without_a_key_a_job_the_worker_did_at_once_is_answered_202() {
    let system = System::new();
    let queue = AcceptQueue::new(&system, [Send::LostAfterTheWorkerRan]);

    let task_id = post(&queue, &system.store, None)
        .await
        .expect("its delivery is under way: 202, not a 503 the caller would retry");

    assert_eq!(system.emails(), SUBSCRIBERS);
    assert_eq!(status(&system, task_id).await, Some(TaskStatus::Completed));
}

#[tokio::test]
async fn a_task_that_cannot_be_withdrawn_is_named_in_the_error_and_keeps_its_key() {
    let system = System::new();
    let store = FaultyStore::new(system.store.clone(), [("withdraw", vec![Fault::Fail])]);
    let queue = AcceptQueue::new(&system, [Send::Lost]);

    let result = post(&queue, &store, Some(&key())).await;

    let Err(SubmitError::InDoubt { task_id, .. }) = result else {
        panic!("expected the task in doubt, got {result:?}");
    };
    assert_eq!(status(&system, task_id).await, Some(TaskStatus::Accepted));
    assert_eq!(
        system.store.key_holder("order-42"),
        Some(task_id),
        "the key stays reserved: its job may go ahead"
    );
}

#[tokio::test(start_paused = true)]
async fn a_key_in_doubt_is_409_while_its_request_may_run_then_recovered() {
    let system = System::new();
    let store = FaultyStore::new(system.store.clone(), [("withdraw", vec![Fault::Fail])]);
    let queue = AcceptQueue::new(&system, [Send::Lost]);
    let Err(SubmitError::InDoubt { task_id: dead, .. }) = post(&queue, &store, Some(&key())).await
    else {
        panic!("expected the task in doubt");
    };

    let early = post(&queue, &store, Some(&key())).await;
    assert!(matches!(early, Err(SubmitError::KeyInFlight)), "{early:?}");

    // Its request's deadline (and the skew) have passed.
    system
        .store
        .set_running_until("order-42", SystemTime::now() - Duration::from_secs(1));
    let recovered = post(&queue, &store, Some(&key()))
        .await
        .expect("the key is recovered");
    assert_ne!(recovered, dead);
    assert_eq!(status(&system, dead).await, Some(TaskStatus::Withdrawn));
    assert_eq!(system.drain().await, 0);
    assert_eq!(system.emails(), SUBSCRIBERS, "one email each");
    assert_eq!(
        post(&queue, &store, Some(&key())).await.unwrap(),
        recovered,
        "later retries replay the recovered task"
    );
}

#[tokio::test]
async fn a_key_left_pending_by_a_request_that_died_recovers_at_once() {
    let system = System::new();
    // A request reserved the key and recorded its task, then its invocation was stopped.
    let dead = TaskId::generate();
    let fingerprint = fingerprint(
        &Newsletter::from_json(&serde_json::from_slice(&body()).unwrap()).unwrap(),
        None,
    );
    let gone = SystemTime::now() - Duration::from_secs(1);
    system
        .store
        .reserve("order-42", &fingerprint, dead, gone)
        .await
        .unwrap();
    system
        .store
        .create(dead, TaskKind::Newsletter)
        .await
        .unwrap();
    let queue = AcceptQueue::new(&system, []);

    let task_id = post(&queue, &system.store, Some(&key()))
        .await
        .expect("a 202 now, not a 409 for the key's 24 hours");

    assert_ne!(task_id, dead);
    assert_eq!(status(&system, dead).await, Some(TaskStatus::Withdrawn));
    system.drain().await;
    assert_eq!(system.emails(), SUBSCRIBERS);
}

#[tokio::test]
async fn a_key_whose_dead_request_queued_its_job_answers_with_that_task() {
    let system = System::new();
    let fingerprint = fingerprint(
        &Newsletter::from_json(&serde_json::from_slice(&body()).unwrap()).unwrap(),
        None,
    );
    // The request queued its job (the worker has done it) and died before marking its key.
    let dead = TaskId::generate();
    let gone = SystemTime::now() - Duration::from_secs(1);
    system
        .store
        .reserve("order-42", &fingerprint, dead, gone)
        .await
        .unwrap();
    system
        .store
        .create(dead, TaskKind::Newsletter)
        .await
        .unwrap();
    let job = Message::Job(Job {
        task_id: dead,
        newsletter: Newsletter::from_json(&serde_json::from_slice(&body()).unwrap()).unwrap(),
        cursor: None,
        to: None,
    });
    system.sqs.send(&job).await.unwrap();
    system.drain().await;

    let task_id = post(&AcceptQueue::new(&system, []), &system.store, Some(&key()))
        .await
        .unwrap();

    assert_eq!(
        task_id, dead,
        "its job was queued: the original task is the answer"
    );
    assert_eq!(system.queued(), 0, "nothing queued again");
    assert_eq!(system.emails(), SUBSCRIBERS);
}

#[tokio::test(start_paused = true)]
async fn a_queue_that_never_answers_is_a_503_before_the_deadline() {
    let system = System::new();
    let queue = AcceptQueue::new(&system, [Send::Stalled]);
    let deadline = Deadline::of_invocation(Some(SystemTime::now() + Duration::from_secs(10)));
    let started = Instant::now();

    let result = tokio::time::timeout(
        Duration::from_secs(60),
        submit(&queue, &system.store, &body(), Some(&key()), &deadline),
    )
    .await
    .expect("submit answers by itself");

    assert!(matches!(result, Err(SubmitError::Queue(_))), "{result:?}");
    assert!(
        started.elapsed() <= Duration::from_millis(9700),
        "answered {:?} after the start, with the answer's margin kept",
        started.elapsed()
    );
    assert_eq!(system.store.key_count(), 0, "the key is given back");
    system.drain().await;
    assert!(system.emails().is_empty(), "the stalled job is withdrawn");
}

#[tokio::test(start_paused = true)]
async fn a_store_that_stops_answering_after_the_queue_failed_still_gets_an_answer_in_time() {
    let system = System::new();
    let queue = AcceptQueue::new(&system, [Send::Stalled]);
    let store = FaultyStore::new(system.store.clone(), [("withdraw", vec![Fault::Stall])]);
    let deadline = Deadline::of_invocation(Some(SystemTime::now() + Duration::from_secs(10)));
    let started = Instant::now();

    let result = tokio::time::timeout(
        Duration::from_secs(60),
        submit(&queue, &store, &body(), None, &deadline),
    )
    .await
    .expect("submit answers by itself");

    let Err(SubmitError::InDoubt { task_id, .. }) = result else {
        panic!("expected the task in doubt, got {result:?}");
    };
    assert!(started.elapsed() <= Duration::from_millis(9700));
    assert_eq!(status(&system, task_id).await, Some(TaskStatus::Accepted));
}

#[test]
fn without_an_invocation_deadline_a_request_gets_the_function_timeout() {
    // cargo lambda watch sends the timeout as a duration: 600000 ms after the epoch.
    for missing in [
        None,
        Some(UNIX_EPOCH),
        Some(UNIX_EPOCH + Duration::from_millis(600_000)),
    ] {
        let deadline = Deadline::of_invocation(missing);
        let limit = deadline.at.duration_since(SystemTime::now()).unwrap();
        assert!(limit > Duration::from_secs(9) && limit <= DEFAULT_TIME_LIMIT);
        assert!(deadline.calls_end < deadline.settle_end);
    }
    let short = Deadline::of_invocation(Some(SystemTime::now() + Duration::from_secs(1)));
    assert!(
        short.calls_end > Instant::now() + Duration::from_millis(600),
        "a short limit scales the reserves down"
    );
}

fn test_body(to: serde_json::Value) -> Vec<u8> {
    json!({
        "subject": "Weekly",
        "sections": [{"topic": "rust", "title": "News", "body": "text"}],
        "to": to
    })
    .to_string()
    .into_bytes()
}

#[tokio::test]
async fn a_test_send_reaches_its_addresses_alone_as_a_task_of_its_own() {
    let system = System::new();
    let deadline = Deadline::of_invocation(None);
    let body = test_body(json!(["b@x.io", "new@y.io"]));

    let task_id = submit_test(&system.sqs, &system.store, &body, None, &deadline)
        .await
        .unwrap();
    let queued: Vec<Message> = system.sqs.0.lock().unwrap().iter().cloned().collect();
    let [Message::Job(job)] = queued.as_slice() else {
        panic!("one job: {queued:?}")
    };
    assert_eq!(job.to.as_ref().map(|to| to.addresses().len()), Some(2));
    assert_eq!(system.drain().await, 0);

    assert_eq!(
        system.emails(),
        ["b@x.io", "new@y.io"],
        "not a@x.io, c@x.io"
    );
    let task = system.store.get(task_id).await.unwrap().unwrap();
    assert_eq!(task.kind, TaskKind::Test);
    assert_eq!(task.status, TaskStatus::Completed);
    assert_eq!((task.recipients.planned, task.recipients.sent), (2, 2));
}

#[tokio::test]
async fn a_test_send_with_bad_addresses_names_each_and_queues_nothing() {
    let system = System::new();
    let deadline = Deadline::of_invocation(None);
    for (to, pointers) in [
        (json!(null), vec!["#/to"]),
        (json!([]), vec!["#/to"]),
        (json!(["a@x.io", "nope", "a@x.io"]), vec!["#/to/1"]),
        (json!(["a@x.io", "A@x.io"]), vec!["#/to/1"]),
    ] {
        let body = if to.is_null() { body() } else { test_body(to) };
        let Err(SubmitError::Request(RequestError::Invalid(errors))) =
            submit_test(&system.sqs, &system.store, &body, None, &deadline).await
        else {
            panic!("expected invalid fields")
        };
        let found: Vec<&str> = errors.iter().map(|e| e.pointer.as_str()).collect();
        assert_eq!(found, pointers);
    }
    // The newsletter's own errors come with the addresses'.
    let body = json!({"subject": "", "sections": [], "to": ["x"]}).to_string();
    let Err(SubmitError::Request(RequestError::Invalid(errors))) =
        submit_test(&system.sqs, &system.store, body.as_bytes(), None, &deadline).await
    else {
        panic!("expected invalid fields")
    };
    let found: Vec<&str> = errors.iter().map(|e| e.pointer.as_str()).collect();
    assert_eq!(found, ["#/subject", "#/sections", "#/to/0"]);
    // `to` belongs to test sends: a newsletter with it is refused as before.
    assert!(matches!(
        submit(
            &system.sqs,
            &system.store,
            &test_body(json!(["a@x.io"])),
            None,
            &deadline
        )
        .await,
        Err(SubmitError::Request(RequestError::Invalid(_)))
    ));
    assert_eq!(system.queued(), 0);
}

#[tokio::test]
async fn a_test_send_key_replays_only_the_same_addresses() {
    let system = System::new();
    let deadline = Deadline::of_invocation(None);
    let key = IdempotencyKey::parse("test-1").unwrap();
    let first = test_body(json!(["a@x.io"]));
    let task_id = submit_test(&system.sqs, &system.store, &first, Some(&key), &deadline)
        .await
        .unwrap();
    let again = submit_test(&system.sqs, &system.store, &first, Some(&key), &deadline).await;
    assert_eq!(again.unwrap(), task_id);
    let other = test_body(json!(["b@x.io"]));
    assert!(matches!(
        submit_test(&system.sqs, &system.store, &other, Some(&key), &deadline).await,
        Err(SubmitError::KeyReused)
    ));
    assert!(matches!(
        submit(&system.sqs, &system.store, &body(), Some(&key), &deadline).await,
        Err(SubmitError::KeyReused)
    ));
    assert_eq!(system.queued(), 1);
}

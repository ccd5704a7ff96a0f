//! Pause, resume and cancel on the in-memory fakes, through the worker's real dispatcher and
//! sender.

use super::*;
use crate::audience::Subscription::OptIn;
use crate::audience::{Contact, TopicDefaults};
use crate::dispatch::{Dispatcher, QueueRecord};
use crate::domain::{Newsletter, Recipients, TaskKind};
use crate::message::Job;
use crate::ports::{ContactPage, PlanStore};
use crate::sending::{CONTROL_CHECK_INTERVAL, SendPolicy, Sender};
use crate::testing::fakes::{MemoryStore, PagedDirectory, RecordingMailer, RecordingQueue};
use std::time::{Duration, SystemTime};

type Worker = Dispatcher<RecordingQueue, PagedDirectory, RecordingMailer, MemoryStore>;

/// Slow enough that a chunk of 50 takes 5 s of (virtual) time: a pause lands mid-chunk.
const POLICY: SendPolicy = SendPolicy {
    emails_per_second: 10.0,
    max_in_flight: 4,
};

fn worker(contacts: usize) -> Worker {
    paged_worker(1, contacts)
}

/// A recorded task and its job.
async fn task_and_job(store: &MemoryStore) -> (TaskId, Message) {
    let task_id = TaskId::generate();
    store.create(task_id, TaskKind::Newsletter).await.unwrap();
    let newsletter = Newsletter::from_json(&serde_json::json!({
        "subject": "Weekly",
        "sections": [{"topic": "rust", "title": "Rust", "body": "text"}],
    }))
    .unwrap();
    let job = Message::Job(Job {
        task_id,
        newsletter,
        cursor: None,
        to: None,
    });
    (task_id, job)
}

/// Runs one message through the worker as one SQS record; `true` if it was reported failed.
async fn run(worker: &Worker, message: &Message) -> bool {
    let body = message.encode();
    let record = QueueRecord {
        message_id: "m-1",
        body: &body,
    };
    let deadline = SystemTime::now() + Duration::from_secs(60);
    !worker.process_batch(&[record], deadline).await.is_empty()
}

/// Runs everything on the queue, and what that queues, until it is empty.
async fn drain(worker: &Worker, queue: &RecordingQueue) {
    let mut pending = queue.take();
    while let Some(message) = pending.pop() {
        assert!(!run(worker, &message).await, "a message failed");
        pending.extend(queue.take());
    }
}

fn sent(mailer: &RecordingMailer) -> Vec<String> {
    let mut recipients = mailer.recipients();
    recipients.sort();
    recipients
}

#[tokio::test(start_paused = true)]
async fn a_pause_mid_chunk_stops_it_within_the_bound_and_a_resume_sends_everyone_once() {
    let worker = worker(50);
    let (store, queue) = (worker_store(&worker), worker_queue(&worker));
    let mailer = worker_mailer(&worker);
    let (task_id, job) = task_and_job(&store).await;
    assert!(!run(&worker, &job).await);
    let chunk = queue.take();
    assert_eq!(chunk.len(), 1, "one chunk of 50");

    // The pause lands 1 s into the chunk, from another caller (accept, in production).
    let pausing = {
        let (store, mailer) = (store.clone(), mailer.clone());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let before = mailer.recipients().len();
            let paused = pause(&store, task_id).await.unwrap();
            (before, paused)
        })
    };
    assert!(
        !run(&worker, &chunk[0]).await,
        "a halted chunk is no failure"
    );
    let (sent_before_pause, paused) = pausing.await.unwrap();
    assert_eq!(paused.status, TaskStatus::Paused);
    assert_eq!(paused.pause.map(|p| p.code), Some(PauseCode::Requested));

    let sent_at_stop = mailer.recipients().len();
    assert!(sent_at_stop < 50, "the chunk stopped: {sent_at_stop} sent");
    // In flight + rate x (interval + the limiter's 1 s burst).
    let bound = POLICY.max_in_flight
        + (POLICY.emails_per_second * (CONTROL_CHECK_INTERVAL.as_secs_f64() + 1.0)) as usize;
    assert!(
        sent_at_stop - sent_before_pause <= bound,
        "{} sent after the pause, bound {bound}",
        sent_at_stop - sent_before_pause
    );
    let held = store.get(task_id).await.unwrap().unwrap();
    assert_eq!(held.recipients.failed, 0, "nobody failed for a pause");
    assert_eq!(store.parked(task_id).await.unwrap().len(), 1, "parked");
    assert!(queue.take().is_empty(), "nothing left on the queue");
    let recorded = store.chunk(task_id, "p0-c0").unwrap();
    assert_eq!(recorded.sent.len(), sent_at_stop, "every send recorded");

    // Paused, nothing sends: a copy of the chunk that comes back is parked again.
    assert!(!run(&worker, &chunk[0]).await);
    assert_eq!(mailer.recipients().len(), sent_at_stop);

    let resumed = resume(queue, &store, task_id).await.unwrap();
    assert!(resumed.resumed);
    assert_eq!(resumed.requeued, 1);
    assert_eq!(resumed.task.status, TaskStatus::Sending);
    drain(&worker, queue).await;
    let done = store.get(task_id).await.unwrap().unwrap();
    assert_eq!(done.status, TaskStatus::Completed);
    assert_eq!(done.recipients.sent, 50);
    let mut expected: Vec<String> = (0..50).map(|i| format!("u{i}@x.io")).collect();
    expected.sort();
    assert_eq!(sent(&mailer), expected, "everyone once, nobody skipped");
}

#[tokio::test(start_paused = true)]
async fn a_task_paused_before_planning_parks_every_chunk_and_sends_nothing() {
    let worker = worker(120);
    let (store, queue) = (worker_store(&worker), worker_queue(&worker));
    let (task_id, job) = task_and_job(&store).await;
    let paused = pause(&store, task_id).await.unwrap();
    assert_eq!(paused.status, TaskStatus::Paused, "an accepted task pauses");
    assert!(!run(&worker, &job).await, "planning goes on while paused");
    drain(&worker, queue).await;
    assert!(worker_mailer(&worker).recipients().is_empty());
    assert_eq!(store.parked(task_id).await.unwrap().len(), 3);

    assert_eq!(resume(queue, &store, task_id).await.unwrap().requeued, 3);
    drain(&worker, queue).await;
    assert_eq!(sent(&worker_mailer(&worker)).len(), 120);
    let done = store.get(task_id).await.unwrap().unwrap();
    assert_eq!(done.status, TaskStatus::Completed);
}

#[tokio::test]
async fn pausing_a_paused_task_and_resuming_a_running_one_change_nothing() {
    let store = MemoryStore::default();
    let queue = &RecordingQueue::default();
    let (task_id, _) = task_and_job(&store).await;
    // SES paused it first: that reason stays, and the requested pause is a no-op.
    assert!(
        store
            .pause(task_id, PauseCode::SendingPaused)
            .await
            .unwrap()
    );
    let again = pause(&store, task_id).await.unwrap();
    assert_eq!(again.pause.map(|p| p.code), Some(PauseCode::SendingPaused));
    // The same resume ends it.
    let resumed = resume(queue, &store, task_id).await.unwrap();
    assert!(resumed.resumed);
    assert_eq!(resumed.task.pause, None);
    let running = resume(queue, &store, task_id).await.unwrap();
    assert!(!running.resumed, "a running task is left as it is");
    assert_eq!(running.requeued, 0);
    assert_eq!(running.task.status, TaskStatus::Accepted);
    assert!(queue.take().is_empty());
}

#[tokio::test]
async fn a_finished_task_is_refused_and_an_unknown_one_is_not_found() {
    let store = MemoryStore::default();
    let queue = &RecordingQueue::default();
    let (task_id, _) = task_and_job(&store).await;
    store
        .record_page(
            task_id,
            crate::planning::PagePlan {
                page: 0,
                chunks: Vec::new(),
                contacts: 0,
                skipped: 0,
                invalid_addresses: 0,
                next_token: None,
                unmatched_topics: Vec::new(),
            },
        )
        .await
        .unwrap();
    assert!(store.finish(task_id, TaskStatus::Completed).await.unwrap());
    assert!(matches!(
        pause(&store, task_id).await,
        Err(ControlError::Finished(TaskStatus::Completed))
    ));
    assert!(matches!(
        resume(queue, &store, task_id).await,
        Err(ControlError::Finished(TaskStatus::Completed))
    ));
    let withdrawn = TaskId::generate();
    store.create(withdrawn, TaskKind::Newsletter).await.unwrap();
    store.withdraw(withdrawn).await.unwrap();
    assert!(matches!(
        pause(&store, withdrawn).await,
        Err(ControlError::Finished(TaskStatus::Withdrawn))
    ));
    let unknown = TaskId::generate();
    assert!(matches!(
        pause(&store, unknown).await,
        Err(ControlError::NotFound(id)) if id == unknown
    ));
    assert!(matches!(
        resume(queue, &store, unknown).await,
        Err(ControlError::NotFound(_))
    ));
}

/// A worker whose contact list comes in `pages` pages of `per_page` contacts, `u0@x.io` on.
fn paged_worker(pages: usize, per_page: usize) -> Worker {
    let pages = (0..pages)
        .map(|page| ContactPage {
            contacts: (0..per_page)
                .map(|i| Contact {
                    email: format!("u{}@x.io", page * per_page + i),
                    unsubscribe_all: false,
                    preferences: Default::default(),
                })
                .collect(),
            next_token: (page + 1 < pages).then(|| format!("t{}", page + 1)),
        })
        .collect();
    let directory = PagedDirectory {
        defaults: TopicDefaults([("rust".into(), OptIn)].into()),
        pages,
        ..Default::default()
    };
    Dispatcher::new(
        RecordingQueue::default(),
        directory,
        Sender::new(RecordingMailer::default(), POLICY),
        MemoryStore::default(),
        50,
    )
}

#[tokio::test(start_paused = true)]
async fn a_cancel_mid_chunk_stops_every_send_within_the_bound_and_ends_with_exact_counts() {
    // Two pages: the second is not planned yet when the cancel comes, and never will be.
    let worker = paged_worker(2, 50);
    let (store, queue) = (worker_store(&worker), worker_queue(&worker));
    let mailer = worker_mailer(&worker);
    let (task_id, job) = task_and_job(&store).await;
    assert!(!run(&worker, &job).await);
    let mut planned = queue.take();
    assert_eq!(
        planned.len(),
        2,
        "the first page's chunk and the next page's job"
    );
    let chunk = planned.remove(0);
    let next_page = planned.remove(0);

    let cancelling = {
        let (store, mailer) = (store.clone(), mailer.clone());
        let queue = RecordingQueue::default();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let before = mailer.recipients().len();
            let cancelled = cancel(&queue, &store, task_id).await.unwrap();
            (before, cancelled)
        })
    };
    assert!(
        !run(&worker, &chunk).await,
        "a cancelled chunk is no failure"
    );
    let (sent_before_cancel, answered) = cancelling.await.unwrap();
    assert_eq!(answered.status, TaskStatus::Cancelling);

    let sent_at_stop = mailer.recipients().len();
    let bound = POLICY.max_in_flight
        + (POLICY.emails_per_second * (CONTROL_CHECK_INTERVAL.as_secs_f64() + 1.0)) as usize;
    assert!(
        sent_at_stop - sent_before_cancel <= bound,
        "{} sent after the cancel, bound {bound}",
        sent_at_stop - sent_before_cancel
    );
    assert!(sent_at_stop < 50, "the chunk stopped: {sent_at_stop} sent");
    // Accounted by the chunk, but planning has not stopped yet: still cancelling.
    let accounted = store.get(task_id).await.unwrap().unwrap();
    assert_eq!(accounted.status, TaskStatus::Cancelling);
    assert_eq!(accounted.recipients.sent, sent_at_stop as u64);
    assert_eq!(accounted.recipients.cancelled, 50 - sent_at_stop as u64);

    // The next page's job stops planning; a copy of the chunk that comes back sends nothing.
    assert!(!run(&worker, &next_page).await);
    assert!(!run(&worker, &chunk).await);
    assert!(queue.take().is_empty(), "nothing more queued");
    assert_eq!(
        mailer.recipients().len(),
        sent_at_stop,
        "nothing sent after the stop"
    );
    let done = store.get(task_id).await.unwrap().unwrap();
    assert_eq!(done.status, TaskStatus::Cancelled);
    assert_eq!(
        done.recipients,
        Recipients {
            planned: 50,
            sent: sent_at_stop as u64,
            skipped: 0,
            failed: 0,
            cancelled: 50 - sent_at_stop as u64,
        },
        "the unplanned page counts nowhere: nobody was planned there"
    );
    assert_eq!(sent(&mailer).len(), sent_at_stop, "nobody twice");
    assert!(matches!(
        cancel(queue, &store, task_id).await,
        Err(ControlError::Finished(TaskStatus::Cancelled))
    ));
}

#[tokio::test(start_paused = true)]
async fn cancelling_a_paused_task_counts_its_parked_chunks_at_once() {
    let worker = worker(120);
    let (store, queue) = (worker_store(&worker), worker_queue(&worker));
    let (task_id, job) = task_and_job(&store).await;
    pause(&store, task_id).await.unwrap();
    assert!(!run(&worker, &job).await);
    drain(&worker, queue).await;
    assert_eq!(store.parked(task_id).await.unwrap().len(), 3);

    let cancelled = cancel(queue, &store, task_id).await.unwrap();
    assert_eq!(
        cancelled.status,
        TaskStatus::Cancelled,
        "nothing was in flight"
    );
    assert_eq!(cancelled.pause, None);
    assert_eq!(cancelled.recipients.cancelled, 120);
    assert_eq!(cancelled.recipients.sent, 0);
    assert!(store.parked(task_id).await.unwrap().is_empty());
    assert!(queue.take().is_empty());
    assert!(worker_mailer(&worker).recipients().is_empty());
    assert!(matches!(
        pause(&store, task_id).await,
        Err(ControlError::Finished(TaskStatus::Cancelled))
    ));
}

#[tokio::test]
async fn a_task_cancelled_before_planning_plans_nothing_and_a_repeated_cancel_answers_the_same() {
    let worker = worker(10);
    let (store, queue) = (worker_store(&worker), worker_queue(&worker));
    let (task_id, job) = task_and_job(&store).await;
    let first = cancel(queue, &store, task_id).await.unwrap();
    assert_eq!(
        first.status,
        TaskStatus::Cancelling,
        "its job is still to come"
    );
    let again = cancel(queue, &store, task_id).await.unwrap();
    assert_eq!(again.status, TaskStatus::Cancelling);
    // Pausing or resuming it is refused: nothing would be sent either way.
    assert!(matches!(
        pause(&store, task_id).await,
        Err(ControlError::Cancelled(TaskStatus::Cancelling))
    ));
    assert!(matches!(
        resume(queue, &store, task_id).await,
        Err(ControlError::Cancelled(TaskStatus::Cancelling))
    ));
    assert!(!run(&worker, &job).await);
    assert!(queue.take().is_empty(), "no chunk planned");
    let done = store.get(task_id).await.unwrap().unwrap();
    assert_eq!(done.status, TaskStatus::Cancelled);
    assert_eq!(done.recipients, Recipients::default());
    assert!(worker_mailer(&worker).recipients().is_empty());
    let unknown = TaskId::generate();
    assert!(matches!(
        cancel(queue, &store, unknown).await,
        Err(ControlError::NotFound(id)) if id == unknown
    ));
}

// The dispatcher keeps its parts; the fakes' clones share their records.
fn worker_store(worker: &Worker) -> MemoryStore {
    worker.store().clone()
}
fn worker_queue(worker: &Worker) -> &RecordingQueue {
    worker.queue()
}
fn worker_mailer(worker: &Worker) -> RecordingMailer {
    worker.sender().mailer().clone()
}

//! The store contract: what every task store must do, written once as scenarios and run against
//! each store (the in-memory one in this crate's unit tests, the DynamoDB one on DynamoDB Local
//! in the integration tests), so that no test of the domain passes on behaviour the real store
//! does not have.
//!
//! Each scenario takes a fresh store and panics, naming what broke, if the store breaks the
//! contract. [`store_contract!`](crate::store_contract) turns them into one test each.

use crate::domain::{
    EmailAddress, PartFailure, PauseCode, Recipients, TaskId, TaskKind, TaskStatus, Topic,
};
use crate::message::Recipient;
use crate::planning::PagePlan;
use crate::ports::{
    Accounting, ChunkProgress, ChunkStore, Holder, IdempotencyStore, Lease, PageState, PauseStore,
    PlanStore, Reservation, Settled, TaskStore, Withdrawal, epoch_millis,
};
use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Everything the worker and the accept function need of a store.
pub trait Store: TaskStore + IdempotencyStore + PlanStore + ChunkStore + PauseStore {}
impl<S: TaskStore + IdempotencyStore + PlanStore + ChunkStore + PauseStore> Store for S {}

/// One test per scenario, for the store `$make` builds (an expression, awaited if `async`).
#[macro_export]
macro_rules! store_contract {
    ($make:expr) => {
        $crate::store_contract!(@tests $make;
            tasks_are_created_once_and_read_back,
            a_task_without_its_record_counts_nothing,
            a_page_is_counted_once_and_its_first_plan_wins,
            a_page_goes_from_unplanned_to_planned_to_enqueued,
            planning_is_done_at_the_last_page_and_a_failed_page_stops_it_until_redriven,
            a_chunk_is_leased_to_one_live_holder_at_a_time,
            records_are_idempotent_and_need_the_lease,
            closing_counts_once_even_when_repeated,
            a_released_chunk_can_be_leased_at_once,
            a_dead_lettered_chunk_counts_the_rest_failed_once_and_a_redrive_sends_them,
            a_live_lease_keeps_a_chunk_from_being_dead_lettered,
            finishing_moves_a_task_once,
            two_invocations_leasing_one_chunk_at_once_get_one_lease,
            chunks_closing_at_once_count_every_recipient,
            idempotency_keys_are_reserved_once,
            topics_that_match_nobody_show_on_the_task_and_in_its_stored_plan,
            a_task_pauses_before_it_is_finished_and_never_after,
            a_paused_task_parks_its_chunks_until_it_is_resumed,
            a_withdrawn_task_is_never_planned,
            an_abandoned_key_is_taken_over_once,
            a_cancelled_task_plans_nothing_more_and_pauses_no_more,
            a_cancelled_chunk_counts_its_unsent_recipients_once_and_is_done,
            a_live_lease_keeps_a_chunk_from_being_cancelled,
            a_task_keeps_its_kind,
        );
    };
    (@tests $make:expr; $($scenario:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $scenario() {
                let store = $make;
                $crate::testing::contract::$scenario(&store).await;
            }
        )*
    };
}

fn email(index: usize) -> EmailAddress {
    EmailAddress::parse(&format!("reader{index}@example.com")).unwrap()
}

fn recipients(count: usize) -> Vec<Recipient> {
    let topics = [Topic::parse("rust").unwrap(), Topic::parse("aws").unwrap()];
    (0..count)
        .map(|index| Recipient {
            email: email(index),
            topics: topics[..1 + index % 2].to_vec(),
        })
        .collect()
}

/// A page of `contacts` contacts of which `per_chunk.iter().sum()` are recipients, the rest
/// skipped.
fn plan(page: u32, per_chunk: &[usize], contacts: u64, last: bool) -> PagePlan {
    let chunks: Vec<Vec<Recipient>> = per_chunk.iter().map(|size| recipients(*size)).collect();
    let recipients: u64 = per_chunk.iter().map(|size| *size as u64).sum();
    PagePlan {
        page,
        chunks,
        contacts,
        skipped: contacts - recipients,
        invalid_addresses: 0,
        next_token: (!last).then(|| format!("token-{}", page + 1)),
        unmatched_topics: Vec::new(),
    }
}

fn holder(name: &str, lives: Duration) -> Holder {
    Holder {
        token: format!("{name}-{}", uuid::Uuid::now_v7()),
        lapses: SystemTime::now() + lives,
    }
}

fn live(name: &str) -> Holder {
    holder(name, Duration::from_secs(60))
}

fn settled(sent: &[u16], rejected: &[u16]) -> Settled {
    Settled {
        sent: sent.to_vec(),
        rejected: rejected.to_vec(),
    }
}

async fn new_task(store: &impl Store) -> TaskId {
    let task_id = TaskId::generate();
    store
        .create(task_id, TaskKind::Newsletter)
        .await
        .expect("a task is created");
    task_id
}

/// A task with one page of one chunk of `size` recipients (all contacts), counted.
async fn planned_task(store: &impl Store, size: usize) -> TaskId {
    let task_id = new_task(store).await;
    store
        .record_page(task_id, plan(0, &[size], size as u64, true))
        .await
        .expect("the page is recorded");
    task_id
}

async fn counts(store: &impl Store, task_id: TaskId) -> Recipients {
    task(store, task_id).await.recipients
}

async fn task(store: &impl Store, task_id: TaskId) -> crate::domain::TaskRecord {
    store
        .get(task_id)
        .await
        .expect("the task is read")
        .expect("the task exists")
}

async fn held(
    store: &impl Store,
    task_id: TaskId,
    chunk: &str,
    size: usize,
    by: &Holder,
) -> ChunkProgress {
    match store
        .lease(task_id, chunk, size, by)
        .await
        .expect("the lease is asked for")
    {
        Lease::Held(progress) => progress,
        other => panic!("{chunk}: expected a lease, got {other:?}"),
    }
}

fn set(positions: &[u16]) -> BTreeSet<u16> {
    positions.iter().copied().collect()
}

pub async fn tasks_are_created_once_and_read_back(store: &impl Store) {
    let task_id = new_task(store).await;
    let record = task(store, task_id).await;
    assert_eq!(record.status, TaskStatus::Accepted);
    assert_eq!(record.recipients, Recipients::default());
    assert!(!record.planning_done && record.failures.is_empty());
    // Task ids are fresh per request: creating one again is a retry after a lost answer.
    store
        .create(task_id, TaskKind::Newsletter)
        .await
        .expect("a retried create succeeds");
    assert_eq!(task(store, task_id).await, record, "and changes nothing");
}

pub async fn a_task_without_its_record_counts_nothing(store: &impl Store) {
    let task_id = TaskId::generate();
    assert!(
        store
            .record_page(task_id, plan(0, &[2], 2, true))
            .await
            .is_err(),
        "a page of a task that has no record is refused, not counted into nothing"
    );
    let by = live("a");
    let progress = held(store, task_id, "p0-c0", 1, &by).await;
    let mut after = progress.clone();
    after.apply(&settled(&[0], &[]));
    assert!(
        store
            .close(task_id, "p0-c0", &by, &settled(&[0], &[]), &after)
            .await
            .is_err(),
        "a chunk of a task that has no record cannot be counted"
    );
}

pub async fn a_page_is_counted_once_and_its_first_plan_wins(store: &impl Store) {
    let task_id = new_task(store).await;
    let first = plan(0, &[3, 2], 7, false);
    assert_eq!(
        store.record_page(task_id, first.clone()).await.unwrap(),
        first
    );
    // A retry that read a changed contact list gets the stored plan back, counted once.
    let changed = plan(0, &[4], 9, false);
    assert_eq!(
        store.record_page(task_id, changed).await.unwrap(),
        first,
        "the first plan stored is the page's plan"
    );
    let counts = counts(store, task_id).await;
    assert_eq!((counts.planned, counts.skipped, counts.failed), (7, 2, 0));
    assert_eq!(task(store, task_id).await.status, TaskStatus::Planning);
}

pub async fn a_page_goes_from_unplanned_to_planned_to_enqueued(store: &impl Store) {
    let task_id = new_task(store).await;
    assert_eq!(
        store.page_state(task_id, 0).await.unwrap(),
        PageState::Unplanned
    );
    let page = plan(0, &[2, 1], 3, true);
    store.record_page(task_id, page.clone()).await.unwrap();
    assert_eq!(
        store.page_state(task_id, 0).await.unwrap(),
        PageState::Planned(page),
        "the stored plan comes back whole: recipients, topics, counts, next token"
    );
    store.mark_page_enqueued(task_id, 0).await.unwrap();
    assert_eq!(
        store.page_state(task_id, 0).await.unwrap(),
        PageState::Enqueued
    );
    assert_eq!(
        store.page_state(task_id, 1).await.unwrap(),
        PageState::Unplanned
    );
}

pub async fn planning_is_done_at_the_last_page_and_a_failed_page_stops_it_until_redriven(
    store: &impl Store,
) {
    let task_id = new_task(store).await;
    store
        .record_page(task_id, plan(0, &[1], 1, false))
        .await
        .unwrap();
    assert!(
        !task(store, task_id).await.planning_done,
        "page 1 is still to plan"
    );

    // Page 1's job reached the dead-letter queue without being planned: planning stops there.
    let failure = PartFailure::planning(1);
    store
        .record_failure(task_id, failure.clone(), Some(1))
        .await
        .unwrap();
    store
        .record_failure(task_id, failure.clone(), Some(1))
        .await
        .unwrap();
    let stopped = task(store, task_id).await;
    assert!(
        stopped.planning_done,
        "nothing after page 0 will be planned"
    );
    assert_eq!(stopped.failures, [failure], "a part is recorded once");

    // A redrive plans page 1 after all: its failure is cleared and planning goes on.
    store
        .record_page(task_id, plan(1, &[1], 1, false))
        .await
        .unwrap();
    let reopened = task(store, task_id).await;
    assert!(!reopened.planning_done, "page 2 is still to plan");
    assert!(reopened.failures.is_empty(), "{:?}", reopened.failures);
    store
        .record_page(task_id, plan(2, &[1], 2, true))
        .await
        .unwrap();
    let done = task(store, task_id).await;
    assert!(done.planning_done);
    assert_eq!(done.status, TaskStatus::Sending);
    assert_eq!((done.recipients.planned, done.recipients.skipped), (4, 1));
}

pub async fn a_chunk_is_leased_to_one_live_holder_at_a_time(store: &impl Store) {
    let task_id = planned_task(store, 3).await;
    let first = live("first");
    assert_eq!(
        held(store, task_id, "p0-c0", 3, &first).await,
        ChunkProgress::default()
    );
    assert_eq!(
        store
            .lease(task_id, "p0-c0", 3, &live("second"))
            .await
            .unwrap(),
        Lease::Busy,
        "a live lease keeps others out"
    );
    assert!(
        matches!(
            store.lease(task_id, "p0-c0", 3, &first).await.unwrap(),
            Lease::Held(_)
        ),
        "the holder may ask again"
    );

    // A holder that died leaves a lease that lapses; then another takes over, with what the
    // dead one recorded.
    let dead = holder("dead", Duration::from_secs(1));
    let other = "p0-c1";
    held(store, task_id, other, 3, &dead).await;
    store
        .record(task_id, other, &dead, &settled(&[1], &[]))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let heir = live("heir");
    assert_eq!(held(store, task_id, other, 3, &heir).await.sent, set(&[1]));
}

pub async fn records_are_idempotent_and_need_the_lease(store: &impl Store) {
    let task_id = planned_task(store, 4).await;
    let by = live("a");
    held(store, task_id, "p0-c0", 4, &by).await;
    store
        .record(task_id, "p0-c0", &by, &settled(&[0, 2], &[3]))
        .await
        .unwrap();
    // The same record again (a retry after a lost answer) changes nothing.
    store
        .record(task_id, "p0-c0", &by, &settled(&[0, 2], &[3]))
        .await
        .unwrap();
    assert!(
        store
            .record(task_id, "p0-c0", &live("stranger"), &settled(&[1], &[]))
            .await
            .is_err(),
        "only the lease holder records"
    );
    let progress = held(store, task_id, "p0-c0", 4, &by).await;
    assert_eq!(
        (progress.sent, progress.rejected),
        (set(&[0, 2]), set(&[3]))
    );
    assert!(progress.failed.is_empty());
    assert_eq!(
        counts(store, task_id).await.sent,
        0,
        "counted only when the chunk closes"
    );
}

pub async fn closing_counts_once_even_when_repeated(store: &impl Store) {
    let task_id = planned_task(store, 3).await;
    let by = live("a");
    let progress = held(store, task_id, "p0-c0", 3, &by).await;
    store
        .record(task_id, "p0-c0", &by, &settled(&[0], &[]))
        .await
        .unwrap();
    let last = settled(&[1], &[2]);
    let mut after = progress.clone();
    after.apply(&settled(&[0], &[]));
    after.apply(&last);
    store
        .close(task_id, "p0-c0", &by, &last, &after)
        .await
        .unwrap();
    // The same close again, as after a lost answer: it succeeds and counts nothing twice.
    store
        .close(task_id, "p0-c0", &by, &last, &after)
        .await
        .unwrap();
    let counts = counts(store, task_id).await;
    assert_eq!((counts.sent, counts.failed), (2, 1));
    assert_eq!(
        store
            .lease(task_id, "p0-c0", 3, &live("late copy"))
            .await
            .unwrap(),
        Lease::Finished
    );
}

pub async fn a_released_chunk_can_be_leased_at_once(store: &impl Store) {
    let task_id = planned_task(store, 3).await;
    let by = live("a");
    held(store, task_id, "p0-c0", 3, &by).await;
    store
        .release_lease(task_id, "p0-c0", &by, &settled(&[0], &[]))
        .await
        .unwrap();
    store
        .release_lease(task_id, "p0-c0", &by, &settled(&[0], &[]))
        .await
        .expect("a retried release (its answer lost) succeeds");
    let next = live("b");
    let progress = held(store, task_id, "p0-c0", 3, &next).await;
    assert_eq!(progress.sent, set(&[0]), "what the first recorded is kept");
    assert!(
        store
            .record(task_id, "p0-c0", &by, &settled(&[1], &[]))
            .await
            .is_err(),
        "the first holder's lease is over"
    );
}

pub async fn a_dead_lettered_chunk_counts_the_rest_failed_once_and_a_redrive_sends_them(
    store: &impl Store,
) {
    let task_id = planned_task(store, 4).await;
    let by = live("a");
    held(store, task_id, "p0-c0", 4, &by).await;
    store
        .release_lease(task_id, "p0-c0", &by, &settled(&[0], &[1]))
        .await
        .unwrap();

    let failure = PartFailure::delivery("p0-c0");
    for _ in 0..2 {
        // Every sweep sees the message again: it is accounted once.
        assert_eq!(
            store
                .fail_unsettled(task_id, "p0-c0", 4, failure.clone())
                .await
                .unwrap(),
            Accounting::Accounted
        );
    }
    let failed = task(store, task_id).await;
    assert_eq!(
        (failed.recipients.sent, failed.recipients.failed),
        (1, 3),
        "1 sent; 1 rejected and 2 never sent are failed"
    );
    assert!(failed.recipients.all_accounted_for());
    assert_eq!(failed.failures, std::slice::from_ref(&failure));
    assert_eq!(failed.completion(), Some(TaskStatus::CompletedWithErrors));

    // A redrive brings the message back: the failed recipients are owed again, and sending them
    // moves them from failed to sent and clears the failure.
    let redrive = live("redrive");
    let progress = held(store, task_id, "p0-c0", 4, &redrive).await;
    assert_eq!(progress.failed, set(&[2, 3]));
    assert!(progress.owes(2) && progress.owes(3) && !progress.owes(1));
    let last = settled(&[2, 3], &[]);
    let mut after = progress.clone();
    after.apply(&last);
    store
        .close(task_id, "p0-c0", &redrive, &last, &after)
        .await
        .unwrap();
    let redriven = task(store, task_id).await;
    assert_eq!(
        (redriven.recipients.sent, redriven.recipients.failed),
        (3, 1)
    );
    assert!(redriven.failures.is_empty(), "{:?}", redriven.failures);

    // A chunk whose message never reached a worker (throttled away) is failed whole.
    let never = planned_task(store, 2).await;
    store
        .fail_unsettled(never, "p0-c0", 2, failure)
        .await
        .unwrap();
    assert_eq!(counts(store, never).await.failed, 2);
}

pub async fn a_live_lease_keeps_a_chunk_from_being_dead_lettered(store: &impl Store) {
    let task_id = planned_task(store, 2).await;
    let by = live("a");
    held(store, task_id, "p0-c0", 2, &by).await;
    let failure = PartFailure::delivery("p0-c0");
    assert_eq!(
        store
            .fail_unsettled(task_id, "p0-c0", 2, failure)
            .await
            .unwrap(),
        Accounting::Held,
        "an invocation is still sending it (another copy of the message)"
    );
    assert_eq!(counts(store, task_id).await.failed, 0);
}

pub async fn finishing_moves_a_task_once(store: &impl Store) {
    let task_id = planned_task(store, 1).await;
    let (a, b) = tokio::join!(
        store.finish(task_id, TaskStatus::CompletedWithErrors),
        store.finish(task_id, TaskStatus::CompletedWithErrors)
    );
    assert_eq!(
        [a.unwrap(), b.unwrap()]
            .iter()
            .filter(|moved| **moved)
            .count(),
        1,
        "exactly one caller makes the move"
    );
    assert!(
        store.finish(task_id, TaskStatus::Completed).await.unwrap(),
        "with errors, then clean after a redrive"
    );
    assert!(
        !store
            .finish(task_id, TaskStatus::CompletedWithErrors)
            .await
            .unwrap()
    );
    assert_eq!(
        task(store, task_id).await.status,
        TaskStatus::Completed,
        "completed is final"
    );
}

pub async fn two_invocations_leasing_one_chunk_at_once_get_one_lease(store: &impl Store) {
    let task_id = planned_task(store, 2).await;
    let (a, b) = (live("a"), live("b"));
    let (first, second) = tokio::join!(
        store.lease(task_id, "p0-c0", 2, &a),
        store.lease(task_id, "p0-c0", 2, &b)
    );
    let leases = [first.unwrap(), second.unwrap()];
    assert_eq!(
        leases
            .iter()
            .filter(|lease| matches!(lease, Lease::Held(_)))
            .count(),
        1,
        "{leases:?}"
    );
    assert_eq!(
        leases.iter().filter(|lease| **lease == Lease::Busy).count(),
        1
    );
}

pub async fn chunks_closing_at_once_count_every_recipient(store: &impl Store) {
    let task_id = new_task(store).await;
    let sizes = [3usize, 3, 3, 3];
    store
        .record_page(task_id, plan(0, &sizes, 12, true))
        .await
        .unwrap();
    let close = |index: usize| async move {
        let chunk = format!("p0-c{index}");
        let by = live(&chunk);
        let progress = held(store, task_id, &chunk, 3, &by).await;
        let all = settled(&[0, 1, 2], &[]);
        let mut after = progress.clone();
        after.apply(&all);
        store.close(task_id, &chunk, &by, &all, &after).await
    };
    let results = futures::future::join_all((0..sizes.len()).map(close)).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let done = task(store, task_id).await;
    assert_eq!(done.recipients.sent, 12);
    assert_eq!(done.completion(), Some(TaskStatus::Completed));
}

/// `from_now` ahead (or behind), to the millisecond, as stores keep it.
fn at_millis(from_now: Duration, ahead: bool) -> SystemTime {
    let now = SystemTime::now();
    let at = if ahead {
        now + from_now
    } else {
        now - from_now
    };
    UNIX_EPOCH + Duration::from_millis(epoch_millis(at))
}

pub async fn idempotency_keys_are_reserved_once(store: &impl Store) {
    let key = format!("key-{}", uuid::Uuid::now_v7());
    let task_id = TaskId::generate();
    let until = at_millis(Duration::from_secs(12), true);
    assert_eq!(
        store.reserve(&key, "f1", task_id, until).await.unwrap(),
        Reservation::New
    );
    assert_eq!(
        store.reserve(&key, "f1", task_id, until).await.unwrap(),
        Reservation::New,
        "the same reservation again is a retry after a lost answer"
    );
    let pending = Reservation::Existing {
        task_id,
        fingerprint: "f1".into(),
        queued: false,
        running_until: Some(until),
    };
    let other = store
        .reserve(&key, "f2", TaskId::generate(), until)
        .await
        .unwrap();
    assert_eq!(other, pending, "with until when its request may run");
    assert!(!other.abandoned(SystemTime::now()), "its request may run");
    assert!(other.abandoned(until + Duration::from_millis(1)));
    store.mark_queued(&key).await.unwrap();
    let queued = store
        .reserve(&key, "f1", TaskId::generate(), until)
        .await
        .unwrap();
    assert!(matches!(queued, Reservation::Existing { queued: true, .. }));
    assert!(
        !queued.abandoned(until + Duration::from_secs(1)),
        "a queued key is done, not abandoned"
    );
    store.release(&key).await.unwrap();
    assert_eq!(
        store
            .reserve(&key, "f1", TaskId::generate(), until)
            .await
            .unwrap(),
        Reservation::New,
        "a released key is free again"
    );
}

pub async fn topics_that_match_nobody_show_on_the_task_and_in_its_stored_plan(store: &impl Store) {
    let task_id = new_task(store).await;
    assert!(task(store, task_id).await.unmatched_topics.is_empty());
    let unmatched = vec![
        Topic::parse("cobol").unwrap(),
        Topic::parse("fortran").unwrap(),
    ];
    for (page, last) in [(0, false), (1, true)] {
        let page_plan = PagePlan {
            unmatched_topics: unmatched.clone(),
            ..plan(page, &[2], 3, last)
        };
        store.record_page(task_id, page_plan).await.unwrap();
    }
    assert_eq!(
        task(store, task_id).await.unmatched_topics,
        ["cobol", "fortran"],
        "in the newsletter's order, once"
    );
    match store.page_state(task_id, 1).await.unwrap() {
        PageState::Planned(stored) => assert_eq!(stored.unmatched_topics, unmatched),
        other => panic!("page 1 is planned, not {other:?}"),
    }
}

pub async fn a_task_pauses_before_it_is_finished_and_never_after(store: &impl Store) {
    // Accepted: a caller may pause a task before the worker has planned anything of it.
    let accepted = new_task(store).await;
    assert!(store.pause(accepted, PauseCode::Requested).await.unwrap());
    assert_eq!(task(store, accepted).await.status, TaskStatus::Paused);
    // Planning goes on under the overlay, from accepted too.
    store
        .record_page(accepted, plan(0, &[1], 1, true))
        .await
        .unwrap();
    assert!(store.unpause(accepted).await.unwrap());
    let resumed = task(store, accepted).await;
    assert_eq!(resumed.recipients.planned, 1, "counted while paused");
    assert!(
        !resumed.status.is_finished() && resumed.status != TaskStatus::Paused,
        "planned under the pause, running after it: {:?}",
        resumed.status
    );

    let finished = planned_task(store, 1).await;
    assert!(store.finish(finished, TaskStatus::Completed).await.unwrap());
    assert!(
        !store.pause(finished, PauseCode::Requested).await.unwrap(),
        "a finished task does not pause"
    );
    assert_eq!(task(store, finished).await.status, TaskStatus::Completed);
    let withdrawn = new_task(store).await;
    store.withdraw(withdrawn).await.unwrap();
    assert!(
        !store.pause(withdrawn, PauseCode::Requested).await.unwrap(),
        "a withdrawn task does not pause"
    );
    assert!(
        !store
            .pause(TaskId::generate(), PauseCode::Requested)
            .await
            .unwrap(),
        "a task without a record does not pause"
    );

    // A pause that lands just before the task finishes does not outlive it: the final status
    // shows, not a pause nobody can end.
    let finishing = planned_task(store, 1).await;
    assert!(store.pause(finishing, PauseCode::Requested).await.unwrap());
    assert!(
        store
            .finish(finishing, TaskStatus::Completed)
            .await
            .unwrap()
    );
    let done = task(store, finishing).await;
    assert_eq!(done.status, TaskStatus::Completed);
    assert_eq!(done.pause, None);
}

pub async fn a_paused_task_parks_its_chunks_until_it_is_resumed(store: &impl Store) {
    let task_id = new_task(store).await;
    store
        .record_page(task_id, plan(0, &[2, 2], 4, false))
        .await
        .unwrap();
    assert!(
        !store.park(task_id, "p0-c0", "m0").await.unwrap(),
        "nothing parks while the task is not paused"
    );

    assert!(
        store
            .pause(task_id, PauseCode::SenderNotVerified)
            .await
            .unwrap()
    );
    assert!(
        !store
            .pause(task_id, PauseCode::DailyQuotaExceeded)
            .await
            .unwrap(),
        "paused once: the first reason stays"
    );
    assert!(store.park(task_id, "p0-c1", "m1").await.unwrap());
    assert!(store.park(task_id, "p0-c0", "m0").await.unwrap());
    assert!(store.park(task_id, "p0-c0", "m0 again").await.unwrap());
    // Planning goes on while sending is paused, and does not resume it.
    store
        .record_page(task_id, plan(1, &[1], 1, true))
        .await
        .unwrap();
    let paused = task(store, task_id).await;
    assert_eq!(paused.status, TaskStatus::Paused);
    assert_eq!(
        paused.pause.map(|pause| pause.code),
        Some(PauseCode::SenderNotVerified)
    );
    assert_eq!(paused.recipients.planned, 5, "counted while paused");
    let parked = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(chunk, message)| (chunk.to_string(), message.to_string()))
            .collect()
    };
    assert_eq!(
        store.parked(task_id).await.unwrap(),
        parked(&[("p0-c0", "m0 again"), ("p0-c1", "m1")])
    );

    assert!(store.unpause(task_id).await.unwrap());
    assert!(!store.unpause(task_id).await.unwrap(), "resumed once");
    let resumed = task(store, task_id).await;
    assert_eq!(resumed.status, TaskStatus::Sending);
    assert_eq!(resumed.pause, None);
    assert!(
        !store.park(task_id, "p1-c0", "m2").await.unwrap(),
        "no parking once resumed"
    );
    assert_eq!(
        store.parked(task_id).await.unwrap().len(),
        2,
        "kept until unparked"
    );
    store.unpark(task_id, "p0-c0").await.unwrap();
    store.unpark(task_id, "p0-c0").await.unwrap();
    assert_eq!(
        store.parked(task_id).await.unwrap(),
        parked(&[("p0-c1", "m1")])
    );
    let ghost = TaskId::generate();
    store.unpark(ghost, "p0-c0").await.unwrap();
    assert!(
        store.get(ghost).await.unwrap().is_none(),
        "unparking creates no task"
    );
}

pub async fn a_withdrawn_task_is_never_planned(store: &impl Store) {
    let task_id = new_task(store).await;
    assert_eq!(
        store.withdraw(task_id).await.unwrap(),
        Withdrawal::Withdrawn
    );
    assert_eq!(
        store.withdraw(task_id).await.unwrap(),
        Withdrawal::Withdrawn,
        "withdrawing again (a retry after a lost answer) answers the same"
    );
    let withdrawn = task(store, task_id).await;
    assert_eq!(withdrawn.status, TaskStatus::Withdrawn);
    assert!(withdrawn.status.is_finished());
    assert!(
        store
            .record_page(task_id, plan(0, &[2], 2, true))
            .await
            .is_err(),
        "a withdrawn task's page is refused"
    );
    assert_eq!(
        store.page_state(task_id, 0).await.unwrap(),
        PageState::Unplanned
    );
    assert_eq!(
        task(store, task_id).await,
        withdrawn,
        "nothing counted, still withdrawn"
    );

    // The worker planned it first: its job was on the queue after all.
    let started = planned_task(store, 2).await;
    assert_eq!(store.withdraw(started).await.unwrap(), Withdrawal::Started);
    assert_eq!(task(store, started).await.status, TaskStatus::Sending);

    assert_eq!(
        store.withdraw(TaskId::generate()).await.unwrap(),
        Withdrawal::Withdrawn,
        "a task without a record is never planned"
    );
}

pub async fn an_abandoned_key_is_taken_over_once(store: &impl Store) {
    let key = format!("key-{}", uuid::Uuid::now_v7());
    let dead = TaskId::generate();
    let gone = at_millis(Duration::from_secs(1), false);
    store.reserve(&key, "f1", dead, gone).await.unwrap();
    let until = at_millis(Duration::from_secs(12), true);
    let found = store
        .reserve(&key, "f1", TaskId::generate(), until)
        .await
        .unwrap();
    assert!(found.abandoned(SystemTime::now()), "{found:?}");

    let (a, b) = (TaskId::generate(), TaskId::generate());
    let (took_a, took_b) = tokio::join!(
        store.take_over(&key, dead, a, until),
        store.take_over(&key, dead, b, until)
    );
    let (took_a, took_b) = (took_a.unwrap(), took_b.unwrap());
    assert!(
        took_a ^ took_b,
        "exactly one recovers the key: {took_a} {took_b}"
    );
    let winner = if took_a { a } else { b };
    assert!(
        store.take_over(&key, dead, winner, until).await.unwrap(),
        "the winner's retry after a lost answer"
    );
    assert!(
        !store
            .take_over(&key, dead, TaskId::generate(), until)
            .await
            .unwrap(),
        "the key is not the dead request's any more"
    );
    assert_eq!(
        store.reserve(&key, "f1", winner, until).await.unwrap(),
        Reservation::New,
        "the winner holds the key"
    );
    assert_eq!(
        store
            .reserve(&key, "f1", TaskId::generate(), until)
            .await
            .unwrap(),
        Reservation::Existing {
            task_id: winner,
            fingerprint: "f1".into(),
            queued: false,
            running_until: Some(until),
        },
        "the fingerprint stays; its request may run until its own deadline"
    );
    store.mark_queued(&key).await.unwrap();
    assert!(
        !store
            .take_over(&key, winner, TaskId::generate(), until)
            .await
            .unwrap(),
        "a queued key is not taken over"
    );
}

pub async fn a_cancelled_task_plans_nothing_more_and_pauses_no_more(store: &impl Store) {
    let task_id = new_task(store).await;
    store
        .record_page(task_id, plan(0, &[2], 2, false))
        .await
        .unwrap();
    assert!(store.pause(task_id, PauseCode::Requested).await.unwrap());
    assert!(
        store.cancel(task_id).await.unwrap(),
        "a paused task cancels"
    );
    let cancelling = task(store, task_id).await;
    assert_eq!(cancelling.status, TaskStatus::Cancelling);
    assert_eq!(cancelling.pause, None, "the cancel ends the pause");
    assert!(!store.cancel(task_id).await.unwrap(), "once");
    assert!(
        !store.pause(task_id, PauseCode::Requested).await.unwrap(),
        "a cancelled task does not pause"
    );
    assert!(
        !store.park(task_id, "p0-c0", "{}").await.unwrap(),
        "nor park its chunks"
    );
    assert!(
        store
            .record_page(task_id, plan(1, &[3], 3, true))
            .await
            .is_err(),
        "no page is planned after the cancel"
    );
    assert_eq!(
        store.page_state(task_id, 1).await.unwrap(),
        PageState::Unplanned
    );
    let still = task(store, task_id).await;
    assert_eq!(
        still.status,
        TaskStatus::Cancelling,
        "planning did not move it back"
    );
    assert_eq!(still.recipients.planned, 2);
    assert!(!still.planning_done);
    store.stop_planning(task_id, 1).await.unwrap();
    store.stop_planning(task_id, 1).await.unwrap();
    assert!(task(store, task_id).await.planning_done, "one page of one");

    assert!(store.finish(task_id, TaskStatus::Cancelled).await.unwrap());
    assert!(
        !store.finish(task_id, TaskStatus::Completed).await.unwrap(),
        "cancelled is final"
    );
    assert!(!store.cancel(task_id).await.unwrap());
    assert_eq!(task(store, task_id).await.status, TaskStatus::Cancelled);
    assert!(
        !store.cancel(TaskId::generate()).await.unwrap(),
        "no record"
    );
}

pub async fn a_cancelled_chunk_counts_its_unsent_recipients_once_and_is_done(store: &impl Store) {
    let task_id = planned_task(store, 5).await;
    let by = live("a");
    held(store, task_id, "p0-c0", 5, &by).await;
    // Stopped mid-chunk: two sent and one rejected are recorded, not yet counted on the task.
    store
        .release_lease(task_id, "p0-c0", &by, &settled(&[0, 1], &[2]))
        .await
        .unwrap();
    store.cancel(task_id).await.unwrap();
    for _ in 0..2 {
        assert_eq!(
            store.cancel_unsettled(task_id, "p0-c0", 5).await.unwrap(),
            Accounting::Accounted
        );
    }
    let counted = task(store, task_id).await;
    assert_eq!(
        counted.recipients,
        Recipients {
            planned: 5,
            sent: 2,
            skipped: 0,
            failed: 1,
            cancelled: 2,
        },
        "what was settled, and the rest cancelled, once"
    );
    assert_eq!(counted.completion(), Some(TaskStatus::Cancelled));
    assert_eq!(
        store.lease(task_id, "p0-c0", 5, &live("b")).await.unwrap(),
        Lease::Finished,
        "nothing is left to send"
    );
    // The chunk's message in the dead-letter queue afterwards fails nobody.
    store
        .fail_unsettled(task_id, "p0-c0", 5, PartFailure::delivery("p0-c0"))
        .await
        .unwrap();
    assert_eq!(counts(store, task_id).await, counted.recipients);

    // A chunk no worker had received yet is cancelled whole, once, even by two at once.
    let never = planned_task(store, 3).await;
    store.cancel(never).await.unwrap();
    let (a, b) = tokio::join!(
        store.cancel_unsettled(never, "p0-c0", 3),
        store.cancel_unsettled(never, "p0-c0", 3)
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert!(
        a == Accounting::Accounted || b == Accounting::Accounted,
        "{a:?} {b:?}"
    );
    store.cancel_unsettled(never, "p0-c0", 3).await.unwrap();
    assert_eq!(counts(store, never).await.cancelled, 3);
}

pub async fn a_live_lease_keeps_a_chunk_from_being_cancelled(store: &impl Store) {
    let task_id = planned_task(store, 2).await;
    let by = live("a");
    held(store, task_id, "p0-c0", 2, &by).await;
    store.cancel(task_id).await.unwrap();
    assert_eq!(
        store.cancel_unsettled(task_id, "p0-c0", 2).await.unwrap(),
        Accounting::Held,
        "its holder sees the cancel and counts it"
    );
    assert_eq!(counts(store, task_id).await.cancelled, 0);
    store
        .release_lease(task_id, "p0-c0", &by, &settled(&[0], &[]))
        .await
        .unwrap();
    assert_eq!(
        store.cancel_unsettled(task_id, "p0-c0", 2).await.unwrap(),
        Accounting::Accounted
    );
    let counted = counts(store, task_id).await;
    assert_eq!((counted.sent, counted.cancelled), (1, 1));
}

/// A test send's task reads back as one; a newsletter's as a newsletter.
pub async fn a_task_keeps_its_kind(store: &impl Store) {
    let newsletter = new_task(store).await;
    let test = TaskId::generate();
    store
        .create(test, TaskKind::Test)
        .await
        .expect("a task is created");
    assert_eq!(task(store, newsletter).await.kind, TaskKind::Newsletter);
    assert_eq!(task(store, test).await.kind, TaskKind::Test);
}

//! The sections that run the worker's bootstrap under the Lambda host: delivery at the
//! template's ratios (`lambda-host`: without and with kills) and the worker's memory for the
//! largest newsletter the API accepts (`memory`).

use crate::deployment::Deployment;
use crate::host::{self, Run, Scenario, Workload};
use crate::report::{Row, Target};
use local_stack::event_source::Trigger;
use local_stack::lambda_host::KillPlan;
use local_stack::ses_endpoint::SesBehaviour;
use newsletter::domain::TaskStatus;
use newsletter::planning::MAX_RECIPIENTS_PER_DELIVERY;
use newsletter::sending::SETTLE_GROUP;
use std::time::Duration;

/// The overall rate the "N for" figure extrapolates to: the steady-state target.
const STEADY_TARGET: f64 = 0.9;

/// The template's deployment (`WorkerMaxConcurrency` 5, `Timeout` 60 s, `BatchSize` 10,
/// `MaximumBatchingWindowInSeconds` 1, visibility 6 × the timeout, read from it) with time ten
/// times shorter and 25/s in place of `MaxSendRate` 14: a 6 s timeout leaves each invocation ~3 s of sending (the budget keeps a
/// fifth for the last send, a fifth for the last writes and the hand-back, a tenth as margin),
/// and at 25/s over 5 instances that is 15 emails, so the worker plans chunks of 15 and a batch
/// of 10 chunks (150 recipients) is far more than one invocation can send, as a batch of 500 is
/// at the defaults (148 an invocation). The smoke run halves the timeout again.
fn template_ratios(
    deployment: &Deployment,
    name: &'static str,
    smoke: bool,
    kill_plan: Option<KillPlan>,
) -> Scenario {
    const TIME_SCALE: u32 = 10;
    let function_timeout = deployment.timeout / if smoke { 2 * TIME_SCALE } else { TIME_SCALE };
    let visibility_timeout = match (smoke, kill_plan) {
        // The template's ratio.
        (false, _) | (true, None) => function_timeout.mul_f64(deployment.visibility_ratio()),
        // Killed batches reappear after the visibility timeout: in the smoke run, soon. Not
        // before the killed chunk's lease lapses (the deadline plus 2 s of clock skew): a copy
        // that finds the lease live is dropped as a duplicate, and with its holder dead the
        // rest of the chunk would be lost (a visibility of 4 s did that here). The template's
        // 6 × timeout keeps far from it.
        (true, Some(_)) => function_timeout * 2,
    };
    Scenario {
        name,
        function_timeout,
        max_send_rate: 25.0,
        max_concurrency: deployment.max_concurrency,
        max_in_flight: 16,
        trigger: Trigger {
            batch_size: deployment.batch_size,
            batching_window: deployment.batching_window / TIME_SCALE,
            wait_time_seconds: 1,
        },
        visibility_timeout,
        kill_plan,
        // Far above the configured rate: the worker's own limiter is what holds the rate.
        ses: SesBehaviour {
            latency: Duration::from_millis(20),
            max_send_rate: 10_000.0,
        },
        memory_size_mb: deployment.memory_size_mb,
        limit: Duration::from_secs(300),
    }
}

/// Recipients of the delivery runs: enough for ~40 s of sending at 25/s (67 chunks of 15: 13
/// rounds of the 5 instances), 5 chunks in the smoke run.
fn recipients(smoke: bool) -> usize {
    if smoke { 35 } else { 1_000 }
}

/// Rows, and notes that say what the rows' short names stand for.
pub type Figures = (Vec<Row>, Vec<String>);

/// Section `lambda-host`: the delivery at the template's ratios, then the same with kills.
pub async fn lambda_host(stack: &host::Stack<'_>, smoke: bool) -> anyhow::Result<Figures> {
    let (mut rows, mut notes) = template_ratio_rows(stack, smoke).await?;
    let (kill_rows, kill_notes) = kill_rows(stack, smoke).await?;
    rows.extend(kill_rows);
    notes.extend(kill_notes);
    Ok((rows, notes))
}

fn fixture_workload(recipients: usize) -> anyhow::Result<Workload> {
    Ok(Workload {
        body: crate::events::newsletter_body()?,
        recipients: crate::events::recipients(recipients)?,
        max_messages: None,
    })
}

/// What a row name's prefix stands for.
fn describe(name: &str, scenario: &Scenario, run: &Run) -> String {
    format!(
        "{name}: {} recipients of the fixture newsletter, MAX_SEND_RATE {} over {} instances, \
         {} s timeout (chunks of {}), batch {}, window {} ms, visibility {} s, SES {} ms; the \
         worker's bootstrap under local-stack's Lambda host, tasks on DynamoDB Local; {}",
        run.expected.len(),
        scenario.max_send_rate,
        scenario.max_concurrency,
        scenario.function_timeout.as_secs(),
        run.chunk_size,
        scenario.trigger.batch_size,
        scenario.trigger.batching_window.as_millis(),
        scenario.visibility_timeout.as_secs(),
        scenario.ses.latency.as_millis(),
        run.stats.summary(),
    )
}

async fn template_ratio_rows(stack: &host::Stack<'_>, smoke: bool) -> anyhow::Result<Figures> {
    let scenario = template_ratios(stack.deployment, "template-ratios", smoke, None);
    let run = host::run(stack, &scenario, fixture_workload(recipients(smoke))?).await?;
    let name = "host ÷10";
    let mut notes = vec![describe(name, &scenario, &run)];
    let bound = scenario.max_send_rate;
    let emails = run.received.total() as f64;
    let mut rows = Vec::new();
    match run.all_busy(scenario.max_concurrency) {
        Some((window, rate)) => {
            rows.push(
                Row::new(
                    format!(
                        "{name}: emails/s while all {} instances are busy ({:.1} s)",
                        scenario.max_concurrency,
                        window.as_secs_f64()
                    ),
                    "1/s",
                    rate,
                )
                .against("MAX_SEND_RATE", bound)
                .target(Target::RatioAtLeast(STEADY_TARGET)),
            );
            rows.push(
                Row::new(
                    format!("{name}: N for {STEADY_TARGET}× overall (extrapolated)"),
                    "",
                    recipients_for_overall(&run, rate, bound),
                )
                .against("N of this run", emails),
            );
        }
        None => notes.push(format!(
            "{name}: not every instance got work, so no all-busy rate"
        )),
    }
    rows.extend([
        Row::new(
            format!("{name}: emails/s overall"),
            "1/s",
            run.overall_rate(),
        )
        .against("MAX_SEND_RATE", bound),
        Row::new(
            format!("{name}: host start to last email"),
            "s",
            run.total_time().as_secs_f64(),
        )
        .against("N / MAX_SEND_RATE", emails / bound),
    ]);
    rows.extend(correctness_rows(name, &run));
    rows.extend(deadline_rows(name, &scenario, &run));
    rows.extend(hand_back_rows(name, &run));
    rows.push(
        Row::new(
            format!("{name}: task completed, sent as counted"),
            "",
            completed_sent(&run),
        )
        .target(Target::Exactly(run.expected.len() as f64)),
    );
    Ok((rows, notes))
}

/// The smallest N whose overall rate reaches [`STEADY_TARGET`] of the bound, if the run's fixed
/// cost (its total time beyond N at the all-busy rate: start-up and the last, partial round of
/// chunks, less the first second's burst) stays what it was: `T(N) = N / busy_rate + c`.
fn recipients_for_overall(run: &Run, busy_rate: f64, bound: f64) -> f64 {
    let emails = run.received.total() as f64;
    let fixed = run.total_time().as_secs_f64() - emails / busy_rate;
    let wanted = STEADY_TARGET * bound;
    if fixed <= 0.0 {
        0.0
    } else if busy_rate <= wanted {
        f64::INFINITY
    } else {
        (wanted * fixed / (1.0 - wanted / busy_rate)).ceil()
    }
}

fn completed_sent(run: &Run) -> f64 {
    if run.task.status == TaskStatus::Completed {
        run.task.recipients.sent as f64
    } else {
        -1.0
    }
}

fn correctness_rows(name: &str, run: &Run) -> Vec<Row> {
    vec![
        Row::new(format!("{name}: duplicates"), "", run.duplicates() as f64)
            .target(Target::Exactly(0.0)),
        Row::new(format!("{name}: losses"), "", run.losses() as f64).target(Target::Exactly(0.0)),
    ]
}

fn deadline_rows(name: &str, scenario: &Scenario, run: &Run) -> Vec<Row> {
    let stats = &run.stats;
    vec![
        Row::new(
            format!("{name}: invocations killed at their deadline"),
            "",
            stats.past_deadline().len() as f64,
        )
        .against("invocations", stats.invocations as f64)
        .target(Target::Exactly(0.0)),
        Row::new(
            format!("{name}: least time left before the deadline at an answer"),
            "ms",
            run.least_slack().unwrap_or_default().as_secs_f64() * 1000.0,
        )
        .against("timeout", scenario.function_timeout.as_secs_f64() * 1000.0),
    ]
}

fn hand_back_rows(name: &str, run: &Run) -> Vec<Row> {
    let (at_once, unfinished) = run.logged_hand_backs();
    vec![
        Row::new(
            format!("{name}: messages the worker queued again (hand-backs)"),
            "",
            run.hand_backs() as f64,
        )
        .against("delivery messages planned", run.queued as f64),
        Row::new(
            format!("{name}: of which records that did not fit (worker log)"),
            "",
            at_once as f64,
        ),
        Row::new(
            format!("{name}: of which chunks unfinished at the deadline (worker log)"),
            "",
            unfinished as f64,
        ),
    ]
}

async fn kill_rows(stack: &host::Stack<'_>, smoke: bool) -> anyhow::Result<Figures> {
    // Several kills while instances are busy: uniformly in the first 30 s of a ~40 s delivery
    // (a kill that finds no instance busy waits for one).
    let plan = if smoke {
        KillPlan {
            seed: 7,
            kills: 1,
            window: Duration::from_secs(1),
        }
    } else {
        KillPlan {
            seed: 7,
            kills: 4,
            window: Duration::from_secs(30),
        }
    };
    let scenario = template_ratios(stack.deployment, "template-ratios-kills", smoke, Some(plan));
    let run = host::run(stack, &scenario, fixture_workload(recipients(smoke))?).await?;
    let name = &format!("host ÷10, {} kills", plan.kills);
    let notes = vec![format!(
        "{}; kills drawn with seed {} in the first {} s",
        describe(name, &scenario, &run),
        plan.seed,
        plan.window.as_secs()
    )];
    let kills = run.stats.injected_kills as f64;
    // README, "The crash window": at most MAX_IN_FLIGHT + 8 recipients per kill.
    let window = kills * (scenario.max_in_flight + SETTLE_GROUP) as f64;
    let task = &run.task;
    let distinct = run.received.per_recipient.len() as f64;
    let mut rows = vec![
        Row::new(format!("{name}: kills that landed"), "", kills)
            .against("planned", plan.kills as f64),
        Row::new(format!("{name}: duplicates"), "", run.duplicates() as f64)
            .against("crash window, kills × (MAX_IN_FLIGHT + 8)", window)
            .target(Target::Within(window)),
        Row::new(format!("{name}: losses"), "", run.losses() as f64).target(Target::Exactly(0.0)),
    ];
    rows.extend(deadline_rows(name, &scenario, &run).into_iter().take(1));
    rows.extend([
        Row::new(
            format!("{name}: host start to last email"),
            "s",
            run.total_time().as_secs_f64(),
        )
        .against(
            "N / MAX_SEND_RATE",
            run.expected.len() as f64 / scenario.max_send_rate,
        ),
        Row::new(
            format!("{name}: dead letters accounted by the sweep"),
            "",
            run.swept.accounted as f64,
        )
        .against("seen in the DLQ", run.swept.seen as f64),
        Row::new(
            format!("{name}: task final (1 = completed or completed_with_errors)"),
            "",
            f64::from(u8::from(task.status.is_finished())),
        )
        .target(Target::Exactly(1.0)),
        Row::new(
            format!("{name}: task accounted, sent + skipped + failed"),
            "",
            (task.recipients.sent + task.recipients.skipped + task.recipients.failed) as f64,
        )
        .against("planned", task.recipients.planned as f64)
        .target(Target::Exactly(run.expected.len() as f64)),
    ]);
    // With nothing dead-lettered the task's count of sent must be exactly who SES got; a swept
    // chunk's unrecorded recipients (in the crash window) may have got it and be counted failed.
    let sent = Row::new(
        format!("{name}: task sent as counted"),
        "",
        task.recipients.sent as f64,
    )
    .against("recipients SES got", distinct);
    rows.push(if run.swept.seen == 0 {
        sent.target(Target::Exactly(distinct))
    } else {
        sent
    });
    Ok((rows, notes))
}

/// Section `memory`: one batch of 10 delivery messages of the largest newsletter the API
/// accepts, to one instance with a rate that never holds it back and SES answering in 20 ms, so
/// that all `MAX_IN_FLIGHT` sends are out at once, each holding an email of nearly the whole
/// newsletter; the same batch of the small fixture newsletter is the baseline.
pub async fn memory(stack: &host::Stack<'_>, smoke: bool) -> anyhow::Result<Figures> {
    let (messages, recipients) = if smoke {
        (1, 3)
    } else {
        (10, 10 * MAX_RECIPIENTS_PER_DELIVERY)
    };
    let deployment = stack.deployment;
    // The template's function and trigger, one instance at a rate that never holds it back.
    let scenario = |name| Scenario {
        name,
        function_timeout: deployment.timeout,
        max_send_rate: 1000.0,
        max_concurrency: 1,
        max_in_flight: 16,
        trigger: Trigger {
            batch_size: deployment.batch_size,
            batching_window: deployment.batching_window,
            wait_time_seconds: 1,
        },
        visibility_timeout: deployment.visibility_timeout,
        kill_plan: None,
        ses: SesBehaviour {
            latency: Duration::from_millis(20),
            max_send_rate: 10_000.0,
        },
        memory_size_mb: deployment.memory_size_mb,
        limit: Duration::from_secs(120),
    };
    let small = scenario("memory-small");
    let small_run = host::run(
        stack,
        &small,
        Workload {
            max_messages: Some(messages),
            ..fixture_workload(recipients)?
        },
    )
    .await?;
    let worst = scenario("memory-worst");
    let body = crate::worst_case::body()?;
    let body_kib = body.len() as f64 / 1024.0;
    let worst_run = host::run(
        stack,
        &worst,
        Workload {
            body,
            recipients: crate::worst_case::recipients(recipients)?,
            max_messages: Some(messages),
        },
    )
    .await?;
    let mib = |run: &Run| run.stats.peak_rss_kib().unwrap_or(0) as f64 / 1024.0;
    let notes = vec![format!(
        "memory: one batch of {} delivery messages ({} recipients) to one instance of the \
         worker's bootstrap under the Lambda host (MAX_SEND_RATE 1000, MAX_IN_FLIGHT 16, SES \
         20 ms, so that every send slot can be in use), peak RSS from VmHWM; largest newsletter: a {body_kib:.1} \
         KiB body, 50 sections of ~3.9 KiB on 50 topics, each recipient opted into a different \
         set of 48 or 49 of them; baseline: the same batch of the fixture newsletter ({} \
         recipients, one topic each)",
        worst_run.queued,
        worst_run.expected.len(),
        small_run.expected.len(),
    )];
    let mut rows = vec![
        Row::new(
            "worker peak RSS, largest newsletter, distinct topic sets",
            "MiB",
            mib(&worst_run),
        )
        .against("same batch, fixture newsletter", mib(&small_run))
        .target(Target::AtMost(64.0)),
        Row::new(
            "largest newsletter: most sends in flight at once (seen by SES)",
            "",
            worst_run.most_sends_in_flight(worst.ses.latency) as f64,
        )
        .against("MAX_IN_FLIGHT", worst.max_in_flight as f64),
        Row::new(
            "largest newsletter: largest delivery message",
            "KiB",
            worst_run.largest_message as f64 / 1024.0,
        )
        .against("SQS limit", 256.0)
        .target(Target::AtMost(256.0)),
    ];
    for (label, run) in [("largest newsletter", &worst_run), ("fixture", &small_run)] {
        rows.push(
            Row::new(
                format!("memory run, {label}: recipients without exactly one email"),
                "",
                (run.losses() + run.duplicates()) as f64,
            )
            .target(Target::Exactly(0.0)),
        );
    }
    Ok((rows, notes))
}

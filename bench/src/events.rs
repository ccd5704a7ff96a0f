//! The events the functions are invoked with: the fixtures in `events/`, and SQS events
//! carrying delivery messages of tasks recorded and planned as the accept function and the
//! planner leave them.

use anyhow::Context;
use bytes::Bytes;
use newsletter::TaskId;
use newsletter::domain::{EmailAddress, Topic};
use newsletter::message::{Delivery, Message, Recipient};
use newsletter::planning::{PagePlan, chunk};
use newsletter::ports::PlanStore;
use newsletter::testing::fakes::RecordingQueue;
use newsletter_aws::dynamodb::DynamoStore;
use serde_json::{Value, json};

fn fixture(name: &str) -> anyhow::Result<Vec<u8>> {
    let path = local_stack::repository_root().join("events").join(name);
    std::fs::read(&path).with_context(|| format!("reading {}", path.display()))
}

/// `POST /newsletters` through an HTTP API (payload 2.0).
pub fn accept_request() -> anyhow::Result<Bytes> {
    Ok(fixture("http-api-post.json")?.into())
}

/// The body of `events/newsletter.json`: a small newsletter on the topics `rust` and `aws`.
pub fn newsletter_body() -> anyhow::Result<Vec<u8>> {
    fixture("newsletter.json")
}

/// `count` subscribers of the `rust` topic (a section of the fixture newsletter).
pub fn recipients(count: usize) -> anyhow::Result<Vec<Recipient>> {
    let topic = Topic::parse("rust").map_err(|err| anyhow::anyhow!("{err:?}"))?;
    (0..count)
        .map(|index| recipient(&format!("reader-{index}@example.com"), vec![topic.clone()]))
        .collect()
}

pub fn recipient(email: &str, topics: Vec<Topic>) -> anyhow::Result<Recipient> {
    Ok(Recipient {
        email: EmailAddress::parse(email).map_err(|err| anyhow::anyhow!("{email}: {err:?}"))?,
        topics,
    })
}

/// A task as the accept function and the planner leave it, with the delivery messages of its
/// one page, not yet queued.
pub struct PlannedTask {
    pub task_id: TaskId,
    pub messages: Vec<Message>,
}

/// Accepts `body` as `POST /newsletters` does (size limit, JSON, validation; the task recorded
/// as accepted), then plans one page of `recipients` as the planner does: chunks of at most
/// `chunk_size` whose messages fit SQS's limit (`planning::chunk`), the page plan stored and
/// counted before anything is queued. The worker refuses deliveries of a task without a record,
/// and counts a chunk on its task only against a stored plan, so every lease, settlement and
/// completion the worker then makes is the production path.
pub async fn plan_task(
    store: &DynamoStore,
    body: &[u8],
    recipients: Vec<Recipient>,
    chunk_size: usize,
) -> anyhow::Result<PlannedTask> {
    let accepted = RecordingQueue::default();
    let task_id = newsletter::submit::submit(
        &accepted,
        store,
        body,
        newsletter::domain::TaskKind::Newsletter,
        None,
        &newsletter::submit::Deadline::of_invocation(None),
    )
    .await
    .context("the newsletter is not accepted")?;
    let Some(Message::Job(job)) = accepted.take().pop() else {
        anyhow::bail!("accepting the newsletter queued no job");
    };
    let template = Delivery {
        task_id,
        chunk_id: String::new(),
        attempt: 0,
        newsletter: job.newsletter.clone(),
        recipients: Vec::new(),
    };
    let contacts = recipients.len() as u64;
    let chunks = chunk(recipients, &template, chunk_size);
    anyhow::ensure!(!chunks.is_empty(), "no recipients to deliver to");
    let plan = PagePlan {
        chunks,
        contacts,
        ..PagePlan::default()
    };
    let plan = store.record_page(task_id, plan).await?;
    Ok(PlannedTask {
        task_id,
        messages: plan.messages(&job),
    })
}

/// An SQS event with one delivery message to `recipients` (at most one chunk's worth) of the
/// fixture newsletter, for a task recorded and planned afresh: each invocation sends them all.
pub async fn delivery_batch(
    store: &DynamoStore,
    recipients: Vec<Recipient>,
) -> anyhow::Result<Bytes> {
    let count = recipients.len();
    let planned = plan_task(
        store,
        &newsletter_body()?,
        recipients,
        newsletter::planning::MAX_RECIPIENTS_PER_DELIVERY,
    )
    .await?;
    // Handed to the function directly, as the poller would hand it after the planner queued it.
    store.mark_page_enqueued(planned.task_id, 0).await?;
    let [message] = planned.messages.as_slice() else {
        anyhow::bail!(
            "{count} recipients make {} delivery messages, not one",
            planned.messages.len()
        );
    };
    let event = json!({"Records": [{
        "messageId": "bench-delivery-0",
        "receiptHandle": "bench",
        "body": message.encode(),
        "attributes": {"ApproximateReceiveCount": "1"},
        "messageAttributes": {},
        "eventSource": "aws:sqs",
        "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:newsletter-jobs",
        "awsRegion": "us-east-1"
    }]});
    Ok(event.to_string().into())
}

/// The accept function answered `202 Accepted`: the job is on the queue.
pub fn check_accepted(answer: &[u8]) -> anyhow::Result<()> {
    let response: Value = serde_json::from_slice(answer)?;
    anyhow::ensure!(
        response["statusCode"] == 202,
        "accept did not answer 202: {response}"
    );
    Ok(())
}

/// The worker reported no failed message: every email of the delivery was sent.
pub fn check_delivered(answer: &[u8]) -> anyhow::Result<()> {
    let response: Value = serde_json::from_slice(answer)?;
    let failures = response["batchItemFailures"].as_array().map_or(0, Vec::len);
    anyhow::ensure!(failures == 0, "the worker reported failures: {response}");
    Ok(())
}

pub fn check_any(_: &[u8]) -> anyhow::Result<()> {
    Ok(())
}

/// What each invocation of a cold-start run is given.
pub enum Invocations<'a> {
    /// The same event every time.
    Same(Bytes),
    /// A delivery to this many recipients, for a task recorded and planned afresh each time.
    FreshDelivery {
        store: &'a DynamoStore,
        recipients: usize,
    },
}

impl Invocations<'_> {
    pub async fn next(&self) -> anyhow::Result<Bytes> {
        match self {
            Self::Same(event) => Ok(event.clone()),
            Self::FreshDelivery {
                store,
                recipients: count,
            } => delivery_batch(store, recipients(*count)?).await,
        }
    }
}

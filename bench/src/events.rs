//! The events the functions are invoked with: the fixtures in `events/`, and an SQS event
//! carrying a delivery message built with the domain library.

use anyhow::Context;
use bytes::Bytes;
use newsletter::domain::{EmailAddress, Topic};
use newsletter::message::{Delivery, Message, Recipient};
use newsletter::{Newsletter, TaskId};
use serde_json::{Value, json};

fn fixture(name: &str) -> anyhow::Result<Vec<u8>> {
    let path = local_stack::repository_root().join("events").join(name);
    std::fs::read(&path).with_context(|| format!("reading {}", path.display()))
}

/// `POST /newsletters` through an HTTP API (payload 2.0).
pub fn accept_request() -> anyhow::Result<Bytes> {
    Ok(fixture("http-api-post.json")?.into())
}

/// The newsletter of `events/newsletter.json`.
pub fn newsletter() -> anyhow::Result<Newsletter> {
    let document: Value = serde_json::from_slice(&fixture("newsletter.json")?)?;
    Newsletter::from_json(&document).map_err(|errors| anyhow::anyhow!("invalid: {errors:?}"))
}

/// `count` subscribers of the `rust` topic (a section of the fixture newsletter).
pub fn recipients(count: usize) -> anyhow::Result<Vec<Recipient>> {
    let topic = Topic::parse("rust").map_err(|err| anyhow::anyhow!("{err:?}"))?;
    (0..count)
        .map(|index| {
            let email = EmailAddress::parse(&format!("reader-{index}@example.com"))
                .map_err(|err| anyhow::anyhow!("{err:?}"))?;
            Ok(Recipient {
                email,
                topics: vec![topic.clone()],
            })
        })
        .collect()
}

/// An SQS event with one delivery message for `recipients`, as the planner enqueues it.
pub fn delivery_batch(recipients: Vec<Recipient>) -> anyhow::Result<Bytes> {
    let message = Message::Delivery(Delivery {
        task_id: TaskId::generate(),
        chunk_id: "p0-c0".into(),
        attempt: 0,
        newsletter: newsletter()?,
        recipients,
    });
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

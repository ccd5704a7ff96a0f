//! In-process cost of one accepted request: validation and serialization of the job message,
//! against the floor of only parsing the same body as untyped JSON.

use criterion::{Criterion, criterion_group, criterion_main};
use newsletter::message::{Job, Message};
use newsletter::{Newsletter, TaskId};
use serde_json::Value;
use std::hint::black_box;

/// The request body of `events/http-api-post.json`, the fixture every other accept figure uses.
fn request_body() -> Vec<u8> {
    let path = local_stack::repository_root().join("events/http-api-post.json");
    let event: Value = serde_json::from_slice(&std::fs::read(path).expect("read the fixture"))
        .expect("the fixture is JSON");
    event["body"]
        .as_str()
        .expect("the fixture has a body")
        .as_bytes()
        .to_vec()
}

fn accept_request(c: &mut Criterion) {
    let body = request_body();
    let mut group = c.benchmark_group("accept_request");
    group.bench_function("parse_json_value", |b| {
        b.iter(|| serde_json::from_slice::<Value>(black_box(&body)).expect("valid JSON"))
    });
    // What `newsletter::submit` does before it hands the message to the queue.
    group.bench_function("validate_and_encode", |b| {
        b.iter(|| {
            let document: Value = serde_json::from_slice(black_box(&body)).expect("valid JSON");
            let newsletter = Newsletter::from_json(&document).expect("a valid newsletter");
            Message::Job(Job {
                task_id: TaskId::generate(),
                newsletter,
                cursor: None,
                to: None,
            })
            .encode()
        })
    });
    group.finish();
}

criterion_group!(benches, accept_request);
criterion_main!(benches);

//! The Lambda Runtime API (`2018-06-01`), as a `bootstrap` uses it: it long-polls
//! `GET /2018-06-01/runtime/invocation/next` for an event and posts the answer to
//! `.../invocation/{id}/response`, or `.../invocation/{id}/error`, or `.../init/error` when its
//! init fails.
//!
//! One server per function process, as each Lambda execution environment has its own: a process
//! killed in the middle of a long poll leaves a request behind that must never take the next
//! process's event, and a fresh server (with its own event queue) makes that impossible.
//!
//! The deadline is fixed when the function takes the event (the `next` answer), not when the
//! host queues it: on Lambda the first invocation's clock starts after init, not before.

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, Response, StatusCode, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};

const PREFIX: &str = "/2018-06-01/runtime/";

/// What a function reported through `/invocation/{id}/error` or `/init/error`.
#[derive(Debug, Clone)]
pub struct FunctionError {
    /// `Lambda-Runtime-Function-Error-Type`, else the body's `errorType`.
    pub error_type: Option<String>,
    /// The body as posted (`{"errorType": ..., "errorMessage": ...}` from the Rust runtime).
    pub body: Bytes,
    pub at: Instant,
}

impl FunctionError {
    /// `errorMessage` from the body, or the body itself.
    pub fn message(&self) -> String {
        serde_json::from_slice::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|body| body["errorMessage"].as_str().map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(&self.body).into_owned())
    }
}

/// How the function answered one invocation.
#[derive(Debug, Clone)]
pub enum Answer {
    Response { body: Bytes, at: Instant },
    Error(FunctionError),
}

impl Answer {
    pub fn at(&self) -> Instant {
        match self {
            Self::Response { at, .. } => *at,
            Self::Error(error) => error.at,
        }
    }
}

/// When the function took an event, and the deadline it was given.
#[derive(Debug, Clone, Copy)]
pub struct Dispatched {
    pub at: Instant,
    /// `at` + the timeout: when the host kills the function if it has not answered.
    pub deadline: Instant,
    /// `Lambda-Runtime-Deadline-Ms` as sent: the deadline in milliseconds since the epoch,
    /// rounded down, so the function never believes it has more time than it has.
    pub deadline_ms: u64,
}

/// What the server has seen of the function outside invocations.
#[derive(Debug, Clone, Default)]
pub struct RuntimeState {
    /// `GET invocation/next` calls so far.
    pub polls: u64,
    /// The first of them: the end of the function's init.
    pub first_poll: Option<Instant>,
    pub init_error: Option<FunctionError>,
}

/// An invocation handed to the server: the function takes it on its next poll.
pub struct Pending {
    pub request_id: String,
    dispatched: oneshot::Receiver<Dispatched>,
    answer: oneshot::Receiver<Answer>,
}

impl Pending {
    /// Waits until the function takes the event (at once if it is already polling).
    pub async fn dispatched(&mut self) -> anyhow::Result<Dispatched> {
        (&mut self.dispatched)
            .await
            .context("the runtime API server stopped before the function took the event")
    }

    /// Waits for the function's answer.
    pub async fn answer(&mut self) -> anyhow::Result<Answer> {
        (&mut self.answer)
            .await
            .context("the runtime API server stopped before the function answered")
    }
}

/// The function's identity as the `next` headers carry it.
#[derive(Debug, Clone)]
pub struct FunctionIdentity {
    pub name: String,
    pub region: String,
    pub account: String,
}

impl FunctionIdentity {
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            region: crate::REGION.to_owned(),
            account: "123456789012".to_owned(),
        }
    }

    pub fn arn(&self) -> String {
        format!(
            "arn:aws:lambda:{}:{}:function:{}",
            self.region, self.account, self.name
        )
    }
}

struct Queued {
    request_id: String,
    payload: Bytes,
    timeout: Duration,
    dispatched: oneshot::Sender<Dispatched>,
}

struct Shared {
    function_arn: String,
    /// Events waiting for a poll. The lock makes concurrent polls take turns (a runtime with
    /// `AWS_LAMBDA_MAX_CONCURRENCY` unset polls once at a time anyway).
    queue: tokio::sync::Mutex<mpsc::UnboundedReceiver<Queued>>,
    answers: Mutex<HashMap<String, oneshot::Sender<Answer>>>,
    state: watch::Sender<RuntimeState>,
}

pub struct RuntimeApi {
    address: SocketAddr,
    shared: Arc<Shared>,
    queue: mpsc::UnboundedSender<Queued>,
    state: watch::Receiver<RuntimeState>,
    invocations: AtomicU64,
    /// Request ids are unique across servers (so across instances of a host).
    id_prefix: u64,
    server: JoinHandle<()>,
}

impl RuntimeApi {
    /// Listens on 127.0.0.1 on a port the OS picks.
    pub async fn start(function: &FunctionIdentity) -> anyhow::Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let address = listener.local_addr()?;
        let (queue, queue_rx) = mpsc::unbounded_channel();
        let (state_tx, state) = watch::channel(RuntimeState::default());
        let shared = Arc::new(Shared {
            function_arn: function.arn(),
            queue: tokio::sync::Mutex::new(queue_rx),
            answers: Mutex::default(),
            state: state_tx,
        });
        let serving = shared.clone();
        let server = tokio::spawn(async move {
            // Connections live in the set, so that stopping the server (aborting this task)
            // ends them too, long polls included.
            let mut connections = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { break };
                        let shared = serving.clone();
                        connections.spawn(async move {
                            let service = service_fn(move |request| route(shared.clone(), request));
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        });
                    }
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        });
        Ok(Self {
            address,
            shared,
            queue,
            state,
            invocations: AtomicU64::new(0),
            id_prefix: crate::lambda_host::kill_plan::SplitMix64::from_time().next_u64(),
            server,
        })
    }

    /// Where the server listens; `AWS_LAMBDA_RUNTIME_API` is its `to_string()`.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// What the server has seen so far.
    pub fn state(&self) -> RuntimeState {
        self.state.borrow().clone()
    }

    /// Waits until the function first polls for work (its init is done: `Ok` with when) or
    /// reports an init error (`Err`).
    pub async fn initialised(&self) -> anyhow::Result<Result<Instant, FunctionError>> {
        let mut state = self.state.clone();
        let state = state
            .wait_for(|state| state.first_poll.is_some() || state.init_error.is_some())
            .await
            .context("the runtime API server stopped")?;
        if let Some(error) = &state.init_error {
            return Ok(Err(error.clone()));
        }
        state
            .first_poll
            .map(Ok)
            .context("the runtime API state changed without a poll")
    }

    /// Queues one event for the function, to be answered within `timeout` of its taking it.
    pub fn submit(&self, payload: Bytes, timeout: Duration) -> anyhow::Result<Pending> {
        let number = self.invocations.fetch_add(1, Ordering::Relaxed) + 1;
        let request_id = request_id(self.id_prefix, number);
        let (dispatched_tx, dispatched) = oneshot::channel();
        let (answer_tx, answer) = oneshot::channel();
        lock(&self.shared.answers).insert(request_id.clone(), answer_tx);
        self.queue
            .send(Queued {
                request_id: request_id.clone(),
                payload,
                timeout,
                dispatched: dispatched_tx,
            })
            .ok()
            .context("the runtime API server stopped")?;
        Ok(Pending {
            request_id,
            dispatched,
            answer,
        })
    }
}

impl Drop for RuntimeApi {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A UUID-shaped id (Lambda's request ids are UUIDs), unique per server and invocation.
fn request_id(prefix: u64, number: u64) -> String {
    let mixed = crate::lambda_host::kill_plan::SplitMix64::new(prefix ^ number).next_u64();
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        prefix >> 32,
        (prefix >> 16) & 0xffff,
        prefix & 0xfff,
        mixed & 0xfff,
        number & 0xffff_ffff_ffff
    )
}

type Reply = Response<Full<Bytes>>;

async fn route(shared: Arc<Shared>, request: Request<Incoming>) -> Result<Reply, hyper::Error> {
    let arrived = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let error_type = request
        .headers()
        .get("lambda-runtime-function-error-type")
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let body = request.into_body().collect().await?.to_bytes();
    let parts: Vec<&str> = path.strip_prefix(PREFIX).unwrap_or("").split('/').collect();
    let error = |body: Bytes| FunctionError {
        error_type: error_type.clone().or_else(|| {
            serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|body| body["errorType"].as_str().map(str::to_owned))
        }),
        body,
        at: arrived,
    };
    Ok(match (method, parts.as_slice()) {
        (Method::GET, ["invocation", "next"]) => next(&shared, arrived).await,
        (Method::POST, ["invocation", request_id, "response"]) => {
            answer(&shared, request_id, Answer::Response { body, at: arrived })
        }
        (Method::POST, ["invocation", request_id, "error"]) => {
            answer(&shared, request_id, Answer::Error(error(body)))
        }
        (Method::POST, ["init", "error"]) => {
            let error = error(body);
            shared.state.send_modify(|state| {
                state.init_error.get_or_insert(error);
            });
            accepted()
        }
        _ => json_reply(
            StatusCode::NOT_FOUND,
            r#"{"errorType":"InvalidRequest","errorMessage":"unknown runtime API path"}"#,
        ),
    })
}

async fn next(shared: &Shared, arrived: Instant) -> Reply {
    shared.state.send_modify(|state| {
        state.polls += 1;
        state.first_poll.get_or_insert(arrived);
    });
    let mut queue = shared.queue.lock().await;
    loop {
        let Some(queued) = queue.recv().await else {
            // The host is done with this function: it is about to be stopped.
            return json_reply(StatusCode::GONE, "{}");
        };
        let at = Instant::now();
        let deadline_at = SystemTime::now() + queued.timeout;
        let deadline_ms = deadline_at
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_millis() as u64);
        let dispatched = Dispatched {
            at,
            deadline: at + queued.timeout,
            deadline_ms,
        };
        // A host that gave up on the invocation (dropped it) no longer wants it run.
        if queued.dispatched.send(dispatched).is_err() {
            lock(&shared.answers).remove(&queued.request_id);
            continue;
        }
        let mut response = Response::new(Full::new(queued.payload));
        let headers = response.headers_mut();
        let mut set = |name: &'static str, value: String| {
            if let Ok(value) = value.parse() {
                headers.insert(name, value);
            }
        };
        set("content-type", "application/json".to_owned());
        set("lambda-runtime-aws-request-id", queued.request_id.clone());
        set("lambda-runtime-deadline-ms", deadline_ms.to_string());
        set(
            "lambda-runtime-invoked-function-arn",
            shared.function_arn.clone(),
        );
        set("lambda-runtime-trace-id", trace_id(&queued.request_id));
        return response;
    }
}

fn answer(shared: &Shared, request_id: &str, answer: Answer) -> Reply {
    let Some(waiting) = lock(&shared.answers).remove(request_id) else {
        // Lambda's answer to an unknown or already answered request id.
        return json_reply(
            StatusCode::BAD_REQUEST,
            r#"{"errorType":"InvalidRequestID","errorMessage":"Invalid request ID"}"#,
        );
    };
    // The host may have stopped waiting (the deadline passed): the answer is then too late.
    let _ = waiting.send(answer);
    accepted()
}

/// An X-Ray trace header in Lambda's format, derived from the request id.
fn trace_id(request_id: &str) -> String {
    let seconds = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    let hex: String = request_id.chars().filter(char::is_ascii_hexdigit).collect();
    let tail = &hex[hex.len().saturating_sub(24)..];
    format!(
        "Root=1-{seconds:08x}-{tail:0>24};Parent={:0>16};Sampled=0",
        &tail[..tail.len().min(16)]
    )
}

fn accepted() -> Reply {
    json_reply(StatusCode::ACCEPTED, r#"{"status":"OK"}"#)
}

fn json_reply(status: StatusCode, body: &'static str) -> Reply {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    if let Ok(value) = "application/json".parse() {
        response.headers_mut().insert("content-type", value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_uuid_shaped_and_distinct() {
        let a = request_id(0x1234_5678_9abc_def0, 1);
        let b = request_id(0x1234_5678_9abc_def0, 2);
        assert_ne!(a, b);
        let lengths: Vec<usize> = a.split('-').map(str::len).collect();
        assert_eq!(lengths, [8, 4, 4, 4, 12], "{a}");
    }

    #[test]
    fn trace_ids_have_lambdas_shape() {
        let trace = trace_id(&request_id(42, 7));
        assert!(trace.starts_with("Root=1-"), "{trace}");
        let root = trace
            .strip_prefix("Root=")
            .and_then(|rest| rest.split(';').next())
            .unwrap();
        let lengths: Vec<usize> = root.split('-').map(str::len).collect();
        assert_eq!(lengths, [1, 8, 24], "{trace}");
    }
}

//! The Lambda Runtime API, as far as a `bootstrap` uses it: it long-polls
//! `GET /2018-06-01/runtime/invocation/next` for an event and posts the answer to
//! `.../invocation/<id>/response` (or `/error`, or `/init/error` when init fails).
//!
//! The bench hands events in one at a time and gets back when the function asked for work and
//! when it answered, which is all a cold-start figure needs.

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, Response, StatusCode, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;
use tokio::sync::{Mutex, mpsc};
use tokio::task::JoinHandle;

const PREFIX: &str = "/2018-06-01/runtime/";
/// The invocation deadline handed to the function (the worker plans its sends by it).
const FUNCTION_TIMEOUT: Duration = Duration::from_secs(60);

/// What the function answered to one invocation.
struct Answer {
    request_id: String,
    ok: bool,
    body: Bytes,
    at: Instant,
}

/// The server's side of the channels; the bench holds the other ends in [`RuntimeApi`].
struct Shared {
    events: Mutex<mpsc::Receiver<(String, Bytes)>>,
    polls: mpsc::UnboundedSender<Instant>,
    answers: mpsc::UnboundedSender<Answer>,
}

pub struct RuntimeApi {
    address: SocketAddr,
    events: mpsc::Sender<(String, Bytes)>,
    polls: mpsc::UnboundedReceiver<Instant>,
    answers: mpsc::UnboundedReceiver<Answer>,
    invocations: u64,
    server: JoinHandle<()>,
}

impl RuntimeApi {
    /// Listens on 127.0.0.1 on a port the OS picks.
    pub async fn start() -> anyhow::Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let address = listener.local_addr()?;
        let (events, events_rx) = mpsc::channel(1);
        let (polls_tx, polls) = mpsc::unbounded_channel();
        let (answers_tx, answers) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            events: Mutex::new(events_rx),
            polls: polls_tx,
            answers: answers_tx,
        });
        let server = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let shared = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| route(shared.clone(), request));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Self {
            address,
            events,
            polls,
            answers,
            invocations: 0,
            server,
        })
    }

    /// The value of `AWS_LAMBDA_RUNTIME_API` for the function.
    pub fn address(&self) -> String {
        self.address.to_string()
    }

    /// Waits until the function asks for work (the end of its init, or of its last invocation)
    /// and returns when it asked.
    pub async fn next_poll(&mut self) -> anyhow::Result<Instant> {
        self.polls
            .recv()
            .await
            .context("the runtime API server stopped")
    }

    /// Hands the (already polling) function one event; returns how long it took to answer.
    pub async fn invoke(&mut self, event: Bytes) -> anyhow::Result<(Duration, Bytes)> {
        self.invocations += 1;
        let request_id = format!("bench-{}", self.invocations);
        let sent = Instant::now();
        self.events.send((request_id.clone(), event)).await?;
        let answer = self
            .answers
            .recv()
            .await
            .context("the runtime API server stopped")?;
        if answer.request_id != request_id || !answer.ok {
            bail!(
                "invocation {request_id} failed ({}): {}",
                answer.request_id,
                String::from_utf8_lossy(&answer.body)
            );
        }
        Ok((answer.at - sent, answer.body))
    }
}

impl Drop for RuntimeApi {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn route(
    shared: Arc<Shared>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let arrived = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let body = request.into_body().collect().await?.to_bytes();
    let parts: Vec<&str> = path.strip_prefix(PREFIX).unwrap_or("").split('/').collect();
    let answer = |request_id: &str, ok| {
        let _ = shared.answers.send(Answer {
            request_id: request_id.to_owned(),
            ok,
            body: body.clone(),
            at: arrived,
        });
        reply(StatusCode::ACCEPTED, Bytes::new())
    };
    Ok(match (method, parts.as_slice()) {
        (Method::GET, ["invocation", "next"]) => {
            let _ = shared.polls.send(arrived);
            // The lock makes concurrent polls (there are none from one runtime) take turns.
            match shared.events.lock().await.recv().await {
                Some((request_id, event)) => next_invocation(&request_id, event),
                // The bench is done with this function: it is about to be killed.
                None => reply(StatusCode::GONE, Bytes::new()),
            }
        }
        (Method::POST, ["invocation", request_id, "response"]) => answer(request_id, true),
        (Method::POST, ["invocation", request_id, "error"]) => answer(request_id, false),
        (Method::POST, ["init", "error"]) => answer("init", false),
        _ => reply(StatusCode::NOT_FOUND, Bytes::new()),
    })
}

fn next_invocation(request_id: &str, event: Bytes) -> Response<Full<Bytes>> {
    let deadline = SystemTime::now() + FUNCTION_TIMEOUT;
    let deadline_ms = deadline
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis());
    let mut response = reply(StatusCode::OK, event);
    let headers = response.headers_mut();
    let mut set = |name: &'static str, value: String| {
        if let Ok(value) = value.parse() {
            headers.insert(name, value);
        }
    };
    set("lambda-runtime-aws-request-id", request_id.to_owned());
    set("lambda-runtime-deadline-ms", deadline_ms.to_string());
    set(
        "lambda-runtime-invoked-function-arn",
        "arn:aws:lambda:us-east-1:123456789012:function:bench".to_owned(),
    );
    set(
        "lambda-runtime-trace-id",
        "Root=1-5759e988-bd862e3fe1be46a994272793;Sampled=0".to_owned(),
    );
    response
}

fn reply(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response
}

//! An SES-compatible endpoint for throughput runs and delivery tests: SES v2 `SendEmail`
//! (`POST /v2/email/outbound-emails`) answered after a set latency, with a max send rate enforced
//! as SES does (HTTP 429 `TooManyRequestsException`, one second of burst). It counts every
//! recipient it accepts, and when, to find duplicates and losses (also of emails sent after a
//! given moment, such as a kill). Any other request (the worker's SQS, DynamoDB and contact-list
//! calls) is passed on to the local AWS server, so one SDK endpoint serves the whole worker.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, Response, StatusCode, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

const HOP_BY_HOP: [&str; 3] = ["content-length", "transfer-encoding", "connection"];
const SEND_EMAIL_PATH: &str = "/v2/email/outbound-emails";

#[derive(Debug, Clone, Copy)]
pub struct SesBehaviour {
    /// Time to answer each `SendEmail`.
    pub latency: Duration,
    /// Emails per second accepted; more are throttled.
    pub max_send_rate: f64,
}

/// What the endpoint saw.
#[derive(Debug, Clone, Default)]
pub struct Received {
    /// Accepted emails per recipient address.
    pub per_recipient: HashMap<String, u32>,
    /// When the last accepted email was answered (after the latency).
    pub last_accepted: Option<Instant>,
    /// Every accepted email, in the order accepted.
    pub accepted: Vec<Accepted>,
}

/// One accepted email.
#[derive(Debug, Clone)]
pub struct Accepted {
    /// When the endpoint accepted it (on arrival: its answer follows after the latency).
    pub at: Instant,
    pub recipients: Vec<String>,
}

impl Received {
    /// Emails accepted in all.
    pub fn total(&self) -> usize {
        self.accepted.len()
    }

    /// Emails accepted at or after `instant`.
    pub fn accepted_since(&self, instant: Instant) -> usize {
        self.accepted
            .iter()
            .filter(|email| email.at >= instant)
            .count()
    }

    /// Recipients who got more than one email, with how many.
    pub fn duplicates(&self) -> Vec<(&str, u32)> {
        let mut duplicates: Vec<(&str, u32)> = self
            .per_recipient
            .iter()
            .filter(|(_, count)| **count > 1)
            .map(|(recipient, count)| (recipient.as_str(), *count))
            .collect();
        duplicates.sort();
        duplicates
    }

    /// Of `expected`, those who got nothing.
    pub fn missing<'a>(&self, expected: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
        expected
            .into_iter()
            .filter(|recipient| !self.per_recipient.contains_key(*recipient))
            .collect()
    }
}

struct State {
    behaviour: SesBehaviour,
    /// Token bucket: tokens available at `refilled`.
    bucket: Mutex<(f64, Instant)>,
    received: Mutex<Received>,
    throttled: AtomicU64,
    upstream: String,
    client: reqwest::Client,
}

pub struct SesEndpoint {
    address: SocketAddr,
    state: Arc<State>,
    server: JoinHandle<()>,
}

impl SesEndpoint {
    /// Listens on 127.0.0.1 on a port the OS picks; passes non-SES requests to `upstream`.
    pub async fn start(behaviour: SesBehaviour, upstream: &str) -> anyhow::Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let address = listener.local_addr()?;
        let state = Arc::new(State {
            behaviour,
            bucket: Mutex::new((behaviour.max_send_rate, Instant::now())),
            received: Mutex::default(),
            throttled: AtomicU64::new(0),
            upstream: upstream.to_owned(),
            client: reqwest::Client::new(),
        });
        let shared = state.clone();
        let server = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| route(state.clone(), request));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Self {
            address,
            state,
            server,
        })
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Takes what was received so far, and starts counting afresh.
    pub fn take_received(&self) -> Received {
        std::mem::take(&mut *lock(&self.state.received))
    }

    /// What was received so far (a copy; counting goes on).
    pub fn received(&self) -> Received {
        lock(&self.state.received).clone()
    }

    /// Accepted emails per recipient so far.
    pub fn per_recipient(&self) -> HashMap<String, u32> {
        lock(&self.state.received).per_recipient.clone()
    }

    /// When each email was accepted, in order.
    pub fn accepted_times(&self) -> Vec<Instant> {
        lock(&self.state.received)
            .accepted
            .iter()
            .map(|email| email.at)
            .collect()
    }

    /// Emails accepted at or after `instant`.
    pub fn accepted_since(&self, instant: Instant) -> usize {
        lock(&self.state.received).accepted_since(instant)
    }

    /// Throttling answers given so far, and starts counting afresh.
    pub fn take_throttled(&self) -> u64 {
        self.state.throttled.swap(0, Ordering::Relaxed)
    }

    /// Throttling answers given so far.
    pub fn throttled(&self) -> u64 {
        self.state.throttled.load(Ordering::Relaxed)
    }
}

impl Drop for SesEndpoint {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

type Reply = Response<Full<Bytes>>;

async fn route(state: Arc<State>, request: Request<Incoming>) -> Result<Reply, hyper::Error> {
    if request.method() == Method::POST && request.uri().path() == SEND_EMAIL_PATH {
        let body = request.into_body().collect().await?.to_bytes();
        return Ok(send_email(&state, &body).await);
    }
    Ok(forward(&state, request)
        .await
        .unwrap_or_else(|err| reply(StatusCode::BAD_GATEWAY, &[], err.to_string().into())))
}

async fn send_email(state: &State, body: &[u8]) -> Reply {
    // SES decides on arrival, and answers after its latency either way. An accepted email is
    // counted on arrival too: a sender killed while waiting for the answer has still sent it.
    let arrived = Instant::now();
    let admitted = take_token(state);
    let request: Value = serde_json::from_slice(body).unwrap_or_default();
    let recipients: Option<Vec<String>> =
        request["Destination"]["ToAddresses"].as_array().map(|to| {
            to.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        });
    let message_id = match (&recipients, admitted) {
        (Some(recipients), true) => {
            let mut received = lock(&state.received);
            for recipient in recipients {
                *received.per_recipient.entry(recipient.clone()).or_default() += 1;
            }
            received.accepted.push(Accepted {
                at: arrived,
                recipients: recipients.clone(),
            });
            Some(format!("local-{}", received.accepted.len()))
        }
        _ => None,
    };
    tokio::time::sleep(state.behaviour.latency).await;
    if !admitted {
        state.throttled.fetch_add(1, Ordering::Relaxed);
        let error = json!({"message": "Maximum sending rate exceeded."});
        return reply(
            StatusCode::TOO_MANY_REQUESTS,
            &[("x-amzn-ErrorType", "TooManyRequestsException")],
            error.to_string().into(),
        );
    }
    let Some(message_id) = message_id else {
        let error = json!({"message": "Missing Destination.ToAddresses"});
        return reply(
            StatusCode::BAD_REQUEST,
            &[("x-amzn-ErrorType", "BadRequestException")],
            error.to_string().into(),
        );
    };
    // When the sender learns of it: what a throughput figure ends at.
    lock(&state.received).last_accepted = Some(Instant::now());
    reply(
        StatusCode::OK,
        &[],
        json!({"MessageId": message_id}).to_string().into(),
    )
}

/// One token per email, refilled at the max send rate, holding at most one second's worth.
fn take_token(state: &State) -> bool {
    let rate = state.behaviour.max_send_rate;
    let mut bucket = lock(&state.bucket);
    let now = Instant::now();
    let (tokens, refilled) = *bucket;
    let tokens = (tokens + (now - refilled).as_secs_f64() * rate).min(rate.max(1.0));
    let admitted = tokens >= 1.0;
    *bucket = (if admitted { tokens - 1.0 } else { tokens }, now);
    admitted
}

async fn forward(state: &State, request: Request<Incoming>) -> anyhow::Result<Reply> {
    let url = format!("{}{}", state.upstream, request.uri());
    let method = reqwest::Method::from_bytes(request.method().as_str().as_bytes())?;
    let mut upstream = state.client.request(method, url);
    for (name, value) in request.headers() {
        if name != hyper::header::HOST {
            upstream = upstream.header(name.as_str(), value.as_bytes());
        }
    }
    let body = request.into_body().collect().await?.to_bytes();
    let response = upstream.body(body).send().await?;
    let status = StatusCode::from_u16(response.status().as_u16())?;
    let headers: Vec<(String, String)> = response
        .headers()
        .iter()
        // hyper frames the body itself.
        .filter(|(name, _)| !HOP_BY_HOP.contains(&name.as_str()))
        .filter_map(|(name, value)| Some((name.to_string(), value.to_str().ok()?.to_owned())))
        .collect();
    let body = response.bytes().await?;
    let headers: Vec<(&str, &str)> = headers
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_str()))
        .collect();
    Ok(reply(status, &headers, body))
}

fn reply(status: StatusCode, headers: &[(&str, &str)], body: Bytes) -> Reply {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    for (name, value) in headers {
        if let (Ok(name), Ok(value)) = (
            hyper::header::HeaderName::from_bytes(name.as_bytes()),
            hyper::header::HeaderValue::from_str(value),
        ) {
            response.headers_mut().append(name, value);
        }
    }
    response
}

//! An HTTP proxy in front of the local SQS (moto) that loses or holds back the answers to
//! `SendMessage`, after passing the request on: SQS stored the message, and the caller does not
//! know it. moto always answers at once, so the accept function's handling of an ambiguous
//! enqueue (it withdraws the task) can only be tested through this.
//!
//! SQS's JSON protocol (as the Rust SDK speaks it) is `POST /` with
//! `X-Amz-Target: AmazonSQS.<Operation>`. Every request is passed on as it came; only
//! `SendMessage` requests meet the faults, one per request, in the order they were added.

use crate::dynamodb_proxy::{DroppedAnswer, Reply, forward, forwarding_client, lock, serve};
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::{Request, body::Incoming};
use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

const SEND_MESSAGE: &str = "AmazonSQS.SendMessage";

/// What happens to the answer of one `SendMessage` (always passed on, so SQS stores it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendFault {
    /// The connection is closed without an answer. The SDK sees a dispatch failure (transient)
    /// and retries: each retry stores the message again, and meets the next fault, if any.
    LoseAnswer,
    /// The answer is held back this long, then the connection is closed without it: longer
    /// than the caller's timeouts, a stalled network path.
    Stall(Duration),
}

/// The proxy, listening on 127.0.0.1 on a port the OS picked; stopped when dropped.
pub struct SqsProxy {
    address: SocketAddr,
    state: Arc<State>,
    server: JoinHandle<()>,
}

struct State {
    upstream: String,
    client: reqwest::Client,
    faults: Mutex<VecDeque<SendFault>>,
    /// `SendMessage` requests passed on (SQS stored each).
    sent: AtomicU64,
}

impl SqsProxy {
    /// Starts the proxy in front of SQS at `upstream` (`http://127.0.0.1:<port>`).
    pub async fn start(upstream: &str) -> anyhow::Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let address = listener.local_addr()?;
        let state = Arc::new(State {
            upstream: upstream.trim_end_matches('/').to_owned(),
            client: forwarding_client()?,
            faults: Mutex::default(),
            sent: AtomicU64::new(0),
        });
        let shared = state.clone();
        let server = serve(listener, move |request| handle(shared.clone(), request));
        Ok(Self {
            address,
            state,
            server,
        })
    }

    /// The URL to give the SDK as SQS's endpoint.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.address)
    }

    /// The next `SendMessage` requests (the SDK's retries count) get `faults`, one each.
    pub fn inject(&self, faults: impl IntoIterator<Item = SendFault>) {
        lock(&self.state.faults).extend(faults);
    }

    /// Drops every fault not met yet.
    pub fn clear_faults(&self) {
        lock(&self.state.faults).clear();
    }

    /// Faults added and not met yet.
    pub fn faults_left(&self) -> usize {
        lock(&self.state.faults).len()
    }

    /// How many `SendMessage` requests reached SQS.
    pub fn messages_sent(&self) -> u64 {
        self.state.sent.load(Ordering::SeqCst)
    }
}

impl Drop for SqsProxy {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn handle(state: Arc<State>, request: Request<Incoming>) -> Result<Reply, DroppedAnswer> {
    let (parts, body) = request.into_parts();
    let body: Bytes = body.collect().await.map_err(|_| DroppedAnswer)?.to_bytes();
    let send = parts
        .headers
        .get("x-amz-target")
        .is_some_and(|target| target == SEND_MESSAGE);
    let fault = if send {
        lock(&state.faults).pop_front()
    } else {
        None
    };
    let answer = forward(&state.client, &state.upstream, parts, body)
        .await
        .map_err(|_| DroppedAnswer)?;
    if send && answer.status.is_success() {
        state.sent.fetch_add(1, Ordering::SeqCst);
    }
    match fault {
        None => Ok(answer.into_reply()),
        Some(SendFault::LoseAnswer) => Err(DroppedAnswer),
        Some(SendFault::Stall(held)) => {
            tokio::time::sleep(held).await;
            Err(DroppedAnswer)
        }
    }
}

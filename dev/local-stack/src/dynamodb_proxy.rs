//! An HTTP proxy in front of DynamoDB Local that counts capacity and injects faults.
//!
//! DynamoDB Local never answers `TransactionConflict`, never throttles and never loses an
//! answer, so code that must survive those (the task store) cannot be tested against it alone.
//! Put this proxy between the SDK and it ([`DynamoDbProxy::endpoint`] as the DynamoDB endpoint),
//! and a test can [`inject`](DynamoDbProxy::inject) those answers where it wants them, and count
//! what DynamoDB would charge ([`DynamoDbProxy::stats`]).
//!
//! The DynamoDB JSON protocol is `POST /` with `X-Amz-Target: DynamoDB_20120810.<Operation>` and
//! a JSON body; every request is passed on as it came, except that
//! `"ReturnConsumedCapacity": "TOTAL"` is added to the body of the operations that take it
//! ([`Operation`]) when the client did not set it. DynamoDB Local does not check SigV4
//! signatures, so the changed body still passes (real DynamoDB would refuse it).
//!
//! What DynamoDB Local 3.3.0 reports as consumed capacity (checked by hand and by
//! `tests/dynamodb_proxy.rs`):
//! - `CapacityUnits` per table only, never `ReadCapacityUnits` / `WriteCapacityUnits`: units are
//!   read or write units by operation ([`Operation::writes`]).
//! - `PutItem`, `UpdateItem`, `DeleteItem`: 1 per started KB of the item (1.0 for a small one, a
//!   delete of a missing item too). `BatchWriteItem`: their sum.
//! - `GetItem`: 0.5 (eventually consistent) or 1.0 (consistent) per started 4 KB; `Query`, `Scan`
//!   and `BatchGetItem` alike. `TransactGetItems`: 2 per item.
//! - `TransactWriteItems`: **not** 2 per item, as DynamoDB charges, but 2 × the sum of the
//!   *distinct* per-item unit counts: 2.0 for two small items as for ten, 6.0 for a 1.5 KB item
//!   with small ones. So for transactions of small items, count on
//!   [`OperationStats::transact_items`] (× 2) instead of the units.
//! - An error answer (a failed condition, a cancelled transaction) carries no capacity, although
//!   DynamoDB charges a write whose condition failed: those are in [`OperationStats::errors`].
//! - It honours `ClientRequestToken` (which the SDK fills in for `TransactWriteItems`): a
//!   transaction retried with the same token is not applied twice.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use hyper::http::request::Parts;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{HeaderMap, Request, Response, StatusCode, body::Incoming};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

const TARGET_PREFIX: &str = "DynamoDB_20120810.";
const ERROR_NAMESPACE: &str = "com.amazonaws.dynamodb.v20120810#";
const JSON_1_0: &str = "application/x-amz-json-1.0";
/// Framed by hyper and reqwest themselves (and the request body may change length); `host` is
/// the upstream's.
const NOT_FORWARDED: [&str; 4] = ["content-length", "transfer-encoding", "connection", "host"];

/// The data-plane operations: those that take `ReturnConsumedCapacity`, and the only ones faults
/// apply to (table management, as provisioning does it, always goes through untouched).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Operation {
    GetItem,
    PutItem,
    UpdateItem,
    DeleteItem,
    TransactWriteItems,
    TransactGetItems,
    BatchWriteItem,
    BatchGetItem,
    Query,
    Scan,
}

impl Operation {
    pub const ALL: [Self; 10] = [
        Self::GetItem,
        Self::PutItem,
        Self::UpdateItem,
        Self::DeleteItem,
        Self::TransactWriteItems,
        Self::TransactGetItems,
        Self::BatchWriteItem,
        Self::BatchGetItem,
        Self::Query,
        Self::Scan,
    ];

    /// The name in `X-Amz-Target` (and the key of [`CapacityStats::operations`]).
    pub fn name(self) -> &'static str {
        match self {
            Self::GetItem => "GetItem",
            Self::PutItem => "PutItem",
            Self::UpdateItem => "UpdateItem",
            Self::DeleteItem => "DeleteItem",
            Self::TransactWriteItems => "TransactWriteItems",
            Self::TransactGetItems => "TransactGetItems",
            Self::BatchWriteItem => "BatchWriteItem",
            Self::BatchGetItem => "BatchGetItem",
            Self::Query => "Query",
            Self::Scan => "Scan",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|operation| operation.name() == name)
    }

    /// Whether its units are write units (the rest are read units).
    pub fn writes(self) -> bool {
        matches!(
            self,
            Self::PutItem
                | Self::UpdateItem
                | Self::DeleteItem
                | Self::TransactWriteItems
                | Self::BatchWriteItem
        )
    }
}

/// What an injected fault answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FaultKind {
    /// Not forwarded. On a transaction (`TransactWriteItems`, `TransactGetItems`): HTTP 400
    /// `TransactionCanceledException` with one cancellation reason per `TransactItems` entry, the
    /// first `TransactionConflict`, the others `None`, as DynamoDB cancels a transaction that
    /// meets another on an item. On any other operation: `TransactionConflictException`, as
    /// DynamoDB answers a single-item write to an item a transaction is writing. The SDK retries
    /// neither.
    TransactionConflict,
    /// Not forwarded: HTTP 400 `ThrottlingException`. The SDK's standard retry retries it.
    Throttling,
    /// Not forwarded: HTTP 400 `ProvisionedThroughputExceededException`. Retried by the SDK.
    ProvisionedThroughputExceeded,
    /// Forwarded (DynamoDB Local applies it), then answered HTTP 500 `InternalServerError`, as
    /// DynamoDB does when it fails after the write may have happened. The SDK parses it as the
    /// operation's `InternalServerError` and retries it as a transient error, so a write the
    /// SDK retries reaches the table twice.
    LostAnswer,
    /// Forwarded (applied), then the connection is closed without an answer, as when the answer
    /// is lost on the network. The SDK sees a dispatch failure (hyper's `IncompleteMessage`),
    /// transient, and retries it too.
    DroppedConnection,
}

impl FaultKind {
    /// Whether DynamoDB Local gets (and applies) the request.
    pub fn forwards(self) -> bool {
        matches!(self, Self::LostAnswer | Self::DroppedConnection)
    }
}

/// A rule: the `after + 1`-th to `after + times`-th requests that match it get `kind`.
///
/// Every matching request counts, the SDK's retries too, from when the rule was added; a
/// request gets one fault at most (that of the first rule due, in the order they were added),
/// and a rule that was due but yielded to an earlier one stays due for the next request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    /// The operation whose requests it matches; `None`: any [`Operation`].
    pub operation: Option<Operation>,
    pub kind: FaultKind,
    /// How many matching requests get the fault.
    pub times: u32,
    /// How many matching requests are let through before the first fault.
    pub after: u32,
}

impl Fault {
    /// `kind` on the next request of `operation` (see [`Fault::times`], [`Fault::after`]).
    pub fn on(operation: Operation, kind: FaultKind) -> Self {
        Self {
            operation: Some(operation),
            kind,
            times: 1,
            after: 0,
        }
    }

    /// `kind` on the next request of any [`Operation`].
    pub fn on_any(kind: FaultKind) -> Self {
        Self {
            operation: None,
            kind,
            times: 1,
            after: 0,
        }
    }

    pub fn times(self, times: u32) -> Self {
        Self { times, ..self }
    }

    pub fn after(self, after: u32) -> Self {
        Self { after, ..self }
    }
}

/// What one operation's requests did, since the proxy started or its stats were reset.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OperationStats {
    /// Requests received, each retry of the SDK's included, injected faults included.
    pub requests: u64,
    /// Consumed capacity DynamoDB Local reported (see the module's notes on what it reports).
    pub write_units: f64,
    pub read_units: f64,
    /// `TransactItems` entries of the transactions DynamoDB Local carried out: DynamoDB charges
    /// 2 units per entry of up to 1 KB (write) or 4 KB (read), which DynamoDB Local misreports
    /// for `TransactWriteItems`.
    pub transact_items: u64,
    /// DynamoDB Local's error answers, by error code (`ConditionalCheckFailedException`, ...).
    /// They carry no capacity, but DynamoDB charges a failed conditional write as a write.
    pub errors: BTreeMap<String, u64>,
    /// Requests answered with an injected fault (the forwarded kinds were applied, and their
    /// capacity counted).
    pub injected: u64,
}

impl OperationStats {
    pub fn errors_total(&self) -> u64 {
        self.errors.values().sum()
    }

    fn add(&mut self, other: &Self) {
        self.requests += other.requests;
        self.write_units += other.write_units;
        self.read_units += other.read_units;
        self.transact_items += other.transact_items;
        for (code, count) in &other.errors {
            *self.errors.entry(code.clone()).or_default() += count;
        }
        self.injected += other.injected;
    }
}

/// What went through the proxy, since it started or its stats were reset.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CapacityStats {
    /// By operation name as in `X-Amz-Target` (`PutItem`, ...; table management too, with no
    /// units).
    pub operations: BTreeMap<String, OperationStats>,
    /// Every operation's figures added up.
    pub total: OperationStats,
    /// Faults injected, by kind.
    pub injected: BTreeMap<FaultKind, u64>,
}

impl CapacityStats {
    /// One operation's figures (all zero if it was not seen).
    pub fn operation(&self, operation: Operation) -> OperationStats {
        self.operations
            .get(operation.name())
            .cloned()
            .unwrap_or_default()
    }

    /// Faults of `kind` injected.
    pub fn injected(&self, kind: FaultKind) -> u64 {
        self.injected.get(&kind).copied().unwrap_or(0)
    }

    /// The write units DynamoDB on demand would bill for these requests, from what DynamoDB
    /// Local reported: its units for the writes that are not transactions, 2 per item of each
    /// transaction carried out (as DynamoDB bills items up to 1 KB; DynamoDB Local's own figure
    /// for transactions is wrong), and 1 per single-item write refused by its condition (DynamoDB
    /// bills those; DynamoDB Local reports nothing for them). Transactions of larger items, and
    /// cancelled ones, are not in it; a transaction replayed with its `ClientRequestToken` after
    /// a lost answer is counted again (DynamoDB bills a replay as a read).
    pub fn estimated_write_units(&self) -> f64 {
        let transactions = self.operation(Operation::TransactWriteItems);
        let refused: u64 = [
            Operation::PutItem,
            Operation::UpdateItem,
            Operation::DeleteItem,
        ]
        .into_iter()
        .map(|operation| {
            self.operation(operation)
                .errors
                .get("ConditionalCheckFailedException")
                .copied()
                .unwrap_or(0)
        })
        .sum();
        self.total.write_units - transactions.write_units
            + 2.0 * transactions.transact_items as f64
            + refused as f64
    }
}

/// The proxy, listening on 127.0.0.1 on a port the OS picked; stopped when dropped.
pub struct DynamoDbProxy {
    address: SocketAddr,
    state: Arc<State>,
    server: JoinHandle<()>,
}

struct State {
    upstream: String,
    client: reqwest::Client,
    rules: Mutex<Vec<Rule>>,
    counters: Mutex<Counters>,
}

struct Rule {
    fault: Fault,
    /// Matching requests still to let through.
    skip: u32,
    /// Faults still to inject.
    left: u32,
}

#[derive(Default)]
struct Counters {
    operations: BTreeMap<String, OperationStats>,
    injected: BTreeMap<FaultKind, u64>,
}

impl DynamoDbProxy {
    /// Starts the proxy in front of DynamoDB (Local) at `upstream` (`http://127.0.0.1:<port>`),
    /// as a task of the current Tokio runtime.
    pub async fn start(upstream: &str) -> anyhow::Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let address = listener.local_addr()?;
        let client = forwarding_client()?;
        let state = Arc::new(State {
            upstream: upstream.trim_end_matches('/').to_owned(),
            client,
            rules: Mutex::default(),
            counters: Mutex::default(),
        });
        let shared = state.clone();
        let server = serve(listener, move |request| handle(shared.clone(), request));
        Ok(Self {
            address,
            state,
            server,
        })
    }

    /// The URL to give the SDK as DynamoDB's endpoint.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.address)
    }

    /// The DynamoDB it forwards to.
    pub fn upstream(&self) -> &str {
        &self.state.upstream
    }

    /// Adds a fault rule; it applies to requests that arrive from now on.
    pub fn inject(&self, fault: Fault) {
        if fault.times > 0 {
            lock(&self.state.rules).push(Rule {
                fault,
                skip: fault.after,
                left: fault.times,
            });
        }
    }

    /// Faults added and not injected yet.
    pub fn faults_left(&self) -> u32 {
        lock(&self.state.rules).iter().map(|rule| rule.left).sum()
    }

    /// Drops every rule not spent yet.
    pub fn clear_faults(&self) {
        lock(&self.state.rules).clear();
    }

    pub fn stats(&self) -> CapacityStats {
        let counters = lock(&self.state.counters);
        let mut total = OperationStats::default();
        for stats in counters.operations.values() {
            total.add(stats);
        }
        CapacityStats {
            operations: counters.operations.clone(),
            total,
            injected: counters.injected.clone(),
        }
    }

    /// Starts counting afresh (injected faults too); fault rules are kept.
    pub fn reset_stats(&self) {
        *lock(&self.state.counters) = Counters::default();
    }
}

/// Serves HTTP/1 on `listener` with `handle`, as a task of the current Tokio runtime, until the
/// task is aborted (connections end with it). Shared with the SQS proxy.
pub(crate) fn serve<H, F>(listener: TcpListener, handle: H) -> JoinHandle<()>
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Result<Reply, DroppedAnswer>> + Send + 'static,
{
    tokio::spawn(async move {
        // Connections are tasks of this set, so that aborting this task ends them too.
        let mut connections = JoinSet::new();
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                // Such as a connection reset before it was accepted, or out of descriptors
                // for a moment: the proxy goes on.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            while connections.try_join_next().is_some() {}
            // Small requests and answers: do not let Nagle hold them back.
            let _ = stream.set_nodelay(true);
            let handle = handle.clone();
            connections.spawn(async move {
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service_fn(handle))
                    .await;
            });
        }
    })
}

/// A client for forwarding: nothing between a proxy and its upstream, whatever HTTP_PROXY says.
pub(crate) fn forwarding_client() -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .build()
}

impl Drop for DynamoDbProxy {
    fn drop(&mut self) {
        self.server.abort();
    }
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl State {
    /// Counts a request and picks its fault, if a rule is due.
    fn admit(&self, name: &str, operation: Option<Operation>) -> Option<FaultKind> {
        let fault = operation.and_then(|operation| {
            let mut rules = lock(&self.rules);
            let mut chosen = None;
            for rule in rules.iter_mut() {
                if rule.fault.operation.is_some_and(|only| only != operation) {
                    continue;
                }
                if rule.skip > 0 {
                    rule.skip -= 1;
                } else if chosen.is_none() {
                    rule.left -= 1;
                    chosen = Some(rule.fault.kind);
                }
            }
            rules.retain(|rule| rule.left > 0);
            chosen
        });
        let mut counters = lock(&self.counters);
        let stats = counters.operations.entry(name.to_owned()).or_default();
        stats.requests += 1;
        if let Some(kind) = fault {
            stats.injected += 1;
            *counters.injected.entry(kind).or_default() += 1;
        }
        fault
    }

    /// Counts what DynamoDB Local answered.
    fn record(
        &self,
        name: &str,
        operation: Option<Operation>,
        transact_items: Option<usize>,
        answer: &Answer,
    ) {
        let shape: Option<AnswerShape> = serde_json::from_slice(&answer.body).ok();
        let mut counters = lock(&self.counters);
        let stats = counters.operations.entry(name.to_owned()).or_default();
        if !answer.status.is_success() {
            let code = shape
                .and_then(|shape| shape.error_type)
                .map(|kind| kind.rsplit('#').next().unwrap_or_default().to_owned())
                .unwrap_or_else(|| format!("HTTP {}", answer.status.as_u16()));
            *stats.errors.entry(code).or_default() += 1;
            return;
        }
        let Some(operation) = operation else {
            return;
        };
        stats.transact_items += transact_items.unwrap_or(0) as u64;
        let consumed = match shape.and_then(|shape| shape.consumed_capacity) {
            Some(Consumed::One(capacity)) => vec![capacity],
            Some(Consumed::Many(capacities)) => capacities,
            None => Vec::new(),
        };
        for capacity in consumed {
            if capacity.read.is_some() || capacity.write.is_some() {
                stats.read_units += capacity.read.unwrap_or(0.0);
                stats.write_units += capacity.write.unwrap_or(0.0);
            } else if operation.writes() {
                stats.write_units += capacity.total.unwrap_or(0.0);
            } else {
                stats.read_units += capacity.total.unwrap_or(0.0);
            }
        }
    }
}

/// What the proxy reads of a request body.
#[derive(Deserialize)]
struct RequestShape {
    #[serde(rename = "ReturnConsumedCapacity")]
    return_consumed_capacity: Option<IgnoredAny>,
    #[serde(rename = "TransactItems")]
    transact_items: Option<Vec<IgnoredAny>>,
}

/// What the proxy reads of an answer body.
#[derive(Deserialize)]
struct AnswerShape {
    #[serde(rename = "ConsumedCapacity")]
    consumed_capacity: Option<Consumed>,
    #[serde(rename = "__type")]
    error_type: Option<String>,
}

/// An object for single-item operations and queries, a list (one per table) for batches and
/// transactions.
#[derive(Deserialize)]
#[serde(untagged)]
enum Consumed {
    One(Capacity),
    Many(Vec<Capacity>),
}

#[derive(Deserialize)]
struct Capacity {
    #[serde(rename = "CapacityUnits")]
    total: Option<f64>,
    #[serde(rename = "ReadCapacityUnits")]
    read: Option<f64>,
    #[serde(rename = "WriteCapacityUnits")]
    write: Option<f64>,
}

pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

impl Answer {
    /// The answer as the proxy passes it back.
    pub(crate) fn into_reply(self) -> Reply {
        let mut response = Response::new(Full::new(self.body));
        *response.status_mut() = self.status;
        *response.headers_mut() = self.headers;
        response
    }
}

/// Returned by the service to make hyper close the connection without an answer.
#[derive(Debug)]
pub(crate) struct DroppedAnswer;

impl std::fmt::Display for DroppedAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("answer dropped by an injected fault")
    }
}

impl std::error::Error for DroppedAnswer {}

pub(crate) type Reply = Response<Full<Bytes>>;

async fn handle(state: Arc<State>, request: Request<Incoming>) -> Result<Reply, DroppedAnswer> {
    let (parts, body) = request.into_parts();
    // A client that went away mid-request gets nothing either.
    let body = body.collect().await.map_err(|_| DroppedAnswer)?.to_bytes();
    let name = parts
        .headers
        .get("x-amz-target")
        .and_then(|target| target.to_str().ok())
        .and_then(|target| target.strip_prefix(TARGET_PREFIX))
        .unwrap_or_default()
        .to_owned();
    let operation = Operation::from_name(&name);
    let shape: Option<RequestShape> = operation.and_then(|_| serde_json::from_slice(&body).ok());
    let transact_items = shape
        .as_ref()
        .and_then(|shape| shape.transact_items.as_ref().map(Vec::len));
    let body = match &shape {
        Some(shape) if shape.return_consumed_capacity.is_none() => ask_for_capacity(&body),
        _ => body,
    };

    let fault = state.admit(&name, operation);
    if let Some(kind) = fault
        && !kind.forwards()
    {
        return Ok(fault_answer(kind, transact_items));
    }
    let answer = match forward(&state.client, &state.upstream, parts, body).await {
        Ok(answer) => answer,
        Err(err) => {
            return Ok(reply(
                StatusCode::BAD_GATEWAY,
                Bytes::from(format!("DynamoDB proxy: the upstream failed: {err}")),
            ));
        }
    };
    state.record(&name, operation, transact_items, &answer);
    match fault {
        Some(FaultKind::DroppedConnection) => Err(DroppedAnswer),
        Some(FaultKind::LostAnswer) => Ok(fault_answer(FaultKind::LostAnswer, transact_items)),
        _ => Ok(answer.into_reply()),
    }
}

/// `body` (a JSON object without `ReturnConsumedCapacity`) with `"ReturnConsumedCapacity":
/// "TOTAL"` as its first member; the rest is left byte for byte.
fn ask_for_capacity(body: &Bytes) -> Bytes {
    let Some(open) = body.iter().position(|byte| !byte.is_ascii_whitespace()) else {
        return body.clone();
    };
    if body[open] != b'{' {
        return body.clone();
    }
    let rest = &body[open + 1..];
    let empty = rest.iter().find(|byte| !byte.is_ascii_whitespace()) == Some(&b'}');
    let mut asked = Vec::with_capacity(body.len() + 40);
    asked.extend_from_slice(&body[..=open]);
    asked.extend_from_slice(br#""ReturnConsumedCapacity":"TOTAL""#);
    if !empty {
        asked.push(b',');
    }
    asked.extend_from_slice(rest);
    Bytes::from(asked)
}

/// Passes a request on to `upstream` as it came (but for the framing headers).
pub(crate) async fn forward(
    client: &reqwest::Client,
    upstream: &str,
    parts: Parts,
    body: Bytes,
) -> Result<Answer, reqwest::Error> {
    let path = parts.uri.path_and_query().map_or("/", |path| path.as_str());
    let mut headers = parts.headers;
    for name in NOT_FORWARDED {
        headers.remove(name);
    }
    let response = client
        .request(parts.method, format!("{upstream}{path}"))
        .headers(headers)
        .body(body)
        .send()
        .await?;
    let status = response.status();
    let mut headers = response.headers().clone();
    for name in NOT_FORWARDED {
        headers.remove(name);
    }
    let body = response.bytes().await?;
    Ok(Answer {
        status,
        headers,
        body,
    })
}

/// The answer DynamoDB gives for an injected fault that is not forwarded.
fn fault_answer(kind: FaultKind, transact_items: Option<usize>) -> Reply {
    match (kind, transact_items) {
        (FaultKind::TransactionConflict, Some(items)) => {
            let codes: Vec<&str> = (0..items)
                .map(|item| {
                    if item == 0 {
                        "TransactionConflict"
                    } else {
                        "None"
                    }
                })
                .collect();
            let reasons: Vec<Value> = codes
                .iter()
                .map(|code| match *code {
                    "TransactionConflict" => {
                        json!({"Code": code, "Message": "Transaction is ongoing for the item"})
                    }
                    _ => json!({"Code": code}),
                })
                .collect();
            service_error(
                StatusCode::BAD_REQUEST,
                "TransactionCanceledException",
                &format!(
                    "Transaction cancelled, please refer cancellation reasons for specific \
                     reasons [{}]",
                    codes.join(", ")
                ),
                Some(("CancellationReasons", Value::from(reasons))),
            )
        }
        (FaultKind::TransactionConflict, None) => service_error(
            StatusCode::BAD_REQUEST,
            "TransactionConflictException",
            "Transaction is ongoing for the item",
            None,
        ),
        (FaultKind::Throttling, _) => service_error(
            StatusCode::BAD_REQUEST,
            "ThrottlingException",
            "Throughput exceeds the current capacity of your table or index. DynamoDB is \
             automatically scaling your table or index so please try again shortly.",
            None,
        ),
        (FaultKind::ProvisionedThroughputExceeded, _) => service_error(
            StatusCode::BAD_REQUEST,
            "ProvisionedThroughputExceededException",
            "The level of configured provisioned throughput for the table was exceeded. \
             Consider increasing your provisioning level with the UpdateTable API.",
            None,
        ),
        // Forwarded kinds are answered after forwarding; this is what `LostAnswer` answers.
        (FaultKind::LostAnswer | FaultKind::DroppedConnection, _) => service_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalServerError",
            "Internal server error",
            None,
        ),
    }
}

fn service_error(
    status: StatusCode,
    code: &str,
    message: &str,
    extra: Option<(&str, Value)>,
) -> Reply {
    let mut body = json!({"__type": format!("{ERROR_NAMESPACE}{code}"), "message": message});
    if let (Some((name, value)), Some(object)) = (extra, body.as_object_mut()) {
        object.insert(name.to_owned(), value);
    }
    let mut response = reply(status, Bytes::from(body.to_string()));
    response.headers_mut().insert(
        HeaderName::from_static("x-amzn-requestid"),
        HeaderValue::from_static("dynamodb-proxy-injected-fault"),
    );
    response
}

fn reply(status: StatusCode, body: Bytes) -> Reply {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(JSON_1_0));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_is_asked_for_as_the_first_member_leaving_the_rest_as_it_was() {
        let asked = ask_for_capacity(&Bytes::from_static(br#" {"TableName":"t", "Key":{}}"#));
        assert_eq!(
            &asked[..],
            br#" {"ReturnConsumedCapacity":"TOTAL","TableName":"t", "Key":{}}"#
        );
        let empty = ask_for_capacity(&Bytes::from_static(b"{ }"));
        assert_eq!(&empty[..], br#"{"ReturnConsumedCapacity":"TOTAL" }"#);
        let parsed: Value = serde_json::from_slice(&empty).unwrap();
        assert_eq!(parsed["ReturnConsumedCapacity"], "TOTAL");
    }

    #[test]
    fn a_transaction_conflict_names_one_reason_per_item() {
        let answer = fault_answer(FaultKind::TransactionConflict, Some(3));
        assert_eq!(answer.status(), StatusCode::BAD_REQUEST);
        let body = body_of(answer);
        assert_eq!(
            body["__type"],
            "com.amazonaws.dynamodb.v20120810#TransactionCanceledException"
        );
        assert_eq!(
            body["message"],
            "Transaction cancelled, please refer cancellation reasons for specific reasons \
             [TransactionConflict, None, None]"
        );
        let codes: Vec<&str> = body["CancellationReasons"]
            .as_array()
            .unwrap()
            .iter()
            .map(|reason| reason["Code"].as_str().unwrap())
            .collect();
        assert_eq!(codes, ["TransactionConflict", "None", "None"]);
    }

    fn body_of(reply: Reply) -> Value {
        let body = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(reply.into_body().collect())
            .unwrap()
            .to_bytes();
        serde_json::from_slice(&body).unwrap()
    }

    #[test]
    fn rules_count_every_matching_request_and_inject_one_fault_per_request() {
        let state = State {
            upstream: String::new(),
            client: reqwest::Client::new(),
            rules: Mutex::default(),
            counters: Mutex::default(),
        };
        let rule = |fault: Fault| Rule {
            fault,
            skip: fault.after,
            left: fault.times,
        };
        lock(&state.rules).extend([
            rule(Fault::on(Operation::UpdateItem, FaultKind::Throttling).times(2)),
            rule(Fault::on_any(FaultKind::LostAnswer).after(1)),
        ]);
        let update = Some(Operation::UpdateItem);
        let kinds: Vec<Option<FaultKind>> = vec![
            state.admit("GetItem", Some(Operation::GetItem)),
            state.admit("UpdateItem", update),
            state.admit("UpdateItem", update),
            state.admit("CreateTable", None),
            state.admit("UpdateItem", update),
        ];
        assert_eq!(
            kinds,
            [
                None,
                Some(FaultKind::Throttling),
                Some(FaultKind::Throttling),
                None,
                Some(FaultKind::LostAnswer)
            ],
            "the second rule was due from the second request, and waited for the first"
        );
        assert!(lock(&state.rules).is_empty());
        let counters = lock(&state.counters);
        assert_eq!(counters.operations["UpdateItem"].requests, 3);
        assert_eq!(counters.operations["UpdateItem"].injected, 3);
        assert_eq!(counters.injected[&FaultKind::Throttling], 2);
    }
}

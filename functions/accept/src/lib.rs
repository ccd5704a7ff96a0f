//! HTTP adapter for newsletters: `POST /newsletters` accepts one (202 + task id),
//! `GET /newsletters/{task_id}` tells how it is going, and `POST /newsletters/{task_id}/pause`,
//! `…/resume` and `DELETE /newsletters/{task_id}` control it (202 + its status);
//! `POST /newsletters/test` sends one to a few addresses (202, a task of kind test) and
//! `POST /newsletters/preview` shows the email a contact would get (200). Routes, checks the media type and headers,
//! hands the rest to the domain, and maps the outcome to a response or an RFC 9457 problem.

pub mod event;
mod problem;
mod routes;

use aws_config::timeout::TimeoutConfig;
use lambda_http::{
    Body, Request, RequestExt, Response,
    http::{Method, StatusCode, header},
};
use newsletter::control::{self, ControlError};
use newsletter::domain::{EmailAddress, TaskKind, TaskRecord};
use newsletter::ports::{
    ChunkStore, ContactDirectory, IdempotencyStore, MessageQueue, PauseStore, TaskStore,
};
use newsletter::preview::{Preview, PreviewError, preview};
use newsletter::status::{StatusError, parse_task_id, task_status};
use newsletter::submit::{Deadline, SubmitError, submit, submit_test};
use newsletter::{IdempotencyKey, TaskId};
use problem::Problem;
use routes::{Route, route};
use serde::Serialize;
use std::time::Duration;

pub use routes::{
    NEWSLETTERS_PATH, PAUSE_PATH, PREVIEW_PATH, RESUME_PATH, ROUTES, TASK_PATH, TEST_PATH,
};
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// Seconds a client polling an unfinished task should wait before asking again.
pub const STATUS_RETRY_AFTER_SECS: u32 = 5;

/// The SDK's timeouts for the accept function. Each call is also cut off at the invocation's
/// deadline (`submit`); these keep one struggling attempt from using up a request's time: well
/// below the 10 s function timeout, with room for the SDK's retries, the withdraw and the answer.
pub fn sdk_timeouts() -> TimeoutConfig {
    TimeoutConfig::builder()
        .connect_timeout(Duration::from_millis(500))
        .operation_attempt_timeout(Duration::from_millis(1500))
        .operation_timeout(Duration::from_secs(4))
        .build()
}

/// The accept function's state, built once at init and shared by every invocation.
pub struct App<Q, S, D> {
    queue: Q,
    store: S,
    /// The contact list, read by previews.
    directory: D,
}

/// Everything a request can fail with, mapped to one HTTP problem each in [`Problem::from`].
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    #[error("no resource at this path")]
    NotFound,
    #[error("method not allowed here; allowed: {0}")]
    MethodNotAllowed(String),
    #[error("content type must be application/json")]
    UnsupportedMediaType,
    #[error("{0}")]
    InvalidIdempotencyKey(String),
    #[error(transparent)]
    Submit(#[from] SubmitError),
    #[error(transparent)]
    Status(#[from] StatusError),
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error(transparent)]
    Preview(#[from] PreviewError),
}

impl AcceptError {
    /// A dependency failed (or its data could not be read): logged as an error with its task
    /// where it happened, where a caller's mistake is logged as a rejected request.
    fn is_dependency_failure(&self) -> bool {
        matches!(
            self,
            Self::Submit(
                SubmitError::Queue(_) | SubmitError::Store(_) | SubmitError::InDoubt { .. }
            ) | Self::Control(
                ControlError::Store(_)
                    | ControlError::Queue(_)
                    | ControlError::UnreadableParked { .. }
            ) | Self::Preview(PreviewError::Directory(_))
        )
    }
}

/// What a control route asks of a task.
#[derive(Debug, Clone, Copy)]
enum Control {
    Pause,
    Resume,
    Cancel,
}

#[derive(Serialize)]
struct Accepted {
    task_id: TaskId,
    status: &'static str,
}

impl<Q, S, D> App<Q, S, D>
where
    Q: MessageQueue,
    S: TaskStore + IdempotencyStore + PauseStore + ChunkStore,
    D: ContactDirectory,
{
    pub fn new(queue: Q, store: S, directory: D) -> Self {
        Self {
            queue,
            store,
            directory,
        }
    }

    /// Answers one request. Never fails: every outcome is an HTTP response.
    pub async fn handle(&self, request: Request) -> Response<Body> {
        // The raw path leaves out any API Gateway stage name, so routing is the same behind a REST
        // API stage, an HTTP API, or a function URL.
        let result = match route(request.raw_http_path()) {
            Some(route) if !route.serves(request.method()) => {
                Err(AcceptError::MethodNotAllowed(route.allow()))
            }
            Some(Route::Newsletters) => self
                .accept(&request, TaskKind::Newsletter)
                .await
                .map(accepted),
            Some(Route::Test) => self.accept(&request, TaskKind::Test).await.map(accepted),
            Some(Route::Preview) => self.preview(&request).await.map(previewed),
            Some(Route::Task(id)) if request.method() == Method::DELETE => {
                self.control(id, Control::Cancel).await.map(controlled)
            }
            Some(Route::Task(id)) => task_status(&self.store, id)
                .await
                .map(status)
                .map_err(Into::into),
            // The request body, if any, is ignored: neither route takes parameters.
            Some(Route::Pause(id)) => self.control(id, Control::Pause).await.map(controlled),
            Some(Route::Resume(id)) => self.control(id, Control::Resume).await.map(controlled),
            None => Err(AcceptError::NotFound),
        };
        result.unwrap_or_else(|err| {
            if !err.is_dependency_failure() {
                tracing::info!(reason = %err, "request rejected"); // failures are logged with their task
            }
            Problem::from(err).into_response()
        })
    }

    /// Pauses, resumes or cancels the task `raw_id` names; its record after that.
    async fn control(&self, raw_id: &str, control: Control) -> Result<TaskRecord, AcceptError> {
        let task_id = parse_task_id(raw_id)?;
        let result = match control {
            Control::Pause => control::pause(&self.store, task_id).await,
            Control::Resume => control::resume(&self.queue, &self.store, task_id)
                .await
                .map(|resumed| resumed.task),
            Control::Cancel => control::cancel(&self.queue, &self.store, task_id).await,
        };
        result.map_err(|err| {
            let err = AcceptError::from(err);
            if err.is_dependency_failure() {
                tracing::error!(%task_id, ?control, error = %err, "task control failed");
            }
            err
        })
    }

    /// Renders the newsletter of the request as its `"as"` contact would get it. Read-only: an
    /// Idempotency-Key, if sent, changes nothing.
    async fn preview(&self, request: &Request) -> Result<Preview, AcceptError> {
        require_json(request)?;
        let previewed = preview(&self.directory, request.body().as_ref(), &deadline(request)).await;
        previewed.map_err(|err| {
            let err = AcceptError::from(err);
            if err.is_dependency_failure() {
                tracing::error!(error = %err, "preview failed");
            }
            err
        })
    }

    /// Queues a newsletter, or a test send of one (`kind`).
    async fn accept(&self, request: &Request, kind: TaskKind) -> Result<TaskId, AcceptError> {
        require_json(request)?;
        let key = match request.headers().get(IDEMPOTENCY_KEY) {
            None => None,
            Some(value) => {
                let raw = value.to_str().unwrap_or_default();
                Some(
                    IdempotencyKey::parse(raw)
                        .map_err(|invalid| AcceptError::InvalidIdempotencyKey(invalid.0))?,
                )
            }
        };
        let deadline = deadline(request);
        // lambda_http has already decoded a base64 body (`isBase64Encoded`) into bytes.
        let (body, key) = (request.body().as_ref(), key.as_ref());
        Ok(match kind {
            TaskKind::Newsletter => submit(&self.queue, &self.store, body, key, &deadline).await?,
            TaskKind::Test => submit_test(&self.queue, &self.store, body, key, &deadline).await?,
        })
    }
}

/// Every call is bounded by the invocation's deadline, so the function answers (503 at worst)
/// before Lambda would stop it.
fn deadline(request: &Request) -> Deadline {
    Deadline::of_invocation(
        request
            .lambda_context_ref()
            .map(|context| context.deadline()),
    )
}

fn require_json(request: &Request) -> Result<(), AcceptError> {
    match is_json(request.headers().get(header::CONTENT_TYPE)) {
        true => Ok(()),
        false => Err(AcceptError::UnsupportedMediaType),
    }
}

/// `application/json`, optionally with `charset=utf-8` (JSON has no other encoding: RFC 8259).
fn is_json(content_type: Option<&header::HeaderValue>) -> bool {
    let Some(value) = content_type.and_then(|value| value.to_str().ok()) else {
        return false;
    };
    let mut parts = value.split(';').map(str::trim);
    let media_type_is_json = parts
        .next()
        .is_some_and(|media_type| media_type.eq_ignore_ascii_case("application/json"));
    media_type_is_json
        && parts.all(|parameter| {
            let (name, value) = parameter.split_once('=').unwrap_or((parameter, ""));
            !name.trim().eq_ignore_ascii_case("charset")
                || value.trim().trim_matches('"').eq_ignore_ascii_case("utf-8")
        })
}

fn accepted(task_id: TaskId) -> Response<Body> {
    let body = Accepted {
        task_id,
        status: "accepted",
    };
    json_response(
        StatusCode::ACCEPTED,
        "application/json",
        &body,
        &[(header::LOCATION, format!("{NEWSLETTERS_PATH}/{task_id}"))],
    )
}

/// A preview's body: the email as the worker sends it and its sections, or, for a contact who
/// would get none, why (`skipped`) and no email.
#[derive(Serialize)]
struct Previewed<'a> {
    #[serde(rename = "as", skip_serializing_if = "Option::is_none")]
    address: Option<&'a EmailAddress>,
    #[serde(skip_serializing_if = "Option::is_none")]
    subject: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    html: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<&'a str>,
    sections: Vec<PreviewedSection<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    skipped: Option<&'static str>,
}

#[derive(Serialize)]
struct PreviewedSection<'a> {
    topic: &'a str,
    title: &'a str,
}

fn previewed(preview: Preview) -> Response<Body> {
    let address = preview.address.as_ref();
    let body = match &preview.outcome {
        Ok(shown) => Previewed {
            address,
            subject: Some(&shown.email.subject),
            html: Some(&shown.email.html),
            text: Some(&shown.email.text),
            sections: shown
                .sections
                .iter()
                .map(|(topic, title)| PreviewedSection {
                    topic: topic.as_str(),
                    title,
                })
                .collect(),
            skipped: None,
        },
        Err(skip) => Previewed {
            address,
            subject: None,
            html: None,
            text: None,
            sections: Vec::new(),
            skipped: Some(skip.as_str()),
        },
    };
    json_response(StatusCode::OK, "application/json", &body, &[])
}

fn status(task: TaskRecord) -> Response<Body> {
    task_response(StatusCode::OK, task, Vec::new())
}

/// A pause, resume or cancel is done (or under way): the task's status, as `GET` shows it, at its `Location`.
fn controlled(task: TaskRecord) -> Response<Body> {
    let location = format!("{NEWSLETTERS_PATH}/{}", task.task_id);
    task_response(
        StatusCode::ACCEPTED,
        task,
        vec![(header::LOCATION, location)],
    )
}

/// The task's status body: never cached, and polled again after a while while it runs.
fn task_response(
    code: StatusCode,
    task: TaskRecord,
    mut headers: Vec<(header::HeaderName, String)>,
) -> Response<Body> {
    headers.push((header::CACHE_CONTROL, "no-store".to_owned()));
    if !task.status.is_finished() {
        headers.push((header::RETRY_AFTER, STATUS_RETRY_AFTER_SECS.to_string()));
    }
    json_response(code, "application/json", &task, &headers)
}

fn json_response(
    status: StatusCode,
    content_type: &'static str,
    body: &impl Serialize,
    headers: &[(header::HeaderName, String)],
) -> Response<Body> {
    let mut response = Response::new(Body::Text(serde_json::to_string(body).unwrap_or_default()));
    *response.status_mut() = status;
    let response_headers = response.headers_mut();
    response_headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    for (name, value) in headers {
        if let Ok(value) = header::HeaderValue::from_str(value) {
            response_headers.insert(name, value);
        }
    }
    response
}

#[cfg(test)]
mod tests;

//! HTTP adapter for accepting newsletters: route, check the media type, hand the body to the domain,
//! and map the outcome to a `202` or an RFC 9457 problem.

mod problem;

use lambda_http::{
    Body, Request, RequestExt, Response,
    http::{Method, StatusCode, header},
};
use newsletter::{
    TaskId,
    queue::MessageQueue,
    submit::{SubmitError, submit},
};
use problem::Problem;
use serde::Serialize;

pub const NEWSLETTERS_PATH: &str = "/newsletters";

/// The accept function's state, built once at init and shared by every invocation.
pub struct App<Q> {
    queue: Q,
}

/// Everything a request can fail with, mapped to one HTTP problem each in [`Problem::from`].
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    #[error("no resource at this path")]
    NotFound,
    #[error("method not allowed on {NEWSLETTERS_PATH}")]
    MethodNotAllowed,
    #[error("content type must be application/json")]
    UnsupportedMediaType,
    #[error(transparent)]
    Submit(#[from] SubmitError),
}

#[derive(Serialize)]
struct Accepted {
    task_id: TaskId,
    status: &'static str,
}

impl<Q: MessageQueue> App<Q> {
    pub fn new(queue: Q) -> Self {
        Self { queue }
    }

    /// Answers one request. Never fails: every outcome is an HTTP response.
    pub async fn handle(&self, request: Request) -> Response<Body> {
        match self.accept(&request).await {
            Ok(task_id) => accepted(task_id),
            Err(err) => {
                match &err {
                    AcceptError::Submit(SubmitError::Queue(_)) => {} // logged with its task id
                    rejected => tracing::info!(reason = %rejected, "request rejected"),
                }
                Problem::from(err).into_response()
            }
        }
    }

    async fn accept(&self, request: &Request) -> Result<TaskId, AcceptError> {
        // The raw path leaves out any API Gateway stage name, so routing is the same behind a REST
        // API stage, an HTTP API, or a function URL.
        if request.raw_http_path() != NEWSLETTERS_PATH {
            return Err(AcceptError::NotFound);
        }
        if request.method() != Method::POST {
            return Err(AcceptError::MethodNotAllowed);
        }
        if !is_json(request.headers().get(header::CONTENT_TYPE)) {
            return Err(AcceptError::UnsupportedMediaType);
        }
        // lambda_http has already decoded a base64 body (`isBase64Encoded`) into bytes.
        Ok(submit(&self.queue, request.body().as_ref()).await?)
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

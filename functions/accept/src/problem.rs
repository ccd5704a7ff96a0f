//! RFC 9457 problem details: the one place where errors become HTTP responses.

use crate::{AcceptError, NEWSLETTERS_PATH, json_response};
use lambda_http::{
    Body, Response,
    http::{StatusCode, header},
};
use newsletter::control::ControlError;
use newsletter::preview::PreviewError;
use newsletter::submit::{RequestError, SubmitError};
use newsletter::{FieldError, TaskId, status::StatusError};
use serde::Serialize;

/// Seconds a caller should wait before retrying after a dependency failed.
pub const UNAVAILABLE_RETRY_AFTER_SECS: u32 = 5;
/// Seconds to wait for a concurrent request with the same Idempotency-Key to finish.
pub const KEY_IN_FLIGHT_RETRY_AFTER_SECS: u32 = 1;

#[derive(Debug, Serialize)]
pub struct Problem {
    #[serde(rename = "type")]
    kind: String,
    title: &'static str,
    #[serde(serialize_with = "as_u16")]
    status: StatusCode,
    detail: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    errors: Vec<FieldError>,
    /// The task whose job may be queued after all, for the caller to look up (an extension
    /// member, RFC 9457 section 3.2).
    #[serde(skip_serializing_if = "Option::is_none")]
    task_id: Option<TaskId>,
    #[serde(skip)]
    headers: Vec<(header::HeaderName, String)>,
}

fn as_u16<S: serde::Serializer>(status: &StatusCode, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_u16(status.as_u16())
}

impl Problem {
    fn new(status: StatusCode, slug: &str, title: &'static str, detail: String) -> Self {
        Self {
            kind: format!("urn:newsletter-dispatch:problem:{slug}"),
            title,
            status,
            detail,
            errors: Vec::new(),
            task_id: None,
            headers: Vec::new(),
        }
    }

    /// A dependency failed: `503`, with how soon a retry may succeed.
    fn unavailable(slug: &str, detail: String) -> Self {
        Self {
            headers: vec![(
                header::RETRY_AFTER,
                UNAVAILABLE_RETRY_AFTER_SECS.to_string(),
            )],
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                slug,
                "Service Unavailable",
                detail,
            )
        }
    }

    /// A request body that holds no valid newsletter request.
    fn of_request(err: RequestError, detail: String) -> Self {
        match err {
            RequestError::TooLarge { .. } => Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body-too-large",
                "Content Too Large",
                detail,
            ),
            RequestError::Malformed(_) => Problem::new(
                StatusCode::BAD_REQUEST,
                "malformed-json",
                "Malformed JSON",
                detail,
            ),
            RequestError::Invalid(errors) => Problem {
                errors,
                ..Problem::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "validation-failed",
                    "Invalid newsletter",
                    detail,
                )
            },
        }
    }

    pub fn into_response(self) -> Response<Body> {
        json_response(
            self.status,
            "application/problem+json",
            &self,
            &self.headers,
        )
    }
}

impl From<AcceptError> for Problem {
    fn from(err: AcceptError) -> Self {
        let detail = err.to_string();
        match err {
            AcceptError::NotFound => {
                Problem::new(StatusCode::NOT_FOUND, "not-found", "Not Found", detail)
            }
            AcceptError::MethodNotAllowed(allowed) => Problem {
                headers: vec![(header::ALLOW, allowed)],
                ..Problem::new(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method-not-allowed",
                    "Method Not Allowed",
                    detail,
                )
            },
            AcceptError::InvalidIdempotencyKey(_) => Problem::new(
                StatusCode::BAD_REQUEST,
                "invalid-idempotency-key",
                "Invalid Idempotency-Key",
                detail,
            ),
            AcceptError::UnsupportedMediaType => Problem {
                headers: vec![(
                    header::HeaderName::from_static("accept-post"),
                    "application/json".into(),
                )],
                ..Problem::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported-media-type",
                    "Unsupported Media Type",
                    "the request body must be JSON, sent with Content-Type: application/json"
                        .into(),
                )
            },
            // One body, one set of answers, on every route that takes a newsletter.
            AcceptError::Submit(SubmitError::Request(err))
            | AcceptError::Preview(PreviewError::Request(err)) => Problem::of_request(err, detail),
            AcceptError::Preview(PreviewError::Directory(_)) => Problem::unavailable(
                "directory-unavailable",
                "the contact list could not be read to preview the email; retry later".into(),
            ),
            AcceptError::Submit(SubmitError::KeyReused) => Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency-key-reused",
                "Idempotency-Key reused",
                detail,
            ),
            AcceptError::Submit(SubmitError::KeyInFlight) => Problem {
                headers: vec![(
                    header::RETRY_AFTER,
                    KEY_IN_FLIGHT_RETRY_AFTER_SECS.to_string(),
                )],
                ..Problem::new(
                    StatusCode::CONFLICT,
                    "idempotency-key-in-flight",
                    "Conflict",
                    detail,
                )
            },
            AcceptError::Submit(SubmitError::Queue(_) | SubmitError::Store(_)) => {
                Problem::unavailable(
                    "queue-unavailable",
                    "the newsletter could not be queued and was not accepted; retry later".into(),
                )
            }
            AcceptError::Submit(SubmitError::InDoubt { task_id, .. }) => Problem {
                task_id: Some(task_id),
                ..Problem::unavailable(
                    "queue-unconfirmed",
                    format!(
                        "the queue did not confirm the newsletter, and whether it goes ahead is \
                         not known yet; GET {NEWSLETTERS_PATH}/{task_id} tells (withdrawn: it \
                         will not be sent). Retry with the same Idempotency-Key to be safe"
                    ),
                )
            },
            AcceptError::Status(StatusError::MalformedId(_)) => Problem::new(
                StatusCode::BAD_REQUEST,
                "malformed-task-id",
                "Malformed task id",
                detail,
            ),
            AcceptError::Status(StatusError::NotFound(_)) => {
                Problem::new(StatusCode::NOT_FOUND, "task-not-found", "Not Found", detail)
            }
            AcceptError::Control(ControlError::NotFound(_)) => {
                Problem::new(StatusCode::NOT_FOUND, "task-not-found", "Not Found", detail)
            }
            AcceptError::Control(ControlError::Finished(_)) => Problem::new(
                StatusCode::CONFLICT,
                "task-finished",
                "Task finished",
                detail,
            ),
            AcceptError::Control(ControlError::Cancelled(_)) => Problem::new(
                StatusCode::CONFLICT,
                "task-cancelled",
                "Task cancelled",
                detail,
            ),
            AcceptError::Control(ControlError::Store(_)) => Problem::unavailable(
                "store-unavailable",
                "the task could not be read or changed; retry later (pause, resume and cancel \
                     are safe to repeat)"
                    .into(),
            ),
            AcceptError::Control(ControlError::Queue(_)) => Problem::unavailable(
                "queue-unavailable",
                "some of the task's parked deliveries could not be queued again; retry (it \
                     queues the rest, and nobody gets an email twice)"
                    .into(),
            ),
            // Not cured by a retry: a parked message this version cannot read (the log names it).
            AcceptError::Control(ControlError::UnreadableParked { .. }) => Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "parked-delivery-unreadable",
                "Internal Server Error",
                "a parked delivery of the task could not be read back; the task's log says which"
                    .into(),
            ),
            AcceptError::Status(StatusError::Store(_)) => Problem::unavailable(
                "store-unavailable",
                "the task status could not be read; retry later".into(),
            ),
        }
    }
}

impl From<crate::event::EventError> for Problem {
    fn from(err: crate::event::EventError) -> Self {
        use crate::event::EventError;
        let detail = err.to_string();
        match err {
            EventError::BodyNotBase64 => Problem::new(
                StatusCode::BAD_REQUEST,
                "body-not-base64",
                "Body is not base64",
                detail,
            ),
            EventError::Unreadable => Problem::new(
                StatusCode::BAD_REQUEST,
                "unreadable-event",
                "Unreadable request",
                detail,
            ),
        }
    }
}

//! From the Lambda event to the HTTP request it carries: what `lambda_http::run` does, without its
//! panics, so that every event API Gateway, a function URL or an ALB sends gets an HTTP answer.
//!
//! lambda_http 1.3 builds the request with `.expect()`: an `isBase64Encoded` body that is not
//! base64, or a `Host` (or domain name) that cannot be put in a URI, panics. The API Gateway
//! console's Test button sends `Host: 1234567890.execute-api.{dns_suffix}`. The runtime turns the
//! panic into an invocation error, which API Gateway answers with a bare 502. Here the body is
//! decoded first (not base64: a 400 problem naming the body), a host that cannot be part of a URI
//! is left out (routing reads only the path), and a panic of the conversion on anything else is
//! caught and answered with a 400 problem as the last net (the release profile unwinds).

use crate::App;
use base64::Engine;
use lambda_http::{
    Body, Context, Error, LambdaEvent, Request, RequestExt, Response, TransformResponse,
    http::{
        HeaderMap, HeaderValue,
        header::{self, HeaderName},
    },
    request::LambdaRequest,
};
use newsletter::ports::{
    ChunkStore, ContactDirectory, IdempotencyStore, MessageQueue, PauseStore, TaskStore,
};
use std::net::Ipv6Addr;
use std::panic::{AssertUnwindSafe, catch_unwind};

/// Why an event does not carry a request this API can read; each is a 400 problem.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("the request body is marked base64 (isBase64Encoded) but is not valid base64")]
    BodyNotBase64,
    #[error("the event is not an HTTP request this API can read")]
    Unreadable,
}

impl<Q, S, D> App<Q, S, D>
where
    Q: MessageQueue,
    S: TaskStore + IdempotencyStore + PauseStore + ChunkStore,
    D: ContactDirectory,
{
    /// Answers one Lambda event with the response its origin expects (API Gateway REST or HTTP
    /// API, function URL, ALB). Never fails and never panics on what the event holds.
    ///
    /// The answer is lambda_http's `LambdaResponse`, which it does not export by name: what matters
    /// is the JSON the runtime sends back to Lambda.
    pub async fn handle_event(
        &self,
        event: LambdaEvent<LambdaRequest>,
    ) -> Result<impl serde::Serialize + Send + use<Q, S, D>, Error> {
        let LambdaEvent { payload, context } = event;
        let origin = payload.request_origin();
        let response = match into_request(payload) {
            Ok(request) => self.handle(with_context(request, context)).await,
            Err(err) => {
                tracing::info!(reason = %err, "event rejected");
                crate::problem::Problem::from(err).into_response()
            }
        };
        // lambda_http shapes the response for the origin only inside this future (its
        // `LambdaResponse::from_response` is crate-private); it is the one `run` itself uses.
        TransformResponse::Request(
            origin,
            Box::pin(std::future::ready(Ok::<Response<Body>, Error>(response))),
        )
        .await
    }
}

/// The request the event carries, built by lambda_http once nothing it would panic on is left.
pub fn into_request(mut event: LambdaRequest) -> Result<Request, EventError> {
    let body = take_base64_body(&mut event)?;
    drop_unusable_hosts(&mut event);
    // Whatever else lambda_http cannot convert (a scheme or query it cannot put in a URI) is
    // caught here: the event is not used after a panic, so no broken state can be observed.
    let mut request = catch_unwind(AssertUnwindSafe(|| Request::from(event))).map_err(|_| {
        tracing::warn!("lambda_http could not convert the event into a request");
        EventError::Unreadable
    })?;
    if let Some(body) = body {
        *request.body_mut() = body;
    }
    Ok(request)
}

/// Decodes a base64 body here instead of in lambda_http: takes it out of the event (which is then
/// an event without a body, as far as lambda_http knows) and gives it back decoded.
fn take_base64_body(event: &mut LambdaRequest) -> Result<Option<Body>, EventError> {
    let (body, is_base64_encoded) = match event {
        LambdaRequest::ApiGatewayV1(event) => (&mut event.body, &mut event.is_base64_encoded),
        LambdaRequest::ApiGatewayV2(event) => (&mut event.body, &mut event.is_base64_encoded),
        LambdaRequest::Alb(event) => (&mut event.body, &mut event.is_base64_encoded),
        _ => return Ok(None),
    };
    if !*is_base64_encoded {
        return Ok(None);
    }
    *is_base64_encoded = false;
    let Some(encoded) = body.take() else {
        return Ok(None);
    };
    base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map(|bytes| Some(Body::from(bytes)))
        .map_err(|_| EventError::BodyNotBase64)
}

/// Leaves out a `Host` header or domain name that is not a plain host: lambda_http puts it in the
/// request URI and panics when the URI does not parse. Nothing here reads the host.
fn drop_unusable_hosts(event: &mut LambdaRequest) {
    match event {
        LambdaRequest::ApiGatewayV1(event) => {
            drop_unusable_host_header(&mut event.headers);
            drop_unusable_host_header(&mut event.multi_value_headers);
            drop_unusable_domain_name(&mut event.request_context.domain_name);
        }
        LambdaRequest::ApiGatewayV2(event) => {
            drop_unusable_host_header(&mut event.headers);
            drop_unusable_domain_name(&mut event.request_context.domain_name);
        }
        LambdaRequest::Alb(event) => {
            drop_unusable_host_header(&mut event.headers);
            drop_unusable_host_header(&mut event.multi_value_headers);
        }
        _ => {}
    }
}

/// RFC 9110's `Host` as the URI parsers on the way take it: a name of letters, digits, `-`, `.`
/// and `_`, or a bracketed IPv6 address, then an optional numeric port. (`http`'s own authority
/// parser is laxer than `url`'s: it takes `host:port`, on which lambda_http's URL parse fails.)
fn is_usable_host(host: &str) -> bool {
    let (name_is_usable, port) = match host.strip_prefix('[') {
        Some(bracketed) => match bracketed.split_once(']') {
            Some((address, port)) => (address.parse::<Ipv6Addr>().is_ok(), port),
            None => return false,
        },
        None => {
            let (name, port) = host.split_at(host.find(':').unwrap_or(host.len()));
            let name_char = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_');
            (!name.is_empty() && name.bytes().all(name_char), port)
        }
    };
    name_is_usable
        && (port.is_empty()
            || port
                .strip_prefix(':')
                .is_some_and(|number| number.parse::<u16>().is_ok()))
}

fn drop_unusable_host_header(headers: &mut HeaderMap) {
    let unusable = headers
        .get_all(header::HOST)
        .iter()
        .any(|value| value.to_str().is_ok_and(|host| !is_usable_host(host)));
    if unusable {
        headers.remove(header::HOST);
    }
}

fn drop_unusable_domain_name(domain_name: &mut Option<String>) {
    if domain_name
        .as_deref()
        .is_some_and(|host| !is_usable_host(host))
    {
        *domain_name = None;
    }
}

/// What lambda_http's own adapter adds to every request: the invocation's context (its deadline
/// among it) and the X-Ray trace header.
fn with_context(mut request: Request, context: Context) -> Request {
    if let Some(trace_id) = context.xray_trace_id.as_deref()
        && let Ok(value) = HeaderValue::from_str(trace_id)
    {
        request
            .headers_mut()
            .insert(HeaderName::from_static("x-amzn-trace-id"), value);
    }
    request.with_lambda_context(context)
}

#[cfg(test)]
mod tests;

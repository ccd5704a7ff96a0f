//! One-line descriptions of AWS SDK errors for logs and error values: the service's error code
//! and message, or the chain of causes for transport failures. Never the raw HTTP response.

use aws_sdk_sqs::error::{ProvideErrorMetadata, SdkError};
use std::error::Error;

pub fn describe<E, R>(err: &SdkError<E, R>) -> String
where
    E: ProvideErrorMetadata + Error + 'static,
    R: std::fmt::Debug,
{
    if let SdkError::ServiceError(service) = err {
        let cause = service.err();
        return format!(
            "{}: {}",
            cause.code().unwrap_or("unknown service error"),
            cause.message().unwrap_or("no message")
        );
    }
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

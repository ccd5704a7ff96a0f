//! AWS SDK errors as the ports' causes: a one-line description for logs and error values (the
//! service's error code and message, or the chain of causes for transport failures; never the
//! raw HTTP response), with the SDK's error kept whole underneath.

use aws_sdk_sqs::error::{ProvideErrorMetadata, SdkError};
use newsletter::ports::Cause;
use std::error::Error;
use std::fmt;

/// One line that names what failed.
pub fn describe<E, R>(err: &SdkError<E, R>) -> String
where
    E: ProvideErrorMetadata + Error + 'static,
    R: fmt::Debug,
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

/// `err` as a port error's cause: shown as [`describe`]d, with `err` as its source.
pub fn cause<E, R>(err: SdkError<E, R>) -> Cause
where
    E: ProvideErrorMetadata + Error + Send + Sync + 'static,
    R: fmt::Debug + Send + Sync + 'static,
{
    Box::new(AwsError {
        description: describe(&err),
        source: Box::new(err),
    })
}

/// An SDK error with its description.
#[derive(Debug)]
struct AwsError {
    description: String,
    source: Cause,
}

impl fmt::Display for AwsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.description)
    }
}

impl Error for AwsError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(self.source.as_ref())
    }
}

//! The subscriber list as the worker reads it: one page at a time.

use crate::audience::{Contact, TopicDefaults};
use crate::domain::Topic;
use std::future::Future;

/// One page of contacts and the token of the next page, if any.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContactPage {
    pub contacts: Vec<Contact>,
    pub next_token: Option<String>,
}

/// The contact list could not be read: it is missing, access was denied, or the service failed.
#[derive(Debug, thiserror::Error)]
#[error("the contact list could not be read: {0}")]
pub struct DirectoryError(pub String);

pub trait ContactDirectory: Send + Sync {
    /// Each topic's default subscription status.
    fn topic_defaults(&self) -> impl Future<Output = Result<TopicDefaults, DirectoryError>> + Send;

    /// The page at `token` (the first page when `None`). `opted_into` is a hint: when set, the
    /// directory may return only contacts opted into that topic; callers filter again anyway.
    fn page(
        &self,
        token: Option<&str>,
        opted_into: Option<&Topic>,
    ) -> impl Future<Output = Result<ContactPage, DirectoryError>> + Send;
}

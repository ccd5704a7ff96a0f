//! In-memory stand-ins for the queue, the contact list and the mail service, for unit tests of
//! the domain and the handlers. Integration tests use the real SDK clients against moto instead.

use crate::audience::TopicDefaults;
use crate::deliver::{Mailer, SendError};
use crate::directory::{ContactDirectory, ContactPage, DirectoryError};
use crate::domain::{EmailAddress, Topic};
use crate::message::Message;
use crate::queue::{MessageQueue, QueueError};
use crate::render::RenderedEmail;
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Records what is sent; refuses everything when `fail` is set.
#[derive(Debug, Default)]
pub struct RecordingQueue {
    pub sent: Mutex<Vec<Message>>,
    pub fail: bool,
}

impl RecordingQueue {
    pub fn take(&self) -> Vec<Message> {
        std::mem::take(&mut *self.sent.lock().unwrap())
    }
}

impl MessageQueue for RecordingQueue {
    async fn send(&self, message: &Message) -> Result<(), QueueError> {
        self.send_all(std::slice::from_ref(message)).await
    }

    async fn send_all(&self, messages: &[Message]) -> Result<(), QueueError> {
        if self.fail {
            return Err(QueueError("connection refused".into()));
        }
        self.sent.lock().unwrap().extend_from_slice(messages);
        Ok(())
    }
}

/// A contact list served in fixed pages, linked by the tokens "page-1", "page-2", …
/// Like the local SES, it ignores the topic filter, so callers must filter themselves.
#[derive(Debug, Default)]
pub struct PagedDirectory {
    pub defaults: TopicDefaults,
    pub pages: Vec<ContactPage>,
    /// Each call's token and topic filter, in order.
    pub requests: Mutex<Vec<(Option<String>, Option<Topic>)>>,
}

impl ContactDirectory for PagedDirectory {
    async fn topic_defaults(&self) -> Result<TopicDefaults, DirectoryError> {
        Ok(self.defaults.clone())
    }

    async fn page(
        &self,
        token: Option<&str>,
        opted_into: Option<&Topic>,
    ) -> Result<ContactPage, DirectoryError> {
        self.requests
            .lock()
            .unwrap()
            .push((token.map(str::to_owned), opted_into.cloned()));
        let index = match token {
            None => 0,
            Some(token) => token
                .strip_prefix("page-")
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| DirectoryError(format!("bad token {token}")))?,
        };
        let mut page = self.pages.get(index).cloned().unwrap_or_default();
        page.next_token = (index + 1 < self.pages.len()).then(|| format!("page-{}", index + 1));
        Ok(page)
    }
}

/// Records every email sent; answers with the scripted failure for an address, if any.
#[derive(Debug, Default)]
pub struct RecordingMailer {
    pub sent: Mutex<Vec<(EmailAddress, RenderedEmail, Option<Topic>)>>,
    pub failures: HashMap<String, SendError>,
    in_flight: AtomicUsize,
    pub max_in_flight_seen: AtomicUsize,
}

impl RecordingMailer {
    pub fn failing(failures: impl IntoIterator<Item = (String, SendError)>) -> Self {
        Self {
            failures: failures.into_iter().collect(),
            ..Self::default()
        }
    }

    pub fn recipients(&self) -> Vec<String> {
        self.sent
            .lock()
            .unwrap()
            .iter()
            .map(|(to, _, _)| to.to_string())
            .collect()
    }
}

impl Mailer for RecordingMailer {
    async fn send(
        &self,
        to: &EmailAddress,
        email: &RenderedEmail,
        topic: Option<&Topic>,
    ) -> Result<(), SendError> {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight_seen.fetch_max(now, Ordering::SeqCst);
        tokio::task::yield_now().await;
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        if let Some(failure) = self.failures.get(to.as_str()) {
            return Err(failure.clone());
        }
        self.sent
            .lock()
            .unwrap()
            .push((to.clone(), email.clone(), topic.cloned()));
        Ok(())
    }
}

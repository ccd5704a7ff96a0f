//! The demo audience: topics and subscribers with their preferences, read from a JSON file
//! (`dev/subscribers.json`) that users can edit.

use anyhow::Context;
use aws_sdk_sesv2::types::{SubscriptionStatus, Topic, TopicPreference};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    OptIn,
    OptOut,
}

impl From<Status> for SubscriptionStatus {
    fn from(status: Status) -> Self {
        match status {
            Status::OptIn => SubscriptionStatus::OptIn,
            Status::OptOut => SubscriptionStatus::OptOut,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicSpec {
    pub name: String,
    pub default: Status,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subscriber {
    pub email: String,
    #[serde(default)]
    pub topics: BTreeMap<String, Status>,
    #[serde(default)]
    pub unsubscribe_all: bool,
}

impl Subscriber {
    /// The topics of `newsletter_topics` this subscriber should get, by the same rules SES uses.
    pub fn wants<'a>(&self, audience: &ContactList, newsletter_topics: &[&'a str]) -> Vec<&'a str> {
        if self.unsubscribe_all {
            return Vec::new();
        }
        newsletter_topics
            .iter()
            .copied()
            .filter(|topic| {
                let default = audience
                    .topics
                    .iter()
                    .find(|spec| spec.name == *topic)
                    .map(|spec| spec.default);
                self.topics.get(*topic).copied().or(default) == Some(Status::OptIn)
            })
            .collect()
    }
}

/// The contact list to provision locally: its topics and its subscribers (`dev/subscribers.json`
/// for `make dev`). Not the core's `audience::Audience`, which selects recipients from a list.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContactList {
    pub topics: Vec<TopicSpec>,
    pub subscribers: Vec<Subscriber>,
}

impl ContactList {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }

    pub fn ses_topics(&self) -> anyhow::Result<Vec<Topic>> {
        self.topics
            .iter()
            .map(|spec| {
                Topic::builder()
                    .topic_name(&spec.name)
                    .display_name(&spec.name)
                    .default_subscription_status(spec.default.into())
                    .build()
                    .context("building a topic")
            })
            .collect()
    }

    /// Creates every subscriber as a contact of `contact_list`.
    pub async fn seed(
        &self,
        ses: &aws_sdk_sesv2::Client,
        contact_list: &str,
    ) -> anyhow::Result<()> {
        for subscriber in &self.subscribers {
            let preferences = subscriber
                .topics
                .iter()
                .map(|(topic, status)| {
                    TopicPreference::builder()
                        .topic_name(topic)
                        .subscription_status((*status).into())
                        .build()
                })
                .collect::<Result<Vec<_>, _>>()?;
            ses.create_contact()
                .contact_list_name(contact_list)
                .email_address(&subscriber.email)
                .set_topic_preferences(Some(preferences))
                .unsubscribe_all(subscriber.unsubscribe_all)
                .send()
                .await
                .with_context(|| format!("creating contact {}", subscriber.email))?;
        }
        Ok(())
    }
}

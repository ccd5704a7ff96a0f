//! Who gets what: a subscriber's topics, from their SES list-management preferences.

use crate::domain::{EmailAddress, Newsletter, Topic};
use crate::message::Recipient;
use std::collections::HashMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subscription {
    OptIn,
    OptOut,
}

/// A contact as the contact list holds it, before anything is trusted about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contact {
    pub email: String,
    pub unsubscribe_all: bool,
    /// Explicit choices; a topic not named here follows the list's default for it.
    pub preferences: Vec<(String, Subscription)>,
}

/// The contact list's default subscription status per topic.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopicDefaults(pub HashMap<String, Subscription>);

/// Why a contact gets no email for this newsletter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    UnsubscribedFromAll,
    NoTopicOfInterest,
    InvalidAddress,
}

/// The newsletter's topics and the list's defaults: decides each contact's sections.
#[derive(Debug, Clone)]
pub struct Audience {
    topics: Vec<Topic>,
    defaults: TopicDefaults,
}

impl Audience {
    pub fn new(newsletter: &Newsletter, defaults: TopicDefaults) -> Self {
        Self {
            topics: newsletter.topics().into_iter().cloned().collect(),
            defaults,
        }
    }

    /// Topics of this newsletter that no list topic matches: their sections reach only contacts
    /// who chose them explicitly, which SES does not allow, so in practice nobody.
    pub fn unmatched_topics(&self) -> Vec<&Topic> {
        self.topics
            .iter()
            .filter(|topic| !self.defaults.0.contains_key(topic.as_str()))
            .collect()
    }

    /// The contact's explicit preference for a topic, else the topic's default, else opted out.
    fn subscription(&self, contact: &Contact, topic: &Topic) -> Subscription {
        contact
            .preferences
            .iter()
            .find(|(name, _)| name == topic.as_str())
            .map(|(_, subscription)| *subscription)
            .or_else(|| self.defaults.0.get(topic.as_str()).copied())
            .unwrap_or(Subscription::OptOut)
    }

    /// The recipient this contact is, with their topics in the newsletter's order; or why not.
    pub fn select(&self, contact: &Contact) -> Result<Recipient, Skip> {
        if contact.unsubscribe_all {
            return Err(Skip::UnsubscribedFromAll);
        }
        let topics: Vec<Topic> = self
            .topics
            .iter()
            .filter(|topic| self.subscription(contact, topic) == Subscription::OptIn)
            .cloned()
            .collect();
        if topics.is_empty() {
            return Err(Skip::NoTopicOfInterest);
        }
        let email = EmailAddress::parse(&contact.email).map_err(|_| Skip::InvalidAddress)?;
        Ok(Recipient { email, topics })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Subscription::{OptIn, OptOut};
    use serde_json::json;

    fn newsletter(topics: &[&str]) -> Newsletter {
        let sections: Vec<_> = topics
            .iter()
            .map(|topic| json!({"topic": topic, "title": "T", "body": "B"}))
            .collect();
        Newsletter::from_json(&json!({"subject": "S", "sections": sections})).unwrap()
    }

    fn defaults(pairs: &[(&str, Subscription)]) -> TopicDefaults {
        TopicDefaults(
            pairs
                .iter()
                .map(|(name, s)| (name.to_string(), *s))
                .collect(),
        )
    }

    fn contact(preferences: &[(&str, Subscription)]) -> Contact {
        Contact {
            email: "ada@example.com".into(),
            unsubscribe_all: false,
            preferences: preferences
                .iter()
                .map(|(name, s)| (name.to_string(), *s))
                .collect(),
        }
    }

    fn topics_of(audience: &Audience, contact: &Contact) -> Vec<String> {
        audience
            .select(contact)
            .map(|recipient| recipient.topics.iter().map(ToString::to_string).collect())
            .unwrap_or_default()
    }

    #[test]
    fn explicit_preference_beats_the_default() {
        let audience = Audience::new(
            &newsletter(&["rust", "aws"]),
            defaults(&[("rust", OptIn), ("aws", OptOut)]),
        );
        assert_eq!(topics_of(&audience, &contact(&[])), ["rust"]);
        assert_eq!(
            topics_of(&audience, &contact(&[("rust", OptOut), ("aws", OptIn)])),
            ["aws"]
        );
        assert_eq!(
            topics_of(&audience, &contact(&[("aws", OptIn)])),
            ["rust", "aws"]
        );
    }

    #[test]
    fn topics_follow_the_newsletter_order_not_the_contact_order() {
        let audience = Audience::new(
            &newsletter(&["aws", "rust", "aws"]),
            defaults(&[("rust", OptOut), ("aws", OptOut)]),
        );
        assert_eq!(
            topics_of(&audience, &contact(&[("rust", OptIn), ("aws", OptIn)])),
            ["aws", "rust"]
        );
    }

    #[test]
    fn unsubscribe_all_wins_over_everything() {
        let audience = Audience::new(&newsletter(&["rust"]), defaults(&[("rust", OptIn)]));
        let mut unsubscribed = contact(&[("rust", OptIn)]);
        unsubscribed.unsubscribe_all = true;
        assert_eq!(
            audience.select(&unsubscribed),
            Err(Skip::UnsubscribedFromAll)
        );
    }

    #[test]
    fn contacts_with_no_topic_of_interest_are_skipped() {
        let audience = Audience::new(&newsletter(&["rust"]), defaults(&[("rust", OptOut)]));
        assert_eq!(
            audience.select(&contact(&[("aws", OptIn)])),
            Err(Skip::NoTopicOfInterest)
        );
    }

    #[test]
    fn topics_nobody_follows_reach_nobody() {
        let audience = Audience::new(
            &newsletter(&["rust", "cobol"]),
            defaults(&[("rust", OptIn)]),
        );
        let unknown: Vec<&str> = audience
            .unmatched_topics()
            .iter()
            .map(|t| t.as_str())
            .collect();
        assert_eq!(unknown, ["cobol"]);
        assert_eq!(topics_of(&audience, &contact(&[])), ["rust"]);
    }

    #[test]
    fn unusable_addresses_are_skipped_not_sent() {
        let audience = Audience::new(&newsletter(&["rust"]), defaults(&[("rust", OptIn)]));
        let mut broken = contact(&[]);
        broken.email = "no-at-sign".into();
        assert_eq!(audience.select(&broken), Err(Skip::InvalidAddress));
    }
}

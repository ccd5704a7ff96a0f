//! Who gets what: a subscriber's topics, from their SES list-management preferences.

use crate::domain::{EmailAddress, Newsletter, Topic};
use crate::message::Recipient;
use crate::ports::{ContactDirectory, DirectoryError};
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

impl Skip {
    /// The reason's name, as a preview shows it (`"skipped"`): part of the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::UnsubscribedFromAll => "unsubscribed_from_all",
            Self::NoTopicOfInterest => "no_topic_of_interest",
            Self::InvalidAddress => "invalid_address",
        }
    }
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

    /// What `address` gets of this newsletter, as a test send sends it and a preview shows it:
    /// as the real send selects it when the list has a `contact` for it (nothing, when the
    /// contact would get nothing), and every section when it is not in the list (`None`).
    pub fn select_address(
        &self,
        address: &EmailAddress,
        contact: Option<&Contact>,
    ) -> Result<Recipient, Skip> {
        match contact {
            Some(contact) => self.select(contact).map(|recipient| Recipient {
                // The list's spelling of the address may differ in case: the caller's is sent to.
                email: address.clone(),
                ..recipient
            }),
            None => Ok(Recipient {
                email: address.clone(),
                topics: self.topics.clone(),
            }),
        }
    }
}

/// The audience of `newsletter` and what each of `addresses` gets of it
/// ([`Audience::select_address`]), from the list: the one path of test sends and previews, so
/// that a preview shows what a test send sends.
pub async fn select_addresses<D: ContactDirectory>(
    directory: &D,
    newsletter: &Newsletter,
    addresses: &[EmailAddress],
) -> Result<(Audience, Vec<Result<Recipient, Skip>>), DirectoryError> {
    // The list's topics first: a missing list fails here, not as "nobody is in it".
    let audience = Audience::new(newsletter, directory.topic_defaults().await?);
    let mut selected = Vec::with_capacity(addresses.len());
    for address in addresses {
        let contact = directory.contact(address).await?;
        selected.push(audience.select_address(address, contact.as_ref()));
    }
    Ok((audience, selected))
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
    fn an_address_in_the_list_gets_what_the_contact_would_get() {
        let audience = Audience::new(
            &newsletter(&["rust", "aws", "go"]),
            defaults(&[("rust", OptIn), ("aws", OptOut), ("go", OptOut)]),
        );
        let address = EmailAddress::parse("Ada@example.com").unwrap();
        let picky = contact(&[("go", OptIn)]);
        let selected = audience.select_address(&address, Some(&picky)).unwrap();
        assert_eq!(selected.email, address);
        assert_eq!(
            selected
                .topics
                .iter()
                .map(Topic::as_str)
                .collect::<Vec<_>>(),
            ["rust", "go"]
        );
        let mut unsubscribed = contact(&[("go", OptIn)]);
        unsubscribed.unsubscribe_all = true;
        assert_eq!(
            audience.select_address(&address, Some(&unsubscribed)),
            Err(Skip::UnsubscribedFromAll)
        );
        let uninterested = contact(&[("rust", OptOut)]);
        assert_eq!(
            audience.select_address(&address, Some(&uninterested)),
            Err(Skip::NoTopicOfInterest)
        );
    }

    #[test]
    fn an_address_not_in_the_list_gets_every_section() {
        // Even topics the list does not have, and those nobody gets by default.
        let audience = Audience::new(
            &newsletter(&["rust", "aws", "cobol", "rust"]),
            defaults(&[("rust", OptOut), ("aws", OptOut)]),
        );
        let address = EmailAddress::parse("new@example.com").unwrap();
        let selected = audience.select_address(&address, None).unwrap();
        assert_eq!(selected.email, address);
        assert_eq!(
            selected
                .topics
                .iter()
                .map(Topic::as_str)
                .collect::<Vec<_>>(),
            ["rust", "aws", "cobol"]
        );
    }

    #[tokio::test]
    async fn addresses_are_looked_up_one_by_one_never_by_page() {
        use crate::ports::ContactPage;
        use crate::testing::fakes::PagedDirectory;
        let directory = PagedDirectory {
            defaults: defaults(&[("rust", OptIn)]),
            pages: vec![ContactPage {
                contacts: vec![Contact {
                    email: "out@example.com".into(),
                    unsubscribe_all: true,
                    preferences: Vec::new(),
                }],
                next_token: None,
            }],
            ..Default::default()
        };
        let addresses = [
            EmailAddress::parse("out@example.com").unwrap(),
            EmailAddress::parse("new@example.com").unwrap(),
        ];
        let (_, selected) = select_addresses(&directory, &newsletter(&["rust"]), &addresses)
            .await
            .unwrap();
        assert_eq!(selected[0], Err(Skip::UnsubscribedFromAll));
        assert_eq!(selected[1].as_ref().unwrap().email, addresses[1]);
        assert!(
            directory.requests.lock().unwrap().is_empty(),
            "no page read"
        );

        let failing = PagedDirectory {
            fail: true,
            ..Default::default()
        };
        assert!(
            select_addresses(&failing, &newsletter(&["rust"]), &addresses)
                .await
                .is_err()
        );
    }

    #[test]
    fn unusable_addresses_are_skipped_not_sent() {
        let audience = Audience::new(&newsletter(&["rust"]), defaults(&[("rust", OptIn)]));
        let mut broken = contact(&[]);
        broken.email = "no-at-sign".into();
        assert_eq!(audience.select(&broken), Err(Skip::InvalidAddress));
    }
}

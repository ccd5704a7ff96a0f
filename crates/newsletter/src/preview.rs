//! Previewing a newsletter (`POST /newsletters/preview`): the email a contact would get, rendered
//! now by the worker's own [`render`], from the same selection a test send makes
//! ([`select_addresses`]), so that what an author checks is what is sent, byte for byte.

use crate::audience::{Skip, select_addresses};
use crate::domain::{EmailAddress, FieldError, Topic, field_error};
use crate::ports::{ContactDirectory, DirectoryError};
use crate::render::{RenderedEmail, render, sections_for};
use crate::submit::{Deadline, RequestError, bounded, parse_beside, parse_document};
use serde_json::Value;

/// What a preview shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preview {
    /// The address previewed as (`"as"`), if the request named one.
    pub address: Option<EmailAddress>,
    /// The email, or why that address would get none.
    pub outcome: Result<Previewed, Skip>,
}

/// An email as the worker sends it, and which sections it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Previewed {
    pub email: RenderedEmail,
    /// The topic and title of each section in the email, in its order.
    pub sections: Vec<(Topic, String)>,
}

#[derive(Debug, thiserror::Error)]
pub enum PreviewError {
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error(transparent)]
    Directory(#[from] DirectoryError),
}

/// Renders the newsletter of `body` for its `"as"` address (what a test send to it would send:
/// the contact's sections, or every section if the address is not in the list), or, without
/// one, with every section (asking the list nothing).
/// The list is asked within `deadline`'s time for calls.
pub async fn preview<D: ContactDirectory>(
    directory: &D,
    body: &[u8],
    deadline: &Deadline,
) -> Result<Preview, PreviewError> {
    let document = parse_document(body)?;
    let (newsletter, address) = parse_beside(&document, "as", parse_as)?;
    let topics = match &address {
        Some(address) => {
            let selection = select_addresses(directory, &newsletter, std::slice::from_ref(address));
            let (_, mut selected) = bounded(deadline.calls_end, selection, DirectoryError).await?;
            selected
                .pop()
                .unwrap_or(Err(Skip::NoTopicOfInterest))
                .map(|recipient| recipient.topics)
        }
        // A reader opted into every topic of the newsletter.
        None => Ok(newsletter.topics().into_iter().cloned().collect()),
    };
    Ok(Preview {
        address,
        outcome: topics.map(|topics| Previewed {
            email: render(&newsletter, &topics),
            sections: sections_for(&newsletter, &topics)
                .map(|section| (section.topic.clone(), section.title.as_str().to_owned()))
                .collect(),
        }),
    })
}

/// `"as"`: absent, or an email address.
fn parse_as(value: Option<&Value>) -> Result<Option<EmailAddress>, Vec<FieldError>> {
    let Some(value) = value else {
        return Ok(None);
    };
    match value.as_str().map(EmailAddress::parse) {
        Some(Ok(address)) => Ok(Some(address)),
        Some(Err(invalid)) => Err(vec![field_error("/as", invalid.0)]),
        None => Err(vec![field_error(
            "/as",
            "must be a string: an email address",
        )]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audience::{Contact, Subscription, TopicDefaults};
    use crate::ports::ContactPage;
    use crate::testing::fakes::PagedDirectory;
    use serde_json::json;

    fn directory() -> PagedDirectory {
        let contact =
            |email: &str, unsubscribe_all, preferences: &[(&str, Subscription)]| Contact {
                email: email.into(),
                unsubscribe_all,
                preferences: preferences
                    .iter()
                    .map(|(topic, s)| (topic.to_string(), *s))
                    .collect(),
            };
        PagedDirectory {
            defaults: TopicDefaults(
                [
                    ("rust".into(), Subscription::OptIn),
                    ("aws".into(), Subscription::OptOut),
                ]
                .into(),
            ),
            pages: vec![ContactPage {
                contacts: vec![
                    contact(
                        "aws@x.io",
                        false,
                        &[("rust", Subscription::OptOut), ("aws", Subscription::OptIn)],
                    ),
                    contact("gone@x.io", true, &[]),
                ],
                next_token: None,
            }],
            ..Default::default()
        }
    }

    fn deadline() -> Deadline {
        Deadline::of_invocation(None)
    }

    fn body(extra: serde_json::Value) -> Vec<u8> {
        let mut document = json!({
            "subject": "Weekly",
            "sections": [
                {"topic": "rust", "title": "Rust news", "body": "one"},
                {"topic": "aws", "title": "AWS news", "body": "two"}
            ]
        });
        if let (Some(object), Some(extra)) = (document.as_object_mut(), extra.as_object()) {
            object.extend(extra.clone());
        }
        document.to_string().into_bytes()
    }

    fn titles(preview: &Preview) -> Vec<&str> {
        let previewed = preview.outcome.as_ref().unwrap();
        previewed
            .sections
            .iter()
            .map(|(_, title)| title.as_str())
            .collect()
    }

    #[tokio::test]
    async fn as_a_contact_it_is_their_email_and_without_one_every_section() {
        let directory = directory();
        let preview_as = preview(&directory, &body(json!({"as": "aws@x.io"})), &deadline())
            .await
            .unwrap();
        assert_eq!(titles(&preview_as), ["AWS news"]);
        let topics = [Topic::parse("aws").unwrap()];
        let document = serde_json::from_slice(&body(json!({}))).unwrap();
        let newsletter = crate::domain::Newsletter::from_json(&document);
        assert_eq!(
            preview_as.outcome.unwrap().email,
            render(&newsletter.unwrap(), &topics),
            "what the worker renders for that contact"
        );

        let everything = preview(&directory, &body(json!({})), &deadline())
            .await
            .unwrap();
        assert_eq!(everything.address, None);
        assert_eq!(titles(&everything), ["Rust news", "AWS news"]);
        let stranger = preview(&directory, &body(json!({"as": "new@y.io"})), &deadline())
            .await
            .unwrap();
        assert_eq!(titles(&stranger), ["Rust news", "AWS news"]);
    }

    #[tokio::test]
    async fn a_contact_who_would_get_nothing_is_told_why() {
        let preview = preview(&directory(), &body(json!({"as": "gone@x.io"})), &deadline())
            .await
            .unwrap();
        assert_eq!(preview.outcome, Err(Skip::UnsubscribedFromAll));
    }

    #[tokio::test]
    async fn a_bad_as_or_newsletter_is_refused_and_the_list_unreachable_is_a_directory_error() {
        let directory = directory();
        for (extra, pointer) in [
            (json!({"as": "nope"}), "#/as"),
            (json!({"as": 3}), "#/as"),
            (json!({"to": []}), "#/to"),
        ] {
            let Err(PreviewError::Request(RequestError::Invalid(errors))) =
                preview(&directory, &body(extra), &deadline()).await
            else {
                panic!("expected invalid fields")
            };
            assert_eq!(errors[0].pointer, pointer);
        }
        assert!(matches!(
            preview(&directory, b"{", &deadline()).await,
            Err(PreviewError::Request(RequestError::Malformed(_)))
        ));
        let failing = PagedDirectory {
            fail: true,
            ..Default::default()
        };
        assert!(matches!(
            preview(&failing, &body(json!({"as": "a@x.io"})), &deadline()).await,
            Err(PreviewError::Directory(_))
        ));
        // Without "as", the list is not asked.
        assert!(
            preview(&failing, &body(json!({})), &deadline())
                .await
                .is_ok()
        );
    }
}

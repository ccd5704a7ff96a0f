//! Amazon SES v2 behind the domain's contact-list and mailer traits.

use crate::Config;
use aws_sdk_sesv2::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sesv2::{
    operation::send_email::SendEmailError,
    types::{
        Body, Content, Destination, EmailContent, ListContactsFilter, ListManagementOptions,
        Message, MessageTag, SubscriptionStatus, TopicFilter,
    },
};
use newsletter::{
    audience::{Contact, Subscription, TopicDefaults},
    aws_error::describe,
    deliver::{Mailer, SendError},
    directory::{ContactDirectory, ContactPage, DirectoryError},
    domain::{EmailAddress, Topic},
    render::RenderedEmail,
};

/// Contacts per `ListContacts` page: the API's maximum, so a million contacts take 1,000 calls.
const PAGE_SIZE: i32 = 1000;

pub struct SesContactList {
    client: aws_sdk_sesv2::Client,
    name: String,
}

impl SesContactList {
    pub fn new(client: aws_sdk_sesv2::Client, name: impl Into<String>) -> Self {
        Self {
            client,
            name: name.into(),
        }
    }
}

fn subscription(status: Option<&SubscriptionStatus>) -> Subscription {
    match status {
        Some(SubscriptionStatus::OptIn) => Subscription::OptIn,
        _ => Subscription::OptOut,
    }
}

fn directory_error<E, R>(err: SdkError<E, R>) -> DirectoryError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    DirectoryError(describe(&err))
}

impl ContactDirectory for SesContactList {
    async fn topic_defaults(&self) -> Result<TopicDefaults, DirectoryError> {
        let list = self
            .client
            .get_contact_list()
            .contact_list_name(&self.name)
            .send()
            .await
            .map_err(directory_error)?;
        Ok(TopicDefaults(
            list.topics()
                .iter()
                .map(|topic| {
                    (
                        topic.topic_name.clone(),
                        subscription(Some(&topic.default_subscription_status)),
                    )
                })
                .collect(),
        ))
    }

    async fn page(
        &self,
        token: Option<&str>,
        opted_into: Option<&Topic>,
    ) -> Result<ContactPage, DirectoryError> {
        let filter = opted_into.map(|topic| {
            let topic_filter = TopicFilter::builder()
                .topic_name(topic.as_str())
                .use_default_if_preference_unavailable(true)
                .build();
            ListContactsFilter::builder()
                .filtered_status(SubscriptionStatus::OptIn)
                .topic_filter(topic_filter)
                .build()
        });
        let page = self
            .client
            .list_contacts()
            .contact_list_name(&self.name)
            .page_size(PAGE_SIZE)
            .set_next_token(token.map(str::to_owned))
            .set_filter(filter)
            .send()
            .await
            .map_err(directory_error)?;
        let contacts = page
            .contacts()
            .iter()
            .map(|contact| Contact {
                email: contact.email_address.clone().unwrap_or_default(),
                unsubscribe_all: contact.unsubscribe_all,
                preferences: contact
                    .topic_preferences()
                    .iter()
                    .map(|preference| {
                        (
                            preference.topic_name.clone(),
                            subscription(Some(&preference.subscription_status)),
                        )
                    })
                    .collect(),
            })
            .collect();
        Ok(ContactPage {
            contacts,
            next_token: page.next_token.filter(|token| !token.is_empty()),
        })
    }
}

pub struct SesMailer {
    client: aws_sdk_sesv2::Client,
    from_address: String,
    contact_list_name: String,
    configuration_set_name: Option<String>,
}

impl SesMailer {
    pub fn new(client: aws_sdk_sesv2::Client, config: &Config) -> Self {
        Self {
            client,
            from_address: config.from_address.clone(),
            contact_list_name: config.contact_list_name.clone(),
            configuration_set_name: config.configuration_set_name.clone(),
        }
    }
}

fn utf8(data: &str) -> Result<Content, SendError> {
    Content::builder()
        .data(data)
        .charset("UTF-8")
        .build()
        .map_err(|err| SendError::Permanent(err.to_string()))
}

impl Mailer for SesMailer {
    async fn send(
        &self,
        to: &EmailAddress,
        email: &RenderedEmail,
        topic: Option<&Topic>,
    ) -> Result<(), SendError> {
        let message = Message::builder()
            .subject(utf8(&email.subject)?)
            .body(
                Body::builder()
                    .html(utf8(&email.html)?)
                    .text(utf8(&email.text)?)
                    .build(),
            )
            .build();
        // Makes SES add the unsubscribe link and the one-click List-Unsubscribe headers.
        let list_management = ListManagementOptions::builder()
            .contact_list_name(&self.contact_list_name)
            .set_topic_name(topic.map(|topic| topic.as_str().to_owned()))
            .build()
            .map_err(|err| SendError::Permanent(err.to_string()))?;
        let result = self
            .client
            .send_email()
            .from_email_address(&self.from_address)
            .destination(Destination::builder().to_addresses(to.as_str()).build())
            .content(EmailContent::builder().simple(message).build())
            .list_management_options(list_management)
            // Bounce, complaint and delivery events from a configuration set carry this tag.
            .email_tags(
                MessageTag::builder()
                    .name("task_id")
                    .value(email.task_id.to_string())
                    .build()
                    .map_err(|err| SendError::Permanent(err.to_string()))?,
            )
            .set_configuration_set_name(self.configuration_set_name.clone())
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(err) => {
                let reason = describe(&err);
                match err.into_service_error() {
                    // This email will never be accepted as it is; retrying would only repeat it.
                    SendEmailError::MessageRejected(_) | SendEmailError::BadRequestException(_) => {
                        Err(SendError::Permanent(reason))
                    }
                    // The account's send rate ("Maximum sending rate exceeded").
                    SendEmailError::TooManyRequestsException(_) => {
                        Err(SendError::Throttled(reason))
                    }
                    // Timeouts, 5xx, paused sending, the daily quota: later.
                    _ => Err(SendError::Transient(reason)),
                }
            }
        }
    }
}

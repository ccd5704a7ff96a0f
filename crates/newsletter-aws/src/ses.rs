//! Amazon SES v2 behind the contact-list and mailer ports: one client for each, as their calls
//! need different timeouts and retries.

use crate::error::{cause, describe};
use aws_config::{SdkConfig, retry::RetryConfig, timeout::TimeoutConfig};
use aws_sdk_sesv2::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sesv2::{
    operation::{get_contact::GetContactError, send_email::SendEmailError},
    types::{
        Body, Content, Destination, EmailContent, ListContactsFilter, ListManagementOptions,
        Message, MessageTag, SubscriptionStatus, TopicFilter, TopicPreference,
    },
};
use newsletter::audience::{Contact, Subscription, TopicDefaults};
use newsletter::domain::{EmailAddress, PauseCode, TaskId, Topic};
use newsletter::ports::{ContactDirectory, ContactPage, DirectoryError, Mailer, SendError};
use newsletter::render::RenderedEmail;
use std::time::Duration;

/// Contacts per `ListContacts` page: the API's maximum, so a million contacts take 1,000 calls.
const PAGE_SIZE: i32 = 1000;

/// The client [`SesContactList`] reads with. The contact-list APIs have low per-account request
/// rates: when several plans run at once, back off and retry inside the SDK rather than fail the
/// job message. Planning comes first in an invocation, so these calls may take longer than the
/// store's and the sends'.
pub fn contact_list_client(aws: &SdkConfig) -> aws_sdk_sesv2::Client {
    aws_sdk_sesv2::Client::from_conf(
        aws_sdk_sesv2::config::Builder::from(aws)
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(1))
                    .operation_attempt_timeout(Duration::from_secs(5))
                    .operation_timeout(Duration::from_secs(20))
                    .build(),
            )
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(6)
                    .with_initial_backoff(Duration::from_millis(200))
                    .with_max_backoff(Duration::from_secs(5)),
            )
            .build(),
    )
}

/// The client [`SesMailer`] sends with: no SDK retries. Sends are retried by the core's
/// `Sender`, which slows down on throttling, holds the chunk's lease meanwhile and never starts a
/// send past its budget; SDK retries would resend behind its back, at the old rate and past the
/// deadline.
pub fn sending_client(aws: &SdkConfig) -> aws_sdk_sesv2::Client {
    aws_sdk_sesv2::Client::from_conf(
        aws_sdk_sesv2::config::Builder::from(aws)
            .retry_config(RetryConfig::disabled())
            .build(),
    )
}

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
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    DirectoryError(cause(err))
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
                preferences: preferences(contact.topic_preferences()),
            })
            .collect();
        Ok(ContactPage {
            contacts,
            next_token: page.next_token.filter(|token| !token.is_empty()),
        })
    }

    async fn contact(&self, address: &EmailAddress) -> Result<Option<Contact>, DirectoryError> {
        let result = self
            .client
            .get_contact()
            .contact_list_name(&self.name)
            .email_address(address.as_str())
            .send()
            .await;
        match result {
            Ok(contact) => Ok(Some(Contact {
                email: contact
                    .email_address
                    .unwrap_or_else(|| address.as_str().to_owned()),
                unsubscribe_all: contact.unsubscribe_all,
                // Explicit choices only, as `ListContacts` gives them: defaults are the
                // list's (`topic_defaults`), resolved by the audience.
                preferences: preferences(&contact.topic_preferences.unwrap_or_default()),
            })),
            // The address is not in the list (SES names a missing list the same way; callers
            // read the list's topics first, which fails for a missing list). A bare 404 too: an
            // address with a `/` in it does not reach the operation's route at all (the local
            // SES answers it so), and no contact has such an address.
            Err(err)
                if matches!(
                    err.as_service_error(),
                    Some(GetContactError::NotFoundException(_))
                ) || err.raw_response().map(|raw| raw.status().as_u16()) == Some(404) =>
            {
                Ok(None)
            }
            // The address is in the SDK's error text only if SES quoted it: directory errors are
            // logged, so it is taken out.
            Err(err) => Err(DirectoryError(
                redact(&describe(&err), address.as_str()).into(),
            )),
        }
    }
}

fn preferences(topics: &[TopicPreference]) -> Vec<(String, Subscription)> {
    topics
        .iter()
        .map(|preference| {
            (
                preference.topic_name.clone(),
                subscription(Some(&preference.subscription_status)),
            )
        })
        .collect()
}

pub struct SesMailer {
    client: aws_sdk_sesv2::Client,
    from_address: String,
    contact_list_name: String,
    configuration_set_name: Option<String>,
}

impl SesMailer {
    /// Sends from `from_address` (a verified identity), with the unsubscribe options of
    /// `contact_list_name`, through `configuration_set_name` if one is given.
    pub fn new(
        client: aws_sdk_sesv2::Client,
        from_address: impl Into<String>,
        contact_list_name: impl Into<String>,
        configuration_set_name: Option<String>,
    ) -> Self {
        Self {
            client,
            from_address: from_address.into(),
            contact_list_name: contact_list_name.into(),
            configuration_set_name,
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
        task_id: TaskId,
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
                    .value(task_id.to_string())
                    .build()
                    .map_err(|err| SendError::Permanent(err.to_string()))?,
            )
            .set_configuration_set_name(self.configuration_set_name.clone())
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(err) => {
                // SES may quote the recipient's address: it never reaches a log line.
                let reason = redact(&describe(&err), to.as_str());
                Err(classify(
                    &err.into_service_error(),
                    &self.from_address,
                    reason,
                ))
            }
        }
    }
}

/// What a refused `SendEmail` means for the rest of the list: only this address, every send of
/// the account (the task pauses), the send rate, or a passing fault.
fn classify(error: &SendEmailError, from_address: &str, reason: String) -> SendError {
    // The modeled errors' own message (what the wire said), else the generic metadata's.
    let message = match error {
        SendEmailError::MessageRejected(rejected) => rejected.message(),
        SendEmailError::TooManyRequestsException(throttled) => throttled.message(),
        _ => None,
    }
    .or_else(|| error.message())
    .unwrap_or_default()
    .to_ascii_lowercase();
    match error {
        // Production: the sender; the sandbox: the recipients ("Email address is not verified.
        // The following identities failed the check...: <addresses>"). moto says the same.
        SendEmailError::MessageRejected(_) if message.contains("not verified") => {
            if message.contains(&from_address.to_ascii_lowercase()) {
                SendError::AccountWide(PauseCode::SenderNotVerified)
            } else {
                SendError::AccountWide(PauseCode::RecipientNotVerified)
            }
        }
        // This email will never be accepted as it is; retrying would only repeat it.
        SendEmailError::MessageRejected(_) | SendEmailError::BadRequestException(_) => {
            SendError::Permanent(reason)
        }
        SendEmailError::MailFromDomainNotVerifiedException(_) => {
            SendError::AccountWide(PauseCode::SenderNotVerified)
        }
        SendEmailError::AccountSuspendedException(_) => {
            SendError::AccountWide(PauseCode::AccountSuspended)
        }
        SendEmailError::SendingPausedException(_) => {
            SendError::AccountWide(PauseCode::SendingPaused)
        }
        // The configuration set (the contact list was read when planning).
        SendEmailError::NotFoundException(_) => {
            SendError::AccountWide(PauseCode::ConfigurationSetMissing)
        }
        SendEmailError::LimitExceededException(_) => {
            SendError::AccountWide(PauseCode::DailyQuotaExceeded)
        }
        // "Daily message quota exceeded" is the 24-hour quota, not the rate.
        SendEmailError::TooManyRequestsException(_) if message.contains("quota") => {
            SendError::AccountWide(PauseCode::DailyQuotaExceeded)
        }
        // The account's send rate ("Maximum sending rate exceeded").
        SendEmailError::TooManyRequestsException(_) => SendError::Throttled(reason),
        _ if matches!(error.code(), Some("AccessDeniedException" | "AccessDenied")) => {
            SendError::AccountWide(PauseCode::AccessDenied)
        }
        // Timeouts, 5xx: later.
        _ => SendError::Transient(reason),
    }
}

/// `text` with every occurrence of `address` (in any case) replaced by `<recipient>`.
fn redact(text: &str, address: &str) -> String {
    if address.is_empty() {
        return text.to_owned();
    }
    // ASCII lower-casing keeps byte offsets, so positions found in the copy hold in `text`.
    let (lower, needle) = (text.to_ascii_lowercase(), address.to_ascii_lowercase());
    let mut redacted = String::with_capacity(text.len());
    let mut rest = 0;
    for (start, _) in lower.match_indices(&needle) {
        redacted.push_str(&text[rest..start]);
        redacted.push_str("<recipient>");
        rest = start + needle.len();
    }
    redacted.push_str(&text[rest..]);
    redacted
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_sesv2::error::ErrorMetadata;
    use aws_sdk_sesv2::types::error::{
        AccountSuspendedException, LimitExceededException, MessageRejected, NotFoundException,
        SendingPausedException, TooManyRequestsException,
    };

    const FROM: &str = "News@Example.com";

    fn classified(error: SendEmailError) -> SendError {
        classify(&error, FROM, "reason".into())
    }

    fn rejected(message: &str) -> SendEmailError {
        SendEmailError::MessageRejected(MessageRejected::builder().message(message).build())
    }

    #[test]
    fn account_wide_refusals_are_told_from_per_address_ones() {
        let account = |code| SendError::AccountWide(code);
        assert_eq!(
            classified(rejected("Email address not verified news@example.com")),
            account(PauseCode::SenderNotVerified),
            "moto's and production's unverified sender"
        );
        assert_eq!(
            classified(rejected(
                "Email address is not verified. The following identities failed the check in region US-EAST-1: reader@x.io"
            )),
            account(PauseCode::RecipientNotVerified),
            "the sandbox"
        );
        assert_eq!(
            classified(rejected("Illegal address")),
            SendError::Permanent("reason".into())
        );
        assert_eq!(
            classified(SendEmailError::AccountSuspendedException(
                AccountSuspendedException::builder().build()
            )),
            account(PauseCode::AccountSuspended)
        );
        assert_eq!(
            classified(SendEmailError::SendingPausedException(
                SendingPausedException::builder().build()
            )),
            account(PauseCode::SendingPaused)
        );
        assert_eq!(
            classified(SendEmailError::NotFoundException(
                NotFoundException::builder()
                    .message("Configuration set <news> does not exist.")
                    .build()
            )),
            account(PauseCode::ConfigurationSetMissing)
        );
        assert_eq!(
            classified(SendEmailError::LimitExceededException(
                LimitExceededException::builder().build()
            )),
            account(PauseCode::DailyQuotaExceeded)
        );
        assert_eq!(
            classified(SendEmailError::TooManyRequestsException(
                TooManyRequestsException::builder()
                    .message("Daily message quota exceeded.")
                    .build()
            )),
            account(PauseCode::DailyQuotaExceeded)
        );
        assert_eq!(
            classified(SendEmailError::TooManyRequestsException(
                TooManyRequestsException::builder()
                    .message("Maximum sending rate exceeded.")
                    .build()
            )),
            SendError::Throttled("reason".into())
        );
        assert_eq!(
            classified(SendEmailError::generic(
                ErrorMetadata::builder()
                    .code("AccessDeniedException")
                    .message("User: arn:aws:sts::123456789012:assumed-role/worker is not authorized to perform: ses:SendEmail")
                    .build()
            )),
            account(PauseCode::AccessDenied)
        );
        assert_eq!(
            classified(SendEmailError::generic(
                ErrorMetadata::builder().code("InternalFailure").build()
            )),
            SendError::Transient("reason".into())
        );
    }

    #[test]
    fn the_recipient_s_address_is_cut_out_of_error_text() {
        assert_eq!(
            redact(
                "MessageRejected: Address blacklisted: Reader@X.io (reader@x.io)",
                "reader@x.io"
            ),
            "MessageRejected: Address blacklisted: <recipient> (<recipient>)"
        );
        assert_eq!(redact("no address here", "reader@x.io"), "no address here");
    }
}

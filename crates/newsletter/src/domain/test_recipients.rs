use super::newsletter::field_error;
use super::{EmailAddress, FieldError, Invalid, text};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// At most this many addresses in one test send: enough for a team, too few to be a way around
/// the contact list (a test send reaches addresses nobody subscribed).
pub const MAX_TEST_RECIPIENTS: usize = 10;

/// The addresses of a test send (`"to"` of `POST /newsletters/test`): 1 to
/// [`MAX_TEST_RECIPIENTS`] email addresses, none twice (compared without case: one mailbox
/// would get the email twice), in the caller's order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Vec<EmailAddress>", into = "Vec<EmailAddress>")]
pub struct TestRecipients(Vec<EmailAddress>);

impl TestRecipients {
    pub fn new(addresses: Vec<EmailAddress>) -> Result<Self, Invalid> {
        if addresses.is_empty() || addresses.len() > MAX_TEST_RECIPIENTS {
            return Err(Invalid(format!(
                "must hold 1 to {MAX_TEST_RECIPIENTS} addresses, got {}",
                addresses.len()
            )));
        }
        if let Some((index, earlier)) = first_repeat(&addresses) {
            return Err(Invalid(format!(
                "address {index} repeats address {earlier}"
            )));
        }
        Ok(Self(addresses))
    }

    /// Parses the request member `name` (`to`), reporting every bad address at once, each at its
    /// JSON Pointer (`#/to/1`).
    pub fn from_json(value: Option<&Value>, name: &str) -> Result<Self, Vec<FieldError>> {
        let at = format!("/{name}");
        let items = match value {
            None => return Err(vec![field_error(&at, "is required")]),
            Some(Value::Array(items)) => items,
            Some(_) => {
                return Err(vec![field_error(
                    &at,
                    format!("must be an array of 1 to {MAX_TEST_RECIPIENTS} email addresses"),
                )]);
            }
        };
        if items.is_empty() || items.len() > MAX_TEST_RECIPIENTS {
            return Err(vec![field_error(
                &at,
                format!(
                    "must hold 1 to {MAX_TEST_RECIPIENTS} addresses, got {}",
                    items.len()
                ),
            )]);
        }
        let mut errors = Vec::new();
        let mut addresses = Vec::new();
        for (index, item) in items.iter().enumerate() {
            // The addresses travel on the job message: one SQS cannot carry is refused here.
            let parse =
                |raw: &str| text::reject_uncarriable(raw).and_then(|()| EmailAddress::parse(raw));
            match item.as_str().map(parse) {
                Some(Ok(address)) => addresses.push(address),
                Some(Err(invalid)) => errors.push(field_error(&format!("{at}/{index}"), invalid.0)),
                None => errors.push(field_error(
                    &format!("{at}/{index}"),
                    "must be a string: an email address",
                )),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        if let Some((index, earlier)) = first_repeat(&addresses) {
            return Err(vec![field_error(
                &format!("{at}/{index}"),
                format!("repeats {at}/{earlier}"),
            )]);
        }
        Ok(Self(addresses))
    }

    pub fn addresses(&self) -> &[EmailAddress] {
        &self.0
    }
}

/// The first address that repeats an earlier one, and the earlier one's index.
fn first_repeat(addresses: &[EmailAddress]) -> Option<(usize, usize)> {
    addresses.iter().enumerate().find_map(|(index, address)| {
        addresses[..index]
            .iter()
            .position(|earlier| earlier.as_str().eq_ignore_ascii_case(address.as_str()))
            .map(|earlier| (index, earlier))
    })
}

impl TryFrom<Vec<EmailAddress>> for TestRecipients {
    type Error = Invalid;
    fn try_from(addresses: Vec<EmailAddress>) -> Result<Self, Invalid> {
        Self::new(addresses)
    }
}

impl From<TestRecipients> for Vec<EmailAddress> {
    fn from(recipients: TestRecipients) -> Self {
        recipients.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pointers(result: Result<TestRecipients, Vec<FieldError>>) -> Vec<String> {
        result
            .unwrap_err()
            .into_iter()
            .map(|error| error.pointer)
            .collect()
    }

    #[test]
    fn one_to_ten_distinct_addresses_in_order() {
        let to = TestRecipients::from_json(Some(&json!(["b@example.com", "a@example.com"])), "to")
            .unwrap();
        let shown: Vec<&str> = to.addresses().iter().map(EmailAddress::as_str).collect();
        assert_eq!(shown, ["b@example.com", "a@example.com"]);
        let ten: Vec<String> = (0..10).map(|i| format!("u{i}@example.com")).collect();
        assert!(TestRecipients::from_json(Some(&json!(ten)), "to").is_ok());
    }

    #[test]
    fn a_missing_empty_or_oversized_list_names_the_field() {
        let eleven: Vec<String> = (0..11).map(|i| format!("u{i}@example.com")).collect();
        for value in [
            None,
            Some(json!([])),
            Some(json!(eleven)),
            Some(json!("a@example.com")),
        ] {
            assert_eq!(
                pointers(TestRecipients::from_json(value.as_ref(), "to")),
                ["#/to"],
                "{value:?}"
            );
        }
    }

    #[test]
    fn every_bad_address_is_named_by_its_index() {
        let value = json!([
            "ok@example.com",
            "nope",
            7,
            "also ok@example.com",
            "a@b\u{FFFE}"
        ]);
        assert_eq!(
            pointers(TestRecipients::from_json(Some(&value), "to")),
            ["#/to/1", "#/to/2", "#/to/3", "#/to/4"]
        );
    }

    #[test]
    fn a_repeated_address_is_refused_whatever_its_case() {
        let value = json!(["a@example.com", "b@example.com", "A@Example.com"]);
        let errors = TestRecipients::from_json(Some(&value), "to").unwrap_err();
        assert_eq!(errors[0].pointer, "#/to/2");
        assert_eq!(errors[0].detail, "repeats /to/0");
    }

    #[test]
    fn messages_holding_a_bad_list_do_not_decode() {
        assert!(serde_json::from_value::<TestRecipients>(json!(["a@example.com"])).is_ok());
        assert!(serde_json::from_value::<TestRecipients>(json!([])).is_err());
        assert!(
            serde_json::from_value::<TestRecipients>(json!(["a@example.com", "a@example.com"]))
                .is_err()
        );
    }
}

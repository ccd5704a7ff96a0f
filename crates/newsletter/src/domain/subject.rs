use super::{Invalid, parse_single_line};
use serde::{Deserialize, Serialize};

/// An email subject: 1 to 200 characters after trimming, with no control characters, so it can be
/// put in a mail header as it is (a CR/LF here would be header injection).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Subject(String);

impl Subject {
    pub const MAX_CHARS: usize = 200;

    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        parse_single_line(raw, Self::MAX_CHARS).map(Self)
    }
}

string_newtype!(Subject);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_surrounding_whitespace() {
        assert_eq!(
            Subject::parse("  Weekly digest \t").unwrap().as_str(),
            "Weekly digest"
        );
    }

    #[test]
    fn rejects_empty_and_blank() {
        for raw in ["", "   ", "\t"] {
            assert_eq!(Subject::parse(raw).unwrap_err().0, "must not be empty");
        }
    }

    #[test]
    fn length_is_counted_in_characters_not_bytes() {
        assert!(Subject::parse(&"é".repeat(200)).is_ok());
        assert_eq!(
            Subject::parse(&"é".repeat(201)).unwrap_err().0,
            "must be at most 200 characters"
        );
    }

    #[test]
    fn rejects_header_injection_and_control_characters() {
        for raw in [
            "Hello\r\nBcc: victim@example.com",
            "Hello\nWorld",
            "Hello\rWorld",
            "nul\0",
            "tab\tinside",
            "line\u{2028}separator",
        ] {
            assert_eq!(
                Subject::parse(raw).unwrap_err().0,
                "must not contain control characters or line breaks",
                "{raw:?}"
            );
        }
    }

    #[test]
    fn rejects_what_sqs_refuses_naming_the_character() {
        for (raw, named) in [("Hi \u{FFFE}", "U+FFFE"), ("\u{FFFF}Hi", "U+FFFF")] {
            let detail = Subject::parse(raw).unwrap_err().0;
            assert!(
                detail.starts_with(&format!("must not contain {named}:")),
                "{detail}"
            );
        }
        assert!(
            Subject::parse("Hi \u{1FFFE} \u{FFFD}").is_ok(),
            "SQS takes these"
        );
    }

    #[test]
    fn a_subject_of_invisible_characters_is_not_a_subject() {
        for raw in [
            "\u{200B}",
            "\u{200E}\u{202E}\u{2066}",
            " \u{FEFF}\u{2060} ",
            "\u{3164}",
        ] {
            assert_eq!(
                Subject::parse(raw).unwrap_err().0,
                "must hold at least one visible character, not only invisible formatting characters",
                "{raw:?}"
            );
        }
        assert!(Subject::parse("\u{200F}שלום").is_ok());
    }

    #[test]
    fn deserializing_applies_the_same_rules() {
        assert!(serde_json::from_str::<Subject>(r#""a\r\nb""#).is_err());
        let subject: Subject = serde_json::from_str(r#"" ok ""#).unwrap();
        assert_eq!(subject.as_str(), "ok");
    }
}

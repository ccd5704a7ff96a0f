use super::{Invalid, Topic, parse_single_line};
use serde::{Deserialize, Serialize};

/// One part of a newsletter, sent to the subscribers of its topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Section {
    pub topic: Topic,
    pub title: SectionTitle,
    pub body: MarkdownBody,
}

/// A section heading: 1 to 200 characters after trimming, one line, plain text (it is escaped
/// when rendered, never interpreted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SectionTitle(String);

impl SectionTitle {
    pub const MAX_CHARS: usize = 200;

    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        parse_single_line(raw, Self::MAX_CHARS).map(Self)
    }
}

string_newtype!(SectionTitle);

/// A section's content in CommonMark. Not blank, and only characters the queue can carry. Raw HTML
/// inside it is escaped when rendered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MarkdownBody(String);

impl MarkdownBody {
    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        if raw.trim().is_empty() {
            return Err(Invalid("must not be empty".into()));
        }
        super::text::reject_uncarriable(raw)?;
        Ok(Self(raw.to_owned()))
    }
}

string_newtype!(MarkdownBody);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn title_rules() {
        assert_eq!(
            SectionTitle::parse(" Release notes ").unwrap().as_str(),
            "Release notes"
        );
        assert_eq!(SectionTitle::parse(" ").unwrap_err().0, "must not be empty");
        assert_eq!(
            SectionTitle::parse(&"t".repeat(201)).unwrap_err().0,
            "must be at most 200 characters"
        );
        assert!(SectionTitle::parse(&"t".repeat(200)).is_ok());
        assert_eq!(
            SectionTitle::parse("two\nlines").unwrap_err().0,
            "must not contain control characters or line breaks"
        );
    }

    #[test]
    fn title_and_body_hold_only_what_sqs_carries() {
        assert!(
            SectionTitle::parse("Notes\u{FFFF}")
                .unwrap_err()
                .0
                .starts_with("must not contain U+FFFF:")
        );
        for raw in ["text \u{FFFE}", "bell \u{7}", "form feed \u{C}"] {
            assert!(
                MarkdownBody::parse(raw)
                    .unwrap_err()
                    .0
                    .starts_with("must not contain U+"),
                "{raw:?}"
            );
        }
        assert!(MarkdownBody::parse("tabs\t and\r\n lines \u{10FFFD}").is_ok());
    }

    #[test]
    fn a_title_must_be_visible() {
        assert_eq!(
            SectionTitle::parse("\u{200B}\u{200D}").unwrap_err().0,
            "must hold at least one visible character, not only invisible formatting characters"
        );
    }

    #[test]
    fn body_keeps_its_markdown_verbatim() {
        let raw = "  Indented code\n\n**bold**\n";
        assert_eq!(MarkdownBody::parse(raw).unwrap().as_str(), raw);
        assert_eq!(
            MarkdownBody::parse(" \n\t").unwrap_err().0,
            "must not be empty"
        );
    }
}

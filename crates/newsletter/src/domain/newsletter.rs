use super::{Invalid, MarkdownBody, Section, SectionTitle, Subject, Topic};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub const MAX_SECTIONS: usize = 50;

/// A newsletter ready to send: a valid subject and 1 to [`MAX_SECTIONS`] valid sections, in the
/// order the caller gave them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "NewsletterFields")]
pub struct Newsletter {
    subject: Subject,
    sections: Vec<Section>,
}

/// One thing wrong with a request, located by an RFC 6901 JSON Pointer (as in RFC 9457's example).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    pub pointer: String,
    pub detail: String,
}

impl Newsletter {
    pub fn new(subject: Subject, sections: Vec<Section>) -> Result<Self, Invalid> {
        if sections.is_empty() || sections.len() > MAX_SECTIONS {
            return Err(Invalid(format!("must hold 1 to {MAX_SECTIONS} sections")));
        }
        Ok(Self { subject, sections })
    }

    pub fn subject(&self) -> &Subject {
        &self.subject
    }

    pub fn sections(&self) -> &[Section] {
        &self.sections
    }

    /// The distinct topics, in order of first appearance.
    pub fn topics(&self) -> Vec<&Topic> {
        let mut topics: Vec<&Topic> = Vec::new();
        for section in &self.sections {
            if !topics.contains(&&section.topic) {
                topics.push(&section.topic);
            }
        }
        topics
    }

    /// Parses a request document (already known to be JSON) into a newsletter, reporting every
    /// invalid or unexpected field at once rather than only the first.
    pub fn from_json(document: &Value) -> Result<Self, Vec<FieldError>> {
        Self::from_json_beside(document, &[])
    }

    /// As [`Self::from_json`], for a request that carries its own top-level fields beside the
    /// newsletter's (`others`, which the caller parses: `to` of a test send, `as` of a preview).
    pub fn from_json_beside(document: &Value, others: &[&str]) -> Result<Self, Vec<FieldError>> {
        let mut errors = Vec::new();
        let Some(object) = document.as_object() else {
            errors.push(field_error("", "must be a JSON object"));
            return Err(errors);
        };
        let known: Vec<&str> = ["subject", "sections"]
            .iter()
            .chain(others)
            .copied()
            .collect();
        reject_unknown_fields(object, &known, "", &mut errors);

        let subject = required_str(object, "subject", "", &mut errors)
            .and_then(|raw| collect(Subject::parse(raw), "/subject", &mut errors));
        let sections = parse_sections(object.get("sections"), &mut errors);

        match (subject, sections) {
            (Some(subject), Some(sections)) if errors.is_empty() => Self::new(subject, sections)
                .map_err(|invalid| vec![field_error("/sections", invalid.0)]),
            _ => Err(errors),
        }
    }
}

fn parse_sections(value: Option<&Value>, errors: &mut Vec<FieldError>) -> Option<Vec<Section>> {
    let items = match value {
        None => {
            errors.push(field_error("/sections", "is required"));
            return None;
        }
        Some(Value::Array(items)) => items,
        Some(_) => {
            errors.push(field_error("/sections", "must be an array of sections"));
            return None;
        }
    };
    if items.is_empty() || items.len() > MAX_SECTIONS {
        errors.push(field_error(
            "/sections",
            format!(
                "must hold 1 to {MAX_SECTIONS} sections, got {}",
                items.len()
            ),
        ));
        return None;
    }
    let parsed: Vec<Option<Section>> = items
        .iter()
        .enumerate()
        .map(|(index, item)| parse_section(item, &format!("/sections/{index}"), errors))
        .collect();
    parsed.into_iter().collect()
}

fn parse_section(item: &Value, at: &str, errors: &mut Vec<FieldError>) -> Option<Section> {
    let Some(object) = item.as_object() else {
        errors.push(field_error(
            at,
            "must be an object with topic, title and body",
        ));
        return None;
    };
    reject_unknown_fields(object, &["topic", "title", "body"], at, errors);
    let topic = required_str(object, "topic", at, errors)
        .and_then(|raw| collect(Topic::parse(raw), &format!("{at}/topic"), errors));
    let title = required_str(object, "title", at, errors)
        .and_then(|raw| collect(SectionTitle::parse(raw), &format!("{at}/title"), errors));
    let body = required_str(object, "body", at, errors)
        .and_then(|raw| collect(MarkdownBody::parse(raw), &format!("{at}/body"), errors));
    Some(Section {
        topic: topic?,
        title: title?,
        body: body?,
    })
}

fn reject_unknown_fields(
    object: &Map<String, Value>,
    known: &[&str],
    at: &str,
    errors: &mut Vec<FieldError>,
) {
    for name in object.keys().filter(|name| !known.contains(&name.as_str())) {
        errors.push(field_error(
            &format!("{at}/{}", escape_pointer_token(name)),
            "is not a known field",
        ));
    }
}

fn required_str<'a>(
    object: &'a Map<String, Value>,
    name: &str,
    at: &str,
    errors: &mut Vec<FieldError>,
) -> Option<&'a str> {
    match object.get(name) {
        Some(Value::String(raw)) => Some(raw),
        Some(_) => {
            errors.push(field_error(&format!("{at}/{name}"), "must be a string"));
            None
        }
        None => {
            errors.push(field_error(&format!("{at}/{name}"), "is required"));
            None
        }
    }
}

fn collect<T>(parsed: Result<T, Invalid>, at: &str, errors: &mut Vec<FieldError>) -> Option<T> {
    parsed
        .map_err(|invalid| errors.push(field_error(at, invalid.0)))
        .ok()
}

pub(crate) fn field_error(pointer: &str, detail: impl Into<String>) -> FieldError {
    FieldError {
        pointer: format!("#{pointer}"),
        detail: detail.into(),
    }
}

/// RFC 6901: `~` and `/` inside a member name are written `~0` and `~1`.
fn escape_pointer_token(name: &str) -> String {
    name.replace('~', "~0").replace('/', "~1")
}

/// The wire shape, for deserializing queue messages through the same rules as [`Newsletter::new`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewsletterFields {
    subject: Subject,
    sections: Vec<Section>,
}

impl TryFrom<NewsletterFields> for Newsletter {
    type Error = Invalid;
    fn try_from(fields: NewsletterFields) -> Result<Self, Invalid> {
        Self::new(fields.subject, fields.sections)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn errors_of(document: Value) -> Vec<(String, String)> {
        Newsletter::from_json(&document)
            .unwrap_err()
            .into_iter()
            .map(|e| (e.pointer, e.detail))
            .collect()
    }

    fn pair(pointer: &str, detail: &str) -> (String, String) {
        (pointer.to_owned(), detail.to_owned())
    }

    fn section(topic: &str) -> Value {
        json!({"topic": topic, "title": "Title", "body": "Body"})
    }

    #[test]
    fn parses_a_valid_request_keeping_section_order() {
        let newsletter = Newsletter::from_json(&json!({
            "subject": " Weekly digest ",
            "sections": [section("rust"), section("aws"), section("rust")]
        }))
        .unwrap();
        assert_eq!(newsletter.subject().as_str(), "Weekly digest");
        let topics: Vec<&str> = newsletter
            .sections()
            .iter()
            .map(|s| s.topic.as_str())
            .collect();
        assert_eq!(topics, ["rust", "aws", "rust"]);
        let distinct: Vec<&str> = newsletter.topics().iter().map(|t| t.as_str()).collect();
        assert_eq!(distinct, ["rust", "aws"]);
    }

    #[test]
    fn the_document_must_be_an_object() {
        for document in [json!([]), json!("text"), json!(null), json!(3)] {
            assert_eq!(errors_of(document), [pair("#", "must be a JSON object")]);
        }
    }

    #[test]
    fn missing_fields_are_each_reported() {
        assert_eq!(
            errors_of(json!({})),
            [
                pair("#/subject", "is required"),
                pair("#/sections", "is required")
            ]
        );
    }

    #[test]
    fn wrong_types_are_each_reported() {
        assert_eq!(
            errors_of(json!({"subject": 7, "sections": {"topic": "rust"}})),
            [
                pair("#/subject", "must be a string"),
                pair("#/sections", "must be an array of sections")
            ]
        );
    }

    #[test]
    fn unknown_fields_are_rejected_at_every_level() {
        assert_eq!(
            errors_of(json!({
                "subject": "Hi", "bcc": "x", "a/b": 1,
                "sections": [{"topic": "rust", "title": "T", "body": "B", "html": "<b>"}]
            })),
            [
                pair("#/a~1b", "is not a known field"),
                pair("#/bcc", "is not a known field"),
                pair("#/sections/0/html", "is not a known field")
            ]
        );
    }

    #[test]
    fn section_count_is_bounded() {
        assert_eq!(
            errors_of(json!({"subject": "Hi", "sections": []})),
            [pair("#/sections", "must hold 1 to 50 sections, got 0")]
        );
        let many: Vec<Value> = (0..51).map(|_| section("rust")).collect();
        assert_eq!(
            errors_of(json!({"subject": "Hi", "sections": many})),
            [pair("#/sections", "must hold 1 to 50 sections, got 51")]
        );
        let fifty: Vec<Value> = (0..50).map(|_| section("rust")).collect();
        assert!(Newsletter::from_json(&json!({"subject": "Hi", "sections": fifty})).is_ok());
    }

    #[test]
    fn every_failing_field_is_listed_not_just_the_first() {
        assert_eq!(
            errors_of(json!({
                "subject": "Hello\r\nBcc: all@example.com",
                "sections": [
                    {"topic": "Rust!", "title": "", "body": "  "},
                    "not a section",
                    {"topic": "ok", "title": ["x"]}
                ]
            })),
            [
                pair(
                    "#/subject",
                    "must not contain control characters or line breaks"
                ),
                pair(
                    "#/sections/0/topic",
                    "must be a slug of 1 to 64 characters from a-z, 0-9 and '-'"
                ),
                pair("#/sections/0/title", "must not be empty"),
                pair("#/sections/0/body", "must not be empty"),
                pair(
                    "#/sections/1",
                    "must be an object with topic, title and body"
                ),
                pair("#/sections/2/title", "must be a string"),
                pair("#/sections/2/body", "is required"),
            ]
        );
    }

    #[test]
    fn characters_sqs_refuses_are_reported_at_their_fields() {
        let errors = errors_of(json!({
            "subject": "Digest \u{FFFE}",
            "sections": [
                {"topic": "rust", "title": "\u{200B}", "body": "ok"},
                {"topic": "aws", "title": "T", "body": "tail \u{FFFF}"}
            ]
        }));
        let pointers: Vec<&str> = errors.iter().map(|(pointer, _)| pointer.as_str()).collect();
        assert_eq!(
            pointers,
            ["#/subject", "#/sections/0/title", "#/sections/1/body"]
        );
    }

    #[test]
    fn serde_round_trip_keeps_the_invariants() {
        let newsletter =
            Newsletter::from_json(&json!({"subject": "Hi", "sections": [section("rust")]}))
                .unwrap();
        let encoded = serde_json::to_value(&newsletter).unwrap();
        assert_eq!(
            serde_json::from_value::<Newsletter>(encoded).unwrap(),
            newsletter
        );
        assert!(
            serde_json::from_value::<Newsletter>(json!({"subject": "Hi", "sections": []})).is_err()
        );
        assert!(
            serde_json::from_value::<Newsletter>(
                json!({"subject": "a\nb", "sections": [section("rust")]})
            )
            .is_err()
        );
    }
}

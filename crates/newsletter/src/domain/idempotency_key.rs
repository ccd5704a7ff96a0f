use super::Invalid;

/// A client's `Idempotency-Key`, parsed from the header value: 1 to 255 characters, given either
/// as draft-ietf-httpapi-idempotency-key-header writes it, an RFC 8941 String
/// (`"8e03978e-40d5-43e8-bc93-6894a57f9324"`), or as a bare token of visible ASCII
/// (`8e03978e-40d5-43e8-bc93-6894a57f9324`). Both forms of the same characters are the same key,
/// so a client that switches to the draft's form keeps its keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub const MAX_LEN: usize = 255;

    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        // RFC 9110: the field value has no surrounding whitespace (RFC 8941 parsing strips it too).
        let value = raw.trim_matches([' ', '\t']);
        let key = match value.strip_prefix('"') {
            Some(quoted) => parse_sf_string(quoted)?,
            None if value.chars().all(|c| c.is_ascii_graphic()) => value.to_owned(),
            None => return Err(invalid()),
        };
        if key.is_empty() || key.len() > Self::MAX_LEN {
            return Err(invalid());
        }
        Ok(Self(key))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn invalid() -> Invalid {
    Invalid(format!(
        "Idempotency-Key must be a quoted string (\"...\") or a token of 1 to {} visible ASCII \
         characters",
        IdempotencyKey::MAX_LEN
    ))
}

/// RFC 8941 §4.2.5 after the opening quote: printable ASCII up to the closing quote, with `\"` and
/// `\\` the only escapes, and nothing after it (an Item's parameters are not part of this field).
fn parse_sf_string(after_quote: &str) -> Result<String, Invalid> {
    let mut key = String::new();
    let mut chars = after_quote.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(escaped @ ('"' | '\\')) => key.push(escaped),
                _ => return Err(invalid()),
            },
            '"' if chars.as_str().is_empty() => return Ok(key),
            ' '..='~' if c != '"' => key.push(c),
            _ => return Err(invalid()),
        }
    }
    Err(invalid()) // no closing quote
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_visible_ascii_up_to_255() {
        for raw in [
            "a",
            "order-42",
            "550e8400-e29b-41d4-a716-446655440000",
            &"k".repeat(255),
        ] {
            assert!(IdempotencyKey::parse(raw).is_ok(), "{raw}");
        }
        for raw in [
            "",
            "with space",
            "tab\tinside",
            "ünicode",
            &"k".repeat(256),
            "line\nbreak",
        ] {
            assert!(IdempotencyKey::parse(raw).is_err(), "{raw:?}");
        }
    }

    #[test]
    fn the_drafts_quoted_form_is_the_same_key_as_the_bare_token() {
        let key = |raw: &str| IdempotencyKey::parse(raw).unwrap().as_str().to_owned();
        let uuid = "8e03978e-40d5-43e8-bc93-6894a57f9324";
        assert_eq!(key(&format!("\"{uuid}\"")), uuid);
        assert_eq!(key(uuid), uuid);
        assert_eq!(key(&format!(" \"{uuid}\"\t")), uuid, "surrounding OWS");
        assert_eq!(key(r#""say \"hi\" \\ bye""#), r#"say "hi" \ bye"#);
        assert_eq!(key(&format!("\"{}\"", "k".repeat(255))), "k".repeat(255));
    }

    #[test]
    fn malformed_quoted_forms_are_rejected() {
        for raw in [
            r#""""#,                   // empty string
            r#""unterminated"#,        // no closing quote
            r#""a"b""#,                // a quote inside
            r#""a"; expires=1"#,       // parameters
            r#""bad \n escape""#,      // only \" and \\ escape
            r#""trailing backslash\"#, // an escape with nothing after it
            "\"tab\tinside\"",         // not printable ASCII
            "\"ünicode\"",
            &format!("\"{}\"", "k".repeat(256)),
        ] {
            assert!(IdempotencyKey::parse(raw).is_err(), "{raw:?}");
        }
    }
}

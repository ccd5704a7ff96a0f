use super::Invalid;
use serde::{Deserialize, Serialize};
use std::fmt;

/// A newsletter topic, as named in the SES contact list: a slug, `[a-z0-9-]{1,64}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Topic(String);

impl Topic {
    pub const MAX_LEN: usize = 64;

    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        let is_slug_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
        if raw.is_empty() || raw.len() > Self::MAX_LEN || !raw.chars().all(is_slug_char) {
            return Err(Invalid(format!(
                "must be a slug of 1 to {} characters from a-z, 0-9 and '-'",
                Self::MAX_LEN
            )));
        }
        Ok(Self(raw.to_owned()))
    }
}

string_newtype!(Topic);

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_slugs() {
        for raw in ["rust", "a", "release-notes-2026", &"x".repeat(64)] {
            assert_eq!(Topic::parse(raw).unwrap().as_str(), raw);
        }
    }

    #[test]
    fn rejects_anything_else() {
        for raw in [
            "",
            "Rust",
            "rust notes",
            "rust_notes",
            "ünicode",
            " rust",
            &"x".repeat(65),
        ] {
            assert!(Topic::parse(raw).is_err(), "{raw:?}");
        }
    }
}

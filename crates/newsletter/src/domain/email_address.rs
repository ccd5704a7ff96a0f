use super::Invalid;
use serde::{Deserialize, Serialize};
use std::fmt;

/// A recipient address as SES holds it. SES validated it when the contact was created; this only
/// rules out what would break a message (blank, whitespace or control characters, no `@`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct EmailAddress(String);

impl EmailAddress {
    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        let well_formed = raw
            .split_once('@')
            .is_some_and(|(local, domain)| !local.is_empty() && !domain.is_empty())
            && !raw.chars().any(|c| c.is_whitespace() || c.is_control());
        if !well_formed {
            return Err(Invalid("is not an email address".into()));
        }
        Ok(Self(raw.to_owned()))
    }
}

string_newtype!(EmailAddress);

impl fmt::Display for EmailAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_addresses_and_rejects_what_breaks_headers() {
        assert!(EmailAddress::parse("ada@example.com").is_ok());
        for raw in [
            "",
            "ada",
            "@example.com",
            "ada@",
            "ada @example.com",
            "ada@example.com\r\n",
        ] {
            assert!(EmailAddress::parse(raw).is_err(), "{raw:?}");
        }
    }
}

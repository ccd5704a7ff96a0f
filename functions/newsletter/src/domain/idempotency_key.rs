use super::Invalid;

/// A client's `Idempotency-Key`: 1 to 255 visible ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub const MAX_LEN: usize = 255;

    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        let visible = |c: char| c.is_ascii_graphic();
        if raw.is_empty() || raw.len() > Self::MAX_LEN || !raw.chars().all(visible) {
            return Err(Invalid(format!(
                "Idempotency-Key must be 1 to {} visible ASCII characters",
                Self::MAX_LEN
            )));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
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
            "tab\t",
            "ünicode",
            &"k".repeat(256),
            "line\nbreak",
        ] {
            assert!(IdempotencyKey::parse(raw).is_err(), "{raw:?}");
        }
    }
}

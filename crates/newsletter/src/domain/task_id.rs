use serde::{Deserialize, Serialize};
use std::{fmt, str::FromStr};
use uuid::Uuid;

/// Identifies one accepted newsletter from the 202 to the last email. UUID v7: unique without
/// coordination, and sorts by creation time, which keeps logs and later storage keys in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TaskId(Uuid);

impl TaskId {
    pub fn generate() -> Self {
        Self(Uuid::now_v7())
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl FromStr for TaskId {
    type Err = uuid::Error;
    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        Uuid::try_parse(raw).map(Self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_distinct_and_round_trip() {
        let (a, b) = (TaskId::generate(), TaskId::generate());
        assert_ne!(a, b);
        assert_eq!(a.to_string().parse::<TaskId>().unwrap(), a);
        assert_eq!(a.to_string().len(), 36);
    }
}

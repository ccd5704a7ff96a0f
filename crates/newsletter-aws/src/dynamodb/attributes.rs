//! No item of its own: typed reads of any item's attributes ([`Attributes`], on the SDK's item
//! map). A required attribute that is missing, of another type or garbled is an
//! [`AttributeError`] naming the item and the attribute, never a silent default; the
//! `optional_*` reads are for attributes that some items genuinely lack (written only in some
//! states, or only by newer code), and fail the same way when the attribute is there but wrong.

use super::Item;
use aws_sdk_dynamodb::types::AttributeValue;
use newsletter::ports::StoreError;
use std::collections::BTreeSet;
use std::str::FromStr;

/// A stored attribute that is not what this store writes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("item {item}: attribute `{name}` {problem}")]
pub struct AttributeError {
    /// The item's key (`pk`), so that the item can be found and looked at.
    pub item: String,
    /// The attribute, or the path to a value inside it (`failures.<part>`, `unmatched_topics[1]`).
    pub name: String,
    pub problem: Problem,
}

/// What is wrong with an attribute.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("is missing")]
    Missing,
    /// DynamoDB's type descriptors: `S`, `N`, `BOOL`, `NS`, `SS`, `L`, `M`...
    #[error("is of type {found}, not {expected}")]
    WrongType {
        expected: &'static str,
        found: &'static str,
    },
    #[error("is not a number: {0:?}")]
    NotANumber(String),
    /// A number that the type read cannot hold (negative, fractional, too large).
    #[error("is out of range for {range}: {raw}")]
    OutOfRange { range: &'static str, raw: String },
    /// A string that is not one of the values this store writes there.
    #[error("is not a valid {what}: {raw:?}")]
    Invalid { what: &'static str, raw: String },
}

/// The port's error, with the attribute's error as its cause.
impl From<AttributeError> for StoreError {
    fn from(err: AttributeError) -> Self {
        StoreError(Box::new(err))
    }
}

/// Typed reads of an item's attributes by name.
pub trait Attributes {
    /// A string.
    fn text(&self, name: &str) -> Result<&str, AttributeError>;
    fn optional_text(&self, name: &str) -> Result<Option<&str>, AttributeError>;
    /// A string that `parse` recognises as a `what` (`None`: it does not).
    fn parsed<T>(
        &self,
        name: &str,
        what: &'static str,
        parse: impl FnOnce(&str) -> Option<T>,
    ) -> Result<T, AttributeError>;
    fn optional_parsed<T>(
        &self,
        name: &str,
        what: &'static str,
        parse: impl FnOnce(&str) -> Option<T>,
    ) -> Result<Option<T>, AttributeError>;
    /// A number that fits `T` (an integer type).
    fn number<T: FromStr>(&self, name: &str) -> Result<T, AttributeError>;
    fn optional_number<T: FromStr>(&self, name: &str) -> Result<Option<T>, AttributeError>;
    fn optional_flag(&self, name: &str) -> Result<Option<bool>, AttributeError>;
    /// A number set whose members all fit `T`. DynamoDB stores no empty set: a set whose last
    /// member is deleted is no attribute any more, so `None` is the empty set.
    fn optional_number_set<T: FromStr + Ord>(
        &self,
        name: &str,
    ) -> Result<Option<BTreeSet<T>>, AttributeError>;
    /// A string set (`None`, as for number sets, is the empty set).
    fn optional_text_set(&self, name: &str) -> Result<Option<&[String]>, AttributeError>;
    /// A list of strings.
    fn optional_text_list(&self, name: &str) -> Result<Option<Vec<&str>>, AttributeError>;
    /// A map, whose values are read with [`Attributes::nested_text`].
    fn optional_map(&self, name: &str) -> Result<Option<&Item>, AttributeError>;
    /// `value`, found at `path` inside one of this item's attributes, as a string.
    fn nested_text<'v>(
        &self,
        path: &str,
        value: &'v AttributeValue,
    ) -> Result<&'v str, AttributeError>;
}

impl Attributes for Item {
    fn text(&self, name: &str) -> Result<&str, AttributeError> {
        required(self, name, as_text)
    }

    fn optional_text(&self, name: &str) -> Result<Option<&str>, AttributeError> {
        optional(self, name, as_text)
    }

    fn parsed<T>(
        &self,
        name: &str,
        what: &'static str,
        parse: impl FnOnce(&str) -> Option<T>,
    ) -> Result<T, AttributeError> {
        required(self, name, |item, name, value| {
            as_parsed(item, name, value, what, parse)
        })
    }

    fn optional_parsed<T>(
        &self,
        name: &str,
        what: &'static str,
        parse: impl FnOnce(&str) -> Option<T>,
    ) -> Result<Option<T>, AttributeError> {
        optional(self, name, |item, name, value| {
            as_parsed(item, name, value, what, parse)
        })
    }

    fn number<T: FromStr>(&self, name: &str) -> Result<T, AttributeError> {
        required(self, name, as_number)
    }

    fn optional_number<T: FromStr>(&self, name: &str) -> Result<Option<T>, AttributeError> {
        optional(self, name, as_number)
    }

    fn optional_flag(&self, name: &str) -> Result<Option<bool>, AttributeError> {
        optional(self, name, |item, name, value| {
            value
                .as_bool()
                .copied()
                .map_err(|found| wrong_type(item, name, "BOOL", found))
        })
    }

    fn optional_number_set<T: FromStr + Ord>(
        &self,
        name: &str,
    ) -> Result<Option<BTreeSet<T>>, AttributeError> {
        optional(self, name, |item, name, value| {
            value
                .as_ns()
                .map_err(|found| wrong_type(item, name, "NS", found))?
                .iter()
                .map(|raw| number_from(item, name, raw))
                .collect()
        })
    }

    fn optional_text_set(&self, name: &str) -> Result<Option<&[String]>, AttributeError> {
        optional(self, name, |item, name, value| {
            value
                .as_ss()
                .map(Vec::as_slice)
                .map_err(|found| wrong_type(item, name, "SS", found))
        })
    }

    fn optional_text_list(&self, name: &str) -> Result<Option<Vec<&str>>, AttributeError> {
        optional(self, name, |item, name, value| {
            value
                .as_l()
                .map_err(|found| wrong_type(item, name, "L", found))?
                .iter()
                .enumerate()
                .map(|(index, element)| as_text(item, &format!("{name}[{index}]"), element))
                .collect()
        })
    }

    fn optional_map(&self, name: &str) -> Result<Option<&Item>, AttributeError> {
        optional(self, name, |item, name, value| {
            value
                .as_m()
                .map_err(|found| wrong_type(item, name, "M", found))
        })
    }

    fn nested_text<'v>(
        &self,
        path: &str,
        value: &'v AttributeValue,
    ) -> Result<&'v str, AttributeError> {
        as_text(self, path, value)
    }
}

/// The attribute `name` read by `read`, or `None` when the item has no such attribute.
fn optional<'a, T>(
    item: &'a Item,
    name: &str,
    read: impl FnOnce(&Item, &str, &'a AttributeValue) -> Result<T, AttributeError>,
) -> Result<Option<T>, AttributeError> {
    item.get(name)
        .map(|value| read(item, name, value))
        .transpose()
}

/// The attribute `name` read by `read`; an error when the item has no such attribute.
fn required<'a, T>(
    item: &'a Item,
    name: &str,
    read: impl FnOnce(&Item, &str, &'a AttributeValue) -> Result<T, AttributeError>,
) -> Result<T, AttributeError> {
    optional(item, name, read)?.ok_or_else(|| error(item, name, Problem::Missing))
}

fn as_text<'v>(
    item: &Item,
    name: &str,
    value: &'v AttributeValue,
) -> Result<&'v str, AttributeError> {
    value
        .as_s()
        .map(String::as_str)
        .map_err(|found| wrong_type(item, name, "S", found))
}

fn as_parsed<T>(
    item: &Item,
    name: &str,
    value: &AttributeValue,
    what: &'static str,
    parse: impl FnOnce(&str) -> Option<T>,
) -> Result<T, AttributeError> {
    let raw = as_text(item, name, value)?;
    parse(raw).ok_or_else(|| {
        error(
            item,
            name,
            Problem::Invalid {
                what,
                raw: raw.to_owned(),
            },
        )
    })
}

fn as_number<T: FromStr>(
    item: &Item,
    name: &str,
    value: &AttributeValue,
) -> Result<T, AttributeError> {
    let raw = value
        .as_n()
        .map_err(|found| wrong_type(item, name, "N", found))?;
    number_from(item, name, raw)
}

fn number_from<T: FromStr>(item: &Item, name: &str, raw: &str) -> Result<T, AttributeError> {
    raw.parse().map_err(|_| {
        // A number all the same (DynamoDB's numbers are decimals up to 38 digits) is one the
        // type cannot hold; anything else is no number at all.
        let problem = if raw.parse::<f64>().is_ok_and(f64::is_finite) {
            Problem::OutOfRange {
                range: std::any::type_name::<T>(),
                raw: raw.to_owned(),
            }
        } else {
            Problem::NotANumber(raw.to_owned())
        };
        error(item, name, problem)
    })
}

fn wrong_type(
    item: &Item,
    name: &str,
    expected: &'static str,
    found: &AttributeValue,
) -> AttributeError {
    error(
        item,
        name,
        Problem::WrongType {
            expected,
            found: type_of(found),
        },
    )
}

fn error(item: &Item, name: &str, problem: Problem) -> AttributeError {
    AttributeError {
        item: match item.get("pk").map(AttributeValue::as_s) {
            Some(Ok(key)) => key.clone(),
            _ => "with no key".to_owned(),
        },
        name: name.to_owned(),
        problem,
    }
}

/// DynamoDB's descriptor of the value's type.
fn type_of(value: &AttributeValue) -> &'static str {
    match value {
        AttributeValue::B(_) => "B",
        AttributeValue::Bool(_) => "BOOL",
        AttributeValue::Bs(_) => "BS",
        AttributeValue::L(_) => "L",
        AttributeValue::M(_) => "M",
        AttributeValue::N(_) => "N",
        AttributeValue::Ns(_) => "NS",
        AttributeValue::Null(_) => "NULL",
        AttributeValue::S(_) => "S",
        AttributeValue::Ss(_) => "SS",
        // A type newer than this SDK.
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(attributes: &[(&str, AttributeValue)]) -> Item {
        let mut item: Item = attributes
            .iter()
            .map(|(name, value)| ((*name).to_owned(), value.clone()))
            .collect();
        item.insert("pk".into(), AttributeValue::S("task#1".into()));
        item
    }

    fn s(raw: &str) -> AttributeValue {
        AttributeValue::S(raw.into())
    }

    fn n(raw: &str) -> AttributeValue {
        AttributeValue::N(raw.into())
    }

    fn problem<T: std::fmt::Debug>(read: Result<T, AttributeError>) -> Problem {
        match read {
            Err(err) => {
                assert_eq!(err.item, "task#1", "names the item");
                err.problem
            }
            Ok(value) => panic!("read {value:?}, not an error"),
        }
    }

    #[test]
    fn reads_attributes_that_are_as_written() {
        let item = item(&[
            ("status", s("sending")),
            ("sent", n("42")),
            ("done", AttributeValue::Bool(true)),
            (
                "positions",
                AttributeValue::Ns(vec!["3".into(), "1".into()]),
            ),
            ("parked", AttributeValue::Ss(vec!["c1".into()])),
            ("topics", AttributeValue::L(vec![s("rust"), s("go")])),
        ]);
        assert_eq!(item.text("status"), Ok("sending"));
        assert_eq!(item.optional_text("status"), Ok(Some("sending")));
        assert_eq!(item.number::<u64>("sent"), Ok(42));
        assert_eq!(item.optional_number::<u64>("sent"), Ok(Some(42)));
        assert_eq!(item.optional_flag("done"), Ok(Some(true)));
        assert_eq!(
            item.optional_number_set::<u16>("positions"),
            Ok(Some(BTreeSet::from([1, 3])))
        );
        assert_eq!(
            item.optional_text_set("parked"),
            Ok(Some(&["c1".to_owned()][..]))
        );
        assert_eq!(
            item.optional_text_list("topics"),
            Ok(Some(vec!["rust", "go"]))
        );
        assert_eq!(
            item.parsed("status", "status", |raw| (raw == "sending").then_some(7)),
            Ok(7)
        );
    }

    #[test]
    fn a_missing_attribute_is_an_error_when_required_and_none_when_optional() {
        let item = item(&[]);
        assert_eq!(problem(item.text("status")), Problem::Missing);
        assert_eq!(problem(item.number::<u64>("sent")), Problem::Missing);
        assert_eq!(
            problem(item.parsed("status", "status", |_| Some(()))),
            Problem::Missing
        );
        assert_eq!(item.optional_text("holder"), Ok(None));
        assert_eq!(item.optional_number::<u64>("page_count"), Ok(None));
        assert_eq!(item.optional_flag("done"), Ok(None));
        assert_eq!(item.optional_number_set::<u16>("sent"), Ok(None));
        assert_eq!(item.optional_map("failures"), Ok(None));
    }

    #[test]
    fn an_attribute_of_another_type_is_an_error_required_or_not() {
        let item = item(&[
            ("sent", s("42")),
            ("status", n("1")),
            ("done", s("true")),
            ("positions", AttributeValue::Ss(vec!["1".into()])),
            ("failures", AttributeValue::L(Vec::new())),
        ]);
        let wrong = |expected, found| Problem::WrongType { expected, found };
        assert_eq!(problem(item.number::<u64>("sent")), wrong("N", "S"));
        assert_eq!(
            problem(item.optional_number::<u64>("sent")),
            wrong("N", "S")
        );
        assert_eq!(problem(item.text("status")), wrong("S", "N"));
        assert_eq!(problem(item.optional_text("status")), wrong("S", "N"));
        assert_eq!(problem(item.optional_flag("done")), wrong("BOOL", "S"));
        assert_eq!(
            problem(item.optional_number_set::<u16>("positions")),
            wrong("NS", "SS")
        );
        assert_eq!(problem(item.optional_map("failures")), wrong("M", "L"));
    }

    #[test]
    fn a_value_of_another_type_inside_an_attribute_names_its_path() {
        let item = item(&[("topics", AttributeValue::L(vec![s("rust"), n("2")]))]);
        let err = item
            .optional_text_list("topics")
            .expect_err("a number in a list of strings");
        assert_eq!(err.name, "topics[1]");
        assert_eq!(
            err.to_string(),
            "item task#1: attribute `topics[1]` is of type N, not S"
        );
        let err = item
            .nested_text("failures.page 3", &n("1"))
            .expect_err("a number for a string");
        assert_eq!(err.name, "failures.page 3");
    }

    #[test]
    fn a_garbled_number_is_an_error_and_one_the_type_cannot_hold_is_out_of_range() {
        let item = item(&[
            ("garbled", n("12abc")),
            ("negative", n("-3")),
            ("fraction", n("1.5")),
            ("huge", n("70000")),
            (
                "positions",
                AttributeValue::Ns(vec!["1".into(), "x".into()]),
            ),
        ]);
        assert_eq!(
            problem(item.number::<u64>("garbled")),
            Problem::NotANumber("12abc".into())
        );
        assert_eq!(
            problem(item.optional_number::<u64>("garbled")),
            Problem::NotANumber("12abc".into())
        );
        let out_of = |range, raw: &str| Problem::OutOfRange {
            range,
            raw: raw.into(),
        };
        assert_eq!(problem(item.number::<u64>("negative")), out_of("u64", "-3"));
        assert_eq!(
            problem(item.number::<u64>("fraction")),
            out_of("u64", "1.5")
        );
        assert_eq!(problem(item.number::<u16>("huge")), out_of("u16", "70000"));
        assert_eq!(
            problem(item.optional_number_set::<u16>("positions")),
            Problem::NotANumber("x".into())
        );
    }

    #[test]
    fn a_string_that_does_not_parse_is_invalid() {
        let item = item(&[("status", s("lost"))]);
        let parse = |raw: &str| (raw == "sending").then_some(());
        let invalid = Problem::Invalid {
            what: "task status",
            raw: "lost".into(),
        };
        assert_eq!(
            problem(item.parsed("status", "task status", parse)),
            invalid
        );
        assert_eq!(
            problem(item.optional_parsed("status", "task status", parse)),
            invalid
        );
        assert_eq!(
            item.optional_parsed("pause_code", "pause code", parse),
            Ok(None)
        );
    }

    #[test]
    fn an_attribute_error_is_the_cause_of_the_store_error() {
        let err = StoreError::from(problem_error());
        let cause = std::error::Error::source(&err).expect("a cause");
        assert_eq!(
            cause.downcast_ref::<AttributeError>(),
            Some(&problem_error())
        );
        assert_eq!(
            err.to_string(),
            "the task store failed: item task#1: attribute `status` is missing"
        );
    }

    fn problem_error() -> AttributeError {
        item(&[]).text("status").expect_err("no status")
    }
}

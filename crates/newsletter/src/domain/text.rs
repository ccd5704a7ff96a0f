//! Which characters request text may hold, beyond each field's own rules: what the queue can carry,
//! and what a reader can see.

use super::Invalid;

/// Whether SQS carries `c` in a message body: the XML 1.0 `Char` production
/// (#x9 | #xA | #xD | #x20–#xD7FF | #xE000–#xFFFD | #x10000–#x10FFFF; a Rust `char` is never a
/// surrogate). SQS refuses a message holding anything else, and would refuse it on every retry.
fn queue_carries(c: char) -> bool {
    matches!(
        c,
        '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..='\u{10FFFF}'
    )
}

/// Refuses text holding a character the queue cannot carry, naming the first one. serde_json
/// writes U+0000–U+001F as escapes, which SQS would take, but U+FFFE and U+FFFF go raw; the
/// whole set is refused all the same, so the rule does not hang on how the message is encoded.
pub(super) fn reject_uncarriable(text: &str) -> Result<(), Invalid> {
    match text.chars().find(|&c| !queue_carries(c)) {
        None => Ok(()),
        Some(c) => Err(Invalid(format!(
            "must not contain U+{:04X}: only tab, line feed, carriage return and characters from \
             U+0020 up (except U+FFFE and U+FFFF) can be sent",
            u32::from(c)
        ))),
    }
}

/// Characters that show nothing by themselves (Unicode 16.0): Default_Ignorable_Code_Point
/// (zero-width space and joiners, bidi controls, U+FEFF, soft hyphen, variation selectors, tags,
/// Hangul fillers, …) and the format characters (Cf) outside it, except the prepended
/// concatenation marks (U+0600 and the like), which are drawn. White_Space is apart: see
/// [`is_invisible`]. Checked against the Unicode data of the `regex` crate in the tests.
const INVISIBLE: &[(char, char)] = &[
    ('\u{AD}', '\u{AD}'),
    ('\u{34F}', '\u{34F}'),
    ('\u{61C}', '\u{61C}'),
    ('\u{115F}', '\u{1160}'),
    ('\u{17B4}', '\u{17B5}'),
    ('\u{180B}', '\u{180F}'),
    ('\u{200B}', '\u{200F}'),
    ('\u{202A}', '\u{202E}'),
    ('\u{2060}', '\u{206F}'),
    ('\u{3164}', '\u{3164}'),
    ('\u{FE00}', '\u{FE0F}'),
    ('\u{FEFF}', '\u{FEFF}'),
    ('\u{FFA0}', '\u{FFA0}'),
    ('\u{FFF0}', '\u{FFFB}'),
    ('\u{13430}', '\u{1343F}'),
    ('\u{1BCA0}', '\u{1BCA3}'),
    ('\u{1D173}', '\u{1D17A}'),
    ('\u{E0000}', '\u{E0FFF}'),
];

/// Whether `c` leaves no mark on its own: white space, a control character, or one of
/// [`INVISIBLE`].
fn is_invisible(c: char) -> bool {
    c.is_whitespace()
        || c.is_control()
        || INVISIBLE
            .binary_search_by(|&(first, last)| {
                if last < c {
                    std::cmp::Ordering::Less
                } else if first > c {
                    std::cmp::Ordering::Greater
                } else {
                    std::cmp::Ordering::Equal
                }
            })
            .is_ok()
}

/// Refuses text a reader would see as blank: a subject of zero-width spaces or bidi controls is
/// as empty as one of spaces.
pub(super) fn require_visible(text: &str) -> Result<(), Invalid> {
    if text.chars().all(is_invisible) {
        return Err(Invalid(
            "must hold at least one visible character, not only invisible formatting characters"
                .into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_queue_carries_exactly_xml_chars() {
        let refused: Vec<u32> = (0..=0x10FFFF)
            .filter_map(char::from_u32)
            .filter(|&c| !queue_carries(c))
            .map(u32::from)
            .collect();
        let expected: Vec<u32> = (0..=0x8)
            .chain([0xB, 0xC])
            .chain(0xE..=0x1F)
            .chain([0xFFFE, 0xFFFF])
            .collect();
        assert_eq!(refused, expected);
    }

    #[test]
    fn uncarriable_characters_are_named() {
        assert_eq!(
            reject_uncarriable("a\u{FFFE}b").unwrap_err().0,
            "must not contain U+FFFE: only tab, line feed, carriage return and characters from \
             U+0020 up (except U+FFFE and U+FFFF) can be sent"
        );
        assert!(
            reject_uncarriable("\u{1}")
                .unwrap_err()
                .0
                .contains("U+0001")
        );
        assert!(reject_uncarriable("tab\t, lines\r\n, \u{10FFFF} \u{1FFFE}").is_ok());
    }

    #[test]
    fn the_invisible_table_is_unicodes() {
        let unicode = regex::Regex::new(
            r"^[\p{Default_Ignorable_Code_Point}[\p{Cf}&&\P{Prepended_Concatenation_Mark}]]$",
        )
        .unwrap();
        let table_is_sorted = INVISIBLE.windows(2).all(|pair| pair[0].1 < pair[1].0);
        assert!(
            table_is_sorted,
            "binary search needs sorted, disjoint ranges"
        );
        let in_table = |c: char| {
            INVISIBLE
                .iter()
                .any(|&(first, last)| (first..=last).contains(&c))
        };
        let mismatches: Vec<String> = (0..=0x10FFFF)
            .filter_map(char::from_u32)
            .filter(|&c| in_table(c) != unicode.is_match(c.encode_utf8(&mut [0; 4])))
            .map(|c| format!("U+{:04X}", u32::from(c)))
            .collect();
        assert!(mismatches.is_empty(), "{mismatches:?}");
    }

    #[test]
    fn text_of_only_invisible_characters_is_not_visible() {
        for raw in [
            "\u{200B}",
            "\u{200B}\u{200C}\u{200D}\u{2060}",
            "\u{FEFF}",
            "\u{200E}\u{200F}\u{202A}\u{202E}\u{2066}\u{2069}\u{61C}",
            "\u{AD}\u{FE0F}\u{E0041}\u{3164}\u{115F}",
            " \u{200B} \u{3000}",
        ] {
            assert!(require_visible(raw).is_err(), "{raw:?}");
        }
        for raw in ["a", "\u{200B}a\u{200B}", "👍\u{FE0F}", "\u{600}", "ｱ"] {
            assert!(require_visible(raw).is_ok(), "{raw:?}");
        }
    }
}

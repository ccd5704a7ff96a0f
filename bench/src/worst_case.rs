//! The newsletter the API accepts that is hardest on the worker's memory: a request body just
//! under the 200 KiB limit, the most sections allowed (50) on 50 distinct topics, ~3.9 KiB of
//! CommonMark each, and recipients who each opted into a different set of nearly all the
//! topics. So every email holds nearly the whole newsletter, and no two recipients get the same
//! one: the worker's render cache (4 emails per chunk) never hits.

use anyhow::Context;
use newsletter::domain::{MAX_SECTIONS, Topic};
use newsletter::message::Recipient;
use newsletter::submit::MAX_REQUEST_BYTES;
use serde_json::json;

/// How far under the limit the body ends: "just under".
const UNDER_THE_LIMIT: usize = 64;

pub fn topic_name(index: usize) -> String {
    format!("topic-{index:02}")
}

/// The request body of `POST /newsletters`: between `MAX_REQUEST_BYTES - UNDER_THE_LIMIT` and
/// `MAX_REQUEST_BYTES` bytes of JSON.
pub fn body() -> anyhow::Result<Vec<u8>> {
    let target = MAX_REQUEST_BYTES - UNDER_THE_LIMIT / 2;
    // Sized by iteration, since JSON escaping (quotes, newlines) makes the document longer
    // than its text: every body scaled by what the rest of the document leaves, then the last
    // one trimmed or grown by what is left over.
    let document = |lengths: &[usize]| {
        let sections: Vec<_> = lengths
            .iter()
            .enumerate()
            .map(|(index, &length)| {
                json!({
                    "topic": topic_name(index),
                    "title": format!("Section {index}: what changed, and what to do about it"),
                    "body": markdown(index, length),
                })
            })
            .collect();
        json!({"subject": "The largest digest the API accepts", "sections": sections}).to_string()
    };
    let empty = document(&[0; MAX_SECTIONS]).len();
    let mut lengths = [target.saturating_sub(empty) / MAX_SECTIONS; MAX_SECTIONS];
    for _ in 0..16 {
        let size = document(&lengths).len();
        if (MAX_REQUEST_BYTES - UNDER_THE_LIMIT..=MAX_REQUEST_BYTES).contains(&size) {
            return Ok(document(&lengths).into_bytes());
        }
        if size.abs_diff(target) > 1024 {
            let scale = target.saturating_sub(empty) as f64 / size.saturating_sub(empty) as f64;
            for length in &mut lengths {
                *length = (*length as f64 * scale) as usize;
            }
        } else {
            let last = &mut lengths[MAX_SECTIONS - 1];
            *last = (*last + target).saturating_sub(size);
        }
    }
    anyhow::bail!("could not size the worst-case newsletter under {MAX_REQUEST_BYTES} bytes")
}

/// About `length` bytes of CommonMark for section `index`: headings, emphasis, links, lists,
/// quotes, code, escapes and raw HTML (which the renderer must show as text), varied by index
/// so that no two sections are alike.
fn markdown(index: usize, length: usize) -> String {
    let mut text = String::with_capacity(length + 256);
    let mut paragraph = 0;
    while text.len() < length {
        let n = index * 1000 + paragraph;
        text.push_str(&match paragraph % 6 {
            0 => format!(
                "## Part {n}\n\nThe **{n}th** change is *small* but `visible`: see \
                 [the notes](https://example.com/notes/{n}?a=1&b=2) and \
                 <https://example.org/{n}>.\n\n"
            ),
            1 => format!(
                "- first point of {n}, with _emphasis_\n- second point, \"quoted\" & escaped \
                 \\*stars\\*\n- third point: café, naïve, 東京 ✓\n\n"
            ),
            2 => format!(
                "> A quote from issue {n}: <b>raw HTML</b> is shown as text, not markup; \
                 so is <script>alert({n})</script>.\n\n"
            ),
            3 => format!("```rust\nfn change_{n}() -> u32 {{\n    {n} * 2 // < & >\n}}\n```\n\n"),
            4 => format!(
                "1. step {n}\n2. step {}\n3. mail [us](mailto:team@example.com) if stuck\n\n",
                n + 1
            ),
            _ => format!(
                "Plain prose for paragraph {n}, long enough to wrap in any mail client: the \
                 worker renders every section a recipient opted into, in order, into one HTML \
                 part and one text part.\n\n"
            ),
        });
        paragraph += 1;
    }
    let mut end = length.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    // A body may not be blank, and trailing spaces would be trimmed away anyway.
    text.push('.');
    text
}

/// `count` recipients, each opted into a different set of nearly all the topics: all but one
/// (the first `MAX_SECTIONS`), then all but two, and so on, every set distinct.
pub fn recipients(count: usize) -> anyhow::Result<Vec<Recipient>> {
    let topics: Vec<Topic> = (0..MAX_SECTIONS)
        .map(|index| Topic::parse(&topic_name(index)).map_err(|err| anyhow::anyhow!("{err:?}")))
        .collect::<anyhow::Result<_>>()?;
    let mut left_out = omitted_sets();
    (0..count)
        .map(|index| {
            let omitted = left_out
                .next()
                .context("more recipients than distinct topic sets")?;
            let chosen = topics
                .iter()
                .enumerate()
                .filter(|(position, _)| !omitted.contains(position))
                .map(|(_, topic)| topic.clone())
                .collect();
            crate::events::recipient(&format!("worst-{index:05}@example.com"), chosen)
        })
        .collect()
}

/// The sets of topic positions to leave out, smallest first: every single one, then every pair.
fn omitted_sets() -> impl Iterator<Item = Vec<usize>> {
    let singles = (0..MAX_SECTIONS).map(|a| vec![a]);
    let pairs = (0..MAX_SECTIONS).flat_map(|a| (a + 1..MAX_SECTIONS).map(move |b| vec![a, b]));
    singles.chain(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_is_just_under_the_limit_and_a_valid_newsletter() {
        let body = body().unwrap();
        assert!(body.len() <= MAX_REQUEST_BYTES, "{}", body.len());
        assert!(
            body.len() >= MAX_REQUEST_BYTES - UNDER_THE_LIMIT,
            "{}",
            body.len()
        );
        let document: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let newsletter = newsletter::Newsletter::from_json(&document).unwrap();
        assert_eq!(newsletter.sections().len(), MAX_SECTIONS);
        assert_eq!(newsletter.topics().len(), MAX_SECTIONS);
    }

    #[test]
    fn every_recipient_has_a_different_set_of_topics() {
        let recipients = recipients(500).unwrap();
        let sets: std::collections::HashSet<Vec<Topic>> =
            recipients.iter().map(|r| r.topics.clone()).collect();
        assert_eq!(sets.len(), 500);
        assert!(
            recipients
                .iter()
                .all(|r| r.topics.len() >= MAX_SECTIONS - 2)
        );
    }
}

//! One subscriber's email: the sections of the topics they chose, as HTML and plain text.
//!
//! Input is never trusted as markup: titles and the subject are escaped by the template engine,
//! raw HTML inside Markdown is turned into visible text, and links may only be http(s) or mailto.

use crate::domain::{MarkdownBody, Newsletter, Section, Topic};
use askama::Template;
use pulldown_cmark::{CowStr, Event, LinkType, Options, Parser, Tag, TagEnd};

/// The content of one email, ready for any mail API. It depends on the newsletter and the topics
/// alone, never on the task sending it: a preview (`POST /newsletters/preview`, no task) is the
/// very email a subscriber gets. The task travels beside it, as the send's `task_id` tag
/// ([`crate::ports::Mailer::send`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedEmail {
    pub subject: String,
    pub html: String,
    pub text: String,
}

#[derive(Template)]
#[template(path = "newsletter.html")]
struct HtmlEmail<'a> {
    subject: &'a str,
    sections: Vec<HtmlSection<'a>>,
}

struct HtmlSection<'a> {
    title: &'a str,
    /// Produced by pulldown-cmark from events that cannot carry raw HTML: safe to insert.
    body_html: String,
}

/// Renders the newsletter for a subscriber of `topics`: its sections on those topics, in order.
pub fn render(newsletter: &Newsletter, topics: &[Topic]) -> RenderedEmail {
    let sections: Vec<_> = sections_for(newsletter, topics).collect();
    let subject = newsletter.subject().as_str();

    let html = HtmlEmail {
        subject,
        sections: sections
            .iter()
            .map(|section| HtmlSection {
                title: section.title.as_str(),
                body_html: markdown_to_html(&section.body),
            })
            .collect(),
    }
    .render()
    // The template writes only to a String, which cannot fail.
    .unwrap_or_default();

    let mut text = format!("{subject}\n\n");
    for section in &sections {
        let title = section.title.as_str();
        text.push_str(&format!(
            "{title}\n{}\n\n",
            "=".repeat(title.chars().count())
        ));
        text.push_str(markdown_to_text(&section.body).trim_end());
        text.push_str("\n\n");
    }
    RenderedEmail {
        subject: subject.to_owned(),
        html,
        text: text.trim_end().to_owned() + "\n",
    }
}

/// The sections of the newsletter a subscriber of `topics` gets, in order.
pub fn sections_for<'a>(
    newsletter: &'a Newsletter,
    topics: &'a [Topic],
) -> impl Iterator<Item = &'a Section> {
    newsletter
        .sections()
        .iter()
        .filter(|section| topics.contains(&section.topic))
}

fn parser(markdown: &MarkdownBody) -> impl Iterator<Item = Event<'_>> {
    let options = Options::ENABLE_STRIKETHROUGH | Options::ENABLE_TABLES;
    Parser::new_ext(markdown.as_str(), options).map(neutralize)
}

/// Raw HTML becomes text (escaped on output); unsafe link targets become inert.
fn neutralize(event: Event<'_>) -> Event<'_> {
    match event {
        Event::Html(html) | Event::InlineHtml(html) => Event::Text(html),
        Event::Start(Tag::Link {
            link_type,
            dest_url,
            title,
            id,
        }) => Event::Start(Tag::Link {
            link_type,
            dest_url: safe_url(dest_url, link_type),
            title,
            id,
        }),
        Event::Start(Tag::Image {
            link_type,
            dest_url,
            title,
            id,
        }) => Event::Start(Tag::Image {
            link_type,
            dest_url: safe_url(dest_url, link_type),
            title,
            id,
        }),
        other => other,
    }
}

fn safe_url(url: CowStr<'_>, link_type: LinkType) -> CowStr<'_> {
    let lower = url.trim().to_ascii_lowercase();
    let allowed = ["https://", "http://", "mailto:"]
        .iter()
        .any(|scheme| lower.starts_with(scheme))
        || link_type == LinkType::Email;
    if allowed { url } else { CowStr::Borrowed("#") }
}

fn markdown_to_html(markdown: &MarkdownBody) -> String {
    let mut html = String::new();
    pulldown_cmark::html::push_html(&mut html, parser(markdown));
    html
}

/// A plain-text reading of the Markdown: the words, with links spelled out.
fn markdown_to_text(markdown: &MarkdownBody) -> String {
    let mut text = String::new();
    let mut link_targets = Vec::new();
    for event in parser(markdown) {
        match event {
            Event::Text(words) | Event::Code(words) => text.push_str(&words),
            Event::SoftBreak | Event::HardBreak => text.push('\n'),
            Event::Rule => text.push_str("----\n\n"),
            Event::Start(Tag::Item) => text.push_str("- "),
            Event::Start(Tag::Link { dest_url, .. }) => link_targets.push(dest_url),
            Event::End(TagEnd::Link) => {
                if let Some(url) = link_targets.pop()
                    && url.as_ref() != "#"
                    && !text.ends_with(url.as_ref())
                {
                    text.push_str(&format!(" ({url})"));
                }
            }
            Event::End(
                TagEnd::Paragraph | TagEnd::Heading(_) | TagEnd::CodeBlock | TagEnd::BlockQuote(_),
            ) => text.push_str("\n\n"),
            Event::End(TagEnd::Item | TagEnd::TableRow | TagEnd::TableHead) => text.push('\n'),
            Event::End(TagEnd::TableCell) => text.push('\t'),
            _ => {}
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn newsletter(sections: serde_json::Value) -> Newsletter {
        Newsletter::from_json(&json!({"subject": "Weekly <digest> & more", "sections": sections}))
            .unwrap()
    }

    fn topics(names: &[&str]) -> Vec<Topic> {
        names
            .iter()
            .map(|name| Topic::parse(name).unwrap())
            .collect()
    }

    #[test]
    fn only_the_chosen_sections_in_the_newsletter_order() {
        let newsletter = newsletter(json!([
            {"topic": "rust", "title": "First", "body": "one"},
            {"topic": "aws", "title": "Second", "body": "two"},
            {"topic": "rust", "title": "Third", "body": "three"}
        ]));
        let email = render(&newsletter, &topics(&["rust"]));
        assert!(email.html.contains("First") && email.html.contains("Third"));
        assert!(!email.html.contains("Second"));
        assert!(email.html.find("First").unwrap() < email.html.find("Third").unwrap());
        assert_eq!(
            email.text,
            "Weekly <digest> & more\n\nFirst\n=====\n\none\n\nThird\n=====\n\nthree\n"
        );
    }

    #[test]
    fn markdown_is_rendered() {
        let newsletter = newsletter(
            json!([{"topic": "rust", "title": "T", "body": "Some **bold** and [a link](https://rust-lang.org)."}]),
        );
        let email = render(&newsletter, &topics(&["rust"]));
        assert!(email.html.contains("<strong>bold</strong>"));
        assert!(
            email
                .html
                .contains(r#"<a href="https://rust-lang.org">a link</a>"#)
        );
        assert!(
            email
                .text
                .contains("Some bold and a link (https://rust-lang.org).")
        );
    }

    #[test]
    fn script_in_a_body_or_title_never_reaches_the_html_unescaped() {
        let newsletter = newsletter(json!([{
            "topic": "rust",
            "title": "<script>alert('title')</script>",
            "body": "<script>alert('body')</script>\n\nInline <img src=x onerror=alert(1)> html"
        }]));
        let email = render(&newsletter, &topics(&["rust"]));
        assert!(!email.html.contains("<script"), "{}", email.html);
        assert!(!email.html.contains("<img"), "{}", email.html);
        // The body's raw HTML is shown as text by pulldown-cmark, the title escaped by askama.
        assert!(
            email
                .html
                .contains("&lt;script&gt;alert('body')&lt;/script&gt;"),
            "{}",
            email.html
        );
        assert!(
            email
                .html
                .contains("&#60;script&#62;alert(&#39;title&#39;)&#60;/script&#62;"),
            "{}",
            email.html
        );
        assert!(
            email
                .html
                .contains("<title>Weekly &#60;digest&#62; &#38; more</title>"),
            "{}",
            email.html
        );
    }

    #[test]
    fn dangerous_link_targets_are_neutralized() {
        let newsletter = newsletter(json!([{
            "topic": "rust", "title": "T",
            "body": "[click](javascript:alert(1)) ![img](data:text/html,x) [mail](mailto:a@example.com)"
        }]));
        let email = render(&newsletter, &topics(&["rust"]));
        assert!(
            !email.html.to_ascii_lowercase().contains("javascript:"),
            "{}",
            email.html
        );
        assert!(!email.html.contains("data:text/html"));
        assert!(email.html.contains(r#"href="mailto:a@example.com""#));
    }
}

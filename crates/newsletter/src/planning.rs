//! Turning one page of the contact list into delivery messages, each small enough for SQS and
//! for one invocation, with ids that a retried plan reproduces.

use crate::audience::{Audience, Contact, Skip};
use crate::domain::Topic;
use crate::message::{Delivery, Job, Message, PlanCursor, Recipient};

/// SQS's classic message size limit (the queue's `MaximumMessageSize` default). Every message
/// the system writes stays under it.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;
/// Recipients per delivery message at most: large enough to keep queue traffic and per-chunk
/// writes low (see `tasks::ChunkStore`), small enough that instances share a newsletter's work.
/// The worker uses fewer when its per-instance rate cannot send this many in one invocation.
pub const MAX_RECIPIENTS_PER_DELIVERY: usize = 50;

/// What one page of contacts turns into. It is stored before any of its messages is queued,
/// so a retried planning step queues exactly these chunks again, even if the contact list has
/// changed since (the counts on the task are this plan's, once).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PagePlan {
    /// The page's number, from 0.
    pub page: u32,
    /// The page's recipients in delivery chunks, in order: chunk `i` has the id [`chunk_id`]`(page, i)`.
    pub chunks: Vec<Vec<Recipient>>,
    /// Contacts on the page, each counted once as planned.
    pub contacts: u64,
    /// Contacts who get nothing (unsubscribed from all, or no topic of this newsletter).
    pub skipped: u64,
    /// Contacts whose address is not a valid email address (counted as failed).
    pub invalid_addresses: u64,
    /// The token of the next page, if there is one.
    pub next_token: Option<String>,
    /// Topics of the newsletter that no topic of the contact list matches: their sections reach
    /// nobody. Recorded on the task, so its status says so.
    pub unmatched_topics: Vec<Topic>,
}

/// The id of chunk `index` of page `page`: deterministic, so a retried plan reuses it.
pub fn chunk_id(page: u32, index: usize) -> String {
    format!("p{page}-c{index}")
}

impl PagePlan {
    pub fn recipients(&self) -> usize {
        self.chunks.iter().map(Vec::len).sum()
    }

    /// Whether no page follows this one.
    pub fn is_last(&self) -> bool {
        self.next_token.is_none()
    }

    /// Everything to enqueue for `job`'s page: its deliveries first, then the job that plans the
    /// next page.
    pub fn messages(&self, job: &Job) -> Vec<Message> {
        let mut messages: Vec<Message> = self
            .chunks
            .iter()
            .enumerate()
            .map(|(index, recipients)| {
                Message::Delivery(Delivery {
                    task_id: job.task_id,
                    chunk_id: chunk_id(self.page, index),
                    attempt: 0,
                    newsletter: job.newsletter.clone(),
                    recipients: recipients.clone(),
                })
            })
            .collect();
        messages.extend(self.next_token.as_ref().map(|next_token| {
            Message::Job(Job {
                cursor: Some(PlanCursor {
                    page: self.page + 1,
                    next_token: next_token.clone(),
                }),
                ..job.clone()
            })
        }));
        messages
    }
}

/// Plans the page `job.cursor` points at, given its contacts and the token of the page after it,
/// in chunks of at most `max_recipients` (and at most [`MAX_RECIPIENTS_PER_DELIVERY`]).
pub fn plan_page(
    job: &Job,
    audience: &Audience,
    contacts: impl IntoIterator<Item = Contact>,
    next_token: Option<String>,
    max_recipients: usize,
) -> PagePlan {
    let selected = contacts
        .into_iter()
        .map(|contact| audience.select(&contact));
    plan_selected(job, audience, selected, next_token, max_recipients)
}

/// Plans a page of contacts already selected ([`Audience::select`], or
/// [`Audience::select_address`] for a test send's addresses, its one and last page): each is
/// counted planned, and a recipient or skipped.
pub fn plan_selected(
    job: &Job,
    audience: &Audience,
    selected: impl IntoIterator<Item = Result<Recipient, Skip>>,
    next_token: Option<String>,
    max_recipients: usize,
) -> PagePlan {
    let mut plan = PagePlan {
        page: job.cursor.as_ref().map_or(0, |cursor| cursor.page),
        next_token,
        unmatched_topics: audience.unmatched_topics().into_iter().cloned().collect(),
        ..PagePlan::default()
    };
    let mut recipients = Vec::new();
    for selection in selected {
        plan.contacts += 1;
        match selection {
            Ok(recipient) => recipients.push(recipient),
            Err(Skip::InvalidAddress) => plan.invalid_addresses += 1,
            Err(Skip::UnsubscribedFromAll | Skip::NoTopicOfInterest) => plan.skipped += 1,
        }
    }
    let template = Delivery {
        task_id: job.task_id,
        chunk_id: String::new(),
        attempt: 0,
        newsletter: job.newsletter.clone(),
        recipients: Vec::new(),
    };
    plan.chunks = chunk(recipients, &template, max_recipients);
    plan
}

/// Splits recipients into groups of at most `max_recipients` (capped at
/// [`MAX_RECIPIENTS_PER_DELIVERY`]) whose delivery message (`template` plus the group) encodes
/// within [`MAX_MESSAGE_BYTES`].
pub fn chunk(
    recipients: Vec<Recipient>,
    template: &Delivery,
    max_recipients: usize,
) -> Vec<Vec<Recipient>> {
    // Room for the chunk id, attempt counter and separators that the template does not yet hold.
    const SLACK: usize = 256;
    let budget = MAX_MESSAGE_BYTES
        .saturating_sub(Message::Delivery(template.clone()).encode().len() + SLACK);
    pack(
        recipients,
        max_recipients.clamp(1, MAX_RECIPIENTS_PER_DELIVERY),
        budget,
        |recipient| serde_json::to_string(recipient).map_or(0, |encoded| encoded.len()) + 1,
    )
}

/// Groups `items` in order, greedily, into groups of at most `max_items` whose sizes add up to at
/// most `max_bytes` (an item larger than that on its own gets a group of its own).
pub fn pack<T>(
    items: impl IntoIterator<Item = T>,
    max_items: usize,
    max_bytes: usize,
    size_of: impl Fn(&T) -> usize,
) -> Vec<Vec<T>> {
    let mut groups = Vec::new();
    let mut current = Vec::new();
    let mut current_bytes = 0;
    for item in items {
        let bytes = size_of(&item);
        if !current.is_empty() && (current.len() == max_items || current_bytes + bytes > max_bytes)
        {
            groups.push(std::mem::take(&mut current));
            current_bytes = 0;
        }
        current_bytes += bytes;
        current.push(item);
    }
    if !current.is_empty() {
        groups.push(current);
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audience::{Subscription, TopicDefaults};
    use crate::domain::{Newsletter, TaskId};
    use crate::message::{Delivery, Message};
    use serde_json::json;

    fn job(body: &str, cursor: Option<PlanCursor>) -> Job {
        Job {
            task_id: TaskId::generate(),
            newsletter: Newsletter::from_json(&json!({
                "subject": "S",
                "sections": [{"topic": "rust", "title": "T", "body": body}]
            }))
            .unwrap(),
            cursor,
            to: None,
        }
    }

    fn contacts(count: usize) -> Vec<Contact> {
        (0..count)
            .map(|index| Contact {
                email: format!("user{index}@example.com"),
                unsubscribe_all: index % 10 == 9,
                preferences: vec![],
            })
            .collect()
    }

    fn audience(job: &Job) -> Audience {
        Audience::new(
            &job.newsletter,
            TopicDefaults([("rust".to_string(), Subscription::OptIn)].into()),
        )
    }

    #[test]
    fn a_page_becomes_bounded_chunks_with_deterministic_ids() {
        let job = job(
            "B",
            Some(PlanCursor {
                page: 3,
                next_token: "t3".into(),
            }),
        );
        let plan = plan_page(&job, &audience(&job), contacts(200), Some("t4".into()), 50);

        assert_eq!(plan.page, 3);
        assert_eq!(
            (plan.contacts, plan.recipients(), plan.skipped),
            (200, 180, 20)
        );
        let messages = plan.messages(&job);
        let deliveries: Vec<&Delivery> = messages
            .iter()
            .filter_map(|m| match m {
                Message::Delivery(d) => Some(d),
                Message::Job(_) => None,
            })
            .collect();
        let sizes: Vec<usize> = deliveries.iter().map(|d| d.recipients.len()).collect();
        assert_eq!(sizes, [50, 50, 50, 30]);
        let ids: Vec<&str> = deliveries.iter().map(|d| d.chunk_id.as_str()).collect();
        assert_eq!(ids, ["p3-c0", "p3-c1", "p3-c2", "p3-c3"]);
        assert!(
            deliveries
                .iter()
                .all(|d| d.task_id == job.task_id && d.attempt == 0)
        );

        let Some(Message::Job(continuation)) = messages.last() else {
            panic!("the next page's job comes last: {messages:?}")
        };
        assert_eq!(
            continuation.cursor,
            Some(PlanCursor {
                page: 4,
                next_token: "t4".into()
            })
        );
        assert_eq!(continuation.task_id, job.task_id);

        let again = plan_page(&job, &audience(&job), contacts(200), Some("t4".into()), 50);
        assert_eq!(again, plan, "a retried plan yields the same messages");
    }

    #[test]
    fn chunks_are_no_larger_than_asked() {
        let job = job("B", None);
        let plan = plan_page(&job, &audience(&job), contacts(100), None, 26);
        let sizes: Vec<usize> = plan.chunks.iter().map(Vec::len).collect();
        assert_eq!(sizes, [26, 26, 26, 12]);
        let capped = plan_page(&job, &audience(&job), contacts(100), None, 500);
        assert!(
            capped
                .chunks
                .iter()
                .all(|c| c.len() <= MAX_RECIPIENTS_PER_DELIVERY)
        );
    }

    #[test]
    fn every_recipient_lands_in_exactly_one_chunk() {
        let job = job("B", None);
        let plan = plan_page(&job, &audience(&job), contacts(1234), None, 50);
        let mut emails: Vec<String> = plan
            .chunks
            .iter()
            .flat_map(|chunk| chunk.iter().map(|r| r.email.to_string()))
            .collect();
        let total = emails.len();
        emails.sort();
        emails.dedup();
        assert_eq!(emails.len(), total);
        assert_eq!(total, plan.recipients());
        assert!(plan.is_last());
        assert_eq!(plan.messages(&job).len(), 23); // 1111 recipients, 50 a chunk
    }

    #[test]
    fn big_newsletters_get_smaller_chunks_that_fit_the_message_limit() {
        // 50 sections on 50 long topics, all opted into by default: every recipient carries 50
        // topic names, so 50 recipients no longer fit beside a 150 KiB newsletter.
        let topics: Vec<String> = (0..50)
            .map(|i| format!("{i:02}-{}", "t".repeat(61)))
            .collect();
        let sections: Vec<_> = topics
            .iter()
            .map(|topic| json!({"topic": topic, "title": "T", "body": "x".repeat(3 * 1024)}))
            .collect();
        let job = Job {
            task_id: TaskId::generate(),
            newsletter: Newsletter::from_json(&json!({"subject": "S", "sections": sections}))
                .unwrap(),
            cursor: None,
            to: None,
        };
        let defaults = TopicDefaults(
            topics
                .iter()
                .map(|t| (t.clone(), Subscription::OptIn))
                .collect(),
        );
        let audience = Audience::new(&job.newsletter, defaults);

        let plan = plan_page(&job, &audience, contacts(500), None, 50);

        assert_eq!(plan.recipients(), 450);
        assert!(
            plan.chunks
                .iter()
                .all(|chunk| chunk.len() < MAX_RECIPIENTS_PER_DELIVERY)
        );
        for delivery in plan.messages(&job) {
            assert!(delivery.encode().len() <= MAX_MESSAGE_BYTES);
        }
    }

    #[test]
    fn an_empty_page_plans_nothing() {
        let job = job("B", None);
        let plan = plan_page(&job, &audience(&job), Vec::new(), None, 50);
        assert!(plan.messages(&job).is_empty());
    }
}

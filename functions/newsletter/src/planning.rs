//! Turning one page of the contact list into delivery messages, each small enough for SQS and
//! for one invocation, with ids that a retried plan reproduces.

use crate::audience::{Audience, Contact, Skip};
use crate::message::{Delivery, Job, Message, PlanCursor, Recipient};

/// SQS's classic message size limit (the queue's `MaximumMessageSize` default). Every message
/// the system writes stays under it.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;
/// Recipients per delivery message: small enough that one invocation sends a whole batch of them
/// at the per-instance send rate, large enough to keep queue traffic low.
pub const MAX_RECIPIENTS_PER_DELIVERY: usize = 50;

/// What one page of contacts turns into.
#[derive(Debug, Default)]
pub struct PagePlan {
    pub deliveries: Vec<Delivery>,
    /// The job message that plans the next page, if there is one.
    pub continuation: Option<Job>,
    pub recipients: usize,
    pub skipped: usize,
    pub invalid_addresses: usize,
}

impl PagePlan {
    /// Everything to enqueue: deliveries first, then the continuation.
    pub fn into_messages(self) -> Vec<Message> {
        let mut messages: Vec<Message> =
            self.deliveries.into_iter().map(Message::Delivery).collect();
        messages.extend(self.continuation.map(Message::Job));
        messages
    }
}

/// Plans the page `job.cursor` points at, given its contacts and the token of the page after it.
pub fn plan_page(
    job: &Job,
    audience: &Audience,
    contacts: impl IntoIterator<Item = Contact>,
    next_token: Option<String>,
) -> PagePlan {
    let page = job.cursor.as_ref().map_or(0, |cursor| cursor.page);
    let mut plan = PagePlan::default();
    let mut recipients = Vec::new();
    for contact in contacts {
        match audience.select(&contact) {
            Ok(recipient) => recipients.push(recipient),
            Err(Skip::InvalidAddress) => plan.invalid_addresses += 1,
            Err(Skip::UnsubscribedFromAll | Skip::NoTopicOfInterest) => plan.skipped += 1,
        }
    }
    plan.recipients = recipients.len();
    let template = Delivery {
        task_id: job.task_id,
        chunk_id: String::new(),
        attempt: 0,
        newsletter: job.newsletter.clone(),
        recipients: Vec::new(),
    };
    plan.deliveries = chunk(recipients, &template)
        .into_iter()
        .enumerate()
        .map(|(index, recipients)| Delivery {
            chunk_id: format!("p{page}-c{index}"),
            recipients,
            ..template.clone()
        })
        .collect();
    plan.continuation = next_token.map(|next_token| Job {
        cursor: Some(PlanCursor {
            page: page + 1,
            next_token,
        }),
        ..job.clone()
    });
    plan
}

/// Splits recipients into groups of at most [`MAX_RECIPIENTS_PER_DELIVERY`] whose delivery
/// message (`template` plus the group) encodes within [`MAX_MESSAGE_BYTES`].
pub fn chunk(recipients: Vec<Recipient>, template: &Delivery) -> Vec<Vec<Recipient>> {
    // Room for the chunk id, attempt counter and separators that the template does not yet hold.
    const SLACK: usize = 256;
    let budget = MAX_MESSAGE_BYTES
        .saturating_sub(Message::Delivery(template.clone()).encode().len() + SLACK);
    pack(
        recipients,
        MAX_RECIPIENTS_PER_DELIVERY,
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
        let plan = plan_page(&job, &audience(&job), contacts(200), Some("t4".into()));

        assert_eq!(plan.recipients, 180);
        assert_eq!(plan.skipped, 20);
        let sizes: Vec<usize> = plan.deliveries.iter().map(|d| d.recipients.len()).collect();
        assert_eq!(sizes, [50, 50, 50, 30]);
        let ids: Vec<&str> = plan
            .deliveries
            .iter()
            .map(|d| d.chunk_id.as_str())
            .collect();
        assert_eq!(ids, ["p3-c0", "p3-c1", "p3-c2", "p3-c3"]);
        assert!(
            plan.deliveries
                .iter()
                .all(|d| d.task_id == job.task_id && d.attempt == 0)
        );

        let continuation = plan.continuation.as_ref().unwrap();
        assert_eq!(
            continuation.cursor,
            Some(PlanCursor {
                page: 4,
                next_token: "t4".into()
            })
        );
        assert_eq!(continuation.task_id, job.task_id);

        let again = plan_page(&job, &audience(&job), contacts(200), Some("t4".into()));
        assert_eq!(
            again.deliveries, plan.deliveries,
            "a retried plan yields the same messages"
        );
    }

    #[test]
    fn every_recipient_lands_in_exactly_one_chunk() {
        let job = job("B", None);
        let plan = plan_page(&job, &audience(&job), contacts(1234), None);
        let mut emails: Vec<String> = plan
            .deliveries
            .iter()
            .flat_map(|d| d.recipients.iter().map(|r| r.email.to_string()))
            .collect();
        let total = emails.len();
        emails.sort();
        emails.dedup();
        assert_eq!(emails.len(), total);
        assert_eq!(total, plan.recipients);
        assert!(plan.continuation.is_none());
        assert_eq!(plan.into_messages().len(), 23); // 1111 recipients, 50 a chunk
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
        };
        let defaults = TopicDefaults(
            topics
                .iter()
                .map(|t| (t.clone(), Subscription::OptIn))
                .collect(),
        );
        let audience = Audience::new(&job.newsletter, defaults);

        let plan = plan_page(&job, &audience, contacts(500), None);

        assert_eq!(plan.recipients, 450);
        assert!(
            plan.deliveries
                .iter()
                .all(|d| d.recipients.len() < MAX_RECIPIENTS_PER_DELIVERY)
        );
        let delivered: usize = plan.deliveries.iter().map(|d| d.recipients.len()).sum();
        assert_eq!(delivered, 450);
        for delivery in plan.into_messages() {
            assert!(delivery.encode().len() <= MAX_MESSAGE_BYTES);
        }
    }

    #[test]
    fn an_empty_page_plans_nothing() {
        let job = job("B", None);
        let plan = plan_page(&job, &audience(&job), Vec::new(), None);
        assert!(plan.into_messages().is_empty());
    }
}

//! What the worker does with one queue message: plan a page of a job, or deliver a chunk.

use crate::audience::Audience;
use crate::deliver::{Mailer, Sender};
use crate::directory::{ContactDirectory, DirectoryError};
use crate::message::{DecodeError, Delivery, Job, Message};
use crate::planning::plan_page;
use crate::queue::{MessageQueue, QueueError};
use std::time::Instant;
use tracing::Instrument;

/// Why a message must be reported failed, so SQS retries it (and, after `maxReceiveCount`
/// receives, moves it to the dead-letter queue).
#[derive(Debug, thiserror::Error)]
pub enum WorkError {
    #[error("poison message: {0}")]
    Poison(#[from] DecodeError),
    #[error(transparent)]
    Directory(#[from] DirectoryError),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error("none of the {0} recipient(s) could be sent to; the whole message is retried")]
    NothingDelivered(usize),
}

pub struct Worker<Q, D, M> {
    queue: Q,
    directory: D,
    sender: Sender<M>,
}

impl<Q: MessageQueue, D: ContactDirectory, M: Mailer> Worker<Q, D, M> {
    pub fn new(queue: Q, directory: D, sender: Sender<M>) -> Self {
        Self {
            queue,
            directory,
            sender,
        }
    }

    pub fn queue(&self) -> &Q {
        &self.queue
    }

    pub fn sender(&self) -> &Sender<M> {
        &self.sender
    }

    /// Processes one message body. `Ok` means the message is done and may be deleted.
    pub async fn process(&self, body: &str, deadline: Instant) -> Result<(), WorkError> {
        let message = Message::decode(body)?;
        let span = tracing::info_span!("task", task_id = %message.task_id());
        let result = match message {
            Message::Job(job) => self.plan(job).instrument(span.clone()).await,
            Message::Delivery(delivery) => {
                self.deliver(delivery, deadline)
                    .instrument(span.clone())
                    .await
            }
        };
        if let Err(err) = &result {
            span.in_scope(|| tracing::error!(error = %err, "message failed; SQS will retry it"));
        }
        result
    }

    /// Plans the page the job points at: its deliveries and the job for the next page go on the
    /// queue together. Retrying after a partial send re-sends the same messages with the same
    /// chunk ids, never different ones.
    async fn plan(&self, job: Job) -> Result<(), WorkError> {
        let audience = Audience::new(&job.newsletter, self.directory.topic_defaults().await?);
        let unknown = audience.unknown_topics();
        if !unknown.is_empty() {
            tracing::warn!(topics = ?unknown, "no topic of the contact list matches; these sections reach nobody");
        }
        // SES filters on one topic at most; with several, every contact is read and filtered here.
        let topics = job.newsletter.topics();
        let only_topic = match topics.as_slice() {
            [only] => Some(*only),
            _ => None,
        };
        let token = job.cursor.as_ref().map(|cursor| cursor.next_token.as_str());
        let page = self.directory.page(token, only_topic).await?;
        let contacts = page.contacts.len();
        let plan = plan_page(&job, &audience, page.contacts, page.next_token);
        tracing::info!(
            page = job.cursor.as_ref().map_or(0, |cursor| cursor.page),
            contacts,
            recipients = plan.recipients,
            skipped = plan.skipped,
            invalid_addresses = plan.invalid_addresses,
            deliveries = plan.deliveries.len(),
            more_pages = plan.continuation.is_some(),
            "page planned"
        );
        self.queue.send_all(&plan.into_messages()).await?;
        Ok(())
    }

    /// Sends a chunk. Recipients still owed an email go back on the queue on their own, so a
    /// retry never reaches those who already got it; if nobody could be sent to, the message
    /// itself is retried.
    async fn deliver(&self, delivery: Delivery, deadline: Instant) -> Result<(), WorkError> {
        let report = self.sender.deliver(&delivery, deadline).await;
        tracing::info!(
            chunk = %delivery.chunk_id,
            attempt = delivery.attempt,
            sent = report.sent,
            rejected = report.rejected,
            owed = report.owed.len(),
            "chunk delivered"
        );
        if report.owed.is_empty() {
            return Ok(());
        }
        if report.owed.len() == delivery.recipients.len() {
            return Err(WorkError::NothingDelivered(report.owed.len()));
        }
        let retry = Delivery {
            attempt: delivery.attempt + 1,
            recipients: report.owed,
            ..delivery
        };
        self.queue.send_all(&[Message::Delivery(retry)]).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audience::{Contact, Subscription, TopicDefaults};
    use crate::deliver::{SendError, SendPolicy};
    use crate::directory::ContactPage;
    use crate::domain::{EmailAddress, Newsletter, TaskId, Topic};
    use crate::fakes::{PagedDirectory, RecordingMailer, RecordingQueue};
    use crate::message::Recipient;
    use Subscription::{OptIn, OptOut};
    use serde_json::json;
    use std::time::Duration;

    const FAST: SendPolicy = SendPolicy {
        emails_per_second: 100_000.0,
        max_in_flight: 8,
    };

    fn later() -> Instant {
        Instant::now() + Duration::from_secs(60)
    }

    fn newsletter(topics: &[&str]) -> Newsletter {
        let sections: Vec<_> = topics
            .iter()
            .map(|topic| json!({"topic": topic, "title": format!("About {topic}"), "body": "text"}))
            .collect();
        Newsletter::from_json(&json!({"subject": "Weekly", "sections": sections})).unwrap()
    }

    fn contact(email: &str, preferences: &[(&str, Subscription)]) -> Contact {
        Contact {
            email: email.into(),
            unsubscribe_all: false,
            preferences: preferences
                .iter()
                .map(|(t, s)| (t.to_string(), *s))
                .collect(),
        }
    }

    fn directory(pages: Vec<Vec<Contact>>) -> PagedDirectory {
        PagedDirectory {
            defaults: TopicDefaults([("rust".into(), OptIn), ("aws".into(), OptOut)].into()),
            pages: pages
                .into_iter()
                .map(|contacts| ContactPage {
                    contacts,
                    next_token: None,
                })
                .collect(),
            ..Default::default()
        }
    }

    fn worker(
        directory: PagedDirectory,
        mailer: RecordingMailer,
    ) -> Worker<RecordingQueue, PagedDirectory, RecordingMailer> {
        Worker::new(
            RecordingQueue::default(),
            directory,
            Sender::new(mailer, FAST),
        )
    }

    fn job(topics: &[&str]) -> Message {
        Message::Job(Job {
            task_id: TaskId::generate(),
            newsletter: newsletter(topics),
            cursor: None,
        })
    }

    /// Runs the worker on `first` and on every message it enqueues, until none are left.
    async fn run_to_completion(
        worker: &Worker<RecordingQueue, PagedDirectory, RecordingMailer>,
        first: Message,
    ) {
        let mut pending = vec![first];
        while let Some(message) = pending.pop() {
            worker.process(&message.encode(), later()).await.unwrap();
            pending.extend(worker.queue.take());
        }
    }

    #[tokio::test]
    async fn planning_pages_through_the_list_one_page_per_message() {
        let pages = vec![
            vec![
                contact("a@x.io", &[]),
                contact("b@x.io", &[("rust", OptOut)]),
            ],
            vec![contact("c@x.io", &[("aws", OptIn)])],
            vec![contact("d@x.io", &[("rust", OptIn)])],
        ];
        let worker = worker(directory(pages), RecordingMailer::default());
        let job = job(&["rust", "aws"]);

        worker.process(&job.encode(), later()).await.unwrap();
        let first = worker.queue.take();
        assert_eq!(
            first.len(),
            2,
            "one delivery and the job for the next page: {first:?}"
        );
        let Message::Job(next) = &first[1] else {
            panic!("expected a continuation")
        };
        assert_eq!(next.cursor.as_ref().unwrap().page, 1);

        run_to_completion(&worker, first[1].clone()).await;
        let tokens: Vec<Option<String>> = worker
            .directory
            .requests
            .lock()
            .unwrap()
            .iter()
            .map(|(t, _)| t.clone())
            .collect();
        assert_eq!(tokens, [None, Some("page-1".into()), Some("page-2".into())]);
    }

    #[tokio::test]
    async fn each_subscriber_gets_one_email_with_exactly_their_sections() {
        let pages = vec![
            vec![
                contact("default-rust@x.io", &[]),
                contact("both@x.io", &[("aws", OptIn)]),
                contact("aws-only@x.io", &[("rust", OptOut), ("aws", OptIn)]),
                contact("nothing@x.io", &[("rust", OptOut)]),
                Contact {
                    unsubscribe_all: true,
                    ..contact("gone@x.io", &[("rust", OptIn)])
                },
            ],
            (0..120)
                .map(|i| contact(&format!("bulk{i}@x.io"), &[]))
                .collect(),
        ];
        let worker = worker(directory(pages), RecordingMailer::default());

        run_to_completion(&worker, job(&["rust", "aws"])).await;

        let sent = worker.sender.mailer().sent.lock().unwrap();
        let titles = |email: &str| -> Vec<bool> {
            let (_, rendered, _) = sent.iter().find(|(to, _, _)| to.as_str() == email).unwrap();
            vec![
                rendered.html.contains("About rust"),
                rendered.html.contains("About aws"),
            ]
        };
        assert_eq!(titles("default-rust@x.io"), [true, false]);
        assert_eq!(titles("both@x.io"), [true, true]);
        assert_eq!(titles("aws-only@x.io"), [false, true]);
        let mut recipients: Vec<String> = sent.iter().map(|(to, _, _)| to.to_string()).collect();
        assert_eq!(recipients.len(), 123);
        recipients.sort();
        recipients.dedup();
        assert_eq!(recipients.len(), 123, "nobody gets two emails");
        assert!(
            !recipients
                .iter()
                .any(|r| r == "nothing@x.io" || r == "gone@x.io")
        );
        // A single-topic recipient's email names its topic, so SES unsubscribes from just that.
        let (_, _, topic) = sent
            .iter()
            .find(|(to, _, _)| to.as_str() == "aws-only@x.io")
            .unwrap();
        assert_eq!(topic.as_ref().map(Topic::as_str), Some("aws"));
    }

    #[tokio::test]
    async fn a_single_topic_job_asks_for_the_filter_and_still_filters_itself() {
        // The directory ignores the filter (as the local SES does) and returns an opted-out contact.
        let pages = vec![vec![
            contact("in@x.io", &[]),
            contact("out@x.io", &[("rust", OptOut)]),
        ]];
        let worker = worker(directory(pages), RecordingMailer::default());

        run_to_completion(&worker, job(&["rust"])).await;

        let requests = worker.directory.requests.lock().unwrap();
        assert_eq!(requests[0].1.as_ref().map(Topic::as_str), Some("rust"));
        assert_eq!(worker.sender.mailer().recipients(), ["in@x.io"]);
    }

    #[tokio::test]
    async fn several_topics_read_the_list_unfiltered() {
        let worker = worker(directory(vec![vec![]]), RecordingMailer::default());
        run_to_completion(&worker, job(&["rust", "aws"])).await;
        assert_eq!(worker.directory.requests.lock().unwrap()[0].1, None);
    }

    fn delivery(emails: &[&str]) -> Delivery {
        Delivery {
            task_id: TaskId::generate(),
            chunk_id: "p0-c0".into(),
            attempt: 0,
            newsletter: newsletter(&["rust"]),
            recipients: emails
                .iter()
                .map(|email| Recipient {
                    email: EmailAddress::parse(email).unwrap(),
                    topics: vec![Topic::parse("rust").unwrap()],
                })
                .collect(),
        }
    }

    #[tokio::test]
    async fn only_recipients_with_retryable_failures_are_retried() {
        let mailer = RecordingMailer::failing([
            (
                "throttled@x.io".to_string(),
                SendError::Transient("TooManyRequests".into()),
            ),
            (
                "bounced@x.io".to_string(),
                SendError::Permanent("MessageRejected".into()),
            ),
        ]);
        let worker = worker(directory(vec![]), mailer);
        let original = delivery(&["ok1@x.io", "throttled@x.io", "bounced@x.io", "ok2@x.io"]);

        worker
            .process(&Message::Delivery(original.clone()).encode(), later())
            .await
            .unwrap();

        let mut sent = worker.sender.mailer().recipients();
        sent.sort();
        assert_eq!(sent, ["ok1@x.io", "ok2@x.io"]);
        let retried = worker.queue.take();
        let [Message::Delivery(retry)] = retried.as_slice() else {
            panic!("expected one retry: {retried:?}")
        };
        let owed: Vec<String> = retry
            .recipients
            .iter()
            .map(|r| r.email.to_string())
            .collect();
        assert_eq!(owed, ["throttled@x.io"]);
        assert_eq!(retry.attempt, 1);
        assert_eq!(
            (retry.task_id, &retry.chunk_id),
            (original.task_id, &original.chunk_id)
        );
    }

    #[tokio::test]
    async fn a_chunk_nobody_could_be_sent_to_fails_as_a_whole() {
        let mailer = RecordingMailer::failing([(
            "a@x.io".to_string(),
            SendError::Transient("timeout".into()),
        )]);
        let worker = worker(directory(vec![]), mailer);
        let result = worker
            .process(&Message::Delivery(delivery(&["a@x.io"])).encode(), later())
            .await;
        assert!(matches!(result, Err(WorkError::NothingDelivered(1))));
        assert!(worker.queue.take().is_empty());
    }

    #[tokio::test]
    async fn permanent_failures_alone_complete_the_chunk() {
        let mailer = RecordingMailer::failing([(
            "a@x.io".to_string(),
            SendError::Permanent("rejected".into()),
        )]);
        let worker = worker(directory(vec![]), mailer);
        worker
            .process(&Message::Delivery(delivery(&["a@x.io"])).encode(), later())
            .await
            .unwrap();
        assert!(worker.queue.take().is_empty());
    }

    #[tokio::test]
    async fn past_the_deadline_nothing_is_sent_and_the_message_is_retried() {
        let worker = worker(directory(vec![]), RecordingMailer::default());
        let result = worker
            .process(
                &Message::Delivery(delivery(&["a@x.io", "b@x.io"])).encode(),
                Instant::now(),
            )
            .await;
        assert!(matches!(result, Err(WorkError::NothingDelivered(2))));
        assert!(worker.sender.mailer().recipients().is_empty());
    }

    #[tokio::test]
    async fn a_failing_requeue_fails_the_message_rather_than_dropping_recipients() {
        let mailer = RecordingMailer::failing([(
            "b@x.io".to_string(),
            SendError::Transient("throttled".into()),
        )]);
        let worker = Worker::new(
            RecordingQueue {
                fail: true,
                ..Default::default()
            },
            directory(vec![]),
            Sender::new(mailer, FAST),
        );
        let result = worker
            .process(
                &Message::Delivery(delivery(&["a@x.io", "b@x.io"])).encode(),
                later(),
            )
            .await;
        assert!(matches!(result, Err(WorkError::Queue(_))));
    }

    #[tokio::test]
    async fn poison_messages_are_errors_not_panics() {
        let worker = worker(directory(vec![]), RecordingMailer::default());
        for body in [
            "",
            "{}",
            r#"{"version": 9, "kind": "job"}"#,
            r#"{"version": 1, "kind": "job"}"#,
        ] {
            assert!(
                matches!(
                    worker.process(body, later()).await,
                    Err(WorkError::Poison(_))
                ),
                "{body}"
            );
        }
    }

    #[tokio::test]
    async fn sends_never_exceed_the_in_flight_bound() {
        let worker = Worker::new(
            RecordingQueue::default(),
            directory(vec![]),
            Sender::new(
                RecordingMailer::default(),
                SendPolicy {
                    emails_per_second: 100_000.0,
                    max_in_flight: 3,
                },
            ),
        );
        let emails: Vec<String> = (0..40).map(|i| format!("u{i}@x.io")).collect();
        let emails: Vec<&str> = emails.iter().map(String::as_str).collect();
        worker
            .process(&Message::Delivery(delivery(&emails)).encode(), later())
            .await
            .unwrap();
        let mailer = worker.sender.mailer();
        assert_eq!(mailer.recipients().len(), 40);
        let peak = mailer
            .max_in_flight_seen
            .load(std::sync::atomic::Ordering::SeqCst);
        assert!((2..=3).contains(&peak), "peak in flight {peak}");
    }

    #[tokio::test]
    async fn the_send_rate_is_held_to_the_policy() {
        // 40 emails/s with a burst of 40: 100 emails cannot finish in under (100 - 40) / 40 = 1.5 s.
        let worker = Worker::new(
            RecordingQueue::default(),
            directory(vec![]),
            Sender::new(
                RecordingMailer::default(),
                SendPolicy {
                    emails_per_second: 40.0,
                    max_in_flight: 16,
                },
            ),
        );
        let emails: Vec<String> = (0..100).map(|i| format!("u{i}@x.io")).collect();
        let emails: Vec<&str> = emails.iter().map(String::as_str).collect();
        let started = Instant::now();
        worker
            .process(&Message::Delivery(delivery(&emails)).encode(), later())
            .await
            .unwrap();
        assert!(
            started.elapsed() >= Duration::from_millis(1400),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(worker.sender.mailer().recipients().len(), 100);
    }

    #[test]
    fn the_account_rate_is_split_across_instances() {
        let policy = SendPolicy::per_instance(14.0, 5, 16);
        assert!((policy.emails_per_second - 2.8).abs() < 1e-9);
        assert_eq!(
            SendPolicy::per_instance(10.0, 0, 0),
            SendPolicy {
                emails_per_second: 10.0,
                max_in_flight: 1
            }
        );
    }
}

//! What the local SES recorded as sent (moto's `/moto-api/data.json`).

use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Deserialize)]
pub struct SentEmail {
    pub destinations: Destinations,
    pub subject: String,
    /// The HTML part if there is one, else the text part.
    pub body: String,
    /// The text part, if the send had one (kept by dev/moto_server.py; moto itself drops it).
    #[serde(default)]
    pub text: Option<String>,
    /// The send's SES message tags, by name (kept by dev/moto_server.py).
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

impl SentEmail {
    /// The task the email belongs to: the send's `task_id` tag (the email's content does not
    /// name it, so that it is the same for every task and for a preview).
    pub fn task_id(&self) -> Option<&str> {
        self.tags.get("task_id").map(String::as_str)
    }

    /// The section headings, in order (as rendered, HTML-escaped).
    pub fn section_titles(&self) -> Vec<&str> {
        self.body
            .split("<h2")
            .skip(1)
            .filter_map(|rest| {
                let start = rest.find('>')? + 1;
                let end = rest.find("</h2>")?;
                Some(&rest[start..end])
            })
            .collect()
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Destinations {
    #[serde(default)]
    pub to_addresses: Vec<String>,
}

#[derive(Deserialize)]
struct Data {
    ses: SesData,
}

#[derive(Deserialize)]
struct SesData {
    #[serde(rename = "Message", default)]
    messages: Vec<SentEmail>,
}

pub async fn sent_emails(endpoint: &str) -> anyhow::Result<Vec<SentEmail>> {
    let data: Data = reqwest::get(format!("{endpoint}/moto-api/data.json"))
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok(data.ses.messages)
}

//! What the local SES recorded as sent (moto's `/moto-api/data.json`).

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
pub struct SentEmail {
    pub destinations: Destinations,
    pub subject: String,
    /// The HTML part if there is one, else the text part.
    pub body: String,
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

//! A Lambda function for testing the Lambda host itself: it does what its events say (sleep,
//! report a failure, answer an error, crash), so that every outcome the host tells apart can
//! be provoked on purpose. It speaks the Runtime API directly, as any `bootstrap` does.
//!
//! At init (environment): `PROBE_INIT_MS` sleeps before the first poll; `PROBE_INIT_ERROR`
//! posts `/init/error` with that message and exits; `PROBE_ALLOC_MIB` allocates and touches
//! that much memory (for peak RSS figures).
//!
//! Each event is logged (stdout, one JSON line with the event). Per invocation: an SQS event's records carry instructions in their bodies, applied in
//! order; any other event is itself one instruction. An instruction is a JSON object of:
//! `sleep_ms` (sleep that long), `fail: true` (report this record in `batchItemFailures`),
//! `error: "…"` (answer the invocation with an error), `crash: <code>` (exit at once),
//! `respond: "…"` (answer with this raw body), `echo: true` (answer with what the function was
//! given: request id, deadline, ARN, trace id and its `AWS_LAMBDA_*` environment).

use serde_json::{Value, json};
use std::time::Duration;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let api = std::env::var("AWS_LAMBDA_RUNTIME_API")?;
    let base = format!("http://{api}/2018-06-01/runtime");
    let client = reqwest::Client::new();

    if let Some(ms) = env_number("PROBE_INIT_MS") {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if let Ok(message) = std::env::var("PROBE_INIT_ERROR") {
        client
            .post(format!("{base}/init/error"))
            .header("lambda-runtime-function-error-type", "Probe.InitError")
            .json(&json!({"errorType": "Probe.InitError", "errorMessage": message}))
            .send()
            .await?;
        std::process::exit(1);
    }
    let _ballast: Vec<u8> = env_number("PROBE_ALLOC_MIB")
        .map(|mib| vec![1u8; (mib as usize) << 20])
        .unwrap_or_default();

    loop {
        let next = client.get(format!("{base}/invocation/next")).send().await?;
        let header = |name: &str| {
            next.headers()
                .get(name)
                .and_then(|value| value.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        let request_id = header("lambda-runtime-aws-request-id");
        let context = json!({
            "request_id": request_id,
            "deadline_ms": header("lambda-runtime-deadline-ms").parse::<u64>().unwrap_or(0),
            "function_arn": header("lambda-runtime-invoked-function-arn"),
            "trace_id": header("lambda-runtime-trace-id"),
        });
        let event: Value = next.json().await?;
        println!(
            "{}",
            json!({"level": "INFO", "message": "probe invoked", "requestId": request_id, "event": event})
        );
        let answer = handle(&event, context).await;
        let url = format!("{base}/invocation/{request_id}");
        match answer {
            Answer::Response(body) => {
                client
                    .post(format!("{url}/response"))
                    .body(body)
                    .send()
                    .await?;
            }
            Answer::Error(message) => {
                client
                    .post(format!("{url}/error"))
                    .header("lambda-runtime-function-error-type", "Probe.Error")
                    .json(&json!({"errorType": "Probe.Error", "errorMessage": message}))
                    .send()
                    .await?;
            }
        }
    }
}

enum Answer {
    Response(String),
    Error(String),
}

async fn handle(event: &Value, context: Value) -> Answer {
    let records = event["Records"].as_array();
    let instructions: Vec<(Option<String>, Value)> = match records {
        Some(records) => records
            .iter()
            .map(|record| {
                let body = record["body"].as_str().unwrap_or_default();
                (
                    record["messageId"].as_str().map(str::to_owned),
                    serde_json::from_str(body).unwrap_or(Value::Null),
                )
            })
            .collect(),
        None => vec![(None, event.clone())],
    };
    let mut failures = Vec::new();
    for (message_id, instruction) in instructions {
        if let Some(ms) = instruction["sleep_ms"].as_u64() {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        if let Some(code) = instruction["crash"].as_i64() {
            std::process::exit(code as i32);
        }
        if let Some(message) = instruction["error"].as_str() {
            return Answer::Error(message.to_owned());
        }
        if let Some(raw) = instruction["respond"].as_str() {
            return Answer::Response(raw.to_owned());
        }
        if instruction["echo"].as_bool() == Some(true) {
            let environment: serde_json::Map<String, Value> = std::env::vars()
                .filter(|(name, _)| name.starts_with("AWS_") || name.starts_with("PROBE_"))
                .map(|(name, value)| (name, Value::String(value)))
                .collect();
            let mut echo = context.clone();
            echo["env"] = Value::Object(environment);
            return Answer::Response(echo.to_string());
        }
        if instruction["fail"].as_bool() == Some(true)
            && let Some(id) = message_id
        {
            failures.push(json!({"itemIdentifier": id}));
        }
    }
    Answer::Response(json!({"batchItemFailures": failures}).to_string())
}

fn env_number(name: &str) -> Option<u64> {
    std::env::var(name).ok()?.parse().ok()
}

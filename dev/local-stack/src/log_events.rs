//! Turns the functions' JSON log lines into one readable line per event for `make dev`.

use serde_json::Value;

/// A readable line for a notable log line, or `None` for everything else.
pub fn readable(line: &str) -> Option<String> {
    let entry: Value = serde_json::from_str(line.trim()).ok()?;
    let fields = entry.get("fields")?;
    let message = fields.get("message")?.as_str()?;
    let task_id = entry.pointer("/span/task_id").and_then(Value::as_str);
    let task = format!("task {}", task_id.unwrap_or("?"));
    let field = |name: &str| {
        fields
            .get(name)
            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
            .unwrap_or_default()
    };
    let text = match message {
        "newsletter accepted" => format!(
            "accepted   {task}: {} section(s), job queued",
            field("sections")
        ),
        "page planned" => format!(
            "planned    {task}: page {}: {} contact(s), {} recipient(s), {} skipped -> {} delivery message(s){}",
            field("page"),
            field("contacts"),
            field("recipients"),
            field("skipped"),
            field("deliveries"),
            if field("more_pages") == "true" {
                ", more pages to plan"
            } else {
                ""
            }
        ),
        "chunk delivered" => format!(
            "delivered  {task}: chunk {} (attempt {}): {} sent, {} rejected, {} left{}",
            field("chunk"),
            field("attempt"),
            field("sent"),
            field("rejected"),
            field("unsent"),
            match field("already_settled").as_str() {
                "" | "0" => String::new(),
                settled => format!(", {settled} already sent before (skipped)"),
            }
        ),
        "task completed" => format!(
            "completed  {task}: {}: {} planned, {} sent, {} skipped, {} failed{}",
            field("status"),
            field("planned"),
            field("sent"),
            field("skipped"),
            field("failed"),
            match field("cancelled").as_str() {
                "" | "0" => String::new(),
                cancelled => format!(", {cancelled} cancelled (not sent)"),
            }
        ),
        "task cancelled on request" => {
            format!("cancelling {task}: nothing more is sent; its chunks are being counted")
        }
        "task cancelled: chunk accounted, not sent further" => format!(
            "cancelled  {task}: chunk {}: what it had not sent is counted cancelled",
            field("chunk")
        ),
        "message failed" | "poison message" => format!(
            "failed     {task}: message {}: {} (SQS will retry it, then move it to the DLQ)",
            field("message_id"),
            field("error")
        ),
        "handed back what does not fit before the deadline" => format!(
            "handed back {} message(s) that do not fit this invocation",
            field("messages")
        ),
        "dead-letter queue swept" if field("seen") != "0" => format!(
            "swept      the DLQ: {} message(s), {} accounted on their tasks, {} for the next sweep",
            field("seen"),
            field("accounted"),
            field("deferred")
        ),
        _ => match entry.get("level").and_then(Value::as_str) {
            Some(level @ ("WARN" | "ERROR")) => {
                format!("{:<10} {task}: {message}", level.to_lowercase())
            }
            _ => return None,
        },
    };
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notable_lines_become_readable_and_the_rest_is_dropped() {
        let accepted = r#"{"level":"INFO","fields":{"message":"newsletter accepted","sections":2},"span":{"task_id":"0190","name":"task"}}"#;
        assert_eq!(
            readable(accepted).unwrap(),
            "accepted   task 0190: 2 section(s), job queued"
        );
        let delivered = r#"{"level":"INFO","fields":{"message":"chunk delivered","chunk":"p0-c0","attempt":0,"sent":3,"rejected":0,"unsent":1},"span":{"task_id":"0190"}}"#;
        assert_eq!(
            readable(delivered).unwrap(),
            "delivered  task 0190: chunk p0-c0 (attempt 0): 3 sent, 0 rejected, 1 left"
        );
        let warning = r#"{"level":"WARN","fields":{"message":"email rejected; not retried"},"span":{"task_id":"0190"}}"#;
        assert_eq!(
            readable(warning).unwrap(),
            "warn       task 0190: email rejected; not retried"
        );
        assert_eq!(
            readable(r#"{"level":"INFO","fields":{"message":"other"}}"#),
            None
        );
        assert_eq!(readable("   Compiling worker v0.1.0"), None);
        let cancelled = r#"{"level":"INFO","fields":{"message":"task completed","status":"cancelled","planned":6,"sent":2,"skipped":3,"failed":0,"cancelled":1},"span":{"task_id":"0190"}}"#;
        assert_eq!(
            readable(cancelled).unwrap(),
            "completed  task 0190: cancelled: 6 planned, 2 sent, 3 skipped, 0 failed, 1 cancelled (not sent)"
        );
    }
}

//! `template.yaml`, read: the one source of what the local stack and the bench deploy (queue
//! attributes, the table's keys, each function's timeout, memory, environment and events), so
//! that none of it is copied by hand into Rust.
//!
//! CloudFormation's short tags (`!Ref`, `!GetAtt`, `!Sub`, ...) load as tagged values; the long
//! forms (`Ref:`, `Fn::FindInMap:`) are read the same. Values are resolved as far as they can be
//! without a deployment: literals, `!FindInMap` on the template's `Mappings`, `!Ref` to a
//! parameter (its `Default`). Anything else (`!Ref` to a resource, `!GetAtt`, `!Sub`) needs a
//! local value ([`Locals`]); a value that has none is an error naming it.

use anyhow::{Context, anyhow, bail};
use serde_yaml::{Mapping, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

/// The worker function's logical id.
pub const WORKER_FUNCTION: &str = "WorkerFunction";
/// The accept function's logical id.
pub const ACCEPT_FUNCTION: &str = "AcceptFunction";
/// The worker's SQS event (its trigger on the jobs queue).
pub const JOBS_EVENT: &str = "Jobs";
/// The worker's schedule that sweeps the dead-letter queue.
pub const DEAD_LETTER_SWEEP_EVENT: &str = "DeadLetterSweep";
pub const JOBS_QUEUE: &str = "JobsQueue";
pub const DEAD_LETTER_QUEUE: &str = "JobsDeadLetterQueue";
pub const TASKS_TABLE: &str = "TasksTable";

/// A parsed template.
#[derive(Debug, Clone)]
pub struct Template {
    root: Value,
    /// Where it was read from, for error messages.
    origin: String,
}

impl Template {
    /// The repository's `template.yaml`.
    pub fn path() -> PathBuf {
        crate::repository_root().join("template.yaml")
    }

    /// The repository's `template.yaml`, read and parsed once per process: the tests and the
    /// bench ask for it at every provisioning and every function's environment.
    pub fn load() -> anyhow::Result<&'static Self> {
        static REPOSITORY: OnceLock<Template> = OnceLock::new();
        if let Some(template) = REPOSITORY.get() {
            return Ok(template);
        }
        let template = Self::load_from(&Self::path())?;
        Ok(REPOSITORY.get_or_init(|| template))
    }

    pub fn load_from(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::parse(&text, "template.yaml")
    }

    /// Parses a template's text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> anyhow::Result<Self> {
        let root: Value =
            serde_yaml::from_str(text).with_context(|| format!("parsing {origin}"))?;
        anyhow::ensure!(root.is_mapping(), "{origin} is not a mapping");
        Ok(Self {
            root,
            origin: origin.to_owned(),
        })
    }

    /// The function `id`, its `Properties` laid over `Globals.Function` as SAM does: mappings
    /// merged key by key (the function's value wins), lists concatenated (the globals' first).
    pub fn function(&self, id: &str) -> anyhow::Result<Function<'_>> {
        let properties = self.resource(id)?.get("Properties")?;
        let properties = match self.node(&["Globals", "Function"]) {
            Ok(globals) => merge(globals.value, properties.value),
            Err(_) => properties.value.clone(),
        };
        Ok(Function {
            template: self,
            id: id.to_owned(),
            properties,
        })
    }

    /// The SQS queue `id`.
    pub fn queue(&self, id: &str) -> anyhow::Result<Queue<'_>> {
        Ok(Queue(self.resource(id)?.get("Properties")?))
    }

    /// The DynamoDB table `id`.
    pub fn table(&self, id: &str) -> anyhow::Result<Table<'_>> {
        Ok(Table(self.resource(id)?.get("Properties")?))
    }

    /// The `Default` of parameter `name`, as a string.
    pub fn parameter_default(&self, name: &str) -> anyhow::Result<String> {
        self.node(&["Parameters", name, "Default"])?.scalar()
    }

    fn resource(&self, id: &str) -> anyhow::Result<Node<'_>> {
        self.node(&["Resources", id])
    }

    fn node(&self, path: &[&str]) -> anyhow::Result<Node<'_>> {
        let mut node = Node {
            template: self,
            value: &self.root,
            path: String::new(),
        };
        for key in path {
            node = node.get(key)?;
        }
        Ok(node)
    }

    /// What `!Ref name` is without a deployment: a parameter's `Default`.
    fn parameter_ref(&self, name: &str) -> Option<anyhow::Result<String>> {
        self.node(&["Parameters", name])
            .ok()
            .map(|_| self.parameter_default(name))
    }
}

/// A function's properties (over the globals).
pub struct Function<'t> {
    template: &'t Template,
    id: String,
    properties: Value,
}

/// One SQS event source of a function.
#[derive(Debug, Clone, PartialEq)]
pub struct SqsEvent {
    /// The queue's logical id.
    pub queue: String,
    pub batch_size: u32,
    /// `MaximumBatchingWindowInSeconds` (0 when absent, as for Lambda).
    pub batching_window: Duration,
    /// `ScalingConfig.MaximumConcurrency`, when set.
    pub maximum_concurrency: Option<u32>,
}

impl Function<'_> {
    /// `Timeout` (Lambda's default of 3 s when absent is not assumed: the template sets it).
    pub fn timeout(&self) -> anyhow::Result<Duration> {
        Ok(Duration::from_secs(self.node().get("Timeout")?.number()?))
    }

    /// `MemorySize`, MB.
    pub fn memory_size_mb(&self) -> anyhow::Result<u32> {
        self.node().get("MemorySize")?.number()
    }

    /// `LoggingConfig.LogFormat` (what Lambda passes as `AWS_LAMBDA_LOG_FORMAT`).
    pub fn log_format(&self) -> anyhow::Result<String> {
        self.node().get("LoggingConfig")?.get("LogFormat")?.scalar()
    }

    /// The SQS event `name`.
    pub fn sqs_event(&self, name: &str) -> anyhow::Result<SqsEvent> {
        let event = self.event(name, "SQS")?;
        let properties = event.get("Properties")?;
        let queue = properties.get("Queue")?;
        let queue = queue
            .logical_id()
            .with_context(|| format!("{}: not a !GetAtt or !Ref of a queue", queue.path))?;
        Ok(SqsEvent {
            queue,
            batch_size: properties.get("BatchSize")?.number()?,
            batching_window: Duration::from_secs(
                match properties.get("MaximumBatchingWindowInSeconds") {
                    Ok(window) => window.number()?,
                    Err(_) => 0,
                },
            ),
            maximum_concurrency: match properties.get("ScalingConfig") {
                Ok(scaling) => Some(scaling.get("MaximumConcurrency")?.number()?),
                Err(_) => None,
            },
        })
    }

    /// The `Input` a schedule event `name` invokes the function with.
    pub fn schedule_input(&self, name: &str) -> anyhow::Result<String> {
        self.event(name, "Schedule")?
            .get("Properties")?
            .get("Input")?
            .scalar()
    }

    /// The names of `Environment.Variables`, in the template's order.
    pub fn variable_names(&self) -> anyhow::Result<Vec<String>> {
        let variables = self.variables()?;
        variables
            .entries()?
            .into_iter()
            .map(|(name, _)| Ok(name))
            .collect()
    }

    /// `Environment.Variables`, each resolved: a local override of the variable first, else its
    /// template value, with `!Ref`s to what `locals` gives (or to a parameter's `Default`).
    /// A variable that cannot be resolved is an error naming it and its value.
    pub fn environment(&self, locals: &Locals) -> anyhow::Result<Vec<(String, String)>> {
        let variables = self.variables()?;
        let mut environment = Vec::new();
        for (name, value) in variables.entries()? {
            let resolved = match locals.variables.get(&name) {
                Some(local) => local.clone(),
                None => value.resolve(&locals.refs).with_context(|| {
                    format!(
                        "{}'s environment variable {name} has no local value: give it one \
                         (a local value of what it refers to, or of the variable itself)",
                        self.id
                    )
                })?,
            };
            environment.push((name, resolved));
        }
        Ok(environment)
    }

    /// The properties, at `Resources.<id>.Properties` (over the globals).
    fn node(&self) -> Node<'_> {
        Node {
            template: self.template,
            value: &self.properties,
            path: format!("Resources.{}.Properties", self.id),
        }
    }

    fn variables(&self) -> anyhow::Result<Node<'_>> {
        self.node().get("Environment")?.get("Variables")
    }

    fn event(&self, name: &str, kind: &str) -> anyhow::Result<Node<'_>> {
        let event = self.node().get("Events")?.get(name)?;
        let found = event.get("Type")?.scalar()?;
        anyhow::ensure!(
            found == kind,
            "{}: {}.Type is {found}, not {kind}",
            self.node().template.origin,
            event.path
        );
        Ok(event)
    }
}

/// An SQS queue's properties.
pub struct Queue<'t>(Node<'t>);

impl Queue<'_> {
    /// `VisibilityTimeout`, seconds.
    pub fn visibility_timeout(&self) -> anyhow::Result<u32> {
        self.0.get("VisibilityTimeout")?.number()
    }

    /// `RedrivePolicy.maxReceiveCount`.
    pub fn max_receive_count(&self) -> anyhow::Result<u32> {
        self.0
            .get("RedrivePolicy")?
            .get("maxReceiveCount")?
            .number()
    }

    /// The logical id of `RedrivePolicy.deadLetterTargetArn`'s queue.
    pub fn dead_letter_queue(&self) -> anyhow::Result<String> {
        let target = self.0.get("RedrivePolicy")?.get("deadLetterTargetArn")?;
        target
            .logical_id()
            .with_context(|| format!("{}: not a !GetAtt or !Ref of a queue", target.path))
    }

    /// `MessageRetentionPeriod`, seconds.
    pub fn message_retention_period(&self) -> anyhow::Result<u32> {
        self.0.get("MessageRetentionPeriod")?.number()
    }
}

/// A DynamoDB table's properties.
pub struct Table<'t>(Node<'t>);

/// One element of a table's key schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyAttribute {
    pub name: String,
    /// `HASH` or `RANGE`.
    pub key_type: String,
    /// `S`, `N` or `B`, from `AttributeDefinitions`.
    pub attribute_type: String,
}

impl Table<'_> {
    /// `KeySchema`, each attribute with its type from `AttributeDefinitions`.
    pub fn key_schema(&self) -> anyhow::Result<Vec<KeyAttribute>> {
        let definitions = self.0.get("AttributeDefinitions")?.items()?;
        self.0
            .get("KeySchema")?
            .items()?
            .into_iter()
            .map(|element| {
                let name = element.get("AttributeName")?.scalar()?;
                let definition = definitions
                    .iter()
                    .find(|d| {
                        d.get("AttributeName").and_then(|n| n.scalar()).ok() == Some(name.clone())
                    })
                    .ok_or_else(|| {
                        anyhow!(
                            "{}: key attribute {name} is not in AttributeDefinitions",
                            self.0.path
                        )
                    })?;
                Ok(KeyAttribute {
                    key_type: element.get("KeyType")?.scalar()?,
                    attribute_type: definition.get("AttributeType")?.scalar()?,
                    name,
                })
            })
            .collect()
    }

    /// `BillingMode`.
    pub fn billing_mode(&self) -> anyhow::Result<String> {
        self.0.get("BillingMode")?.scalar()
    }

    /// `TimeToLiveSpecification.AttributeName`, when TTL is enabled.
    pub fn ttl_attribute(&self) -> anyhow::Result<Option<String>> {
        let Ok(ttl) = self.0.get("TimeToLiveSpecification") else {
            return Ok(None);
        };
        let enabled = ttl.get("Enabled")?.scalar()?;
        if enabled != "true" {
            return Ok(None);
        }
        Ok(Some(ttl.get("AttributeName")?.scalar()?))
    }
}

/// What the template's values that need a deployment are locally.
#[derive(Debug, Clone, Default)]
pub struct Locals {
    /// What `!Ref <name>` gives: a resource's local value (a queue's URL, a table's name), or a
    /// parameter's local value in place of its `Default`.
    refs: BTreeMap<String, String>,
    /// Variables given a local value whatever the template says (a secret the template resolves
    /// at deploy time).
    variables: BTreeMap<String, String>,
}

impl Locals {
    pub fn new() -> Self {
        Self::default()
    }

    /// `!Ref name` is `value` (a resource's local value, or a parameter's in place of its
    /// `Default`).
    pub fn with_ref(mut self, name: &str, value: impl ToString) -> Self {
        self.refs.insert(name.to_owned(), value.to_string());
        self
    }

    /// Environment variable `name` is `value`, wherever the template sets it (and not set where it
    /// does not).
    pub fn with_variable(mut self, name: &str, value: impl ToString) -> Self {
        self.variables.insert(name.to_owned(), value.to_string());
        self
    }
}

/// A place in the template: its value and its path (for messages).
#[derive(Clone)]
struct Node<'t> {
    template: &'t Template,
    value: &'t Value,
    path: String,
}

impl<'t> Node<'t> {
    fn get(&self, key: &str) -> anyhow::Result<Node<'t>> {
        let path = if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        };
        let value = self
            .value
            .as_mapping()
            .and_then(|mapping| mapping.get(key))
            .ok_or_else(|| anyhow!("{}: no {path}", self.template.origin))?;
        Ok(Node {
            template: self.template,
            value,
            path,
        })
    }

    fn items(&self) -> anyhow::Result<Vec<Node<'t>>> {
        let items = self
            .value
            .as_sequence()
            .ok_or_else(|| anyhow!("{}: {} is not a list", self.template.origin, self.path))?;
        Ok(items
            .iter()
            .enumerate()
            .map(|(index, value)| Node {
                template: self.template,
                value,
                path: format!("{}[{index}]", self.path),
            })
            .collect())
    }

    fn entries(&self) -> anyhow::Result<Vec<(String, Node<'t>)>> {
        let mapping = self
            .value
            .as_mapping()
            .ok_or_else(|| anyhow!("{}: {} is not a mapping", self.template.origin, self.path))?;
        mapping
            .iter()
            .map(|(key, value)| {
                let key = key.as_str().ok_or_else(|| {
                    anyhow!(
                        "{}: {} has a key that is not a string",
                        self.template.origin,
                        self.path
                    )
                })?;
                Ok((
                    key.to_owned(),
                    Node {
                        template: self.template,
                        value,
                        path: format!("{}.{key}", self.path),
                    },
                ))
            })
            .collect()
    }

    /// The value as a string, resolved without a deployment.
    fn scalar(&self) -> anyhow::Result<String> {
        self.resolve(&BTreeMap::new())
    }

    /// The value as a number, resolved without a deployment.
    fn number<T>(&self) -> anyhow::Result<T>
    where
        T: std::str::FromStr,
        T::Err: std::fmt::Display,
    {
        let text = self.scalar()?;
        text.parse().map_err(|err: T::Err| {
            anyhow!(
                "{}: {} is {text:?}, not a number of the kind wanted: {err}",
                self.template.origin,
                self.path
            )
        })
    }

    /// The value as a string: a literal; `!FindInMap` on the template's mappings; `!Ref` to
    /// what `refs` gives, else to a parameter's `Default`.
    fn resolve(&self, refs: &BTreeMap<String, String>) -> anyhow::Result<String> {
        let origin = &self.template.origin;
        match intrinsic(self.value) {
            None => literal(self.value)
                .ok_or_else(|| anyhow!("{origin}: {} is not a single value", self.path)),
            Some(("Ref", Value::String(name))) => match refs.get(name) {
                Some(local) => Ok(local.clone()),
                None => self.template.parameter_ref(name).unwrap_or_else(|| {
                    bail!(
                        "{origin}: {} is !Ref {name}, a resource, which has no local value",
                        self.path
                    )
                }),
            },
            Some(("FindInMap", Value::Sequence(keys))) => {
                let keys = keys
                    .iter()
                    .map(|key| {
                        Node {
                            template: self.template,
                            value: key,
                            path: self.path.clone(),
                        }
                        .resolve(refs)
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?;
                let [map, key, attribute] = keys.as_slice() else {
                    bail!("{origin}: {} is a !FindInMap without 3 keys", self.path);
                };
                self.template
                    .node(&["Mappings", map, key, attribute])
                    .with_context(|| format!("{origin}: {}'s !FindInMap", self.path))?
                    .resolve(refs)
            }
            Some((function, _)) => bail!(
                "{origin}: {} is {}, which only a deployment resolves",
                self.path,
                serde_yaml::to_string(self.value)
                    .map(|yaml| yaml.trim().to_owned())
                    .unwrap_or_else(|_| format!("!{function}"))
            ),
        }
    }

    /// The logical id a `!GetAtt Id.Attribute` or `!Ref Id` names.
    fn logical_id(&self) -> Option<String> {
        match intrinsic(self.value)? {
            ("Ref", Value::String(id)) => Some(id.clone()),
            ("GetAtt", Value::String(target)) => target.split('.').next().map(str::to_owned),
            ("GetAtt", Value::Sequence(parts)) => parts.first()?.as_str().map(str::to_owned),
            _ => None,
        }
    }
}

/// The intrinsic function a value is and its argument: `!Ref x` and `{Ref: x}` both give
/// `("Ref", x)`, `!FindInMap [...]` and `{"Fn::FindInMap": [...]}` both `("FindInMap", [...])`.
fn intrinsic(value: &Value) -> Option<(&str, &Value)> {
    match value {
        Value::Tagged(tagged) => {
            let tag = tagged.tag.to_string();
            let name = tag.strip_prefix('!').unwrap_or(&tag);
            let name = KNOWN.iter().find(|known| **known == name)?;
            Some((name, &tagged.value))
        }
        Value::Mapping(mapping) if mapping.len() == 1 => {
            let (key, argument) = mapping.iter().next()?;
            let key = key.as_str()?;
            let name = key.strip_prefix("Fn::").unwrap_or(key);
            let name = KNOWN.iter().find(|known| **known == name)?;
            (key == "Ref" || key.starts_with("Fn::")).then_some((*name, argument))
        }
        _ => None,
    }
}

/// CloudFormation's intrinsic functions (and SAM's), by their short names.
const KNOWN: [&str; 15] = [
    "Ref",
    "GetAtt",
    "Sub",
    "FindInMap",
    "If",
    "Equals",
    "Not",
    "And",
    "Or",
    "Select",
    "Split",
    "Join",
    "Base64",
    "ImportValue",
    "GetAZs",
];

fn literal(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        Value::Bool(flag) => Some(flag.to_string()),
        _ => None,
    }
}

/// SAM's globals rule: `over` laid on `under`.
fn merge(under: &Value, over: &Value) -> Value {
    match (under, over) {
        (Value::Mapping(under), Value::Mapping(over)) => {
            let mut merged: Mapping = under.clone();
            for (key, value) in over {
                let value = match under.get(key) {
                    Some(below) => merge(below, value),
                    None => value.clone(),
                };
                merged.insert(key.clone(), value);
            }
            Value::Mapping(merged)
        }
        (Value::Sequence(under), Value::Sequence(over)) => {
            Value::Sequence(under.iter().chain(over).cloned().collect())
        }
        (_, over) => over.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEMPLATE: &str = r#"
Parameters:
  Rate:
    Type: Number
    Default: 14
  Sender:
    Type: String
Mappings:
  Constants:
    Worker:
      Timeout: 60
Globals:
  Function:
    MemorySize: 128
    Architectures: [arm64]
    LoggingConfig:
      LogFormat: JSON
    Environment:
      Variables:
        SHARED: from-globals
Resources:
  Fn:
    Type: AWS::Serverless::Function
    Properties:
      MemorySize: 256
      Architectures: [x86_64]
      Timeout: !FindInMap [Constants, Worker, Timeout]
      Environment:
        Variables:
          QUEUE_URL: !Ref Queue
          RATE: !Ref Rate
          LONG_RATE: {Ref: Rate}
          TIMEOUT: {"Fn::FindInMap": [Constants, Worker, Timeout]}
          SENDER: !Ref Sender
          LITERAL: 7
          SECRET: !Sub '{{resolve:secretsmanager:${Key}:SecretString}}'
      Events:
        Jobs:
          Type: SQS
          Properties:
            Queue: !GetAtt Queue.Arn
            BatchSize: 10
            ScalingConfig:
              MaximumConcurrency: !Ref Rate
        Sweep:
          Type: Schedule
          Properties:
            Input: '{"sweep": "dead-letters"}'
  Queue:
    Type: AWS::SQS::Queue
    Properties:
      VisibilityTimeout: 360
      RedrivePolicy:
        deadLetterTargetArn: !GetAtt [Dlq, Arn]
        maxReceiveCount: 5
  Dlq:
    Type: AWS::SQS::Queue
    Properties: {}
  Table:
    Type: AWS::DynamoDB::Table
    Properties:
      BillingMode: PAY_PER_REQUEST
      AttributeDefinitions:
        - {AttributeName: sk, AttributeType: N}
        - {AttributeName: pk, AttributeType: S}
      KeySchema:
        - {AttributeName: pk, KeyType: HASH}
        - {AttributeName: sk, KeyType: RANGE}
      TimeToLiveSpecification:
        AttributeName: expires_at
        Enabled: true
"#;

    fn template() -> Template {
        Template::parse(TEMPLATE, "test.yaml").unwrap()
    }

    fn err<T>(result: anyhow::Result<T>) -> String {
        match result {
            Ok(_) => panic!("no error"),
            Err(err) => format!("{err:#}"),
        }
    }

    #[test]
    fn function_properties_lie_over_the_globals() {
        let template = template();
        let function = template.function("Fn").unwrap();
        assert_eq!(function.memory_size_mb().unwrap(), 256);
        assert_eq!(function.log_format().unwrap(), "JSON");
        assert_eq!(function.timeout().unwrap(), Duration::from_secs(60));
        assert_eq!(
            function.node().get("Architectures").unwrap().value,
            &serde_yaml::from_str::<Value>("[arm64, x86_64]").unwrap()
        );
        let names = function.variable_names().unwrap();
        assert_eq!(names.first().map(String::as_str), Some("SHARED"));
        assert!(names.contains(&"SECRET".to_owned()));
    }

    #[test]
    fn events_and_queues_and_tables_read_through_their_intrinsics() {
        let template = template();
        let function = template.function("Fn").unwrap();
        assert_eq!(
            function.sqs_event("Jobs").unwrap(),
            SqsEvent {
                queue: "Queue".into(),
                batch_size: 10,
                batching_window: Duration::ZERO,
                maximum_concurrency: Some(14),
            }
        );
        assert_eq!(
            function.schedule_input("Sweep").unwrap(),
            r#"{"sweep": "dead-letters"}"#
        );
        assert!(err(function.sqs_event("Sweep")).contains("Type is Schedule, not SQS"));

        let queue = template.queue("Queue").unwrap();
        assert_eq!(queue.visibility_timeout().unwrap(), 360);
        assert_eq!(queue.max_receive_count().unwrap(), 5);
        assert_eq!(queue.dead_letter_queue().unwrap(), "Dlq");

        let table = template.table("Table").unwrap();
        assert_eq!(table.billing_mode().unwrap(), "PAY_PER_REQUEST");
        assert_eq!(
            table.ttl_attribute().unwrap().as_deref(),
            Some("expires_at")
        );
        let key = |name: &str, key_type: &str, attribute_type: &str| KeyAttribute {
            name: name.into(),
            key_type: key_type.into(),
            attribute_type: attribute_type.into(),
        };
        assert_eq!(
            table.key_schema().unwrap(),
            [key("pk", "HASH", "S"), key("sk", "RANGE", "N")]
        );
    }

    #[test]
    fn a_missing_value_is_named_by_its_path() {
        let template = template();
        let dlq = template.queue("Dlq").unwrap();
        assert_eq!(
            err(dlq.message_retention_period()),
            "test.yaml: no Resources.Dlq.Properties.MessageRetentionPeriod"
        );
        assert_eq!(err(template.queue("Nope")), "test.yaml: no Resources.Nope");
        assert_eq!(
            err(template.parameter_default("Sender")),
            "test.yaml: no Parameters.Sender.Default"
        );
    }

    #[test]
    fn the_environment_resolves_with_local_values_and_names_what_has_none() {
        let template = template();
        let function = template.function("Fn").unwrap();
        let no_secret = Locals::new()
            .with_ref("Queue", "http://local/queue")
            .with_ref("Sender", "me@example.com");
        let message = err(function.environment(&no_secret));
        assert!(
            message.contains("Fn's environment variable SECRET"),
            "{message}"
        );
        assert!(message.contains("!Sub"), "{message}");

        let no_queue = Locals::new()
            .with_ref("Sender", "me@example.com")
            .with_variable("SECRET", "local");
        let message = err(function.environment(&no_queue));
        assert!(message.contains("QUEUE_URL"), "{message}");
        assert!(message.contains("!Ref Queue, a resource"), "{message}");

        let locals = no_secret
            .with_variable("SECRET", "local")
            .with_variable("NOT_IN_THE_TEMPLATE", "ignored");
        let env: BTreeMap<String, String> =
            function.environment(&locals).unwrap().into_iter().collect();
        let want: BTreeMap<String, String> = [
            ("SHARED", "from-globals"),
            ("QUEUE_URL", "http://local/queue"),
            ("RATE", "14"),
            ("LONG_RATE", "14"),
            ("TIMEOUT", "60"),
            ("SENDER", "me@example.com"),
            ("LITERAL", "7"),
            ("SECRET", "local"),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect();
        assert_eq!(env, want);

        // A parameter's local value wins over its default.
        let env = function
            .environment(&locals.with_ref("Rate", 1000.0))
            .unwrap();
        assert!(env.contains(&("RATE".into(), "1000".into())), "{env:?}");
    }

    #[test]
    fn the_repository_template_parses() {
        let template = Template::load().unwrap();
        for id in [WORKER_FUNCTION, ACCEPT_FUNCTION] {
            template.function(id).unwrap().timeout().unwrap();
        }
    }
}

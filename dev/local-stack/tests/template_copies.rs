//! The template values that must stay copied in Rust, held to `template.yaml`, and the local
//! stack's readings of the template checked on the repository's own.
//!
//! The worker's defaults (`functions/worker/src/config.rs`) are copies: the worker must start when
//! a variable is unset, and it cannot read the template at run time. Each is held here to what a
//! deployment with the template's default parameters sets the variable to. A failure names the
//! value, the Rust constant and the template's place.

use local_stack::template::{self, Template};
use local_stack::{Endpoints, LocalResources};
use std::collections::BTreeMap;
use std::time::Duration;

fn template() -> &'static Template {
    Template::load().unwrap_or_else(|err| panic!("{err:#}"))
}

/// The worker's environment as a deployment with the default parameters gets it (resources and
/// the secret given placeholder values).
fn deployed_worker_environment(template: &Template) -> BTreeMap<String, String> {
    let locals = template::Locals::new()
        .with_ref(template::JOBS_QUEUE, "<queue>")
        .with_ref(template::DEAD_LETTER_QUEUE, "<dead-letter queue>")
        .with_ref(template::TASKS_TABLE, "<table>")
        .with_ref("FromAddress", "<sender>")
        .with_ref("ContactListName", "<list>")
        .with_variable("RECIPIENT_HASH_KEY", "<secret>");
    template
        .function(template::WORKER_FUNCTION)
        .and_then(|worker| worker.environment(&locals))
        .unwrap_or_else(|err| panic!("{err:#}"))
        .into_iter()
        .collect()
}

fn deployed(template: &Template, variable: &str) -> String {
    deployed_worker_environment(template)
        .remove(variable)
        .unwrap_or_else(|| {
            panic!("template.yaml: WorkerFunction's Environment.Variables has no {variable}")
        })
}

#[test]
fn the_worker_s_default_function_timeout_is_the_template_s_timeout() {
    let template = template();
    let timeout = template
        .function(template::WORKER_FUNCTION)
        .and_then(|worker| worker.timeout())
        .unwrap_or_else(|err| panic!("{err:#}"));
    let told = Duration::from_secs(
        deployed(template, "FUNCTION_TIMEOUT")
            .parse()
            .expect("FUNCTION_TIMEOUT is whole seconds"),
    );
    let default = worker::Config::DEFAULT_FUNCTION_TIMEOUT;
    assert!(
        default == timeout && default == told,
        "FUNCTION_TIMEOUT: the worker's default, which is also its time limit when the runtime \
         gives no deadline (worker::Config::DEFAULT_FUNCTION_TIMEOUT in \
         functions/worker/src/config.rs), is {default:?}, but template.yaml gives WorkerFunction \
         Timeout {timeout:?} (Mappings.Constants.Worker.Timeout) and FUNCTION_TIMEOUT {told:?}: \
         make them one figure"
    );
}

#[test]
fn the_worker_s_default_send_rate_is_the_template_s_max_send_rate_default() {
    let template = template();
    let in_template = deployed(template, "MAX_SEND_RATE");
    let default = worker::Config::DEFAULT_MAX_SEND_RATE;
    assert!(
        in_template.parse::<f64>().ok() == Some(default),
        "MAX_SEND_RATE: the worker's default (worker::Config::DEFAULT_MAX_SEND_RATE in \
         functions/worker/src/config.rs) is {default}, but template.yaml sets it to \
         {in_template} (Parameters.MaxSendRate.Default): make them one figure"
    );
}

#[test]
fn the_worker_s_default_concurrency_is_the_template_s_worker_max_concurrency_default() {
    let template = template();
    let in_template = deployed(template, "MAX_CONCURRENCY");
    let default = worker::Config::DEFAULT_MAX_CONCURRENCY;
    assert!(
        in_template.parse::<u32>().ok() == Some(default),
        "MAX_CONCURRENCY: the worker's default (worker::Config::DEFAULT_MAX_CONCURRENCY in \
         functions/worker/src/config.rs) is {default}, but template.yaml sets it to \
         {in_template} (Parameters.WorkerMaxConcurrency.Default): make them one figure"
    );
}

fn endpoints() -> Endpoints {
    Endpoints {
        aws: "http://127.0.0.1:1".into(),
        dynamodb: "http://127.0.0.1:2".into(),
    }
}

fn resources() -> LocalResources<'static> {
    LocalResources {
        queue_url: "http://127.0.0.1:1/queue/jobs",
        dead_letter_queue_url: "http://127.0.0.1:1/queue/jobs-dlq",
        table_name: "tasks",
        from_address: "newsletter@example.com",
        contact_list_name: "subscribers",
        max_send_rate: 14.0,
        max_concurrency: 5,
        configuration_set_name: None,
    }
}

/// `make dev`, the integration tests and the bench give each function every variable the
/// template sets, with a local value where one is needed: this fails, naming the variable, when
/// one is added to the template that needs a local value nobody gives.
#[test]
fn every_variable_of_the_template_reaches_the_local_functions() {
    let template = template();
    for function in [template::ACCEPT_FUNCTION, template::WORKER_FUNCTION] {
        let names = template
            .function(function)
            .and_then(|function| function.variable_names())
            .unwrap_or_else(|err| panic!("{err:#}"));
        let env: BTreeMap<String, String> = local_stack::function_environment(
            template,
            function,
            &resources().locals(),
            &endpoints(),
        )
        .unwrap_or_else(|err| panic!("{err:#}"))
        .into_iter()
        .collect();
        for name in &names {
            assert!(env.contains_key(name), "{function}: {name} not given");
        }
        assert_eq!(env["AWS_LAMBDA_LOG_FORMAT"], "JSON", "{function}");
        assert_eq!(env["AWS_ENDPOINT_URL"], "http://127.0.0.1:1", "{function}");
    }
    let env: BTreeMap<String, String> = local_stack::function_environment(
        template,
        template::WORKER_FUNCTION,
        &resources().locals(),
        &endpoints(),
    )
    .unwrap_or_else(|err| panic!("{err:#}"))
    .into_iter()
    .collect();
    // The local overrides: the provisioned queues and table, the local key for the secret.
    assert_eq!(env["QUEUE_URL"], "http://127.0.0.1:1/queue/jobs");
    assert_eq!(
        env["DEAD_LETTER_QUEUE_URL"],
        "http://127.0.0.1:1/queue/jobs-dlq"
    );
    assert_eq!(env["TABLE_NAME"], "tasks");
    assert_eq!(
        env["RECIPIENT_HASH_KEY"],
        local_stack::LOCAL_RECIPIENT_HASH_KEY
    );
    assert_eq!(env["CONFIGURATION_SET_NAME"], "");
}

/// The worker under the Lambda host (the bench, the integration tests) gets the template's
/// variables with the run's configuration.
#[test]
fn the_worker_environment_is_the_template_s_with_the_run_s_configuration() {
    let template = template();
    let names = template
        .function(template::WORKER_FUNCTION)
        .and_then(|function| function.variable_names())
        .unwrap_or_else(|err| panic!("{err:#}"));
    let config = worker::Config {
        queue_url: "q".into(),
        table_name: "t".into(),
        dead_letter_queue_url: "d".into(),
        function_timeout: Duration::from_secs(6),
        contact_list_name: "c".into(),
        from_address: "f@example.com".into(),
        max_send_rate: 25.0,
        max_concurrency: 3,
        max_in_flight: 8,
        configuration_set_name: Some("set".into()),
        recipient_hash_key: worker::SecretKey("a-key-of-16-chars-or-more".into()),
    };
    let env: BTreeMap<String, String> = local_stack::worker_environment(&config, &endpoints())
        .unwrap()
        .into_iter()
        .collect();
    for name in &names {
        assert!(env.contains_key(name), "WorkerFunction: {name} not given");
    }
    for (name, value) in [
        ("QUEUE_URL", "q"),
        ("TABLE_NAME", "t"),
        ("DEAD_LETTER_QUEUE_URL", "d"),
        ("FUNCTION_TIMEOUT", "6"),
        ("CONTACT_LIST_NAME", "c"),
        ("FROM_ADDRESS", "f@example.com"),
        ("MAX_SEND_RATE", "25"),
        ("MAX_CONCURRENCY", "3"),
        ("MAX_IN_FLIGHT", "8"),
        ("CONFIGURATION_SET_NAME", "set"),
        ("RECIPIENT_HASH_KEY", "a-key-of-16-chars-or-more"),
    ] {
        assert_eq!(env[name], value, "{name}");
    }
}

/// The local settings and trigger, read from the repository's template.
#[test]
fn the_local_settings_are_the_template_s() {
    let template = template();
    let jobs_queue = template.queue(template::JOBS_QUEUE).unwrap();
    let settings = local_stack::Settings::local().unwrap();
    assert_eq!(
        settings.visibility_timeout,
        jobs_queue.visibility_timeout().unwrap()
    );
    assert_eq!(
        settings.max_receive_count,
        jobs_queue.max_receive_count().unwrap()
    );

    let event = template
        .function(template::WORKER_FUNCTION)
        .and_then(|worker| worker.sqs_event(template::JOBS_EVENT))
        .unwrap();
    let trigger = local_stack::event_source::Trigger::from_template(template).unwrap();
    assert_eq!(trigger.batch_size as u32, event.batch_size);
    assert_eq!(trigger.batching_window, event.batching_window);
}

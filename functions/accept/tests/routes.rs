//! The three places that name the API's routes agree: `openapi.yaml` (the contract for callers),
//! `template.yaml`'s HttpApi events (what API Gateway forwards to the function) and the handler's
//! route table (what the function serves). A route in only one or two of them is a caller's 404 or
//! 405, or an operation nobody documented.

use std::collections::BTreeSet;
use std::path::Path;

type Routes = BTreeSet<(String, String)>;

/// The HTTP methods an OpenAPI path item may hold as operations.
const OPENAPI_METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

fn load(file: &str) -> serde_yaml::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{file}: {err}"));
    // CloudFormation's short-form tags (!Ref, !GetAtt, ...) load as tagged values, never read here.
    serde_yaml::from_str(&text).unwrap_or_else(|err| panic!("{file}: {err}"))
}

fn spec_routes(spec: &serde_yaml::Value) -> Routes {
    let paths = spec["paths"].as_mapping().expect("openapi.yaml has paths");
    paths
        .iter()
        .flat_map(|(path, item)| {
            let path = path.as_str().expect("a path is a string");
            let operations = item.as_mapping().expect("a path item is a mapping");
            operations
                .keys()
                .filter_map(|key| key.as_str())
                .filter(|key| OPENAPI_METHODS.contains(key))
                .map(move |method| (method.to_uppercase(), path.to_owned()))
        })
        .collect()
}

fn template_routes(template: &serde_yaml::Value) -> Routes {
    let resources = template["Resources"]
        .as_mapping()
        .expect("template.yaml has Resources");
    resources
        .values()
        .filter(|resource| resource["Type"].as_str() == Some("AWS::Serverless::Function"))
        .filter_map(|function| function["Properties"]["Events"].as_mapping())
        .flat_map(|events| events.values())
        .filter(|event| event["Type"].as_str() == Some("HttpApi"))
        .map(|event| {
            let properties = &event["Properties"];
            let field = |name: &str| {
                properties[name]
                    .as_str()
                    .unwrap_or_else(|| panic!("an HttpApi event without a literal {name}"))
                    .to_owned()
            };
            (field("Method").to_uppercase(), field("Path"))
        })
        .collect()
}

fn handler_routes() -> Routes {
    accept::ROUTES
        .iter()
        .map(|(method, path)| (method.to_string(), path.to_string()))
        .collect()
}

fn only_in(these: &Routes, others: &[&Routes]) -> Vec<String> {
    these
        .iter()
        .filter(|route| !others.iter().all(|other| other.contains(*route)))
        .map(|(method, path)| format!("{method} {path}"))
        .collect()
}

#[test]
fn the_spec_the_template_and_the_handler_serve_the_same_routes() {
    let spec = spec_routes(&load("openapi.yaml"));
    let template = template_routes(&load("template.yaml"));
    let handler = handler_routes();
    assert!(!handler.is_empty(), "the handler serves no route");

    let missing = [
        (
            "openapi.yaml",
            only_in(&template, &[&spec]),
            only_in(&handler, &[&spec]),
        ),
        (
            "template.yaml",
            only_in(&spec, &[&template]),
            only_in(&handler, &[&template]),
        ),
        (
            "accept::ROUTES",
            only_in(&spec, &[&handler]),
            only_in(&template, &[&handler]),
        ),
    ];
    let disagreements: Vec<String> = missing
        .iter()
        .flat_map(|(file, from_first, from_second)| {
            from_first
                .iter()
                .chain(from_second)
                .collect::<BTreeSet<_>>()
                .into_iter()
                .map(move |route| format!("{route} is missing from {file}"))
        })
        .collect();
    assert!(
        disagreements.is_empty(),
        "the routes disagree:\n  {}\nopenapi.yaml: {spec:?}\ntemplate.yaml: {template:?}\naccept::ROUTES: {handler:?}",
        disagreements.join("\n  ")
    );
}

#[test]
fn reading_the_template_finds_its_routes_through_the_cloudformation_tags() {
    // Guards the parser choice: template.yaml is full of !Ref / !GetAtt, and each HttpApi event's
    // ApiId is one. If they stopped loading, the test above would compare empty sets.
    let template = template_routes(&load("template.yaml"));
    assert!(template.len() >= 2, "{template:?}");
    assert!(template.contains(&("POST".to_owned(), "/newsletters".to_owned())));
}

"""template.yaml: clean under cfn-lint (+ serverless rules) and `sam validate --lint`, and right where
those linters do not look (queue timing, SQS event limits, redrive, the routes and IAM auth on every route,
the task table, build shape).

Each check_* returns a list of problems: empty on the real template, and each problem is shown to be
caught on a mutated copy (MUTATIONS).
"""

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cfnlint.decode import cfn_yaml

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "template.yaml"
BIN = Path(sys.executable).parent  # .venv/bin when run as `.venv/bin/python -m pytest`
FOURTEEN_DAYS = 14 * 24 * 3600


# --- reading the template -------------------------------------------------------------------------


def resources(t, type_):
    return {name: r for name, r in t["Resources"].items() if r["Type"] == type_}


def function_props(t, function):
    """Properties over Globals.Function; a shallow merge is enough for the top-level keys read here."""
    return {**t.get("Globals", {}).get("Function", {}), **function.get("Properties", {})}


def events(t, type_):
    """(function id, function properties, event properties) of every event of that type."""
    for name, function in resources(t, "AWS::Serverless::Function").items():
        props = function_props(t, function)
        for event in props.get("Events", {}).values():
            if event["Type"] == type_:
                yield name, props, event.get("Properties", {})


def ref_id(value):
    """The logical id named by `!Ref X` or `!GetAtt X.Attr`, else None."""
    if isinstance(value, dict) and "Ref" in value:
        return value["Ref"]
    if isinstance(value, dict) and "Fn::GetAtt" in value:
        att = value["Fn::GetAtt"]
        return att[0] if isinstance(att, list) else att.split(".")[0]
    return None


def variables(props):
    """A function's environment variables."""
    return props.get("Environment", {}).get("Variables", {})


def number(t, value):
    """A literal number, the Default of the parameter it refers to, or the Mappings entry it finds."""
    if isinstance(value, dict) and "Fn::FindInMap" in value:
        mapping, key, attribute = value["Fn::FindInMap"]
        value = t["Mappings"][mapping][key][attribute]
    name = ref_id(value)
    return int(t["Parameters"][name]["Default"] if name in t.get("Parameters", {}) else value)


# --- checks cfn-lint does not make ----------------------------------------------------------------


def check_functions(t):
    problems = []
    for name, function in resources(t, "AWS::Serverless::Function").items():
        props = function_props(t, function)
        for key, want in (("Runtime", "provided.al2023"), ("Architectures", ["arm64"]), ("Handler", "bootstrap")):
            if props.get(key) != want:
                problems.append(f"{name}: {key} is {props.get(key)!r}, want {want!r}")
        metadata = function.get("Metadata", {})
        if metadata.get("BuildMethod") != "rust-cargolambda" or not metadata.get("BuildProperties", {}).get("Binary"):
            problems.append(f"{name}: Metadata needs BuildMethod rust-cargolambda and BuildProperties.Binary")
    return problems


def check_sqs_events(t):
    problems = []
    for name, props, event in events(t, "SQS"):
        where = f"{name} SQS event"
        batch = number(t, event.get("BatchSize", 10))
        window = number(t, event.get("MaximumBatchingWindowInSeconds", 0))
        limit = 10000 if window else 10  # standard queue: above 10 needs a batching window
        if not 1 <= batch <= limit:
            problems.append(f"{where}: BatchSize {batch} not in 1..{limit} (batching window {window} s)")
        if window > 300:
            problems.append(f"{where}: MaximumBatchingWindowInSeconds {window} > 300")
        if "ReportBatchItemFailures" not in event.get("FunctionResponseTypes", []):
            problems.append(f"{where}: FunctionResponseTypes lacks ReportBatchItemFailures")

        concurrency = ref_id(event.get("ScalingConfig", {}).get("MaximumConcurrency"))
        env = ref_id(variables(props).get("MAX_CONCURRENCY"))
        parameter = t.get("Parameters", {}).get(concurrency)
        if parameter is None or env != concurrency:
            problems.append(f"{where}: ScalingConfig.MaximumConcurrency and MAX_CONCURRENCY must !Ref the same parameter")
        elif not (parameter.get("MinValue", 0) >= 2 and parameter.get("MaxValue", 10**6) <= 1000):
            problems.append(f"{where}: parameter {concurrency} must be bounded to AWS's 2..1000")

        queue = ref_id(event["Queue"])
        queue_props = t["Resources"][queue]["Properties"]
        timeout = number(t, props.get("Timeout", 3))
        visibility = number(t, queue_props.get("VisibilityTimeout", 30))
        if visibility < 6 * timeout:
            problems.append(f"{queue}: VisibilityTimeout {visibility} < 6 x {name} Timeout {timeout}")

        # The worker plans its send budget over the timeout it is told, and checks the rate split
        # against it at init: it must be the function's own.
        told = variables(props).get("FUNCTION_TIMEOUT")
        told = None if told is None else number(t, told)
        if told != timeout:
            problems.append(f"{name}: FUNCTION_TIMEOUT {told} != its Timeout {timeout}")

        # The worker sweeps the queue's dead-letter queue on a schedule, to account for what reached it.
        dlq = ref_id(queue_props.get("RedrivePolicy", {}).get("deadLetterTargetArn"))
        told_dlq = variables(props).get("DEAD_LETTER_QUEUE_URL")
        if not isinstance(told_dlq, dict) or told_dlq.get("Ref") != dlq:
            problems.append(f"{name}: DEAD_LETTER_QUEUE_URL is {told_dlq}, want !Ref {dlq}")
        sweeps = [
            event
            for event in props.get("Events", {}).values()
            if event["Type"] == "Schedule" and event.get("Properties", {}).get("Input") == '{"sweep": "dead-letters"}'
        ]
        if len(sweeps) != 1:
            problems.append(f"{name}: needs one Schedule event with Input {{\"sweep\": \"dead-letters\"}}")
    return problems


def check_queues(t):
    """Every queue a function consumes: redrive after 5 receives to a 14-day DLQ, both encrypted."""
    problems = []
    for _, _, event in events(t, "SQS"):
        queue = ref_id(event["Queue"])
        redrive = t["Resources"][queue]["Properties"].get("RedrivePolicy", {})
        receives = number(t, redrive.get("maxReceiveCount", 0))
        if receives != 5:
            problems.append(f"{queue}: RedrivePolicy maxReceiveCount is {receives}, want 5")
        dlq = ref_id(redrive.get("deadLetterTargetArn"))
        if dlq not in t["Resources"]:
            problems.append(f"{queue}: RedrivePolicy names no dead-letter queue of this template")
            continue
        retention = t["Resources"][dlq]["Properties"].get("MessageRetentionPeriod")
        if retention != FOURTEEN_DAYS:
            problems.append(f"{dlq}: MessageRetentionPeriod is {retention}, want {FOURTEEN_DAYS} (14 days)")
        for name in (queue, dlq):
            if t["Resources"][name]["Properties"].get("SqsManagedSseEnabled") is not True:
                problems.append(f"{name}: SqsManagedSseEnabled is not true")
    return problems


def check_http_api_auth(t):
    """No route anyone can call unsigned."""
    problems = []
    apis = resources(t, "AWS::Serverless::HttpApi")
    for name, api in apis.items():
        props = api.get("Properties", {})
        auth = props.get("Auth", {})
        if auth.get("EnableIamAuthorizer") is not True or auth.get("DefaultAuthorizer") != "AWS_IAM":
            problems.append(f"{name}: Auth needs EnableIamAuthorizer: true and DefaultAuthorizer: AWS_IAM")
        if "DefinitionBody" in props or "DefinitionUri" in props:
            problems.append(f"{name}: routes from an OpenAPI definition are not checked; declare them as events")
    for name, _, event in events(t, "HttpApi"):
        route = f"{event.get('Method')} {event.get('Path')}"
        if ref_id(event.get("ApiId")) not in apis:
            problems.append(f"{name}: route {route} without ApiId makes an implicit API, not IAM-authenticated")
        authorizer = event.get("Auth", {}).get("Authorizer", "AWS_IAM")
        if authorizer != "AWS_IAM":
            problems.append(f"{name}: route {route} uses authorizer {authorizer}")
    for name, route in resources(t, "AWS::ApiGatewayV2::Route").items():
        if route["Properties"].get("AuthorizationType") != "AWS_IAM":
            problems.append(f"{name}: AuthorizationType is not AWS_IAM")
    return problems


# Every route of the API and the function serving it; check_http_api_auth covers their auth.
ROUTES = {
    "POST /newsletters": "AcceptFunction",
    "GET /newsletters/{task_id}": "AcceptFunction",
    "POST /newsletters/{task_id}/pause": "AcceptFunction",
    "POST /newsletters/{task_id}/resume": "AcceptFunction",
    "DELETE /newsletters/{task_id}": "AcceptFunction",
    "POST /newsletters/test": "AcceptFunction",
    "POST /newsletters/preview": "AcceptFunction",
}


def check_routes(t):
    """The API serves exactly ROUTES, each by its function."""
    served = {f"{event.get('Method', '').upper()} {event.get('Path')}": name for name, _, event in events(t, "HttpApi")}
    return [
        f"route {route}: served by {served.get(route)}, want {ROUTES.get(route)}"
        for route in sorted(ROUTES.keys() | served.keys())
        if served.get(route) != ROUTES.get(route)
    ]


def check_tables(t):
    """Task status and exactly-once records: on demand, expiring on expires_at, recoverable, encrypted, and
    every function is told the table's name."""
    problems = []
    tables = resources(t, "AWS::DynamoDB::Table")
    for name, table in tables.items():
        props = table["Properties"]
        if props.get("BillingMode") != "PAY_PER_REQUEST":
            problems.append(f"{name}: BillingMode is {props.get('BillingMode')!r}, want 'PAY_PER_REQUEST'")
        ttl = props.get("TimeToLiveSpecification", {})
        if ttl.get("AttributeName") != "expires_at" or ttl.get("Enabled") is not True:
            problems.append(f"{name}: TimeToLiveSpecification must be enabled on expires_at, is {ttl}")
        if props.get("PointInTimeRecoverySpecification", {}).get("PointInTimeRecoveryEnabled") is not True:
            problems.append(f"{name}: point-in-time recovery is not enabled")
        if props.get("SSESpecification", {}).get("SSEEnabled") is not True:
            problems.append(f"{name}: SSESpecification.SSEEnabled is not true")
    for name, function in resources(t, "AWS::Serverless::Function").items():
        value = variables(function_props(t, function)).get("TABLE_NAME")
        if not isinstance(value, dict) or value.get("Ref") not in tables:
            problems.append(f"{name}: TABLE_NAME is {value}, want !Ref to a table of this template")
    return problems


def check_recipient_hash_key(t):
    """The worker's log-hash key comes from a secret the stack generates, never from text in the template."""
    secrets = resources(t, "AWS::SecretsManager::Secret")
    value = variables(function_props(t, t["Resources"]["WorkerFunction"])).get("RECIPIENT_HASH_KEY")
    sub = value.get("Fn::Sub") if isinstance(value, dict) else None
    names = [name for name in secrets if sub == f"{{{{resolve:secretsmanager:${{{name}}}:SecretString}}}}"]
    if not names:
        return [f"WorkerFunction: RECIPIENT_HASH_KEY is {value!r}, want a dynamic reference to a secret of this template"]
    generated = secrets[names[0]]["Properties"].get("GenerateSecretString", {})
    if "SecretString" in secrets[names[0]]["Properties"] or generated.get("PasswordLength", 32) < 32:
        return [f"{names[0]}: the key must be generated (GenerateSecretString, at least 32 characters)"]
    return []


CHECKS = [
    check_functions,
    check_sqs_events,
    check_queues,
    check_http_api_auth,
    check_routes,
    check_tables,
    check_recipient_hash_key,
]


def problems(t):
    return [p for check in CHECKS for p in check(t)]


# --- tests ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def template():
    return cfn_yaml.load(str(TEMPLATE))


def run(*command):
    env = {**os.environ, "AWS_DEFAULT_REGION": "us-east-1", "SAM_CLI_TELEMETRY": "0"}
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_cfn_lint_with_serverless_rules_finds_nothing():
    result = run(BIN / "cfn-lint", "template.yaml", "-a", "cfn_lint_serverless.rules")
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_sam_validate_lint_finds_nothing():
    # .cfnlintrc appends the serverless rules here too; any finding, warnings included, exits 1.
    # stderr is not compared: SAM CLI prints a weekly "update available" notice there.
    result = run(BIN / "sam", "validate", "--lint", "--region", "us-east-1")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith("template.yaml is a valid SAM Template"), result.stdout


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_template_passes(template, check):
    assert check(template) == []


WORKER = "Resources.WorkerFunction.Properties"
JOBS_EVENT = f"{WORKER}.Events.Jobs.Properties"
ACCEPT = "Resources.AcceptFunction.Properties"
ACCEPT_EVENT = f"{ACCEPT}.Events.PostNewsletter.Properties"
GET_EVENT = f"{ACCEPT}.Events.GetNewsletter.Properties"
TABLE = "Resources.TasksTable.Properties"
DELETE = object()

# name: (edits as {dotted path: new value or DELETE}, text expected in one of the problems)
MUTATIONS = {
    "visibility 2x timeout": ({"Resources.JobsQueue.Properties.VisibilityTimeout": 120}, "VisibilityTimeout 120 < 6 x"),
    "worker timeout raised": ({f"{WORKER}.Timeout": 61}, "VisibilityTimeout 360 < 6 x WorkerFunction Timeout 61"),
    "timeout from Globals": (
        {f"{WORKER}.Timeout": DELETE, "Globals.Function.Timeout": 120},
        "VisibilityTimeout 360 < 6 x WorkerFunction Timeout 120",
    ),
    "batch 11 without window": (
        {f"{JOBS_EVENT}.BatchSize": 11, f"{JOBS_EVENT}.MaximumBatchingWindowInSeconds": DELETE},
        "BatchSize 11 not in 1..10",
    ),
    "batch over 10000": ({f"{JOBS_EVENT}.BatchSize": 10001}, "BatchSize 10001 not in 1..10000"),
    "window over 300 s": ({f"{JOBS_EVENT}.MaximumBatchingWindowInSeconds": 301}, "MaximumBatchingWindowInSeconds 301"),
    "no partial batch response": ({f"{JOBS_EVENT}.FunctionResponseTypes": []}, "ReportBatchItemFailures"),
    "concurrency literal": ({f"{JOBS_EVENT}.ScalingConfig.MaximumConcurrency": 5}, "same parameter"),
    "env on other parameter": (
        {f"{WORKER}.Environment.Variables.MAX_CONCURRENCY": {"Ref": "MaxSendRate"}},
        "same parameter",
    ),
    "concurrency unbounded": ({"Parameters.WorkerMaxConcurrency.MaxValue": DELETE}, "2..1000"),
    "redrive after 3": ({"Resources.JobsQueue.Properties.RedrivePolicy.maxReceiveCount": 3}, "maxReceiveCount is 3"),
    "redrive constant 3": ({"Mappings.Constants.JobsQueue.MaxReceiveCount": 3}, "maxReceiveCount is 3"),
    "worker told another timeout": (
        {f"{WORKER}.Environment.Variables.FUNCTION_TIMEOUT": 30},
        "WorkerFunction: FUNCTION_TIMEOUT 30 != its Timeout 60",
    ),
    "worker not told its timeout": (
        {f"{WORKER}.Environment.Variables.FUNCTION_TIMEOUT": DELETE},
        "FUNCTION_TIMEOUT None",
    ),
    "timeout constant raised alone": (
        {f"{WORKER}.Timeout": 90},
        "FUNCTION_TIMEOUT 60 != its Timeout 90",
    ),
    "worker not told the dlq": (
        {f"{WORKER}.Environment.Variables.DEAD_LETTER_QUEUE_URL": DELETE},
        "DEAD_LETTER_QUEUE_URL is None",
    ),
    "no dead-letter sweep": ({f"{WORKER}.Events.DeadLetterSweep": DELETE}, "needs one Schedule event"),
    "dlq keeps 4 days": ({"Resources.JobsDeadLetterQueue.Properties.MessageRetentionPeriod": 345600}, "14 days"),
    "dlq unencrypted": (
        {"Resources.JobsDeadLetterQueue.Properties.SqsManagedSseEnabled": DELETE},
        "JobsDeadLetterQueue: SqsManagedSseEnabled",
    ),
    "route opted out of IAM": ({f"{ACCEPT_EVENT}.Auth": {"Authorizer": "NONE"}}, "uses authorizer NONE"),
    "api without IAM default": ({"Resources.Api.Properties.Auth.DefaultAuthorizer": DELETE}, "DefaultAuthorizer"),
    "implicit api": ({f"{ACCEPT_EVENT}.ApiId": DELETE}, "implicit API"),
    "GET route opted out of IAM": (
        {f"{GET_EVENT}.Auth": {"Authorizer": "NONE"}},
        "route GET /newsletters/{task_id} uses authorizer NONE",
    ),
    "GET route on implicit api": ({f"{GET_EVENT}.ApiId": DELETE}, "route GET /newsletters/{task_id} without ApiId"),
    "no GET route": (
        {f"{ACCEPT}.Events.GetNewsletter": DELETE},
        "route GET /newsletters/{task_id}: served by None, want AcceptFunction",
    ),
    "GET route moved": (
        {f"{GET_EVENT}.Path": "/newsletters/{id}"},
        "route GET /newsletters/{id}: served by AcceptFunction, want None",
    ),
    "table provisioned": ({f"{TABLE}.BillingMode": "PROVISIONED"}, "BillingMode is 'PROVISIONED'"),
    "ttl disabled": ({f"{TABLE}.TimeToLiveSpecification.Enabled": False}, "TimeToLiveSpecification must be enabled"),
    "ttl on other attribute": (
        {f"{TABLE}.TimeToLiveSpecification.AttributeName": "ttl"},
        "TimeToLiveSpecification must be enabled on expires_at",
    ),
    "no point-in-time recovery": ({f"{TABLE}.PointInTimeRecoverySpecification": DELETE}, "point-in-time recovery"),
    "table unencrypted": ({f"{TABLE}.SSESpecification.SSEEnabled": False}, "TasksTable: SSESpecification"),
    "worker without table": (
        {f"{WORKER}.Environment.Variables.TABLE_NAME": DELETE},
        "WorkerFunction: TABLE_NAME is None",
    ),
    "accept given the table arn": (
        {f"{ACCEPT}.Environment.Variables.TABLE_NAME": {"Fn::GetAtt": ["TasksTable", "Arn"]}},
        "AcceptFunction: TABLE_NAME is",
    ),
    "hash key in the template": (
        {f"{WORKER}.Environment.Variables.RECIPIENT_HASH_KEY": "not-so-secret-key"},
        "RECIPIENT_HASH_KEY is 'not-so-secret-key'",
    ),
    "hash key written down": (
        {"Resources.RecipientHashKey.Properties.SecretString": "not-so-secret-key"},
        "RecipientHashKey: the key must be generated",
    ),
    "x86_64": ({"Globals.Function.Architectures": ["x86_64"]}, "Architectures is ['x86_64']"),
    "old runtime": ({f"{ACCEPT}.Runtime": "provided.al2"}, "Runtime is 'provided.al2'"),
    "no binary": ({"Resources.WorkerFunction.Metadata.BuildProperties.Binary": DELETE}, "WorkerFunction: Metadata"),
}


def mutated(template, edits):
    t = copy.deepcopy(template)
    for path, value in edits.items():
        *parents, last = path.split(".")
        node = t
        for key in parents:
            node = node.setdefault(key, {})
        if value is DELETE:
            del node[last]
        else:
            node[last] = value
    return t


@pytest.mark.parametrize("edits, expected", MUTATIONS.values(), ids=MUTATIONS.keys())
def test_checks_catch(template, edits, expected):
    found = problems(mutated(template, edits))
    assert any(expected in p for p in found), found

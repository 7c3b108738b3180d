# keelson: `make run` starts a member on localhost:2379; `make test` passes every test.
CARGO ?= cargo
export CARGO_TARGET_DIR ?= $(CURDIR)/target
PROFILE_DIR := $(CARGO_TARGET_DIR)/debug
KEELSON_BIN := $(PROFILE_DIR)/keelson
RUN_ARGS ?=

.PHONY: run build deps test-deps test lint fmt clippy clean

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
test: test-deps build
	KEELSON_BIN=$(KEELSON_BIN) $(CARGO) test --locked --workspace --no-fail-fast

lint: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean

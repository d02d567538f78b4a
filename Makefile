# One entry point for people and CI: set-up, run, test, lint, type-check, bench, fuzz.
#   make run    set up (if needed) and run the product: server, broker, 50 simulated terminals
#   make test   set up (if needed), then lint, type-check and every test (cargo test, pytest)
VENV ?= .venv
PY := $(VENV)/bin/python
# rustup's cargo may be missing from a non-login shell's PATH.
export PATH := $(CURDIR)/$(VENV)/bin:$(HOME)/.cargo/bin:$(PATH)

.PHONY: setup develop run test test-rust test-py test-installs lint fmt typecheck bench fuzz check

setup:
	./scripts/setup.sh

develop: setup

run: setup
	./scripts/run_product.sh

# Sequential on purpose (also under -j): set-up, lint, type-check, Rust tests, Python tests,
# then the installs.
test: setup
	$(MAKE) --no-print-directory lint
	$(MAKE) --no-print-directory typecheck
	$(MAKE) --no-print-directory test-rust
	$(MAKE) --no-print-directory test-py
	$(MAKE) --no-print-directory test-installs

test-rust:
	cargo test --locked -p rust_core

test-py:
	$(PY) -m pytest -q

# Each install the README names (.[auditor], .[server], .[agent]) in a fresh venv, by its commands.
test-installs:
	./scripts/check_installs.sh

fmt:
	cargo fmt --all
	$(VENV)/bin/ruff format fleet agent rust_core tests bench
	$(VENV)/bin/ruff check --fix fleet agent rust_core tests bench

lint:
	cargo fmt --all -- --check
	cargo clippy --locked -p rust_core --all-targets --all-features -- -D warnings
	$(VENV)/bin/ruff format --check fleet agent rust_core tests bench
	$(VENV)/bin/ruff check fleet agent rust_core tests bench
	$(PY) -m fleet config validate firmware_configs

typecheck:
	$(VENV)/bin/mypy
	$(PY) -m mypy.stubtest rust_core._rust

bench: setup
	$(PY) bench/bench_seal.py

# Coverage-guided fuzzing of rust_core's parsers (cargo fuzz); FUZZ_SECONDS per target.
FUZZ_SECONDS ?= 60
fuzz:
	FUZZ_SECONDS=$(FUZZ_SECONDS) ./scripts/fuzz.sh

check: test

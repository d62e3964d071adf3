# siphon — the commands people look for. Every target installs what it needs.
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: all deps build test demo bench fuzz lint clean

all: build

deps:
	@bash scripts/deps.sh

build:
	$(CARGO) build --release --workspace

test: deps
	$(CARGO) test --workspace --release

demo: deps build
	@bash scripts/demo.sh

bench: deps
	$(CARGO) bench -p dataplane

fuzz:
	@bash scripts/fuzz.sh $(FUZZ_SECONDS)

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

clean:
	$(CARGO) clean

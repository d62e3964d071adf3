# sipvane — the commands people look for. Every target installs what it needs
# (scripts/deps.sh, apt-get, idempotent) and works on a fresh Debian 12 as root.
SHELL := /bin/bash
CARGO ?= cargo
FUZZ_SECONDS ?= 60

.PHONY: all deps build deb test demo bench bench-registrar bench-overload bench-micro fuzz sim chaos soak lint clean services-stop

all: build

## deps: install the system packages (SIPp, Redis, PostgreSQL, MariaDB, RTPEngine, ...)
deps:
	@bash scripts/deps.sh

## build: release build of the whole workspace
build:
	$(CARGO) build --release --workspace

## deb: the Debian package target/debian/sipvane_<version>_<arch>.deb (release build;
##      scripts/deb.sh, docs/deployment.md)
deb:
	@bash scripts/deps.sh --deb
	@CARGO="$(CARGO)" bash scripts/deb.sh

## test: the whole test suite; services the tests start are stopped even on failure.
##       The package test (control/tests/package_deb.rs) gets a .deb of this build's
##       own binaries (no second, release build): SIPVANE_DEB.
test: deps
	$(CARGO) test --workspace --profile ci --no-run
	@rc=0; deb=$$(bash scripts/deb.sh --profile ci --no-build) || exit 1; \
	  SIPVANE_DEB=$(CURDIR)/$$deb $(CARGO) test --workspace --profile ci --no-fail-fast || rc=$$?; \
	  bash scripts/services.sh stop-all; exit $$rc

## demo: build and run the demo
demo: deps build
	@bash scripts/demo.sh

## bench: sipvane, sipvane with HEP capture, sipvane with accounting (private
##        PostgreSQL) and Kamailio under a short bounded ladder of offered loads
##        up to saturation (scripts/bench.sh: table on stdout with calls/s at
##        saturation per worker, JSON and SVG in target/bench/), the same with
##        callers over TCP, one trunk over 1 then 2 workers (perf/saturation.sh),
##        user-space instructions per call of sipvane and Kamailio under callgrind
##        (perf/stat.sh), then heap bytes per active call in the core (call_memory)
BENCH_RATES ?= 500,1000,2000,5000,10000,20000
BENCH_STEP_MS ?= 3000
bench: deps
	$(CARGO) build --release -p control -p bench
	BENCH_RATES=$(BENCH_RATES) BENCH_STEP_MS=$(BENCH_STEP_MS) bash scripts/bench.sh
	bash perf/saturation.sh
	MODE=callgrind PROXIES=sipvane,kamailio bash perf/stat.sh 1000 200
	$(CARGO) bench -p dataplane --bench call_memory

## bench-registrar: REGISTER/s per core, sipvane's registrar next to Kamailio's
##        on the same PostgreSQL (scripts/bench_registrar.sh; target/bench/registrar.txt)
bench-registrar: deps
	$(CARGO) build --release -p control
	bash scripts/bench_registrar.sh

## bench-overload: the built-in generator offers 3x what one CPU-capped worker
##        sustains, with backlog shedding on and off (perf/overload.sh, needs
##        root for the cgroup; table in target/bench/overload.txt)
bench-overload: deps
	bash perf/overload.sh

## bench-micro: parser micro-benchmarks (criterion)
bench-micro: deps
	$(CARGO) bench -p dataplane

## fuzz: run the fuzzers for FUZZ_SECONDS each (scripts/fuzz.sh)
fuzz:
	@bash scripts/fuzz.sh $(FUZZ_SECONDS)

## sim: the long deterministic simulation of the proxy core (docs/reliability.md):
##      SIM_FLOWS calls per network profile (clean, lossy, harsh; 3 x 100k by default), seeds from SIM_SEED
SIM_FLOWS ?= 100000
SIM_SEED ?= 1000
sim:
	SIM_FLOWS=$(SIM_FLOWS) SIM_SEED=$(SIM_SEED) $(CARGO) test --profile ci -p dataplane --test sim \
	  long_run -- --ignored --nocapture

## chaos: one fault at a time during SIPp load through sipvane: a backend killed (-9),
##        frozen (SIGSTOP/SIGCONT) or answering 503; an RTPEngine killed and restarted,
##        Redis killed and restarted, PostgreSQL or MariaDB (dispatcher + acc) stopped
##        for 30 s; prints a table (target/chaos/table.md, docs/reliability.md). One
##        scenario: make chaos CHAOS="stop" (kill9 stop 503 rtpengine redis db db-mysql)
CHAOS ?=
chaos: deps
	@bash scripts/chaos.sh $(CHAOS)

## soak: SOAK_MINUTES (30) of steady SIPp load (SOAK_RATE calls/s, default 50, 3 s each,
##       2 REGISTER/s) through sipvane with RTPEngine, Redis events, PostgreSQL acc, HEP and
##       the registrar on; samples every 10 s to target/soak/samples.csv (+ soak.svg), then
##       failed calls, lost events/rows and an RSS verdict (scripts/soak.sh,
##       docs/reliability.md). perf/soak-saturation.sh finds the rate this setup saturates at.
SOAK_MINUTES ?= 30
SOAK_RATE ?= 50
soak: deps
	@SOAK_MINUTES=$(SOAK_MINUTES) SOAK_RATE=$(SOAK_RATE) bash scripts/soak.sh

## lint: formatting and clippy, warnings are errors
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## services-stop: stop every private service left running (scripts/services.sh)
services-stop:
	@bash scripts/services.sh stop-all

## clean: stop private services, remove build output and scratch files
clean: services-stop
	$(CARGO) clean
	rm -rf .tmp

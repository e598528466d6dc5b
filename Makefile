# geckohook: `make run` starts everything in one process, `make test` runs
# every test (installing redis-server, kcat and chromium first when missing).
GO      ?= go
BIN     ?= bin/geckohook
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)
ARGS    ?=
# How long `make fuzz` runs each fuzz target, and how long the fuzzer may
# spend shrinking each new input (Go's default, 60s, stalls short runs).
FUZZTIME         ?= 1m
FUZZMINIMIZETIME ?= 5s

# The fuzz targets, as package:Target (go test -fuzz takes one per run).
FUZZ_TARGETS := \
	./engine/contract:FuzzDecodeEvent \
	./engine/contract:FuzzAppendBody \
	./engine/kafkaio:FuzzDecodeFetch \
	./engine/api:FuzzAPIJSONBodies \
	./shard:FuzzDecodeMember

# $(call run-fuzz,TIME) runs every fuzz target for TIME; inputs that fail are
# saved under the package's testdata/fuzz and replayed by every go test.
run-fuzz = @for t in $(FUZZ_TARGETS); do \
		echo "fuzz $${t\#*:} for $(1)"; \
		$(GO) test -run '^$$' -fuzz "^$${t\#*:}$$" -fuzztime $(1) \
			-fuzzminimizetime $(FUZZMINIMIZETIME) "$${t%%:*}" || exit 1; \
	done

.PHONY: all build run test test-tools lint bench bench-go fuzz soak

all: build

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/geckohook

# The whole system in one process: embedded Kafka on 127.0.0.1:9092, embedded
# Redis on a free port, the API on 127.0.0.1:8080. Extra flags: make run ARGS="...".
run: build
	./$(BIN) all $(ARGS)

# The allocation tests (meaningful only without -race), then every test with
# the race detector against a real redis-server and kcat, then each fuzz
# target for 3 s beyond its starting corpus.
test: test-tools lint
	$(GO) test -count=1 -run 'Alloc' ./engine/contract/ ./engine/registry/ ./engine/kafkaio/ ./loadtest/
	$(GO) test -race -count=1 -timeout 15m ./...
	$(call run-fuzz,3s)

# Each fuzz target for FUZZTIME (default 1m): make fuzz FUZZTIME=10m.
fuzz: test-tools
	$(call run-fuzz,$(FUZZTIME))

# The capacity suite: every scenario against `geckohook broker`, redis-server
# and geckohook run as separate processes, each compared with the raw HTTP
# ceiling measured on the same receivers in the same run. One scenario:
# make bench SCENARIO=healthy. The short smoke of each: BENCH_SHORT=1.
# Writes bench/results/<timestamp>/report.json and report.html.
bench: build test-tools
	$(GO) build -o bin/geckoload ./cmd/geckoload
	./bin/geckoload -geckohook $(BIN) $(if $(SCENARIO),-scenario $(SCENARIO)) $(if $(filter 1,$(BENCH_SHORT)),-short)

# The soak (not part of make test): a paced flood for SOAK_MINUTES (default
# 10) while processes are killed and restarted, redis-server restarted,
# dispatchers join and leave, and endpoints fail, hang, drop connections and
# answer 410; then every (event, webhook) pair must be delivered, dead or
# deleted. SOAK_KEY repeats a run's chaos; SOAK_RATE sets events/s.
# Writes bench/results/<timestamp>/report.json and report.html.
soak: build test-tools
	$(GO) build -o bin/geckoload ./cmd/geckoload
	./bin/geckoload -geckohook $(BIN) -soak

# The Go benchmarks of the hot functions and the retry queue (real redis-server).
bench-go: test-tools
	$(GO) test -run xxx -bench . -benchmem ./bench ./engine/contract

# Installs the tools the tests talk to when they are missing: with apt-get as
# root or through sudo; otherwise says in one line what to install.
test-tools:
	@missing=""; \
	for t in redis-server:redis-server redis-cli:redis-tools kcat:kcat prometheus:prometheus promtool:prometheus curl:curl jq:jq python3:python3 ruby:ruby node:nodejs chromium:chromium; do \
		command -v $${t%%:*} >/dev/null 2>&1 || case " $$missing " in *" $${t#*:} "*) ;; *) missing="$$missing $${t#*:}";; esac; done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ]; then sudo=""; \
		elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo="sudo"; \
		else echo "make test needs:$$missing; install them (Debian/Ubuntu: sudo apt-get install -y$$missing) and run make test again"; exit 1; fi; \
		if ! command -v apt-get >/dev/null 2>&1; then echo "make test needs:$$missing; install them with your package manager and run make test again"; exit 1; fi; \
		echo "installing$$missing with apt-get"; \
		$$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq --no-install-recommends $$missing >/dev/null || exit 1; \
	fi

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

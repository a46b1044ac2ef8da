# xlb — see README.md. Every target installs what it needs (idempotently).
SHELL := /bin/bash
GO    ?= go
BIN   := $(CURDIR)/bin
export PATH := $(BIN):$(PATH)
export GOFLAGS ?= -buildvcs=false

VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X github.com/xlb-dev/xlb/internal/version.Version=$(VERSION)
STATICCHECK_VERSION := v0.8.2
# How long each fuzz target runs inside `make test` (seeds always run as unit tests).
FUZZTIME ?= 5s

.PHONY: all deps build generate check-generate lint test test-unit fuzz kube-bins demo demo-clean bench clean

all: build

## deps: Debian packages (clang/llvm/libbpf, iproute2, nftables, bird2, ...); idempotent.
deps:
	@scripts/install-deps.sh

## build: xlbd, xlb-ccm, xlbctl into bin/ (no clang needed: eBPF objects are committed).
build:
	@mkdir -p $(BIN)
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/ ./cmd/xlbd ./cmd/xlb-ccm ./cmd/xlbctl

## generate: rebuild the eBPF objects from bpf/*.c with clang (bpf2go).
generate: deps
	$(GO) generate ./dataplane/... ./test/bench/...

## check-generate: fail if the committed eBPF objects do not match bpf/*.c.
check-generate: deps
	@scripts/check-generate.sh

$(BIN)/staticcheck:
	@mkdir -p $(BIN)
	GOBIN=$(BIN) $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)

## lint: gofmt, go vet, staticcheck.
lint: $(BIN)/staticcheck
	@out=$$(gofmt -l $$(git ls-files '*.go' | grep -v '^tools/')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(BIN)/staticcheck ./...

## kube-bins: kube-apiserver, etcd, kubectl built from Go modules into bin/ (cached by version).
kube-bins:
	@tools/kube/build.sh

## test: the whole suite (unit, eBPF packet tests, namespace e2e, real apiserver, BGP), as root.
test: deps check-generate lint kube-bins
	$(GO) test -count=1 -p 2 -timeout 35m ./...
	@$(MAKE) --no-print-directory fuzz

## fuzz: run every fuzz target briefly (FUZZTIME each).
fuzz:
	@scripts/fuzz.sh $(FUZZTIME)

## demo: build everything and show traffic through a VIP, end to end.
demo: deps build kube-bins
	$(GO) build -o $(BIN)/ ./test/cmd/whoami
	@scripts/demo.sh

demo-clean:
	@scripts/demo.sh clean

## bench: datapath speed as ratios against baselines measured in the same run → docs/benchmarks.md.
bench: deps build
	$(GO) run ./test/bench -out docs/benchmarks.md

clean:
	rm -rf $(BIN)

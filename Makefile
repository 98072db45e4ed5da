# Detour. `make help` lists the targets.
SHELL := /bin/bash
GO ?= go
BIN := $(CURDIR)/bin
# The pinned BPF compiler: Debian 12's clang-19. `make generate` refuses any other.
CLANG ?= clang-19
CLANG_VERSION := 19.1.7
BINARIES := detour detour-agent detour-controller detour-echo
# An execution count, not a duration: with a duration, Go 1.26's fuzz
# coordinator can fail a target with a bare "context deadline exceeded" at
# the boundary under load (golang/go#75804, fixed in Go 1.27).
FUZZTIME ?= 30000x
# What `make generate` writes; CI checks it matches the sources.
GENERATED := '*_bpfel.go' '*_bpfel.o' '*.pb.go' 'zz_generated.*.go' 'pkg/generated' 'deploy/crds'

.PHONY: help build images generate check-generated test test-unit fuzz demo e2e soak bench bench-data lint clean

help: ## list the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-18s %s\n", $$1, $$2}'

build: ## build the binaries into bin/ (no clang needed: BPF objects are committed)
	@mkdir -p $(BIN)
	CGO_ENABLED=0 $(GO) build -o $(BIN)/detour ./cmd/ctl
	CGO_ENABLED=0 $(GO) build -o $(BIN)/detour-agent ./cmd/agent
	CGO_ENABLED=0 $(GO) build -o $(BIN)/detour-controller ./cmd/controller
	CGO_ENABLED=0 $(GO) build -o $(BIN)/detour-echo ./cmd/echo

IMAGE_TAG ?= dev
images: build ## wrap the agent, controller and echo binaries in image tarballs in bin/images (no Docker: hack/mkimage)
	@mkdir -p $(BIN)/images
	$(GO) run ./hack/mkimage -tag detour.local/detour-agent:$(IMAGE_TAG) -o $(BIN)/images/detour-agent.tar $(BIN)/detour-agent
	$(GO) run ./hack/mkimage -tag detour.local/detour-controller:$(IMAGE_TAG) -user 65532:65532 -o $(BIN)/images/detour-controller.tar $(BIN)/detour-controller
	$(GO) run ./hack/mkimage -tag detour.local/detour-echo:$(IMAGE_TAG) -o $(BIN)/images/detour-echo.tar $(BIN)/detour-echo

generate: ## rebuild the eBPF objects (pinned clang), the gRPC code (buf) and the Kubernetes API code and CRDs
	@$(CLANG) --version | grep -q 'version $(CLANG_VERSION)' || { echo "generate needs $(CLANG) $(CLANG_VERSION) (apt-get install clang-19)"; exit 1; }
	$(GO) generate ./pkg/redirect/... ./test/bench/...
	cd api && $(GO) tool -modfile=../tools/go.mod buf lint
	cd api && $(GO) tool -modfile=../tools/go.mod buf generate
	GO=$(GO) bash hack/update-codegen.sh

check-generated: generate ## fail if the committed generated files differ from what the sources build to
	@git diff --exit-code -- $(GENERATED) || { echo "generated files are stale: run make generate and commit"; exit 1; }
	@test -z "$$(git status --porcelain -- $(GENERATED))" || { git status --porcelain -- $(GENERATED); echo "generate made or removed files: commit them"; exit 1; }

test: ## run every test (as root: the privileged ones load BPF and make namespaces), then the fuzzers briefly
	$(GO) vet ./...
	$(GO) test -race -count=1 -timeout 25m ./...
	$(MAKE) fuzz

# test-unit: CI is unset so that a privileged test skips (as it does on a
# developer's machine) instead of failing. As root, the test binaries run as
# nobody (go test -exec setpriv): the privileged tests skip for the reason
# they would anywhere else, and a test that needs root without saying so
# fails here instead of passing by accident. The builds stay root's, with
# root's caches. So do the Kubernetes binaries of the envtest tests:
# test/cluster/build.sh, as root, makes sure they are built (at once when
# they are) and the tests get them ready-made in DETOUR_K8S_BIN, since
# nobody may not take the build's lock. When the build fails those tests
# skip and say why.
K8S_VERSION = $(shell sed -n 's/^K8S_VERSION=//p' test/cluster/build.sh)
DETOUR_K8S_CACHE ?= /var/cache/detour/k8s-$(K8S_VERSION)
test-unit: ## run the tests that need no root, as no root (privileged ones skip; as root, the tests run as nobody)
ifeq ($(shell id -u),0)
	-DETOUR_K8S_CACHE=$(DETOUR_K8S_CACHE) bash test/cluster/build.sh
	env -u CI DETOUR_K8S_BIN=$(DETOUR_K8S_CACHE)/bin $(GO) test -exec 'setpriv --reuid=65534 --regid=65534 --clear-groups --' ./...
else
	env -u CI $(GO) test ./...
endif

fuzz: ## run each fuzz target for FUZZTIME (default 30000x: executions)
	@set -e; for pkg in $$($(GO) list ./...); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz' || true); do \
	    echo "fuzz $$pkg $$f"; $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg; \
	  done; done

demo: build ## bring up the lab, intercept for alice and bob, send traffic, print who answered, tear down
	bash test/demo/demo.sh

e2e: ## Detour on a real single-node Kubernetes built here (as root; see test/e2e/run.sh): install, intercepts, RBAC, agent and pod restarts, uninstall
	bash test/e2e/run.sh

soak: ## many 100 MiB echoes through the sockmap L4 relay under CPU load, every byte checked (as root, ~2 min per 100 transfers; SOAK_TRANSFERS=100 SOAK_PARALLEL=2)
	$(GO) test -tags soak -run TestSoakSockmapRelay -count=1 -v -timeout 60m ./test/integration

bench: build ## measure the data path, environments, 1,000 intercepts on a port and create → effective (as root, ~10 min): ratios to direct and nginx; JSON to BENCH_OUT (default bench/out/results.json); BENCH_FLAGS=-h lists options
	$(GO) run ./test/bench $(BENCH_FLAGS)

bench-data: build ## time a branch of a 100 MB PostgreSQL database to Ready in the lab (as root, ~1 min; BENCH_DATA_RUNS=3)
	flock /tmp/detour-priv.lock $(GO) test -count=1 -run '^$$' -bench Branch100MB -benchtime $${BENCH_DATA_RUNS:-3}x -timeout 20m ./test/integration

# buf breaking compares the API with the protos at BUF_BREAKING_AGAINST, a
# git revision. The default is what makes the comparison say something: on
# a branch, the commit it forked from main (so: what the branch changes);
# on main itself, as in CI's fresh clone of the submitted main, where that
# would be HEAD and the check could never fail, HEAD's first parent (what
# the last commit or merge changed). Set it to compare with anything else,
# e.g. BUF_BREAKING_AGAINST=v1.0.0. The rules are buf.yaml's (PACKAGE: wire
# and generated-code compatibility).
BUF_BREAKING_AGAINST ?= $(shell b=$$(git merge-base HEAD main 2>/dev/null); \
  if [ -n "$$b" ] && [ "$$b" != "$$(git rev-parse HEAD)" ]; then echo "$$b"; else echo HEAD~1; fi)

# staticcheck: the checks of staticcheck.conf, over every package and the
# build-tagged tests, but not client-gen's output in pkg/generated (fixed by
# regenerating, not by hand). The tools module builds it, as it builds buf.
lint: ## gofmt, go vet, staticcheck, buf lint and buf breaking (against BUF_BREAKING_AGAINST: by default main's fork point, or HEAD~1 on main)
	@test -z "$$(gofmt -l $$(git ls-files '*.go' | grep -v '_bpfel.go$$'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt needed"; exit 1; }
	$(GO) vet ./...
	$(GO) vet -tags e2e,soak ./test/...
	$(GO) tool -modfile=tools/go.mod staticcheck -tags e2e,soak $$($(GO) list -tags e2e,soak ./... | grep -v '/pkg/generated/')
	cd api && $(GO) tool -modfile=../tools/go.mod buf lint
	@git rev-parse -q --verify '$(BUF_BREAKING_AGAINST)^{commit}' >/dev/null || { echo "buf breaking: no revision '$(BUF_BREAKING_AGAINST)' to compare with: set BUF_BREAKING_AGAINST"; exit 1; }
	@echo "buf breaking against $(BUF_BREAKING_AGAINST) ($$(git log -1 --format='%h %s' '$(BUF_BREAKING_AGAINST)'))"
	set -o pipefail; git archive --format=tar '$(BUF_BREAKING_AGAINST)' api | \
	  (cd api && $(GO) tool -modfile=../tools/go.mod buf breaking --against '-#format=tar,subdir=api')

clean: ## remove build output
	rm -rf $(BIN)

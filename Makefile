# listenwatch. `make run` and `make test` are the two commands the README
# promises work on a fresh machine (root, Linux with BTF, Go).

GO      ?= go
BIN     := bin/listenwatch
GOFLAGS ?=
VMTEST_KERNELS ?= 6.1 6.12 newest arm64-6.1

.PHONY: bench-bpf bench-scale dashboards dashboard-image rules-check e2e image all build run test unit integration deps generate generate-check vet bench vmtest vmlinux clean fuzz soak test-under-load

all: build

# Version stamped into the binary and the image: from git, reproducible
# (the date is the commit's, not the build's).
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
REVISION ?= $(shell git rev-parse HEAD 2>/dev/null)
CREATED  ?= $(shell git log -1 --format=%cI 2>/dev/null)
LDFLAGS  := -X main.version=$(VERSION) -X main.commit=$(REVISION) -X main.buildDate=$(CREATED)
IMAGE    ?= localhost/listenwatch:dev

build:
	$(GO) build $(GOFLAGS) -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/listenwatch

# The OCI image (amd64 and arm64, FROM scratch, no daemon needed):
# bin/listenwatch-image.tar, to import with
# `ctr -n k8s.io images import bin/listenwatch-image.tar` on a node, or to
# push with `skopeo copy oci-archive:bin/listenwatch-image.tar docker://REGISTRY/listenwatch:TAG`.
image:
	@mkdir -p bin
	$(GO) run ./cmd/mkimage -o bin/listenwatch-image.tar -name $(IMAGE) -version $(VERSION) -revision "$(REVISION)" -created "$(CREATED)"

# The exporter on this host with the default configuration (metrics on :9810).
run: build
	./$(BIN) run

# The whole suite, as CI runs it: tool install, generated code check, unit
# and integration tests against this kernel (root), then the kernel matrix
# on Debian's 6.1 LTS and newest backports kernels under qemu.
test: deps generate-check vet fuzz rules-check
	$(GO) test -count=1 -p 1 ./...
	VMTEST_KERNELS="6.1 newest arm64-6.1" ./scripts/vmtest.sh

# The Grafana dashboard and the Prometheus rules (plain and PrometheusRule)
# under deploy/, from package monitoring; a test fails when they drift.
dashboards:
	$(GO) run ./cmd/mkmonitoring

# docs/dashboard.png: the dashboard's key panels drawn (gonum/plot) from
# its own queries, evaluated by a real Prometheus during the integration
# scenarios (TestDashboardAndAlertsInPrometheus).
dashboard-image:
	LISTENWATCH_DASHBOARD_PNG=$(CURDIR)/docs/dashboard.png $(GO) test -count=1 -run 'TestDashboardAndAlertsInPrometheus' ./integration/

# The rules as Prometheus itself reads them, and their unit tests (each
# alert firing where it must and nowhere else): Debian's promtool.
rules-check:
	promtool check rules deploy/prometheus/listenwatch.rules.yml
	cd deploy/prometheus && promtool test rules listenwatch.rules.test.yml

# make test three times in a row with stress-ng beside it (RUNS=3): the
# suite must stay green on a loaded machine.
test-under-load:
	RUNS=$(RUNS) ./scripts/test-under-load.sh

RUNS ?= 3

# Every package but the real-kernel one (integration needs root and
# namespaces; bench's own tests are pure: its tables, pairing, packets):
# computed, so a new package cannot be skipped by a hand-kept list.
UNIT_PKGS = $(shell $(GO) list -f '{{.Dir}}' ./... | sed 's|^$(CURDIR)|.|' | grep -v -e '^./integration')

unit:
	$(GO) test -count=1 $(UNIT_PKGS)

integration:
	$(GO) test -count=1 -v ./integration/

deps:
	./scripts/install-deps.sh

vet:
	$(GO) vet ./...
	# arm64 is a release target: it must build and vet here too (its BPF
	# object is generated beside x86's; the arm64 guest of make test loads it).
	GOARCH=arm64 $(GO) build ./... && GOARCH=arm64 $(GO) vet ./...
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt: files above need formatting"; exit 1; }

# Rebuilds the BPF object and its Go bindings (bpf2go, clang-16, run by
# scripts/bpf2go.sh at a fixed path so that any checkout gets the same bytes).
generate:
	$(GO) generate ./loader/

# The committed bpf2go output must be what `make generate` produces.
generate-check: generate
	@git diff --exit-code --stat -- loader/ || { echo "generated files differ from the committed ones: run make generate and commit"; exit 1; }
	@test -z "$$(git status --porcelain --untracked-files=all -- loader/)" || { git status --short -- loader/; echo "untracked generated files"; exit 1; }

# Regenerates bpf/vmlinux.h from this kernel's BTF (not part of generate:
# the committed header pins the types the object is compiled against).
vmlinux:
	bpftool btf dump file /sys/kernel/btf/vmlinux format c > bpf/vmlinux.h

bench: build
	$(GO) test -run "^$$" -bench . -benchmem ./events/ ./loader/ ./exporter/
	$(GO) run ./bench -agent $(BIN) $(BENCHFLAGS)

# The BPF time per accepted connection of this tree against the agent built
# at BASELINE (a git revision), per program, side by side in one run
# (rounds A B B A): what a change to bpf/ gained or cost.
BASELINE ?= HEAD
bench-bpf: build
	rm -rf bin/baseline-src && mkdir -p bin/baseline-src
	git archive $(BASELINE) | tar -x -C bin/baseline-src
	cd bin/baseline-src && $(GO) build -o ../listenwatch-baseline ./cmd/listenwatch
	rm -rf bin/baseline-src
	$(GO) run ./bench -agent $(BIN) -bpf-baseline bin/listenwatch-baseline $(BENCHFLAGS)

# One busy node: 10,000 idle listeners in 100 namespaces (RSS, BPF map
# memory, /metrics time and size), listener churn (1,000/s for 30 s: no
# leaked map entries or series), and a table smaller than the node
# (evictions counted and logged).
bench-scale: build
	$(GO) run ./bench -agent $(BIN) -scale $(BENCHFLAGS)

# A real single-node Kubernetes (etcd, control plane, kubelet on
# containerd), the image above, `kubectl apply -k deploy/` as the README
# says, and a pod whose listener overflows. Kubernetes is built from Go
# modules once and cached in .cache/k8s (cold: about 15 minutes).
e2e: image
	./scripts/install-deps.sh e2e
	K8S_BIN=$$(./scripts/k8s-build.sh) && \
	LISTENWATCH_E2E_K8S_BIN=$$K8S_BIN LISTENWATCH_E2E_IMAGE=$(CURDIR)/bin/listenwatch-image.tar \
		$(GO) test -count=1 -v -timeout 60m -run '^TestKubernetesE2E$$' ./integration/

# The full kernel matrix: 6.1, 6.12 and the newest trixie-backports kernel,
# every hook mode each allows. One kernel: make vmtest VMTEST_KERNELS=6.12
vmtest:
	VMTEST_KERNELS="$(VMTEST_KERNELS)" ./scripts/vmtest.sh

clean:
	rm -rf bin

# Every fuzz target (found in the sources, not listed by hand) for a fixed
# number of inputs each (FUZZN): a count, not a duration, so a loaded
# machine takes longer instead of failing. Inputs that fail are kept by Go
# under the package's testdata/fuzz and replayed by every `go test`.
FUZZN ?= 20000x

fuzz:
	FUZZN=$(FUZZN) GO=$(GO) ./scripts/fuzz.sh

# The soak: LISTENWATCH_SOAK (10m) of listener churn, connection storms,
# overflows and SYN floods with an agent restart halfway; counts exact,
# nothing left behind, RSS flat. Not part of make test.
soak: deps
	$(GO) test -tags soak -count=1 -v -timeout 60m -run '^TestSoak$$' ./integration/

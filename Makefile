# Cocoon: containers in lightweight VMs.
#
#   make demo   set up this machine (packages, binaries, guest image) and run a container in a VM
#   make test   set up, then run every test, including the real-VM ones
#   make bench  print the performance figures
#   make fuzz   run every fuzz target for FUZZTIME each

GO        ?= go
PREFIX    ?= /usr/local
DATA_DIR  ?= /var/lib/cocoon
BIN       := bin
VERSION   := $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -s -w -X github.com/cocoon-runtime/cocoon/internal/version.Version=$(VERSION)
export PATH := /usr/local/go/bin:$(PATH)

# Debian packages the runtime and its tests use.
DEB_PACKAGES := qemu-system-x86 busybox-static cpio iproute2 ca-certificates gcc libc6-dev libseccomp-dev containerd runc containernetworking-plugins iptables e2fsprogs

# containerd 2.x, built from the module proxy, which the containerd tests
# also run against (besides Debian's containerd 1.6).
CONTAINERD2_VERSION ?= 2.1.5
CONTAINERD2_DIR     := $(DATA_DIR)/containerd-$(CONTAINERD2_VERSION)

.PHONY: all build deps image setup demo test unit vet bench fuzz clean install containerd2

all: build

# The agent runs runc's libcontainer, whose nsenter is C: cgo, linked
# statically because the guest has no libc.
AGENT_TAGS    := netgo osusergo seccomp
AGENT_LDFLAGS := $(LDFLAGS) -linkmode external -extldflags "-static"

build:
	CGO_ENABLED=1 $(GO) build -trimpath -tags '$(AGENT_TAGS)' -ldflags '$(AGENT_LDFLAGS)' -o $(BIN)/cocoon-agent ./cmd/cocoon-agent
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/cocoon ./cmd/cocoon
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/containerd-shim-cocoon-v2 ./cmd/containerd-shim-cocoon-v2

deps:
	@missing=$$(for p in $(DEB_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

image: build
	$(BIN)/cocoon --data-dir $(DATA_DIR) image build --agent $(BIN)/cocoon-agent

setup: deps image

# The main job: a busybox container (built locally, no registry) runs in
# its own VM and prints where it runs.
DEMO_BUNDLE ?= /tmp/cocoon-demo
demo: setup
	$(BIN)/cocoon --data-dir $(DATA_DIR) check || true
	rm -rf $(DEMO_BUNDLE)
	$(BIN)/cocoon spec --busybox --bundle $(DEMO_BUNDLE) -- \
		sh -c 'echo "hello from container $$(hostname) in a VM: guest kernel $$(uname -r), $$(nproc) vCPU, $$(free -m | awk "/Mem/{print \$$2}") MiB"'
	@echo "host kernel $$(uname -r); running the container:"
	$(BIN)/cocoon --data-dir $(DATA_DIR) run --bundle $(DEMO_BUNDLE) demo-$$$$

vet:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt needed"; exit 1; }
	$(GO) vet ./...

# The unit tier: every test that boots no VM (-short), under a trap that
# fails the run if anything starts QEMU (see scripts/unit.sh).
UNIT_PKGS ?= ./...
unit:
	GO=$(GO) scripts/unit.sh $(UNIT_PKGS)

# Every Fuzz function in a *_test.go file, one after another: go test runs
# one fuzz target of one package at a time. Their seed corpora also run as
# ordinary tests. Targets that write files (a store's records, a bundle's
# spec) write them to a tmpfs when there is one, not to a disk that fsyncs.
# Each new interesting input is minimized for at most FUZZMINIMIZE (go
# test's default, 60s, can spend a whole run on one input).
FUZZTIME     ?= 60s
FUZZMINIMIZE ?= 2s
FUZZFLAGS    ?=
FUZZTMPDIR   ?= $(if $(wildcard /dev/shm),/dev/shm,$(or $(TMPDIR),/tmp))

fuzz:
	@find . -name '*_test.go' -not -path './bin/*' | sort | xargs grep -H '^func Fuzz' | \
	sed -E 's|^(.*)/[^/]*:func (Fuzz[A-Za-z0-9_]*).*|\1 \2|' | \
	while read -r pkg name; do \
		echo "== $$pkg $$name ($(FUZZTIME))"; \
		TMPDIR=$(FUZZTMPDIR) $(GO) test -run='^$$' -fuzz="^$$name\$$" -fuzztime=$(FUZZTIME) -fuzzminimizetime=$(FUZZMINIMIZE) $(FUZZFLAGS) $$pkg </dev/null || exit 1; \
	done

containerd2:
	scripts/build-containerd2.sh $(CONTAINERD2_VERSION) $(CONTAINERD2_DIR)

test: setup vet containerd2
	COCOON_REQUIRE_VM=1 COCOON_DATA_DIR=$(DATA_DIR) $(GO) test -count=1 -timeout 25m ./...
	@echo "containerd tests again, under containerd $(CONTAINERD2_VERSION):"
	COCOON_REQUIRE_VM=1 COCOON_DATA_DIR=$(DATA_DIR) COCOON_CONTAINERD=$(CONTAINERD2_DIR)/bin/containerd COCOON_LOAD_CYCLES=20 \
		$(GO) test -count=1 -timeout 10m ./integration/ ./internal/ctrtest/

bench: setup
	$(GO) run ./bench/vmboot -n 5
	$(GO) run ./bench/container
	$(GO) run ./bench/pod
	$(GO) run ./bench/network

install: build
	install -m 0755 $(BIN)/cocoon $(BIN)/cocoon-agent $(BIN)/containerd-shim-cocoon-v2 $(PREFIX)/bin/

clean:
	rm -rf $(BIN)

# Basalt. `make demo` builds an image end to end; `make test` runs every test (what CI runs).
GO        ?= go
BIN       := bin
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -s -w -X main.version=$(VERSION)
export CGO_ENABLED := 0

.PHONY: all build deps demo boot test e2e vet fmt bench clean

all: build

build:
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/ ./builder/cmd/basalt ./updater/cmd/basalt-updater ./bootloader/cmd/basalt-init

deps:
	bash hack/deps.sh

demo: deps build
	bash hack/demo.sh

# Boots the demo's updated device image (after make demo) in QEMU: v1.1.0 on trial. Ctrl-A X quits.
boot:
	bash hack/boot.sh out/demo/device.raw

vet:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { echo "gofmt needed:"; gofmt -l $$(git ls-files '*.go'); exit 1; }
	$(GO) vet ./...
	$(GO) vet -tags e2e ./hack/e2e

# gotestsum prints the summary line ("DONE N tests, M failures in Xs"). The e2e tag adds the QEMU suite
# (hack/e2e: OVMF with Secure Boot, systemd-boot, swtpm, a write-cache disk, twelve scenarios; about 30 minutes on 2 cores
# without KVM) to the unit tests.
test: deps vet
	$(GO) tool gotestsum --format pkgname-and-test-fails -- -count=1 -timeout 60m -tags e2e ./...
	@echo "end-to-end scenario times (out/e2e/times.txt):"; cat out/e2e/times.txt

# Only the QEMU end-to-end suite, with every test's log lines; serial logs are kept in out/e2e/logs.
e2e: deps
	$(GO) tool gotestsum --format standard-verbose -- -count=1 -timeout 50m -tags e2e -run TestScenarios ./hack/e2e

bench:
	bash hack/bench/build.sh
	bash hack/bench/install.sh

clean:
	rm -rf $(BIN) out

# Basalt. `make demo` builds an image end to end; `make test` runs every test (what CI runs).
GO        ?= go
BIN       := bin
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -s -w -X main.version=$(VERSION)
export CGO_ENABLED := 0

.PHONY: all build deps demo test vet fmt bench clean

all: build

build:
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/ ./builder/cmd/basalt ./updater/cmd/basalt-updater

deps:
	bash hack/deps.sh

demo: deps build
	bash hack/demo.sh

vet:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { echo "gofmt needed:"; gofmt -l $$(git ls-files '*.go'); exit 1; }
	$(GO) vet ./...

# gotestsum prints the summary line ("DONE N tests, M failures in Xs").
test: vet
	$(GO) tool gotestsum --format pkgname-and-test-fails -- -count=1 -timeout 45m ./...

bench:
	bash hack/bench/build.sh
	bash hack/bench/install.sh

clean:
	rm -rf $(BIN) out

#!/usr/bin/env bash
# Build the real `dolt` (for a Dolt sql-server that several bd clients share) into a cache folder
# that later runs reuse, and print the binary's path on stdout. Progress and the build time go to
# stderr. How it is built (from the Go module proxy, without `go install`):
# scripts/build_go_binary.sh. The version is the one bd v1.3.0's go.mod requires, so the server
# and bd's embedded engine are the same Dolt.
set -euo pipefail
DOLT_VERSION="${DOLT_VERSION:-v0.40.5-0.20260715172757-a6690826d767}"   # required by bd v1.3.0
MODULE=github.com/dolthub/dolt/go
CACHE="${DISPATCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/dispatch-dolt}/$DOLT_VERSION"
exec bash "$(dirname "$0")/build_go_binary.sh" "$MODULE" "$DOLT_VERSION" ./cmd/dolt "$CACHE/dolt" \
  "about 2 minutes once bd's modules are in Go's cache"

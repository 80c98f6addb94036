#!/usr/bin/env bash
# Build the real beads `bd` (embedded Dolt) into a cache folder that later runs reuse, and print
# the binary's path on stdout. Progress and the build time go to stderr. How it is built (from
# the Go module proxy, without `go install`): scripts/build_go_binary.sh.
set -euo pipefail
BD_VERSION="${BD_VERSION:-v1.3.0}"   # the newest version the Go module proxy serves
MODULE=github.com/steveyegge/beads   # the repository moved to gastownhall/beads; the module path did not
CACHE="${DISPATCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/dispatch-bd}/$BD_VERSION"
exec bash "$(dirname "$0")/build_go_binary.sh" "$MODULE" "$BD_VERSION" ./cmd/bd "$CACHE/bd" \
  "about 10 minutes the first time"

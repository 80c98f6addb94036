#!/usr/bin/env bash
# Build the real beads `bd` (embedded Dolt) into a cache folder that later runs reuse, and print
# the binary's path on stdout. Progress and the build time go to stderr.
#
# `go install github.com/steveyegge/beads/cmd/bd@VERSION` is the documented way, but it also asks
# the module proxy for the module's version list (to look up deprecations), which the proxy
# refuses here (403). So: download that exact version's module source from the proxy, and build
# it in a writable copy, with its own go.mod (the same result as go install).
set -euo pipefail
BD_VERSION="${BD_VERSION:-v1.3.0}"   # the newest version the Go module proxy serves
MODULE=github.com/steveyegge/beads   # the repository moved to gastownhall/beads; the module path did not
CACHE="${DISPATCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/dispatch-bd}/$BD_VERSION"
BIN="$CACHE/bd"

if [ -x "$BIN" ] && "$BIN" version >/dev/null 2>&1; then
  echo "$BIN"
  exit 0
fi
command -v go >/dev/null || { echo "install_bd.sh: go is not on PATH" >&2; exit 1; }
mkdir -p "$CACHE"
start=$(date +%s)
echo "building bd $BD_VERSION (takes about 10 minutes the first time)..." >&2
scratch=$(mktemp -d)
trap 'chmod -R u+w "$scratch" 2>/dev/null; rm -rf "$scratch"' EXIT
dir=$(cd "$scratch" && go mod init scratch >/dev/null 2>&1 && go mod download -json "$MODULE@$BD_VERSION" \
      | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
[ -n "$dir" ] || { echo "install_bd.sh: could not download $MODULE@$BD_VERSION" >&2; exit 1; }
cp -r "$dir" "$scratch/src"
chmod -R u+w "$scratch/src"
(cd "$scratch/src" && CGO_ENABLED=1 GOFLAGS=-tags=gms_pure_go go build -o "$BIN.tmp" ./cmd/bd) >&2
mv "$BIN.tmp" "$BIN"
echo "built bd $BD_VERSION in $(( $(date +%s) - start )) s: $BIN" >&2
echo "$BIN"

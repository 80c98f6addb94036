#!/usr/bin/env bash
# Build the real `dolt` (for a Dolt sql-server that several bd clients share) into a cache folder
# that later runs reuse, and print the binary's path on stdout. Progress and the build time go to
# stderr.
#
# Built as scripts/install_bd.sh builds bd, for the same reason (the module proxy refuses the
# version-list lookup that `go install` makes): download the exact module version from the proxy
# and build it in a writable copy. The version is the one bd v1.3.0's go.mod requires, so the
# server and bd's embedded engine are the same Dolt.
set -euo pipefail
DOLT_VERSION="${DOLT_VERSION:-v0.40.5-0.20260715172757-a6690826d767}"   # required by bd v1.3.0
MODULE=github.com/dolthub/dolt/go
CACHE="${DISPATCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/dispatch-dolt}/$DOLT_VERSION"
BIN="$CACHE/dolt"

if [ -x "$BIN" ] && "$BIN" version >/dev/null 2>&1; then
  echo "$BIN"
  exit 0
fi
command -v go >/dev/null || { echo "install_dolt.sh: go is not on PATH" >&2; exit 1; }
mkdir -p "$CACHE"
start=$(date +%s)
echo "building dolt $DOLT_VERSION (takes about 2 minutes once bd's modules are cached)..." >&2
scratch=$(mktemp -d)
trap 'chmod -R u+w "$scratch" 2>/dev/null; rm -rf "$scratch"' EXIT
dir=$(cd "$scratch" && go mod init scratch >/dev/null 2>&1 && go mod download -json "$MODULE@$DOLT_VERSION" \
      | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
[ -n "$dir" ] || { echo "install_dolt.sh: could not download $MODULE@$DOLT_VERSION" >&2; exit 1; }
cp -r "$dir" "$scratch/src"
chmod -R u+w "$scratch/src"
(cd "$scratch/src" && CGO_ENABLED=1 GOFLAGS=-tags=gms_pure_go go build -o "$BIN.tmp" ./cmd/dolt) >&2
mv "$BIN.tmp" "$BIN"
echo "built dolt $DOLT_VERSION in $(( $(date +%s) - start )) s: $BIN" >&2
echo "$BIN"

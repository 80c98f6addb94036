#!/usr/bin/env bash
# Build one command of a Go module, at an exact version, into a cache file that later runs reuse,
# and print the binary's path on stdout (progress and the build time go to stderr). Used by
# install_bd.sh and install_dolt.sh.
#
#   build_go_binary.sh MODULE VERSION PACKAGE BINARY HOW_LONG
#
# `go install MODULE/PACKAGE@VERSION` is the documented way, but it also asks the module proxy for
# the module's version list (to look up deprecations), which the proxy refuses here (403). So:
# download that exact version's module source from the proxy, and build it in a writable copy,
# with its own go.mod (the same result as go install). No network beyond the Go module proxy.
set -euo pipefail
MODULE=$1 VERSION=$2 PACKAGE=$3 BIN=$4 HOW_LONG=$5
NAME=$(basename "$BIN")

if [ -x "$BIN" ] && "$BIN" version >/dev/null 2>&1; then
  echo "$BIN"
  exit 0
fi
command -v go >/dev/null || { echo "install_$NAME.sh: go is not on PATH" >&2; exit 1; }
mkdir -p "$(dirname "$BIN")"
start=$(date +%s)
echo "building $NAME $VERSION (takes $HOW_LONG)..." >&2
scratch=$(mktemp -d)
trap 'chmod -R u+w "$scratch" 2>/dev/null; rm -rf "$scratch"' EXIT
dir=$(cd "$scratch" && go mod init scratch >/dev/null 2>&1 && go mod download -json "$MODULE@$VERSION" \
      | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
[ -n "$dir" ] || { echo "install_$NAME.sh: could not download $MODULE@$VERSION" >&2; exit 1; }
cp -r "$dir" "$scratch/src"
chmod -R u+w "$scratch/src"
(cd "$scratch/src" && CGO_ENABLED=1 GOFLAGS=-tags=gms_pure_go go build -o "$BIN.tmp" "$PACKAGE") >&2
mv "$BIN.tmp" "$BIN"
echo "built $NAME $VERSION in $(( $(date +%s) - start )) s: $BIN" >&2
echo "$BIN"

#!/usr/bin/env bash
# Install the pinned Aider into a virtual environment of its own, in a cache folder that later
# runs reuse, and print the aider executable's path on stdout. Progress and the install time go
# to stderr.
#
# Its own environment, because aider-chat pins exact versions of requests, filelock and
# GitPython, which must not meet the toolkit's. The cache is outside the checkout: the install
# is large (about 700 MB) and takes a minute or two.
set -euo pipefail
AIDER_VERSION="${AIDER_VERSION:-0.86.2}"   # the version the real-Aider tests and README verify
CACHE="${DISPATCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}}/dispatch-aider/$AIDER_VERSION"
BIN="$CACHE/bin/aider"

works() { [ -x "$BIN" ] && "$BIN" --version 2>/dev/null | grep -q "$AIDER_VERSION"; }

if works; then
  echo "$BIN"
  exit 0
fi
start=$(date +%s)
echo "installing aider-chat $AIDER_VERSION into $CACHE (a minute or two the first time)..." >&2
rm -rf "$CACHE"  # a half-made environment from an interrupted install
mkdir -p "$(dirname "$CACHE")"
python3 -m venv "$CACHE" >&2
"$CACHE/bin/python" -m pip install -q --disable-pip-version-check "aider-chat==$AIDER_VERSION" >&2
works || { echo "install_aider.sh: $BIN does not run after the install" >&2; exit 1; }
echo "installed aider-chat $AIDER_VERSION in $(( $(date +%s) - start )) s: $BIN" >&2
echo "$BIN"

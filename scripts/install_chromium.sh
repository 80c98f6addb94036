#!/usr/bin/env bash
# Headless Chromium for the run report's browser test (tests/test_run_report.py), from Debian's
# `chromium` package. A no-op when a Chromium is already on PATH. Prints the browser's path.
set -euo pipefail
for name in chromium chromium-browser google-chrome; do
  if command -v "$name" >/dev/null 2>&1; then
    command -v "$name"
    exit 0
  fi
done
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "Chromium is not installed: install it with your package manager (Debian/Ubuntu: apt-get install chromium)" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >&2
apt-get install -y -q chromium >&2
command -v chromium

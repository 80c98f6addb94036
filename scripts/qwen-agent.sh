#!/usr/bin/env sh
# Aider with a Qwen coder model on Ollama, for dispatch_config.json:
#   "worker_command": ["sh", "scripts/qwen-agent.sh", "{message_file}", "{files}"]
# QWEN_MODEL picks the model (default qwen2.5-coder:7b); OLLAMA_API_BASE the server.
# Arguments are passed on quoted, never evaluated.
set -eu
model="${QWEN_MODEL:-qwen2.5-coder:7b}"
OLLAMA_API_BASE="${OLLAMA_API_BASE:-http://127.0.0.1:11434}"
export OLLAMA_API_BASE
message_file="$1"
shift
exec aider --message-file "$message_file" --yes-always --no-gitignore --no-check-update --no-analytics \
  --no-show-model-warnings --no-pretty --git-commit-verify --model "ollama_chat/$model" "$@" </dev/null

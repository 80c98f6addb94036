# Aider with a Qwen coder model on Ollama, for dispatch_config.json on Windows:
#   "worker_command": ["powershell", "-NoProfile", "-ExecutionPolicy", "Bypass",
#                      "-File", "scripts/qwen-agent.ps1", "{message_file}", "{files}"]
# QWEN_MODEL picks the model (default qwen2.5-coder:7b); OLLAMA_API_BASE the server.
# Arguments are passed on as they are, never evaluated.
param(
    [Parameter(Mandatory = $true)][string]$MessageFile,
    [Parameter(ValueFromRemainingArguments = $true)][string[]]$Files = @()
)
$model = if ($env:QWEN_MODEL) { $env:QWEN_MODEL } else { "qwen2.5-coder:7b" }
if (-not $env:OLLAMA_API_BASE) { $env:OLLAMA_API_BASE = "http://127.0.0.1:11434" }
& aider --message-file $MessageFile --yes-always --no-gitignore --no-check-update --no-analytics `
    --no-show-model-warnings --no-pretty --git-commit-verify --model "ollama_chat/$model" @Files
exit $LASTEXITCODE

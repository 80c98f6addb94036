"""A loopback LLM server speaking Ollama's API and the OpenAI chat API, with scripted replies.

Shapes follow docs/real-tools.md: /api/chat answers {"model", "message": {"role", "content"},
"done", "done_reason", "prompt_eval_count", "eval_count", ...}; an unknown model is HTTP 404
{"error": "model 'x' not found"}; /api/tags lists models; /v1/chat/completions answers with
choices and usage. `llama_cpp=True` makes it behave like llama.cpp's server: no /api routes, and
the {"type": "json_schema"} response format answers HTTP 500.

What real Aider 0.86.2 sends through litellm (seen against a scripted server, docs/real-tools.md)
is served too, so the real Aider can run against this double:
- `POST /api/show {"name": MODEL}` (about five per start, for the context length): the fields
  litellm reads, `model_info` with `<arch>.context_length` and `template`, plus `details`.
- `/api/chat` streams unless the request says `"stream": false`, as Ollama does: NDJSON lines
  `{"model", "created_at", "message": {"role": "assistant", "content": PIECE}, "done": false}`,
  then one `"done": true` line with `done_reason` and the token counts. Aider streams the edit
  and asks for the commit message with `"stream": false`.
- `/v1/chat/completions` with `"stream": true` answers server-sent events: `data: {chunk}` with
  `choices[0].delta.content`, a last chunk with `finish_reason`, a usage chunk when
  `stream_options.include_usage` asks for it, then `data: [DONE]`.
A streamed body has no Content-Length and ends when the connection closes (HTTP/1.0).

`answer`, when set, is the model: a function of the request body that returns the reply's
content (the scripted replies are for tests that know the order of their requests; parallel
Aider workers do not).
"""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Reply:
    """One scripted answer: content for the model to "say", or an HTTP failure, or a hang."""

    def __init__(self, content: str = "", status: int = 200, error: str | None = None, hang: float = 0,
                 raw_body: bytes | None = None, stop: str = "stop"):
        self.content, self.status, self.error, self.hang, self.raw_body = content, status, error, hang, raw_body
        self.stop = stop  # why generation ended: "length" when the output bound cut it


class FakeLLM:
    def __init__(self, models=("qwen2.5-coder:7b",), llama_cpp: bool = False):
        self.models = list(models)
        self.llama_cpp = llama_cpp
        self.replies: list[Reply] = []
        self.requests: list[dict] = []
        self.answer = None  # a function of the request body that returns the reply's content
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def script(self, *replies: Reply | str) -> None:
        self.replies.extend(r if isinstance(r, Reply) else Reply(r) for r in replies)

    def _next(self, body: dict) -> Reply:
        if self.answer is not None:
            return Reply(self.answer(body))
        with self.lock:
            if not self.replies:
                return Reply(status=500, error="the test scripted no more replies")
            return self.replies.pop(0)

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status: int, body: dict | bytes) -> None:
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                try:
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout test)

            def do_GET(self):
                if self.path == "/api/tags" and not fake.llama_cpp:
                    self._send(200, {"models": [{"name": m, "model": m, "size": 1} for m in fake.models]})
                elif self.path == "/v1/models":
                    self._send(200, {"object": "list", "data": [{"id": m, "object": "model"} for m in fake.models]})
                else:
                    self._send(404, b"404 page not found")

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                with fake.lock:
                    fake.requests.append({"path": self.path, "body": body})
                if self.path == "/api/chat" and not fake.llama_cpp:
                    self._ollama(body)
                elif self.path == "/api/show" and not fake.llama_cpp:
                    self._show(body)
                elif self.path == "/v1/chat/completions":
                    self._openai(body)
                else:
                    self._send(404, b"404 page not found")

            def _stream(self, content_type: str, lines: list[bytes]) -> None:
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.end_headers()
                try:
                    for line in lines:
                        self.wfile.write(line)
                        self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def _play(self, error_body, body: dict):
                """The next scripted reply: answers a scripted failure itself (and returns None)."""
                reply = fake._next(body)
                if reply.hang:
                    time.sleep(reply.hang)
                if reply.raw_body is not None:
                    self._send(reply.status, reply.raw_body)
                elif reply.status != 200 or reply.error:
                    self._send(reply.status, error_body(reply.error or "internal error"))
                else:
                    return reply
                return None

            def _ollama(self, body):
                if body.get("model") not in fake.models:
                    return self._send(404, {"error": f"model '{body.get('model')}' not found"})
                reply = self._play(lambda message: {"error": message}, body)
                if reply is None:
                    return
                done = {"model": body["model"], "created_at": "2026-11-27T12:00:00Z",
                        "message": {"role": "assistant", "content": reply.content},
                        "done": True, "done_reason": reply.stop, "total_duration": 1000,
                        "prompt_eval_count": 100 + len(json.dumps(body["messages"])) // 4,
                        "eval_count": len(reply.content) // 4}
                if body.get("stream", True) is False:
                    return self._send(200, done)
                lines = [{"model": body["model"], "created_at": "2026-11-27T12:00:00Z",
                          "message": {"role": "assistant", "content": piece}, "done": False}
                         for piece in pieces(reply.content)]
                lines.append({**done, "message": {"role": "assistant", "content": ""}})
                self._stream("application/x-ndjson", [json.dumps(line).encode() + b"\n" for line in lines])

            def _show(self, body):
                model = body.get("model") or body.get("name")
                if model not in fake.models:
                    return self._send(404, {"error": f"model '{model}' not found"})
                self._send(200, {"modelfile": f"FROM {model}\n", "parameters": "temperature 0",
                                 "template": "{{ .Prompt }}",
                                 "details": {"format": "gguf", "family": "qwen2", "parameter_size": "7.6B",
                                             "quantization_level": "Q4_K_M"},
                                 "model_info": {"general.architecture": "qwen2", "qwen2.context_length": 32768},
                                 "capabilities": ["completion"]})

            def _openai(self, body):
                if body.get("model") not in fake.models:
                    return self._send(404, {"error": {"message": f"model \"{body.get('model')}\" not found, "
                                                                 "try pulling it first", "type": "api_error"}})
                fmt = (body.get("response_format") or {}).get("type")
                if fake.llama_cpp and fmt == "json_schema":
                    return self._send(500, {"error": {"code": 500, "message": "Unrecognized response_format type",
                                                      "type": "server_error"}})
                reply = self._play(lambda message: {"error": {"message": message, "type": "server_error"}}, body)
                if reply is None:
                    return
                if body.get("stream") is True:
                    return self._openai_stream(body, reply)
                self._send(200, {"id": "chatcmpl-1", "object": "chat.completion", "model": body["model"],
                                 "choices": [{"index": 0, "finish_reason": reply.stop,
                                              "message": {"role": "assistant", "content": reply.content}}],
                                 "usage": {"prompt_tokens": 120, "completion_tokens": len(reply.content) // 4,
                                           "total_tokens": 120 + len(reply.content) // 4}})

            def _openai_stream(self, body, reply):
                head = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1795000000,
                        "model": body["model"]}
                chunks = [{**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": piece},
                                                "finish_reason": None}]} for piece in pieces(reply.content)]
                chunks.append({**head, "choices": [{"index": 0, "delta": {}, "finish_reason": reply.stop}]})
                if (body.get("stream_options") or {}).get("include_usage"):
                    chunks.append({**head, "choices": [], "usage": {
                        "prompt_tokens": 120, "completion_tokens": len(reply.content) // 4,
                        "total_tokens": 120 + len(reply.content) // 4}})
                events = [b"data: " + json.dumps(chunk).encode() + b"\n\n" for chunk in chunks]
                self._stream("text/event-stream", events + [b"data: [DONE]\n\n"])

        return Handler


def pieces(content: str, size: int = 16) -> list[str]:
    """A reply cut the way a streaming server sends it: a few tokens at a time."""
    return [content[i:i + size] for i in range(0, len(content), size)] or [""]

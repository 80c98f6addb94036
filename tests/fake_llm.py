"""A loopback LLM server speaking Ollama's API and the OpenAI chat API, with scripted replies.

Shapes follow docs/real-tools.md: /api/chat answers {"model", "message": {"role", "content"},
"done", "done_reason", "prompt_eval_count", "eval_count", ...}; an unknown model is HTTP 404
{"error": "model 'x' not found"}; /api/tags lists models; /v1/chat/completions answers with
choices and usage. `llama_cpp=True` makes it behave like llama.cpp's server: no /api routes, and
the {"type": "json_schema"} response format answers HTTP 500.
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

    def _next(self) -> Reply:
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
                elif self.path == "/v1/chat/completions":
                    self._openai(body)
                else:
                    self._send(404, b"404 page not found")

            def _play(self, error_body):
                """The next scripted reply: answers a scripted failure itself (and returns None)."""
                reply = fake._next()
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
                reply = self._play(lambda message: {"error": message})
                if reply is None:
                    return
                self._send(200, {"model": body["model"], "created_at": "2026-11-27T12:00:00Z",
                                 "message": {"role": "assistant", "content": reply.content},
                                 "done": True, "done_reason": reply.stop, "total_duration": 1000,
                                 "prompt_eval_count": 100 + len(json.dumps(body["messages"])) // 4,
                                 "eval_count": len(reply.content) // 4})

            def _openai(self, body):
                if body.get("model") not in fake.models:
                    return self._send(404, {"error": {"message": f"model \"{body.get('model')}\" not found, "
                                                                 "try pulling it first", "type": "api_error"}})
                fmt = (body.get("response_format") or {}).get("type")
                if fake.llama_cpp and fmt == "json_schema":
                    return self._send(500, {"error": {"code": 500, "message": "Unrecognized response_format type",
                                                      "type": "server_error"}})
                reply = self._play(lambda message: {"error": {"message": message, "type": "server_error"}})
                if reply is None:
                    return
                self._send(200, {"id": "chatcmpl-1", "object": "chat.completion", "model": body["model"],
                                 "choices": [{"index": 0, "finish_reason": reply.stop,
                                              "message": {"role": "assistant", "content": reply.content}}],
                                 "usage": {"prompt_tokens": 120, "completion_tokens": len(reply.content) // 4,
                                           "total_tokens": 120 + len(reply.content) // 4}})

        return Handler

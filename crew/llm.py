"""The LLM client: Ollama's /api/chat or an OpenAI-compatible /v1/chat/completions, asking for JSON."""
from __future__ import annotations

import dataclasses
import json
import re
from typing import Any, TypedDict

import requests

from crew import config as configuration
from crew import errors


class LLMError(errors.UserError):
    pass


class LLMRetryable(LLMError):
    """A reply worth asking again for: HTTP 5xx, a timeout, a body that is not JSON."""


@dataclasses.dataclass
class LLMReply:
    content: str
    prompt_tokens: int = 0
    completion_tokens: int = 0


class ChatMessage(TypedDict):
    role: str  # "system", "user" or "assistant"
    content: str


class LLMClient:
    """One chat request at a time, with the JSON schema the reply must follow."""

    def __init__(self, config: configuration.Settings, model: str | None = None):
        self.config = config
        self.model = model or config.llm_model
        self.url = config.llm_url
        self.session = requests.Session()
        self.session.trust_env = False  # a proxy setting must not capture a loopback server
        self._openai_format = "json_schema"

    def available_models(self) -> list[str]:
        """The models the server has (Ollama's /api/tags, or /v1/models)."""
        path = "/api/tags" if self.config.llm_api == "ollama" else "/v1/models"
        try:
            response = self.session.get(self.url + path, timeout=min(self.config.llm_timeout_secs, 10))
        except (requests.ConnectionError, requests.Timeout):
            raise self._unreachable() from None
        body = self._check(response)
        items = body.get("models") if self.config.llm_api == "ollama" else body.get("data")
        return [name for m in items or [] if isinstance(m, dict)
                if isinstance(name := m.get("name") or m.get("id"), str)]

    def chat(self, messages: list[ChatMessage], schema: dict[str, Any]) -> LLMReply:
        if self.config.llm_api == "ollama":
            return self._ollama(messages, schema)
        return self._openai(messages, schema)

    def _post(self, path: str, body: dict[str, Any]) -> requests.Response:
        url = self.url + path
        try:
            return self.session.post(url, json=body, timeout=self.config.llm_timeout_secs)
        except requests.ConnectionError:
            raise self._unreachable() from None
        except requests.Timeout:
            raise LLMRetryable(f"the LLM server at {self.url} did not answer within "
                               f"{self.config.llm_timeout_secs:g} s (llm_timeout_secs)") from None

    def _unreachable(self) -> LLMError:
        hint = "is `ollama serve` running" if self.config.llm_api == "ollama" else "is the server running"
        return LLMError(f"cannot reach the LLM server at {self.url} ({hint} at that address?)")

    def _check(self, response: requests.Response) -> dict[str, Any]:
        try:
            body = response.json()
        except ValueError:
            body = None
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict):  # OpenAI style
            error = error.get("message") or json.dumps(error)
        if response.status_code == 404 and error and "not found" in str(error):
            pull = f" (run `ollama pull {self.model}`)" if self.config.llm_api == "ollama" else ""
            raise LLMError(f"model {self.model!r} not found on {self.url}{pull}")
        if response.status_code >= 500:
            raise LLMRetryable(f"the LLM server answered HTTP {response.status_code}: {error or response.text[:200]}")
        if response.status_code >= 400:
            raise LLMError(f"the LLM server refused the request (HTTP {response.status_code}): "
                           f"{error or response.text[:200]}")
        if error:  # Ollama reports a failure during generation as an "error" under 200
            raise LLMRetryable(f"the LLM server reported an error: {error}")
        if not isinstance(body, dict):
            raise LLMRetryable(f"the LLM server answered with a body that is not JSON: {response.text[:120]!r}")
        return body

    def _check_not_cut(self, stop_reason: str | None) -> None:
        """A reply stopped by the output bound is unfinished JSON: asking again would only run
        the same model into the same bound, so say so at once."""
        if stop_reason == "length":
            raise LLMError(f"the LLM's reply was cut at llm_max_tokens ({self.config.llm_max_tokens} tokens) "
                           "before it ended; raise llm_max_tokens, or use a model that stops by itself")

    def _ollama(self, messages: list[ChatMessage], schema: dict[str, Any]) -> LLMReply:
        body = self._check(self._post("/api/chat", {
            "model": self.model, "messages": messages, "stream": False, "format": schema,
            "options": {"temperature": self.config.llm_temperature, "num_ctx": self.config.llm_num_ctx,
                        "num_predict": self.config.llm_max_tokens},
            "keep_alive": self.config.llm_keep_alive}))
        self._check_not_cut(body.get("done_reason"))
        content = (body.get("message") or {}).get("content")
        if not isinstance(content, str):
            raise LLMRetryable("the LLM server's reply has no message content")
        return LLMReply(content, body.get("prompt_eval_count") or 0, body.get("eval_count") or 0)

    def _openai(self, messages: list[ChatMessage], schema: dict[str, Any]) -> LLMReply:
        def request(response_format: dict[str, Any]) -> requests.Response:
            return self._post("/v1/chat/completions", {
                "model": self.model, "messages": messages, "temperature": self.config.llm_temperature,
                "response_format": response_format, "max_tokens": self.config.llm_max_tokens, "stream": False})

        formats = {"json_schema": {"type": "json_schema", "json_schema": {"name": "reply", "schema": schema}},
                   "json_object": {"type": "json_object", "schema": schema}}
        response = request(formats[self._openai_format])
        if self._openai_format == "json_schema" and response.status_code in (400, 422, 500):
            # llama.cpp's server rejects the json_schema form; it takes a schema in json_object.
            retry = request(formats["json_object"])
            if retry.status_code < 400:
                self._openai_format, response = "json_object", retry
        body = self._check(response)
        try:
            choice = body["choices"][0]
            content = choice["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise LLMRetryable("the LLM server's reply has no choices[0].message.content") from None
        self._check_not_cut(choice.get("finish_reason"))
        usage = body.get("usage") or {}
        return LLMReply(content or "", usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0)


def extract_json(text: str) -> Any:
    """The JSON in a local model's reply: after <think> blocks, inside fences, before prose."""
    text = re.sub(r"<think>.*?</think>", "", text, flags=re.DOTALL).strip()
    if fence := re.search(r"```(?:json)?\s*(.*?)```", text, flags=re.DOTALL):
        text = fence.group(1).strip()
    starts = [i for i in (text.find("{"), text.find("[")) if i >= 0]
    if not starts:
        raise ValueError("the reply contains no JSON")
    try:
        value, _ = json.JSONDecoder().raw_decode(text[min(starts):])
    except json.JSONDecodeError as exc:
        raise ValueError(f"the reply is not valid JSON ({exc.msg} at character {exc.pos})") from None
    return value

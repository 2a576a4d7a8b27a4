"""Any OpenAI-compatible server over HTTP: vLLM serve, TGI, llama.cpp, SGLang.

Requests run with bounded concurrency; each has a timeout and is retried with exponential
backoff on connection errors, timeouts, 429 and 5xx. A request that still fails gets its
own error and the others go on. The API key, if any, comes from the environment variable
the registry names, never from the registry itself.
"""

from __future__ import annotations

import os
import random
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from workers.generation.prompts import Conversation, GenerationResult, Prompt, prompts_for

RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}


class OpenAIGenerator:
    def __init__(self, base_url: str, revision: str | None = None, model: str | None = None,
                 endpoint: str = "chat", concurrency: int = 4, timeout: float = 120.0,
                 max_retries: int = 3, api_key_env: str | None = None) -> None:
        if endpoint not in ("chat", "completions"):
            raise ValueError(f"endpoint must be 'chat' or 'completions', got {endpoint!r}")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.endpoint = endpoint
        self.concurrency = max(1, int(concurrency))
        self.timeout = float(timeout)
        self.max_retries = max(0, int(max_retries))
        self._revision = revision
        headers = {}
        if api_key_env:
            key = os.environ.get(api_key_env)
            if not key:
                raise ValueError(f"environment variable {api_key_env} (api_key_env) is not set")
            headers["Authorization"] = f"Bearer {key}"
        self.client = httpx.Client(base_url=self.base_url, headers=headers,
                                   timeout=self.timeout)

    @property
    def revision(self) -> str:
        return self._revision or f"{self.model}@{self.base_url}"

    def load(self) -> None:
        """Ask the server which model it serves, when the registry did not say."""
        if self.model is not None:
            return
        try:
            response = self._send("GET", "/models", None)
            self.model = response["data"][0]["id"]
        except (httpx.HTTPError, KeyError, IndexError, ValueError) as exc:
            raise ConnectionError(f"no model list from {self.base_url}/models: {exc}") from exc

    def warm_up(self) -> None:
        self.generate_prompts([Prompt([{"role": "user", "content": "Hello"}], max_new_tokens=1)])

    def generate(self, conversations: list[Conversation], *, max_new_tokens: int = 64,
                 temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None,
                 batch_size: int = 8) -> list[GenerationResult]:
        return self.generate_prompts(prompts_for(
            conversations, max_new_tokens=max_new_tokens, temperature=temperature,
            top_p=top_p, seed=seed))

    def generate_prompts(self, prompts: list[Prompt], *,
                         token_budget: int | None = None) -> list[GenerationResult]:
        """Each prompt is one request with its own parameters, ``concurrency`` at a time;
        the server batches them (``token_budget`` is the in-process backends' knob)."""
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(self._one, prompts))

    def _one(self, prompt: Prompt) -> GenerationResult:
        problem = prompt.problem()
        if problem is not None:
            return GenerationResult("", 0, 0, problem)
        body: dict[str, Any] = {"model": self.model, "max_tokens": prompt.max_new_tokens,
                                "temperature": prompt.temperature, "top_p": prompt.top_p}
        if prompt.seed is not None:
            body["seed"] = prompt.seed
        if self.endpoint == "chat":
            body["messages"] = prompt.conversation
            path = "/chat/completions"
        else:
            body["prompt"] = "\n".join(m["content"] for m in prompt.conversation)
            path = "/completions"
        try:
            response = self._send("POST", path, body)
            choice = response["choices"][0]
            text = choice["message"]["content"] if self.endpoint == "chat" else choice["text"]
            usage = response.get("usage") or {}
            return GenerationResult(text or "", int(usage.get("prompt_tokens", 0)),
                                    int(usage.get("completion_tokens", 0)),
                                    finish_reason=choice.get("finish_reason"))
        except Exception as exc:
            return GenerationResult("", 0, 0, f"{self.base_url}{path}: {_describe(exc)}")

    def _send(self, method: str, path: str, body: dict[str, Any] | None) -> dict[str, Any]:
        for attempt in range(self.max_retries + 1):
            try:
                response = self.client.request(method, path, json=body)
                if response.status_code in RETRY_STATUS and attempt < self.max_retries:
                    raise _Retry(f"HTTP {response.status_code}")
                response.raise_for_status()
                data: dict[str, Any] = response.json()
                return data
            except (httpx.TransportError, _Retry):
                if attempt == self.max_retries:
                    raise
                # Exponential backoff with jitter, so many workers don't retry in step.
                time.sleep(min(30.0, 0.5 * 2 ** attempt) * (0.5 + random.random() / 2))
        raise AssertionError("unreachable")


class _Retry(Exception):
    pass


def _describe(exc: Exception) -> str:
    if isinstance(exc, httpx.HTTPStatusError):
        return f"HTTP {exc.response.status_code}: {exc.response.text[:300]}"
    if isinstance(exc, httpx.TimeoutException):
        return f"timed out: {type(exc).__name__}"
    return f"{type(exc).__name__}: {exc}"

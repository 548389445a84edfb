"""The `openai` provider: chat completions through the official SDK, for OpenAI and for any
OpenAI-compatible server (vLLM, Ollama, llama.cpp) named by `base_url`.

Key from OPENAI_API_KEY. A local server needs none: with a base URL whose host is not openai.com and
no key set, a placeholder key is sent. Retries are the SDK's own (`max_retries`); the number of
requests made comes from the SDK's raw response (`retries_taken`).
"""
from __future__ import annotations

import os
import time
from typing import Any, Sequence
from urllib.parse import urlparse

from kforge.gen.config import ProviderConfig
from kforge.gen.providers._http import call_params, import_sdk, price_usage, sdk_errors
from kforge.gen.types import Completion, GenerationContext, Message, MissingKeyError, Provider, ProviderError

KEY_VAR = "OPENAI_API_KEY"
LOCAL_KEY = "kforge-no-key"  # what a keyless OpenAI-compatible server receives
# OpenAI's reasoning models refuse any temperature but the default (HTTP 400), so none is sent to them.
REASONING_PREFIXES = ("o1", "o3", "o4", "gpt-5")


def is_openai_host(base_url: str | None) -> bool:
    """True for OpenAI's own API (no base_url, or a host under openai.com)."""
    host = urlparse(base_url).hostname if base_url else "api.openai.com"
    return host is not None and (host == "openai.com" or host.endswith(".openai.com"))


def chat_request(model: str, messages: Sequence[Message], temperature: float, max_tokens: int,
                 official: bool) -> dict[str, Any]:
    """The keyword arguments of `chat.completions.create`. OpenAI's own API takes the length limit as
    `max_completion_tokens` (its reasoning models reject `max_tokens`); compatible servers (vLLM,
    Ollama, llama.cpp) all read `max_tokens`."""
    request: dict[str, Any] = {"model": model, "messages": [m.to_json() for m in messages]}
    if official:
        request["max_completion_tokens"] = max_tokens
        if not model.startswith(REASONING_PREFIXES):
            request["temperature"] = temperature
    else:
        request["max_tokens"] = max_tokens
        request["temperature"] = temperature
    return request


class OpenAIProvider(Provider):
    name = "openai"

    def __init__(self, config: ProviderConfig):
        # The SDK itself falls back to OPENAI_BASE_URL when base_url is None.
        base_url = config.base_url or os.environ.get("OPENAI_BASE_URL", "").strip() or None
        self.official = is_openai_host(base_url)
        key = os.environ.get(KEY_VAR, "").strip()
        if not key:  # checked here, so `kforge generate` stops before any work
            if self.official:
                raise MissingKeyError(self.name, KEY_VAR)
            key = LOCAL_KEY
        self._sdk = import_sdk(self.name, "openai")
        self._key = key
        self.config = config
        self.model = config.model_name
        self.endpoint = base_url or "api.openai.com"
        self.client = self._sdk.OpenAI(api_key=key, base_url=base_url, timeout=config.timeout_s,
                                       max_retries=config.max_retries)

    def complete(self, messages: Sequence[Message], *, context: GenerationContext | None = None,
                 **params: Any) -> Completion:
        temperature, max_tokens = call_params(self.config, params)
        request = chat_request(self.model, messages, temperature, max_tokens, self.official)
        start = time.monotonic()
        with sdk_errors(self._sdk, self.name, self.model, self.config, self._key, self.endpoint):
            raw = self.client.chat.completions.with_raw_response.create(**request)
            response = raw.parse()
        latency = time.monotonic() - start
        choices = getattr(response, "choices", None)
        if not isinstance(choices, list):
            raise ProviderError(f"{self.name} ({self.model}): {self.endpoint} did not answer with a chat completion; "
                                "is base_url right (it usually ends in /v1)?")
        text = (choices[0].message.content or "") if choices else ""
        if not text.strip():
            reason = choices[0].finish_reason if choices else "no choices"
            raise ProviderError(f"{self.name} ({self.model}): the answer has no text (finish reason {reason})")
        model = getattr(response, "model", None) or self.model
        tokens = getattr(response, "usage", None)  # Ollama and some servers leave it out
        return Completion(text=text, provider=self.name, model=model,
                          usage=price_usage(model, getattr(tokens, "prompt_tokens", 0),
                                            getattr(tokens, "completion_tokens", 0)),
                          latency_s=latency, attempts=int(getattr(raw, "retries_taken", 0)) + 1)

    def close(self) -> None:
        self.client.close()

"""The `anthropic` provider: Claude through the Messages API of the official SDK.

Key from ANTHROPIC_API_KEY only. System messages go to `system=`, the other turns to `messages=`.
Retries (408/409/429/5xx, connection errors) are the SDK's own, `max_retries` times; the number of
requests made comes from the SDK's raw response (`retries_taken`). `base_url` points the client
elsewhere (a proxy, or the tests' loopback server).
"""
from __future__ import annotations

import inspect
import os
import time
from typing import Any, Sequence

from kforge.gen.config import ProviderConfig
from kforge.gen.providers._http import call_params, import_sdk, price_usage, sdk_errors
from kforge.gen.types import Completion, GenerationContext, Message, MissingKeyError, Provider, ProviderError, Role

KEY_VAR = "ANTHROPIC_API_KEY"


class AnthropicProvider(Provider):
    name = "anthropic"

    def __init__(self, config: ProviderConfig):
        key = os.environ.get(KEY_VAR, "").strip()
        if not key:  # checked here, so `kforge generate` stops before any work
            raise MissingKeyError(self.name, KEY_VAR)
        self._sdk = import_sdk(self.name, "anthropic")
        self._key = key
        self.config = config
        self.model = config.model_name
        self.endpoint = config.base_url or os.environ.get("ANTHROPIC_BASE_URL") or "api.anthropic.com"
        self.client = self._sdk.Anthropic(api_key=key, base_url=config.base_url, timeout=config.timeout_s,
                                          max_retries=config.max_retries)
        # anthropic 2.x dropped `temperature` from messages.create (the current models sample at
        # their own setting); older SDKs take it, and then it is sent.
        self._takes_temperature = "temperature" in inspect.signature(self.client.messages.create).parameters

    def request(self, messages: Sequence[Message], **params: Any) -> dict[str, Any]:
        """The keyword arguments of `messages.create` for these messages."""
        temperature, max_tokens = call_params(self.config, params)
        system = "\n\n".join(m.content for m in messages if m.role is Role.SYSTEM)
        turns = [m.to_json() for m in messages if m.role is not Role.SYSTEM]
        if not turns:
            raise ProviderError(f"{self.name} ({self.model}): nothing to answer: the messages are all system messages")
        request: dict[str, Any] = {"model": self.model, "max_tokens": max_tokens, "messages": turns}
        if system:
            request["system"] = system
        if self._takes_temperature:
            request["temperature"] = temperature
        return request

    def complete(self, messages: Sequence[Message], *, context: GenerationContext | None = None,
                 **params: Any) -> Completion:
        request = self.request(messages, **params)
        start = time.monotonic()
        with sdk_errors(self._sdk, self.name, self.model, self.config, self._key, self.endpoint):
            raw = self.client.messages.with_raw_response.create(**request)
            response = raw.parse()
        latency = time.monotonic() - start
        blocks = getattr(response, "content", None)
        if not isinstance(blocks, list):
            raise ProviderError(f"{self.name} ({self.model}): {self.endpoint} did not answer with a message; "
                                "is base_url right?")
        text = "".join(getattr(b, "text", "") or "" for b in blocks if getattr(b, "type", "") == "text")
        if not text.strip():
            raise ProviderError(f"{self.name} ({self.model}): the answer has no text "
                                f"(stop reason {getattr(response, 'stop_reason', None)})")
        model = getattr(response, "model", None) or self.model
        tokens = getattr(response, "usage", None)
        return Completion(text=text, provider=self.name, model=model,
                          usage=price_usage(model, getattr(tokens, "input_tokens", 0), getattr(tokens, "output_tokens", 0)),
                          latency_s=latency, attempts=int(getattr(raw, "retries_taken", 0)) + 1)

    def close(self) -> None:
        self.client.close()

"""The data that flows between the generation pieces: messages to a provider, its completion,
and the structured context a non-LLM provider (the catalog) reads instead of prose."""
from __future__ import annotations

import abc
import dataclasses
import enum
from typing import Any, Sequence

from kforge.errors import KforgeError


class Role(str, enum.Enum):
    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"


@dataclasses.dataclass(frozen=True)
class Message:
    role: Role
    content: str

    def to_json(self) -> dict:
        return {"role": self.role.value, "content": self.content}

    @classmethod
    def from_json(cls, raw: dict) -> "Message":
        return cls(Role(raw["role"]), raw["content"])


@dataclasses.dataclass(frozen=True)
class Usage:
    """Tokens and cost of one completion (cost None when the price of the model is unknown)."""

    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float | None = None

    def __add__(self, other: "Usage") -> "Usage":
        cost = None if self.cost_usd is None and other.cost_usd is None else (self.cost_usd or 0.0) + (other.cost_usd or 0.0)
        return Usage(self.input_tokens + other.input_tokens, self.output_tokens + other.output_tokens, cost)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Completion:
    text: str
    provider: str  # "anthropic", "openai", "catalog", "command"
    model: str
    usage: Usage = Usage()
    latency_s: float = 0.0
    attempts: int = 1  # requests made, retries included

    def to_json(self) -> dict:
        return {"text": self.text, "provider": self.provider, "model": self.model, "usage": self.usage.to_json(),
                "latency_s": self.latency_s, "attempts": self.attempts}


@dataclasses.dataclass(frozen=True)
class GenerationContext:
    """What is being asked for, as data. LLM providers read the rendered messages and ignore this;
    the catalog provider reads only this (op, the parent to mutate, a seed for its choices)."""

    op: str
    round: int = 0
    variant: int = 0
    seed: int = 0
    parent_source: str | None = None  # the lineage's best source so far (None: start from scratch)
    parent_sha256: str | None = None
    dtypes: tuple[str, ...] = ()  # torch dtype names the kernel must serve, e.g. ("bfloat16",)
    shapes: tuple[tuple[int, ...], ...] = ()  # the problem shapes being optimised
    exclude: frozenset[str] = frozenset()  # sha256 of sources already tried: propose something new
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


class ProviderError(KforgeError):
    """A provider could not produce a completion (after its retries), or is misconfigured."""


class ProviderExhausted(ProviderError):
    """The provider has no untried candidate left for this context (the catalog, once its seeds
    and mutants are spent): the search stops asking instead of recording a failure to learn from."""


class MissingKeyError(ProviderError):
    """The API key a provider needs is not in the environment."""

    def __init__(self, provider: str, variable: str):
        self.provider = provider
        self.variable = variable
        super().__init__(f"provider '{provider}' needs an API key in the environment variable {variable}; "
                         "set it, or use --provider catalog (no key, no network)")


class Provider(abc.ABC):
    """One source of candidate kernels. `complete` returns the model's answer as text; the search
    loop extracts code from it (`kforge.gen.extract`)."""

    name: str
    # Capabilities the search reads (never the provider's name): a provider that writes prose can
    # reflect on a finished run; one that only enumerates kernels (the catalog) cannot.
    reflects: bool = True

    @abc.abstractmethod
    def complete(self, messages: Sequence[Message], *, context: GenerationContext | None = None,
                 **params: Any) -> Completion:
        """params: per-call overrides (temperature, max_tokens). Raises ProviderError."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release clients or subprocesses."""

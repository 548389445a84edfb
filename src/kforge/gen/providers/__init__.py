"""Providers of candidate kernels behind one interface (`kforge.gen.types.Provider`).

    provider = make_provider(load_config(provider="anthropic"))
    completion = provider.complete(messages, context=GenerationContext(op="rms_norm"))

Each provider module is imported only when asked for, so `import kforge.gen.providers` loads no
LLM SDK, and a provider that cannot be imported fails only when it is the one requested.
"""
from __future__ import annotations

import importlib

from kforge.errors import UnknownNameError
from kforge.gen.config import ProviderConfig, ProviderName
from kforge.gen.types import Provider, ProviderError

# name -> "module:class", imported on first use; each class takes (config: ProviderConfig)
PROVIDERS: dict[ProviderName, str] = {
    ProviderName.CATALOG: "kforge.gen.providers.catalog:CatalogProvider",
    ProviderName.ANTHROPIC: "kforge.gen.providers.anthropic_provider:AnthropicProvider",
    ProviderName.OPENAI: "kforge.gen.providers.openai_provider:OpenAIProvider",
    ProviderName.COMMAND: "kforge.gen.providers.command:CommandProvider",
}


def make_provider(config: ProviderConfig) -> Provider:
    """The provider `config` names, constructed. Raises MissingKeyError when its API key is not in
    the environment, ProviderError when it cannot be loaded or is misconfigured."""
    try:
        name = ProviderName(config.provider)
        target = PROVIDERS[name]
    except (ValueError, KeyError):
        raise UnknownNameError("provider", str(getattr(config.provider, "value", config.provider)),
                               [p.value for p in PROVIDERS]) from None
    module_name, class_name = target.split(":")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise ProviderError(f"provider '{name.value}' cannot be loaded from {target}: {exc}") from None
    return cls(config)

"""Provider settings for `kforge generate`: flags > environment > config file > defaults.

Environment: KFORGE_PROVIDER, KFORGE_MODEL, KFORGE_BASE_URL, KFORGE_TIMEOUT_S, KFORGE_MAX_RETRIES,
KFORGE_TEMPERATURE, KFORGE_MAX_TOKENS, KFORGE_COMMAND (split like a shell would).
Config file: KFORGE_CONFIG, else `<home>/config.toml`, with a `[generate]` table of the same keys in
lower case (provider, model, base_url, timeout_s, max_retries, temperature, max_tokens, command) and
optional `[providers.<name>]` tables that override it for one provider:

    [generate]
    provider = "openai"
    timeout_s = 600
    [providers.openai]
    base_url = "http://localhost:8000/v1"   # a vLLM server
    model = "Qwen/Qwen2.5-Coder-32B-Instruct"

API keys come only from the environment (ANTHROPIC_API_KEY, OPENAI_API_KEY): a key in the config
file is refused, so a committed or shared config never carries one.
"""
from __future__ import annotations

import argparse
import dataclasses
import enum
import os
import re
import shlex
from pathlib import Path
from typing import Any, Callable

from kforge import paths
from kforge.errors import KforgeError


class ProviderName(str, enum.Enum):
    ANTHROPIC = "anthropic"
    OPENAI = "openai"
    CATALOG = "catalog"
    COMMAND = "command"


# claude-sonnet-5-5: Anthropic's current Sonnet (claude-sonnet-4-5 reaches end-of-life on 2026-11-30,
# the anthropic SDK warns); --model claude-opus-5-5 for harder ops, at twice the price.
DEFAULT_MODELS = {ProviderName.ANTHROPIC: "claude-sonnet-5-5", ProviderName.OPENAI: "gpt-4.1",
                  ProviderName.CATALOG: "catalog"}  # command: the program's name
# Names (split on _ and -) and values that mark a credential in the config file.
CREDENTIAL_WORDS = frozenset({"key", "apikey", "token", "secret", "password", "passwd", "credential", "credentials",
                              "auth", "authorization", "bearer"})
CREDENTIAL_VALUE = re.compile(r"^sk-[A-Za-z0-9_-]{16,}")  # Anthropic (sk-ant-...) and OpenAI (sk-proj-...) keys


class ConfigError(KforgeError):
    """A provider setting that cannot be used; names the setting and where it came from."""


@dataclasses.dataclass(frozen=True)
class ProviderConfig:
    """One provider's settings. `model` None means the provider's default (`model_name`);
    `command` is the argv of the command provider (no shell)."""

    provider: ProviderName = ProviderName.CATALOG
    model: str | None = None
    base_url: str | None = None
    # A non-streamed 8k-token answer takes 1-3 minutes at 50-100 tokens/s: 120 s cut real answers off.
    timeout_s: float = 300.0
    max_retries: int = 3
    temperature: float = 0.7
    max_tokens: int = 8192
    command: tuple[str, ...] = ()

    def __post_init__(self):
        try:
            object.__setattr__(self, "provider", _provider(self.provider))
        except ValueError as exc:
            raise ConfigError(f"ProviderConfig: {exc}") from None
        object.__setattr__(self, "command", tuple(self.command))
        for name in ("timeout_s", "max_retries", "temperature", "max_tokens"):
            problem = _out_of_range(name, getattr(self, name))
            if problem:
                raise ConfigError(f"ProviderConfig: {problem}")

    @property
    def model_name(self) -> str:
        """The model asked for: `model`, else the provider's default (the program's name for command)."""
        if self.model:
            return self.model
        if self.provider is ProviderName.COMMAND:
            return Path(self.command[0]).name if self.command else "command"
        return DEFAULT_MODELS[self.provider]


def _provider(v: Any) -> ProviderName:
    if isinstance(v, ProviderName):
        return v
    try:
        return ProviderName(str(v).strip().lower())
    except ValueError:
        raise ValueError(f"unknown provider {v!r}; valid: {', '.join(p.value for p in ProviderName)}") from None


def _number(kind: type) -> Callable[[Any], Any]:
    def parse(v: Any):
        if isinstance(v, bool):  # TOML `true` would pass int()
            raise ValueError(f"expected a number, got {v!r}")
        if kind is int and isinstance(v, float) and not v.is_integer():
            raise ValueError(f"{v} is not a whole number")
        try:
            return kind(v)
        except (TypeError, ValueError):
            raise ValueError(f"{v!r} is not a{'n integer' if kind is int else ' number'}") from None
    return parse


def _text(v: Any) -> str:
    if not isinstance(v, str) or not v.strip():
        raise ValueError(f"expected a non-empty string, got {v!r}")
    return v.strip()


def _command(v: Any) -> tuple[str, ...]:
    if isinstance(v, str):
        argv = tuple(shlex.split(v))
    elif isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v):
        argv = tuple(v)
    else:
        raise ValueError(f"expected a command line or a list of strings, got {v!r}")
    if not argv:
        raise ValueError("the command is empty")
    return argv


def _out_of_range(name: str, value: Any) -> str | None:
    if name in ("timeout_s", "max_tokens") and not value > 0:
        return f"{name} must be > 0, got {value}"
    if name in ("max_retries", "temperature") and not value >= 0:
        return f"{name} must be >= 0, got {value}"
    return None


# setting -> (environment variable, command-line flag, parser)
SETTINGS: dict[str, tuple[str, str, Callable[[Any], Any]]] = {
    "provider": ("KFORGE_PROVIDER", "--provider", _provider),
    "model": ("KFORGE_MODEL", "--model", _text),
    "base_url": ("KFORGE_BASE_URL", "--base-url", _text),
    "timeout_s": ("KFORGE_TIMEOUT_S", "--timeout", _number(float)),
    "max_retries": ("KFORGE_MAX_RETRIES", "--max-retries", _number(int)),
    "temperature": ("KFORGE_TEMPERATURE", "--temperature", _number(float)),
    "max_tokens": ("KFORGE_MAX_TOKENS", "--max-tokens", _number(int)),
    "command": ("KFORGE_COMMAND", "--command", _command),
}


def config_file() -> Path:
    """KFORGE_CONFIG, else `<kforge home>/config.toml` (which need not exist)."""
    env = os.environ.get("KFORGE_CONFIG")
    return Path(env).expanduser() if env else paths.home() / "config.toml"


def _read_file(path: Path) -> dict:
    if not path.is_file():
        if os.environ.get("KFORGE_CONFIG"):
            raise ConfigError(f"KFORGE_CONFIG names {path}, which is not a file")
        return {}
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            raise ConfigError(f"reading {path} needs Python 3.11+ or the tomli package (pip install tomli)") from None
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"config file {path}: {exc}") from None
    _refuse_credentials(data, path)
    return data


def _refuse_credentials(data: Any, path: Path, where: str = "") -> None:
    if isinstance(data, dict):
        for name, value in data.items():
            words = set(re.split(r"[_\-.\s]+", name.lower()))
            if words & CREDENTIAL_WORDS or name.lower().endswith(("apikey", "api_key", "_token")):
                raise ConfigError(f"config file {path}: '{where}{name}' looks like a credential; API keys are read only "
                                  "from the environment (ANTHROPIC_API_KEY, OPENAI_API_KEY)")
            _refuse_credentials(value, path, f"{where}{name}.")
    elif isinstance(data, list):
        for item in data:
            _refuse_credentials(item, path, where)
    elif isinstance(data, str) and CREDENTIAL_VALUE.match(data):
        raise ConfigError(f"config file {path}: '{where.rstrip('.')}' holds what looks like an API key; API keys are "
                          "read only from the environment (ANTHROPIC_API_KEY, OPENAI_API_KEY)")


def _parse(name: str, value: Any, source: str) -> Any:
    try:
        parsed = SETTINGS[name][2](value)
    except ValueError as exc:
        raise ConfigError(f"{source}: bad {name}: {exc}") from None
    problem = _out_of_range(name, parsed)
    if problem:
        raise ConfigError(f"{source}: {problem}")
    return parsed


def _table(data: dict, name: str, label: str) -> dict:
    table = data.get(name, {})
    if not isinstance(table, dict):
        raise ConfigError(f"{label}: '{name}' must be a table ([{name}]), got {table!r}")
    return table


def _check_table(table: dict, label: str) -> None:
    unknown = sorted(set(table) - set(SETTINGS))
    if unknown:
        raise ConfigError(f"{label}: unknown settings {', '.join(unknown)}; valid: {', '.join(SETTINGS)}")


def load_config(**overrides: Any) -> ProviderConfig:
    """The settings: `overrides` (the flags, by setting name, e.g. timeout_s="30"; None = not given) >
    KFORGE_* environment > config file ([providers.<name>] > [generate]) > defaults.
    Strings are parsed here; a bad value raises ConfigError naming its setting and source.
    The returned config always names a model (the provider's default when none is set)."""
    unknown = sorted(set(overrides) - set(SETTINGS))
    if unknown:
        raise ConfigError(f"unknown provider settings {', '.join(unknown)}; valid: {', '.join(SETTINGS)}")
    path = config_file()
    data = _read_file(path)
    general = _table(data, "generate", f"config file {path}")
    providers = _table(data, "providers", f"config file {path}")
    _check_table(general, f"{path} [generate]")
    for name, table in providers.items():
        if name not in {p.value for p in ProviderName}:
            raise ConfigError(f"{path} [providers.{name}]: unknown provider; valid: "
                              f"{', '.join(p.value for p in ProviderName)}")
        _check_table(_table(providers, name, f"{path} [providers]"), f"{path} [providers.{name}]")

    values: dict[str, Any] = {}

    def layer(name: str, value: Any, source: str) -> None:
        if value is not None and name not in values:
            values[name] = _parse(name, value, source)

    for name, value in overrides.items():
        layer(name, value, SETTINGS[name][1])
    for name, (env, _, _) in SETTINGS.items():
        layer(name, os.environ.get(env) or None, f"environment variable {env}")
    # The provider is settled first: it picks the [providers.<name>] table that the rest may come from.
    layer("provider", general.get("provider"), f"{path} [generate]")
    provider = values.setdefault("provider", ProviderName.CATALOG)
    per_provider = providers.get(provider.value, {})
    if "provider" in per_provider:
        raise ConfigError(f"{path} [providers.{provider.value}]: 'provider' belongs in [generate]")
    for table, label in ((per_provider, f"{path} [providers.{provider.value}]"), (general, f"{path} [generate]")):
        for name, value in table.items():
            layer(name, value, label)
    config = ProviderConfig(**values)
    return dataclasses.replace(config, model=config.model_name)


def add_provider_arguments(parser: argparse.ArgumentParser) -> None:
    """The provider flags; all default to None so that unset flags fall through to env and file."""
    group = parser.add_argument_group("provider (flags > KFORGE_* environment > config file > defaults)")
    group.add_argument("--provider", default=None,
                       help="catalog (default: no key, no network), anthropic, openai, command")
    group.add_argument("--model", default=None,
                       help=f"model name (default: {DEFAULT_MODELS[ProviderName.ANTHROPIC]} for anthropic, "
                            f"{DEFAULT_MODELS[ProviderName.OPENAI]} for openai)")
    group.add_argument("--base-url", default=None,
                       help="API base URL, e.g. an OpenAI-compatible server (vLLM, Ollama, llama.cpp): "
                            "http://localhost:8000/v1")
    group.add_argument("--timeout", default=None, metavar="SECONDS", help="per request (default 300)")
    group.add_argument("--max-retries", default=None, metavar="N",
                       help="retries on 429/5xx/connection errors (default 3)")
    group.add_argument("--temperature", default=None, help="sampling temperature (default 0.7)")
    group.add_argument("--max-tokens", default=None, metavar="N", help="answer length limit (default 8192)")
    # dest is not "command": the CLI's subcommand name lives in args.command.
    group.add_argument("--command", dest="provider_command", default=None, metavar="CMDLINE",
                       help="for --provider command: the program that reads the prompt on stdin, e.g. 'my-agent --stdin'")


def config_from_args(args: argparse.Namespace) -> ProviderConfig:
    """`load_config` with the flags `add_provider_arguments` added."""
    return load_config(provider=args.provider, model=args.model, base_url=args.base_url, timeout_s=args.timeout,
                       max_retries=args.max_retries, temperature=args.temperature, max_tokens=args.max_tokens,
                       command=args.provider_command)

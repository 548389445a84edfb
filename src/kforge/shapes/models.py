"""The model table: `models.json` read into typed entries, every field checked on load.

An error names the file, the model (its index until its name is known) and the field:
`.../models.json: models[3] 'llama-3.2-1b': head_dim: must be a positive integer, got -64`.
"""
from __future__ import annotations

import dataclasses
import difflib
import enum
import importlib.resources
import re
from pathlib import Path
from typing import Any, Mapping

from kforge.errors import KforgeError, UnknownNameError
from kforge.files import CorruptFile, loads_json, read_json

DATA_FILE = "models.json"  # beside this module, shipped as package data (pyproject.toml)
MAX_FILE_BYTES = 1 << 20  # the bundled file is ~15 KB
NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")  # as users type it: lowercase, `llama-3.1-8b`
SOURCE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,38}/[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")  # a Hugging Face repo id
MAX_DIM = 1 << 24  # larger than any model's dim (vocabularies are < 2^19), small enough to refuse nonsense


class Norm(enum.Enum):
    RMS = "rms"  # RMSNorm (Llama, Qwen, Mistral, Gemma's (1 + weight) form, DeepSeek, Phi-3)
    LAYER = "layer"  # LayerNorm with bias (GPT-NeoX, Falcon, StarCoder2, Phi-2)


class Mlp(enum.Enum):
    SWIGLU = "swiglu"  # silu(gate) * up from one fused gate_up projection: kforge's silu_and_mul
    GEGLU = "geglu"  # gelu_tanh(gate) * up (Gemma): no kforge op
    GELU = "gelu"  # gelu(up), no gate (GPT-NeoX, Falcon, StarCoder2, Phi-2)


class Scoring(enum.Enum):
    SOFTMAX = "softmax"  # softmax then top-k: kforge's topk_softmax
    SIGMOID = "sigmoid"  # DeepSeek-V3's grouped sigmoid gate: no kforge op


class ModelsFileError(KforgeError, ValueError):
    """A models file that is not what kforge ships: `path`, `model` (name or index) and `field` name it."""

    def __init__(self, path: str, model: str | None, field: str | None, message: str):
        self.path, self.model, self.field = path, model, field
        where = "".join(f"{part}: " for part in (model, field) if part)
        super().__init__(f"{path}: {where}{message}")


class UnknownModelError(UnknownNameError):
    """A model name that is not in the table; names the closest ones first, then every valid one."""

    def __init__(self, name: str, valid):
        super().__init__("model", name, valid)
        wanted = name.strip().lower()
        close = [v for v in sorted(valid) if v.startswith(wanted)][:3]  # "qwen3-30b": qwen3-30b-a3b
        close += [v for v in difflib.get_close_matches(wanted, list(valid), n=3, cutoff=0.5) if v not in close]
        if close:
            self.args = (f"unknown model '{name}'; closest: {', '.join(close)}; valid: {', '.join(sorted(valid))}",)


@dataclasses.dataclass(frozen=True)
class Moe:
    """A mixture-of-experts MLP (Hugging Face config names). Layers before `first_k_dense_replace`
    have the model's dense MLP of `intermediate_size`; the others route each token to
    `num_experts_per_tok` of `num_experts` experts of `moe_intermediate_size`, plus shared experts
    of `shared_expert_intermediate_size` in all (0: none) that every token passes through."""

    num_experts: int
    num_experts_per_tok: int  # the router's top_k
    moe_intermediate_size: int
    norm_topk_prob: bool  # the top_k weights renormalized to sum 1 (topk_softmax's renormalize)
    shared_expert_intermediate_size: int = 0
    first_k_dense_replace: int = 0
    scoring_func: Scoring = Scoring.SOFTMAX


@dataclasses.dataclass(frozen=True)
class Mla:
    """DeepSeek's multi-head latent attention: queries through a rank-`q_lora_rank` bottleneck
    (None: one projection), keys and values from a shared latent of `kv_lora_rank`; each head's
    query and key are `qk_nope_head_dim` dims without RoPE and `qk_rope_head_dim` with it."""

    q_lora_rank: int | None
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int


@dataclasses.dataclass(frozen=True)
class Model:
    """One model's dimensions, as its config.json names them. `head_dim` is a query/key head's
    size (MLA: qk_nope_head_dim + qk_rope_head_dim); `rotary_dim` the dims of a head RoPE rotates
    (partial rotary: Phi-2, GPT-NeoX; MLA: qk_rope_head_dim); `qk_norm` an RMSNorm over each
    query and key head (Qwen3, Gemma 3)."""

    name: str
    source: str  # the Hugging Face repo id the numbers are from
    num_hidden_layers: int
    hidden_size: int
    intermediate_size: int
    vocab_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    norm: Norm
    mlp: Mlp
    rotary_dim: int
    rope_interleaved: bool = False  # GPT-J style pairs (DeepSeek); False: the halves (GPT-NeoX, Llama)
    qk_norm: bool = False
    moe: Moe | None = None
    mla: Mla | None = None

    @property
    def names(self) -> tuple[str, ...]:
        """What `model()` accepts for this model, lowercase: its name, its repo id, the id's last part."""
        source = self.source.lower()
        return tuple(dict.fromkeys((self.name, source, source.rpartition("/")[2])))


@dataclasses.dataclass(frozen=True)
class Table:
    """A models file: its models and the token counts kforge's tools use by default."""

    path: str
    models: tuple[Model, ...]
    decode_tokens: tuple[int, ...]
    prefill_tokens: tuple[int, ...]

    def model(self, name: str | Model) -> Model:
        """The model `name` names (see `Model.names`; case and surrounding spaces ignored)."""
        if isinstance(name, Model):
            return name
        if not isinstance(name, str):
            raise UnknownModelError(repr(name), [m.name for m in self.models])
        wanted = name.strip().lower()
        for m in self.models:
            if wanted in m.names:
                return m
        raise UnknownModelError(name, [m.name for m in self.models])


_INT_FIELDS = ("num_hidden_layers", "hidden_size", "intermediate_size", "vocab_size", "num_attention_heads",
               "num_key_value_heads", "head_dim")
_MODEL_FIELDS = {"name", "source", "norm", "mlp", "rotary_dim", "rope_interleaved", "qk_norm", "moe", "mla", *_INT_FIELDS}
_MOE_FIELDS = {f.name for f in dataclasses.fields(Moe)}
_MLA_FIELDS = {f.name for f in dataclasses.fields(Mla)}


class _Reader:
    """Field readers that raise ModelsFileError naming the file, the model and the field."""

    def __init__(self, path: str, model: str | None = None, prefix: str = ""):
        self.path, self.model, self.prefix = path, model, prefix  # prefix: "moe." for the fields of moe

    def within(self, field: str) -> "_Reader":
        return _Reader(self.path, self.model, f"{self.prefix}{field}.")

    def fail(self, field: str | None, message: str):
        raise ModelsFileError(self.path, self.model, f"{self.prefix}{field}" if field else self.prefix.rstrip(".") or None,
                              message)

    def mapping(self, value: Any, field: str | None, allowed: set[str]) -> Mapping[str, Any]:
        """`value` as a JSON object of only `allowed` fields; an unknown one is named as the field."""
        if not isinstance(value, dict):
            self.fail(field, "is missing" if value is None else f"must be a JSON object, got {type(value).__name__}")
        unknown = sorted(str(k) for k in value if k not in allowed)
        if unknown:
            self.fail(f"{field}.{unknown[0]}" if field else unknown[0],
                      f"is not a field (valid: {', '.join(sorted(allowed))})"[:400])
        return value

    def positive(self, data: Mapping[str, Any], field: str, default: Any = ..., low: int = 1) -> int:
        value = data.get(field, default)
        if value is ...:
            self.fail(field, "is missing")
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= MAX_DIM:
            self.fail(field, f"must be an integer in [{low}, {MAX_DIM}], got {value!r}"[:200])
        return value

    def flag(self, data: Mapping[str, Any], field: str, default: Any = ...) -> bool:
        value = data.get(field, default)
        if not isinstance(value, bool):
            self.fail(field, "is missing" if value is ... else f"must be true or false, got {value!r}"[:200])
        return value

    def text(self, data: Mapping[str, Any], field: str, pattern: re.Pattern, what: str) -> str:
        value = data.get(field)
        if not isinstance(value, str) or not pattern.fullmatch(value):
            self.fail(field, "is missing" if value is None else f"must be {what}, got {value!r}"[:200])
        return value

    def choice(self, data: Mapping[str, Any], field: str, kind: type[enum.Enum], default: Any = ...):
        value = data.get(field, default)
        if isinstance(value, kind):
            return value
        valid = [k.value for k in kind]
        if value not in valid:
            self.fail(field, "is missing" if value is ... else f"must be one of {', '.join(valid)}, got {value!r}"[:200])
        return kind(value)

    def tokens(self, value: Any, field: str) -> tuple[int, ...]:
        if not isinstance(value, list) or not value or any(
                isinstance(t, bool) or not isinstance(t, int) or not 1 <= t <= MAX_DIM for t in value):
            self.fail(field, f"must be a non-empty list of token counts in [1, {MAX_DIM}], got {value!r}"[:200])
        if value != sorted(set(value)):
            self.fail(field, f"must be ascending without repeats, got {value}")
        return tuple(value)


def _moe(r: _Reader, data: Any) -> Moe:
    data = r.mapping(data, "moe", _MOE_FIELDS)
    r = r.within("moe")
    moe = Moe(num_experts=r.positive(data, "num_experts"), num_experts_per_tok=r.positive(data, "num_experts_per_tok"),
              moe_intermediate_size=r.positive(data, "moe_intermediate_size"),
              norm_topk_prob=r.flag(data, "norm_topk_prob"),
              shared_expert_intermediate_size=r.positive(data, "shared_expert_intermediate_size", 0, low=0),
              first_k_dense_replace=r.positive(data, "first_k_dense_replace", 0, low=0),
              scoring_func=r.choice(data, "scoring_func", Scoring, "softmax"))
    if moe.num_experts_per_tok > moe.num_experts:
        r.fail("num_experts_per_tok", f"{moe.num_experts_per_tok} is more than num_experts {moe.num_experts}")
    return moe


def _mla(r: _Reader, data: Any) -> Mla:
    data = r.mapping(data, "mla", _MLA_FIELDS)
    r = r.within("mla")
    if "q_lora_rank" not in data:
        r.fail("q_lora_rank", "is missing (null: queries have no low-rank bottleneck)")
    q_lora = None if data["q_lora_rank"] is None else r.positive(data, "q_lora_rank")
    return Mla(q_lora_rank=q_lora, kv_lora_rank=r.positive(data, "kv_lora_rank"),
               qk_nope_head_dim=r.positive(data, "qk_nope_head_dim"), qk_rope_head_dim=r.positive(data, "qk_rope_head_dim"),
               v_head_dim=r.positive(data, "v_head_dim"))


def parse_model(path: str, index: int, data: Any) -> Model:
    """One entry of the file's `models` list, checked field by field."""
    r = _Reader(path, f"models[{index}]")
    if not isinstance(data, dict):
        r.fail(None, f"must be a JSON object, got {type(data).__name__}")
    name = r.text(data, "name", NAME, "a lowercase name (letters, digits, '.', '_', '-'), e.g. llama-3.1-8b")
    r.model = f"models[{index}] {name!r}"
    r.mapping(data, None, _MODEL_FIELDS)
    ints = {field: r.positive(data, field) for field in _INT_FIELDS}
    moe = None if data.get("moe") is None else _moe(r, data["moe"])
    mla = None if data.get("mla") is None else _mla(r, data["mla"])
    heads, kv_heads, head_dim = ints["num_attention_heads"], ints["num_key_value_heads"], ints["head_dim"]
    if heads % kv_heads:
        r.fail("num_key_value_heads", f"{kv_heads} does not divide num_attention_heads {heads}")
    if mla is not None and head_dim != mla.qk_nope_head_dim + mla.qk_rope_head_dim:
        r.fail("head_dim", f"{head_dim} is not mla's qk_nope_head_dim + qk_rope_head_dim "
                           f"({mla.qk_nope_head_dim} + {mla.qk_rope_head_dim})")
    rope_head = head_dim if mla is None else mla.qk_rope_head_dim
    rotary_dim = r.positive(data, "rotary_dim", rope_head)
    if rotary_dim % 2 or rotary_dim > rope_head:
        r.fail("rotary_dim", f"must be even and at most {rope_head} (the head dims RoPE applies to), got {rotary_dim}")
    if mla is not None and rotary_dim != rope_head:
        r.fail("rotary_dim", f"MLA rotates all qk_rope_head_dim ({rope_head}) dims, got {rotary_dim}")
    if moe is not None and moe.first_k_dense_replace > ints["num_hidden_layers"]:
        r.fail("moe.first_k_dense_replace", f"{moe.first_k_dense_replace} is more than num_hidden_layers "
                                            f"{ints['num_hidden_layers']}")
    return Model(name=name, source=r.text(data, "source", SOURCE, "a Hugging Face repo id (owner/name)"), **ints,
                 norm=r.choice(data, "norm", Norm), mlp=r.choice(data, "mlp", Mlp), rotary_dim=rotary_dim,
                 rope_interleaved=r.flag(data, "rope_interleaved", False), qk_norm=r.flag(data, "qk_norm", False),
                 moe=moe, mla=mla)


def parse(data: Any, path: str) -> Table:
    """A models file's JSON `data` (read from `path`, for messages) as a Table."""
    r = _Reader(path)
    data = r.mapping(data, None, {"about", "tokens", "models"})
    tokens = r.mapping(data.get("tokens"), "tokens", {"decode", "prefill"})
    decode, prefill = r.tokens(tokens.get("decode"), "tokens.decode"), r.tokens(tokens.get("prefill"), "tokens.prefill")
    if decode[-1] >= prefill[0]:
        r.fail("tokens", f"decode counts must all be below the prefill counts, got {decode[-1]} >= {prefill[0]}")
    entries = data.get("models")
    if not isinstance(entries, list) or not entries:
        r.fail("models", f"must be a non-empty list of models, got {type(entries).__name__}")
    models = tuple(parse_model(path, i, entry) for i, entry in enumerate(entries))
    seen: dict[str, str] = {}
    for i, m in enumerate(models):
        for alias in m.names:
            if alias in seen:
                raise ModelsFileError(path, f"models[{i}] {m.name!r}", "name",
                                      f"{alias!r} already names model {seen[alias]!r}")
            seen[alias] = m.name
    return Table(path, models, decode, prefill)


def load(path: str | Path) -> Table:
    """The models file at `path`. Raises ModelsFileError naming the file, model and field at fault
    (OSError when it cannot be read)."""
    try:
        return parse(read_json(Path(path), max_bytes=MAX_FILE_BYTES), str(path))
    except CorruptFile as exc:
        raise ModelsFileError(str(path), None, None, str(exc).removeprefix(f"{path}: ")) from None


def load_bundled() -> Table:
    """kforge's own models file, found as package data (a wheel, a zip or a source tree alike)."""
    resource = importlib.resources.files(__package__).joinpath(DATA_FILE)
    where = str(resource)
    try:
        return parse(loads_json(resource.read_bytes(), where, max_bytes=MAX_FILE_BYTES), where)
    except CorruptFile as exc:
        raise ModelsFileError(where, None, None, str(exc).removeprefix(f"{where}: ")) from None

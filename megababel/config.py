"""Model configuration with Hugging Face `LlamaConfig` field names.

Llama ties the number of heads to the residual width: hidden_size = num_attention_heads * head_dim unless
num_attention_heads is given (Hugging Face allows an attention width other than hidden_size, and a head_dim growth
makes one). A growth multiplies head_dim by a whole number at most, which keeps every RoPE frequency (growth/).
"""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass


class ConfigError(ValueError):
    """A configuration or growth request that cannot be honoured; the message names the field and the fix."""
    field: str | None = None   # set (by `about`) when the error concerns one field, so that a schedule can prefix
    problem: str = ""          # where that field sits ("schedule growth 1.init_std: ...") without repeating its name

    @classmethod
    def about(cls, field: str, problem: str) -> ConfigError:
        """The error `"{field} {problem}"`, e.g. about("init_std", "must be a positive number, got 0")."""
        error = cls(f"{field} {problem}")
        error.field, error.problem = field, problem
        return error


# YAML 1.1 (PyYAML) reads 3e-3 as a string: its floats need a dot in the mantissa (3.0e-3)
_YAML_TEXT_EXPONENT = re.compile(r"[-+]?[0-9]+[eE][-+]?[0-9]+")


def is_number(value) -> bool:
    """An int or float that is not a bool (`isinstance(True, int)` holds in Python)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def describe(value) -> str:
    """`value` for an error message, plus why it is wrong when that is easy to miss."""
    if isinstance(value, bool):
        return f"{value!r} (a boolean)"
    if isinstance(value, float) and not math.isfinite(value):
        return f"{value!r} (not finite)"
    if isinstance(value, str) and _YAML_TEXT_EXPONENT.fullmatch(value):
        mantissa, exponent = re.split("[eE]", value, maxsplit=1)
        return f"{value!r} (text: YAML reads {value} as a string; write {mantissa}.0e{exponent})"
    return repr(value)


def llama_intermediate_size(hidden_size: int, multiple_of: int = 256) -> int:
    """Llama's SwiGLU width: 2/3 of 4*hidden (same parameters as a 4x GELU FFN), rounded up to `multiple_of`."""
    hidden = int(2 * 4 * hidden_size / 3)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


@dataclass
class LlamaConfig:
    hidden_size: int = 512
    num_hidden_layers: int = 8
    head_dim: int = 128
    vocab_size: int = 32000
    # None means "derive": intermediate_size from hidden_size and multiple_of, heads from hidden_size / head_dim,
    # num_key_value_heads = num_attention_heads (plain multi-head attention).
    intermediate_size: int | None = None
    num_attention_heads: int | None = None
    num_key_value_heads: int | None = None
    multiple_of: int = 256
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    max_position_embeddings: int = 4096
    initializer_range: float = 0.02

    def __post_init__(self):
        self._check_positive_integers("hidden_size", "num_hidden_layers", "head_dim", "vocab_size", "multiple_of",
                                      "max_position_embeddings")
        if self.head_dim % 2:
            raise ConfigError.about("head_dim", f"must be even for rotary embeddings, got {self.head_dim}")
        if self.num_attention_heads is None and self.hidden_size % self.head_dim:
            raise ConfigError.about(
                "hidden_size", f"{self.hidden_size} is not a multiple of head_dim {self.head_dim}: heads are "
                f"hidden_size / head_dim unless num_attention_heads is given; use a hidden_size such as "
                f"{self._nearest_multiple(self.hidden_size)}")
        if self.intermediate_size is None:
            self.intermediate_size = llama_intermediate_size(self.hidden_size, self.multiple_of)
        # the attention width (heads x head_dim) is hidden_size unless num_attention_heads says otherwise, as in
        # Hugging Face's config (a head_dim growth widens every head and leaves hidden_size as it is)
        if self.num_attention_heads is None:
            self.num_attention_heads = self.hidden_size // self.head_dim
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        self._check_positive_integers("intermediate_size", "num_attention_heads", "num_key_value_heads")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError.about(
                "num_key_value_heads", f"{self.num_key_value_heads} does not divide num_attention_heads "
                f"{self.num_attention_heads}: each key/value head must serve the same number of query heads")
        for name in ("rms_norm_eps", "rope_theta", "initializer_range"):
            value = getattr(self, name)
            if not (is_number(value) and math.isfinite(value) and value > 0):
                raise ConfigError.about(name, f"must be a positive number, got {describe(value)}; "
                                              f"the default is {self._default(name)}")

    def _check_positive_integers(self, *names: str):
        for name in names:
            value = getattr(self, name)
            if not (is_integer(value) and value > 0):
                raise ConfigError.about(name, f"must be a positive integer, got {describe(value)}")

    @classmethod
    def _default(cls, name: str):
        return next(f.default for f in dataclasses.fields(cls) if f.name == name)

    def _nearest_multiple(self, n: int) -> int:
        return max(self.head_dim, round(n / self.head_dim) * self.head_dim)

    @property
    def attention_width(self) -> int:
        """num_attention_heads x head_dim: q_proj's rows, o_proj's columns (hidden_size unless a head_dim growth or
        the config made it otherwise)."""
        return self.num_attention_heads * self.head_dim

    @property
    def kv_group_size(self) -> int:
        """Query heads per key/value head."""
        return self.num_attention_heads // self.num_key_value_heads

    def replace(self, **changes) -> "LlamaConfig":
        """A validated copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "LlamaConfig":
        if not isinstance(d, dict):
            raise ConfigError(f"a model config must be a mapping of field: value (e.g. {{hidden_size: 512}}), "
                              f"got {describe(d)}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known, key=str)      # key=str: YAML keys need not be strings
        if unknown:
            raise ConfigError(f"unknown config field(s) {unknown}; known fields: {sorted(known)}")
        return cls(**d)

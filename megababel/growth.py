"""Function-preserving growth of a Llama model: wider residual stream (more heads), wider FFN, more layers, larger
vocabulary, alone or together in one event. Each event adds one generation of parameters (see layers.py).

How it works: every weight names its axes ("hidden", "q_heads", "kv_heads", "ffn", "vocab"). An event makes a plan
per growing axis, and each plan knows how to extend a tensor along its axis, depending on the role of that dim:
  output  - the tensor produces features along the axis (q_proj rows, o_proj rows, embedding columns, ...)
  input   - the tensor reads (contracts over) the axis (q_proj columns, o_proj columns, lm_head columns, ...)
  gain    - RMSNorm gains over the residual stream.
The growth code touches the model only through `growable_layers()`, `GrowableLayer.full_tensor()/grow_to()`,
`model.layers` and `model.config`.

Default initialisations are exact (same logits) AND give every new tensor a non-zero gradient in the first backward.
Zeroing one side of a new path is exact too, but the other side then gets zero gradient until the first update, so
the defaults cancel paths instead of zeroing them:

- width_init="split" (residual stream d -> d'): new dims copy old dims (round-robin); a dim with c copies carries
  x/sqrt(c) in each, and everything is scaled by alpha = sqrt(d'/d). The map is an isometry times alpha, so every
  token's RMS over d' dims equals its old RMS over d dims: norm gains and rms_norm_eps stay as they are. Writers into
  the residual (embedding columns, o_proj and down_proj rows) take alpha/sqrt(c); readers (q/k/v/gate/up/lm_head
  columns) take 1/(alpha*sqrt(c)) plus noise that sums to zero over a dim's copies (breaks the copies' symmetry).
  With d' = 2d this is HyperCloning's [x, x] / [W/2, W/2] plus cancelling noise.
  width_init="zero": new dims start at zero (writers zero, readers random), scaled by alpha so the RMS is kept.
- heads_init / ffn_init="pairs": new heads (FFN units) come in clone groups, mostly pairs (a triple when their
  number is odd; a single new unit pairs with an old one), whose members have identical input weights; their output
  columns (o_proj / down_proj) get noise that sums to zero within the group, so each group's contribution is exactly
  what it was (zero for new units) while every member gets gradient. "zero": new output columns zero (exact; the new
  input rows get gradient only after the first update).
- depth_init="identity": a new layer is "grown from zero heads and zero FFN units" with the pairs rule, so its
  residual branches output exactly zero. "zero": o_proj and down_proj zero. "copy": copy of an existing layer
  (G_stack-style stacking; not function-preserving).
- vocab_init="mean": new embedding and lm_head rows are the mean of the old rows (logits of old tokens unchanged;
  the softmax cannot be kept exactly since new logits join the normaliser). "random": normal(0, init_std).

New random weights use normal(0, init_std), init_std defaulting to config.initializer_range.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

import torch
import torch.nn as nn

from .config import ConfigError, LlamaConfig, describe, is_integer, is_number
from .layers import GrowableEmbedding, GrowableRMSNorm, GrowableLayer, growable_layers
from .model import DecoderLayer, Llama

WIDTH_INITS = ("split", "zero")
UNIT_INITS = ("pairs", "zero")
DEPTH_INITS = ("identity", "zero", "copy")
VOCAB_INITS = ("mean", "random")
LAYER_POSITIONS = ("append", "interleave")
AXIS_ORDER = ("hidden", "q_heads", "kv_heads", "ffn", "vocab")  # order in which a tensor's dims are grown


@dataclass
class GrowthEvent:
    """Target sizes (None: unchanged) and initialisation options for one growth event."""
    hidden_size: int | None = None
    intermediate_size: int | None = None
    num_hidden_layers: int | None = None
    vocab_size: int | None = None
    layer_positions: str | list[int] = "append"   # "append", "interleave", or indices of the new layers after growth
    copy_from: list[int] | None = None             # depth_init="copy": old layer copied by each new layer
    width_init: str = "split"
    heads_init: str = "pairs"
    ffn_init: str = "pairs"
    depth_init: str = "identity"
    vocab_init: str = "mean"
    init_std: float | None = None


def _dim_role(tensor: GrowableLayer, dim: int) -> str:
    if isinstance(tensor, GrowableRMSNorm):
        return "gain"
    if isinstance(tensor, GrowableEmbedding):
        return "output"           # a lookup produces its rows' features: both dims are outputs
    return ("output", "input")[dim]


def _normal(shape, std: float, rng: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    return (torch.randn(shape, generator=rng, dtype=torch.float32) * std).to(like.dtype).to(like.device)


# --- axis plans: how one axis grows, for each role --------------------------------------------------------------

def _zero_sum_noise(shape, group_of: torch.Tensor, std: float, rng: torch.Generator, like: torch.Tensor):
    """normal(0, std) noise along dim 0 of `shape` that sums to zero over the rows of each group.

    group_of[i] is row i's group id (-1: no noise). A group of one row gets no noise."""
    noise = _normal(shape, std, rng, like)
    member = group_of >= 0
    ids = group_of.clamp(min=0)
    n_groups = int(ids.max()) + 1 if len(ids) else 0
    sums = torch.zeros((n_groups,) + tuple(shape[1:]), dtype=noise.dtype).index_add_(0, ids[member], noise[member])
    counts = torch.bincount(ids[member], minlength=n_groups).clamp(min=1).to(noise.dtype)
    noise = noise - (sums / counts.view((-1,) + (1,) * (noise.dim() - 1)))[ids]
    noise[~member] = 0
    return noise


class ResidualPlan:
    """hidden d -> d'. See the module docstring (width_init)."""

    def __init__(self, old: int, new: int, mode: str, std: float):
        self.old, self.new, self.mode, self.std = old, new, mode, std
        self.alpha = math.sqrt(new / old)
        if mode == "split":
            self.src = torch.arange(new - old) % old                       # old dim copied by each new dim
            copies = 1 + torch.bincount(self.src, minlength=old)
        else:
            self.src = None
            copies = torch.ones(old, dtype=torch.long)
        self.inv_sqrt_copies = copies.double().rsqrt()                       # per old dim

    def grow(self, t: torch.Tensor, dim: int, role: str, rng: torch.Generator) -> torch.Tensor:
        t = t.movedim(dim, 0)
        s = self.inv_sqrt_copies.view((-1,) + (1,) * (t.dim() - 1)).to(t.dtype)
        m = self.new - self.old
        if role == "gain":
            new = t[self.src] if self.mode == "split" else torch.ones((m,) + t.shape[1:], dtype=t.dtype)
            out = torch.cat([t, new])
        elif role == "output":
            old = t * (self.alpha * s)
            new = old[self.src] if self.mode == "split" else torch.zeros((m,) + t.shape[1:], dtype=t.dtype)
            out = torch.cat([old, new])
        elif self.mode == "split":  # input
            old = t * (s / self.alpha)
            out = torch.cat([old, old[self.src]])
            group_of = torch.cat([torch.arange(self.old), self.src])        # the old dim each row stands for
            out += _zero_sum_noise(out.shape, group_of, self.std, rng, out)
        else:
            out = torch.cat([t / self.alpha, _normal((m,) + t.shape[1:], self.std, rng, t)])
        return out.movedim(0, dim)


def clone_groups(units: list[int], partner: int | None) -> list[list[int]] | None:
    """Split new units into groups of identical clones: pairs, plus a triple when their number is odd.
    A single new unit forms a pair with the old unit `partner`; None if there is none."""
    if len(units) == 1:
        return [[partner, units[0]]] if partner is not None else None
    groups = [units[i:i + 2] for i in range(0, len(units) - len(units) % 2, 2)]
    if len(units) % 2:
        groups[-1].append(units[-1])
    return groups


def head_groups(q_old: int, q_new: int, kv_old: int, kv_new: int) -> tuple[list, list] | None:
    """Clone groups for new query heads and key/value heads.

    Grouped-query attention (>= 2 query heads per kv head): the query heads of each new kv head form clone groups
    among themselves, sharing that kv head. Plain multi-head attention: each clone group of query heads comes with
    the same clone group of kv heads. None if the heads cannot be grouped (a single new head and no old one)."""
    group = q_new // kv_new
    if group >= 2:
        return [g for kv in range(kv_old, kv_new)
                for g in clone_groups(list(range(kv * group, (kv + 1) * group)), None)], []
    groups = clone_groups(list(range(q_old, q_new)), q_old - 1 if q_old else None)
    return None if groups is None else (groups, groups)


class UnitPlan:
    """Units (heads of `unit` rows, or FFN neurons) old -> new.

    Output role (q/k/v, gate/up rows): new units are normal(0, std), then each clone group copies its first member.
    Input role (o_proj, down_proj columns): mode "pairs" adds noise that sums to zero within each clone group, so
    identical members cancel (an old member keeps its column plus its share of the noise); mode "zero": zeros."""

    def __init__(self, old: int, new: int, unit: int, mode: str, std: float, groups: list[list[int]]):
        self.old, self.new, self.unit, self.mode, self.std = old, new, unit, mode, std
        self.source = torch.arange(new)            # unit each unit copies its rows from
        self.group_of = torch.full((new,), -1)
        for g, members in enumerate(groups):
            self.source[members] = members[0]
            self.group_of[members] = g

    def grow(self, t: torch.Tensor, dim: int, role: str, rng: torch.Generator) -> torch.Tensor:
        t = t.movedim(dim, 0)
        rest = t.shape[1:]
        shape = ((self.new - self.old) * self.unit,) + rest
        if role == "output":
            out = torch.cat([t, _normal(shape, self.std, rng, t)]).view((self.new, self.unit) + rest)
            out = out[self.source]
        else:
            out = torch.cat([t, torch.zeros(shape, dtype=t.dtype)]).view((self.new, self.unit) + rest)
            if self.mode == "pairs":
                out = out + _zero_sum_noise(out.shape, self.group_of, self.std, rng, out)
        return out.reshape((self.new * self.unit,) + rest).movedim(0, dim)


class VocabPlan:
    def __init__(self, old: int, new: int, mode: str, std: float):
        self.old, self.new, self.mode, self.std = old, new, mode, std

    def grow(self, t: torch.Tensor, dim: int, role: str, rng: torch.Generator) -> torch.Tensor:
        t = t.movedim(dim, 0)
        shape = (self.new - self.old,) + t.shape[1:]
        new = t.mean(0, keepdim=True).expand(shape) if self.mode == "mean" else _normal(shape, self.std, rng, t)
        return torch.cat([t, new]).movedim(0, dim)


def _ffn_groups(old: int, new: int) -> list[list[int]] | None:
    return clone_groups(list(range(old, new)), old - 1 if old else None)


# --- validation -------------------------------------------------------------------------------------------------

def _size_or_none(value) -> bool:
    return value is None or (is_integer(value) and value > 0)


def _layer_indices(value) -> bool:
    return isinstance(value, (list, tuple)) and all(is_integer(i) and i >= 0 for i in value)


def _one_of(choices: tuple[str, ...]):
    return lambda value: isinstance(value, str) and value in choices


# every GrowthEvent field: (does a value pass on its own, whatever the model?, what is accepted)
EVENT_FIELD_RULES = {
    "hidden_size": (_size_or_none, "a positive integer (the size after growth)"),
    "intermediate_size": (_size_or_none, "a positive integer (the size after growth)"),
    "num_hidden_layers": (_size_or_none, "a positive integer (the number of layers after growth)"),
    "vocab_size": (_size_or_none, "a positive integer (the size after growth)"),
    "layer_positions": (lambda v: v in LAYER_POSITIONS if isinstance(v, str) else _layer_indices(v),
                        "'append', 'interleave' or a list of the new layers' indices after growth"),
    "copy_from": (lambda v: v is None or _layer_indices(v),
                  "a list of old layer indices, one per new layer (with depth_init 'copy')"),
    "width_init": (_one_of(WIDTH_INITS), f"one of {list(WIDTH_INITS)}"),
    "heads_init": (_one_of(UNIT_INITS), f"one of {list(UNIT_INITS)}"),
    "ffn_init": (_one_of(UNIT_INITS), f"one of {list(UNIT_INITS)}"),
    "depth_init": (_one_of(DEPTH_INITS), f"one of {list(DEPTH_INITS)}"),
    "vocab_init": (_one_of(VOCAB_INITS), f"one of {list(VOCAB_INITS)}"),
    "init_std": (lambda v: v is None or (is_number(v) and math.isfinite(v) and v > 0),
                 "a positive finite number (or leave it out: the model's initializer_range)"),
}


def check_event_fields(event: GrowthEvent):
    """Refuse a field whose value is wrong whatever the model (a wrong type, an unknown option), naming it."""
    for f in fields(event):
        value = getattr(event, f.name)
        accepts, expected = EVENT_FIELD_RULES[f.name]
        if not accepts(value):
            raise ConfigError.about(f.name, f"must be {expected}, got {describe(value)}")


def _final_positions(event: GrowthEvent, old_layers: int, new_layers: int) -> list[int]:
    added = new_layers - old_layers
    where = event.layer_positions
    if where == "append":
        return list(range(old_layers, new_layers))
    if where == "interleave":
        # the k-th new layer goes right after old layer floor((k+1) * old / added) - 1: evenly spread
        after = [((k + 1) * old_layers) // added - 1 for k in range(added)]
        return [a + k + 1 for k, a in enumerate(after)]
    positions = sorted(where)      # a list of indices: check_event_fields refused anything else
    if len(positions) != added or len(set(positions)) != added or \
            any(not 0 <= p < new_layers for p in positions):
        raise ConfigError.about("layer_positions", f"{list(where)} must list {added} distinct indices in "
                                                   f"[0, {new_layers}) (where the new layers sit after growth)")
    return positions


def check_growth(config: LlamaConfig, event: GrowthEvent) -> LlamaConfig:
    """Validate `event` against `config` and return the grown config; raises ConfigError naming the field."""
    check_event_fields(event)
    changes = {}
    for name in ("hidden_size", "intermediate_size", "num_hidden_layers", "vocab_size"):
        target, current = getattr(event, name), getattr(config, name)
        if target is None:
            continue
        if target < current:
            raise ConfigError.about(name, f"{current} -> {target} would shrink the model; growth only adds")
        if target > current:
            changes[name] = target
    if not changes:
        raise ConfigError("growth event changes nothing: give a larger hidden_size, intermediate_size, "
                          "num_hidden_layers or vocab_size")
    if "hidden_size" in changes:
        d = changes["hidden_size"]
        if d % config.head_dim:
            raise ConfigError.about("hidden_size", f"{d} is not a multiple of head_dim {config.head_dim} (head_dim is "
                                                   f"fixed; growth adds heads)")
        heads, group = d // config.head_dim, config.kv_group_size
        if heads % group:
            raise ConfigError.about("hidden_size", f"{d} gives {heads} heads, not a multiple of the key/value group "
                                                   f"size {group}; use a multiple of {group * config.head_dim}")
        changes.update(num_attention_heads=heads, num_key_value_heads=heads // group)
    new = config.replace(**changes)
    if "num_hidden_layers" in changes:
        positions = _final_positions(event, config.num_hidden_layers, new.num_hidden_layers)
        if event.depth_init == "identity" and (
                head_groups(0, new.num_attention_heads, 0, new.num_key_value_heads) is None
                or _ffn_groups(0, new.intermediate_size) is None):
            raise ConfigError(f"depth_init='identity' needs at least 2 heads per new layer to cancel "
                              f"({new.num_attention_heads} heads, {new.num_key_value_heads} kv heads) and 2 FFN "
                              f"units: use depth_init='zero'")
        if event.copy_from is not None:
            if event.depth_init != "copy":
                raise ConfigError.about("copy_from", "is only used with depth_init='copy': set depth_init or "
                                                     "remove copy_from")
            if len(event.copy_from) != len(positions) or \
                    any(not 0 <= i < config.num_hidden_layers for i in event.copy_from):
                raise ConfigError.about("copy_from", f"must list {len(positions)} old layer indices in "
                                                     f"[0, {config.num_hidden_layers}), got {list(event.copy_from)}")
    elif event.layer_positions != "append" or event.copy_from is not None:
        given = "layer_positions" if event.layer_positions != "append" else "copy_from"
        raise ConfigError.about(given, "is given but num_hidden_layers does not grow: remove it or grow "
                                       "num_hidden_layers")
    return new


# --- applying an event ------------------------------------------------------------------------------------------

def _axis_plans(old: LlamaConfig, new: LlamaConfig, event: GrowthEvent, std: float) -> dict:
    plans = {}
    if new.hidden_size > old.hidden_size:
        plans["hidden"] = ResidualPlan(old.hidden_size, new.hidden_size, event.width_init, std)
        q_groups, kv_groups = [], []
        if event.heads_init == "pairs":
            q_groups, kv_groups = head_groups(old.num_attention_heads, new.num_attention_heads,
                                              old.num_key_value_heads, new.num_key_value_heads)
        plans["q_heads"] = UnitPlan(old.num_attention_heads, new.num_attention_heads, old.head_dim,
                                    event.heads_init, std, q_groups)
        plans["kv_heads"] = UnitPlan(old.num_key_value_heads, new.num_key_value_heads, old.head_dim,
                                     event.heads_init, std, kv_groups)
    if new.intermediate_size > old.intermediate_size:
        groups = _ffn_groups(old.intermediate_size, new.intermediate_size) if event.ffn_init == "pairs" else []
        plans["ffn"] = UnitPlan(old.intermediate_size, new.intermediate_size, 1, event.ffn_init, std, groups)
    if new.vocab_size > old.vocab_size:
        plans["vocab"] = VocabPlan(old.vocab_size, new.vocab_size, event.vocab_init, std)
    return plans


def _apply_plans(tensor: GrowableLayer, full: torch.Tensor, plans: dict, rng: torch.Generator) -> torch.Tensor:
    """Grow `full` (the tensor's values) along each of its axes that has a plan, in AXIS_ORDER."""
    for axis in AXIS_ORDER:
        if axis in plans and axis in tensor.axes:
            dim = tensor.axes.index(axis)
            full = plans[axis].grow(full, dim, _dim_role(tensor, dim), rng)
    return full


def _new_layer(config: LlamaConfig, mode: str, std: float, rng: torch.Generator, generation: int,
               source: DecoderLayer | None) -> DecoderLayer:
    """A new decoder layer: an exact identity ("identity", "zero") or a copy of `source` ("copy")."""
    layer = DecoderLayer(config)
    with torch.no_grad():
        if mode == "copy":
            for (_, dst), (_, src) in zip(growable_layers(layer), growable_layers(source)):
                (block,) = dst.blocks()
                block.copy_(src.full_tensor())
        else:
            # grow every tensor from zero heads / zero FFN units with the pairs (or zero) rule
            identity = mode == "identity"
            q_groups, kv_groups = head_groups(0, config.num_attention_heads, 0, config.num_key_value_heads) \
                if identity else ([], [])
            unit_mode = "pairs" if identity else "zero"
            plans = {
                "q_heads": UnitPlan(0, config.num_attention_heads, config.head_dim, unit_mode, std, q_groups),
                "kv_heads": UnitPlan(0, config.num_key_value_heads, config.head_dim, unit_mode, std, kv_groups),
                "ffn": UnitPlan(0, config.intermediate_size, 1, unit_mode, std,
                                _ffn_groups(0, config.intermediate_size) if identity else []),
            }
            for _, tensor in growable_layers(layer):
                (block,) = tensor.blocks()
                if isinstance(tensor, GrowableRMSNorm):
                    block.fill_(1.0)
                else:
                    empty = torch.empty([0 if a in plans else s for a, s in zip(tensor.axes, tensor.full_shape)])
                    block.copy_(_apply_plans(tensor, empty, plans, rng))
    for _, tensor in growable_layers(layer):
        (block,) = tensor.blocks()
        block.block_meta = replace(block.block_meta, generation=generation)
    return layer


@torch.no_grad()
def grow(model: Llama, event: GrowthEvent, seed: int = 0) -> int:
    """Apply `event` to `model` in place (validated first: nothing changes if it is invalid).

    Returns the new generation number. Old parameters keep their identity; new regions become new parameters
    tagged with the new generation. New random values come from a generator seeded by (seed, generation), so every
    data-parallel rank that calls grow() with the same seed builds the same model."""
    old, new = model.config, check_growth(model.config, event)
    generation = model.generation + 1
    std = event.init_std if event.init_std is not None else old.initializer_range
    rng = torch.Generator().manual_seed(seed * 1_000_003 + generation)

    plans = _axis_plans(old, new, event, std)
    for _, tensor in model.growable_layers():
        full = _apply_plans(tensor, tensor.full_tensor(), plans, rng)
        if tuple(full.shape) != tensor.full_shape:
            tensor.grow_to(full, generation)

    if new.num_hidden_layers > old.num_hidden_layers:
        positions = _final_positions(event, old.num_hidden_layers, new.num_hidden_layers)
        old_layers = list(model.layers)
        sources = event.copy_from
        if sources is None:  # stack: cycle through the old layers in order when appending, else the one before
            sources = [max(p - k - 1, 0) if event.layer_positions != "append" else k % old.num_hidden_layers
                       for k, p in enumerate(positions)]
        like = model.norm.blocks()[0]
        new_layers = iter([_new_layer(new, event.depth_init, std, rng, generation,
                                      old_layers[src] if event.depth_init == "copy" else None
                                      ).to(device=like.device, dtype=like.dtype)
                           for src in sources])
        remaining = iter(old_layers)
        model.layers = nn.ModuleList(next(new_layers) if i in positions else next(remaining)
                                     for i in range(new.num_hidden_layers))

    model.config = new
    model.generation = generation
    return generation

"""What a growth event is, and its checks, without torch: the target sizes and init options of one growth
(GrowthEvent), the clone groups that new heads and FFN units form, and check_growth, which refuses an event the model
cannot take, naming the field, and gives the grown config. megababel/growth/operators.py applies an event to the
tensors; schedules and the planner validate with this module alone. Imports only megababel.config."""
from __future__ import annotations

import math
from dataclasses import dataclass, fields

from megababel.config import ConfigError, LlamaConfig, describe, is_integer, is_number

WIDTH_INITS = ("split", "zero")
UNIT_INITS = ("pairs", "zero")
DEPTH_INITS = ("identity", "zero", "copy")
VOCAB_INITS = ("mean", "random")
LAYER_POSITIONS = ("append", "interleave")


@dataclass
class GrowthEvent:
    """Target sizes (None: unchanged) and initialisation options for one growth event."""
    hidden_size: int | None = None
    intermediate_size: int | None = None
    num_hidden_layers: int | None = None
    vocab_size: int | None = None
    head_dim: int | None = None                    # a whole multiple of the current head_dim
    num_attention_heads: int | None = None         # heads after growth (default: the attention width grows with
                                                   # hidden_size); key/value heads keep the group size
    layer_positions: str | list[int] = "append"   # "append", "interleave", or indices of the new layers after growth
    copy_from: list[int] | None = None             # depth_init="copy": old layer copied by each new layer
    width_init: str = "split"
    heads_init: str = "pairs"
    ffn_init: str = "pairs"
    depth_init: str = "identity"
    vocab_init: str = "mean"
    init_std: float | None = None


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


def ffn_groups(old: int, new: int) -> list[list[int]] | None:
    return clone_groups(list(range(old, new)), old - 1 if old else None)



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
    "head_dim": (_size_or_none, "a positive integer (the size after growth, a whole multiple of the current)"),
    "num_attention_heads": (_size_or_none, "a positive integer (the number of heads after growth)"),
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


def final_positions(event: GrowthEvent, old_layers: int, new_layers: int) -> list[int]:
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
    for name in ("hidden_size", "intermediate_size", "num_hidden_layers", "vocab_size", "head_dim",
                 "num_attention_heads"):
        target, current = getattr(event, name), getattr(config, name)
        if target is None:
            continue
        if target < current:
            raise ConfigError.about(name, f"{current} -> {target} would shrink the model; growth only adds")
        if target > current:
            changes[name] = target
    if not changes:
        raise ConfigError("growth event changes nothing: give a larger hidden_size, intermediate_size, "
                          "num_hidden_layers, vocab_size, head_dim or num_attention_heads")
    head_dim = changes.get("head_dim", config.head_dim)
    if head_dim % config.head_dim:
        raise ConfigError.about("head_dim", f"{config.head_dim} -> {head_dim} is not a whole multiple: a head_dim "
                                            f"growth keeps RoPE exact only as k x head_dim; use "
                                            f"{2 * config.head_dim}, {3 * config.head_dim}, ...")
    group = config.kv_group_size
    if event.num_attention_heads is not None:       # given, even unchanged: the attention width is the event's
        heads = event.num_attention_heads
        if heads % group:
            raise ConfigError.about("num_attention_heads", f"{heads} is not a multiple of the key/value group size "
                                                           f"{group}; use a multiple of {group}")
        changes.update(num_attention_heads=heads, num_key_value_heads=heads // group)
    elif "hidden_size" in changes:
        # the attention width grows with hidden_size (heads tile it if they did), in heads of the new head_dim
        d = changes["hidden_size"]
        width = config.attention_width * d
        if width % (config.hidden_size * head_dim):
            raise ConfigError.about("hidden_size", f"{d} gives an attention width of {width / config.hidden_size:g}, "
                                                   f"not a multiple of head_dim {head_dim}")
        heads = width // (config.hidden_size * head_dim)
        if heads < config.num_attention_heads:
            raise ConfigError.about("hidden_size", f"{d} gives {heads} heads of head_dim {head_dim}, fewer than the "
                                                   f"{config.num_attention_heads} there are: growth only adds")
        if heads % group:
            raise ConfigError.about("hidden_size", f"{d} gives {heads} heads, not a multiple of the key/value group "
                                                   f"size {group}; use a hidden_size that gives a multiple of {group}")
        changes.update(num_attention_heads=heads, num_key_value_heads=heads // group)
    new = config.replace(**changes)
    if "num_hidden_layers" in changes:
        positions = final_positions(event, config.num_hidden_layers, new.num_hidden_layers)
        if event.depth_init == "identity" and (
                head_groups(0, new.num_attention_heads, 0, new.num_key_value_heads) is None
                or ffn_groups(0, new.intermediate_size) is None):
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

"""Function-preserving growth of a Llama model: wider residual stream (more heads), wider FFN, more layers, larger
vocabulary, alone or together in one event. Each event adds one generation of parameters (see
megababel/model/layers.py).

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
- head_dim d -> k*d (a whole k, every head wider; RoPE exact). RoPE's frequency of pair i is theta^(-2i/d), so the
  pair k*i of a head k*d wide has the same frequency, and in the rotate_half layout (dim i pairs with i + d/2) old dim
  j simply moves to k*j: every old row of a q/k/v head axis (every old column of o_proj) goes from r to k*r, the new
  ones fill the k - 1 positions between (model/layers.py's strided blocks keep the old blocks whole). Old q rows are
  multiplied by sqrt(k), since the attention scale goes from 1/sqrt(d) to 1/sqrt(k*d). The new q/k dims form new
  rotary pairs of frequencies no old pair has, so a score stays exact only if, per pair, the q side or the k side is
  zero, and that side's gradient is what the other side's is proportional to: new q rows start at zero (they get
  gradient at once, from the random new k rows) and new k rows are random (they get gradient from the second step,
  once q has moved). v/o use the pairs rule instead: each new v dim copies the old dim it sits after, and o_proj's
  columns of each such group (old and copies) get noise that sums to zero, so both sides get gradient at once.
  The Adam moments of the rescaled q rows are rescaled as the gradients will be (exp_avg / sqrt(k), exp_avg_sq / k):
  they describe the new parametrisation, and the next update m / sqrt(v) is the same either way.

New random weights use normal(0, init_std), init_std defaulting to config.initializer_range.
"""
from __future__ import annotations

import math
import re
import zlib

import torch
import torch.nn as nn

from megababel.config import LlamaConfig
from megababel.growth.events import GrowthEvent, check_growth, ffn_groups, final_positions, head_groups
from megababel.model.layers import GrowableEmbedding, GrowableRMSNorm, GrowableLayer, grown_layout
from megababel.model.llama import Builder, DecoderLayer, Llama

AXIS_ORDER = ("hidden", "q_heads", "kv_heads", "ffn", "vocab")  # order in which a tensor's dims are grown
HEAD_AXES = ("q_heads", "kv_heads")


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
    noise -= (sums / counts.view((-1,) + (1,) * (noise.dim() - 1)))[ids]     # in place: one full-size tensor less
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
            del old
            group_of = torch.cat([torch.arange(self.old), self.src])        # the old dim each row stands for
            out += _zero_sum_noise(out.shape, group_of, self.std, rng, out)
        else:
            out = torch.cat([t / self.alpha, _normal((m,) + t.shape[1:], self.std, rng, t)])
        return out.movedim(0, dim)


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


class HeadDimPlan:
    """head_dim d -> k*d along a head axis (see the module docstring): old index r moves to k*r; new q rows zero,
    old q rows times sqrt(k); new k rows random; new v rows copy the old row before them, and o_proj's columns of
    each such group get noise that sums to zero."""

    def __init__(self, old: int, new: int, std: float):
        self.k, self.std = new // old, std

    def grow(self, t: torch.Tensor, dim: int, name: str, rng: torch.Generator) -> torch.Tensor:
        t = t.movedim(dim, 0)
        k, rest = self.k, t.shape[1:]
        if name == "q_proj":
            out = torch.zeros((len(t), k) + rest, dtype=t.dtype)
            out[:, 0] = t * math.sqrt(k)
        elif name == "k_proj":
            out = _normal((len(t), k) + rest, self.std, rng, t)
            out[:, 0] = t
        elif name == "v_proj":
            out = t.unsqueeze(1).expand((len(t), k) + rest).clone()
        elif name == "o_proj":
            out = torch.zeros((len(t), k) + rest, dtype=t.dtype)
            out[:, 0] = t
            group_of = torch.arange(len(t)).repeat_interleave(k)       # each old column and its k - 1 new ones
            out = out.reshape((len(t) * k,) + rest)
            out += _zero_sum_noise(out.shape, group_of, self.std, rng, out)
        else:
            raise ValueError(f"no head_dim growth for a {name!r} tensor")
        return out.reshape((len(t) * k,) + rest).movedim(0, dim)

    def moment_scale(self, name: str) -> float:
        """The factor on an old block's gradients after the growth (its Adam moments: exp_avg x f, exp_avg_sq x
        f^2): the q rows were multiplied by sqrt(k), so their gradients shrink by it."""
        return 1 / math.sqrt(self.k) if name == "q_proj" else 1.0


class VocabPlan:
    def __init__(self, old: int, new: int, mode: str, std: float):
        self.old, self.new, self.mode, self.std = old, new, mode, std

    def grow(self, t: torch.Tensor, dim: int, role: str, rng: torch.Generator) -> torch.Tensor:
        t = t.movedim(dim, 0)
        shape = (self.new - self.old,) + t.shape[1:]
        new = t.mean(0, keepdim=True).expand(shape) if self.mode == "mean" else _normal(shape, self.std, rng, t)
        return torch.cat([t, new]).movedim(0, dim)


# --- applying an event ------------------------------------------------------------------------------------------

def _axis_plans(old: LlamaConfig, new: LlamaConfig, event: GrowthEvent, std: float) -> dict:
    plans = {}
    if new.head_dim > old.head_dim:
        plans["head_dim"] = HeadDimPlan(old.head_dim, new.head_dim, std)
    if new.hidden_size > old.hidden_size:
        plans["hidden"] = ResidualPlan(old.hidden_size, new.hidden_size, event.width_init, std)
    if new.num_attention_heads > old.num_attention_heads:
        q_groups, kv_groups = [], []
        if event.heads_init == "pairs":
            q_groups, kv_groups = head_groups(old.num_attention_heads, new.num_attention_heads,
                                              old.num_key_value_heads, new.num_key_value_heads)
        plans["q_heads"] = UnitPlan(old.num_attention_heads, new.num_attention_heads, new.head_dim,
                                    event.heads_init, std, q_groups)
        plans["kv_heads"] = UnitPlan(old.num_key_value_heads, new.num_key_value_heads, new.head_dim,
                                     event.heads_init, std, kv_groups)
    if new.intermediate_size > old.intermediate_size:
        groups = ffn_groups(old.intermediate_size, new.intermediate_size) if event.ffn_init == "pairs" else []
        plans["ffn"] = UnitPlan(old.intermediate_size, new.intermediate_size, 1, event.ffn_init, std, groups)
    if new.vocab_size > old.vocab_size:
        plans["vocab"] = VocabPlan(old.vocab_size, new.vocab_size, event.vocab_init, std)
    return plans


def _apply_plans(tensor: GrowableLayer, full: torch.Tensor, plans: dict, rng: torch.Generator,
                 path: str = "") -> torch.Tensor:
    """Grow `full` (the tensor's values) along each of its axes that has a plan, in AXIS_ORDER; a head axis is first
    widened head by head (head_dim), then given its new heads."""
    for axis in AXIS_ORDER:
        if axis not in tensor.axes:
            continue
        dim = tensor.axes.index(axis)
        if axis in HEAD_AXES and "head_dim" in plans:
            full = plans["head_dim"].grow(full, dim, path.rpartition(".")[2], rng)
        if axis in plans:
            full = plans[axis].grow(full, dim, _dim_role(tensor, dim), rng)
    return full


def _tensor_rng(seed: int, generation: int, path: str) -> torch.Generator:
    """The generator of one tensor's new random values, keyed by (seed, generation, path): a tensor grows the same
    whichever rank grows it and whatever else is grown before it, so ranks can grow their own tensors one at a
    time and still match the unsharded growth bit for bit."""
    key = ((seed * 1_000_003 + generation) * (1 << 32) + zlib.crc32(path.encode())) % (1 << 63)
    return torch.Generator().manual_seed(key)


def _skeleton(config: LlamaConfig, layout: dict | None, generation: int) -> Llama:
    """The model's structure on the meta device: paths, axes, shapes and block layout, no memory."""
    from megababel.model.llama import UNINITIALISED
    with torch.device("meta"):
        return Llama(config, layout=layout, generation=generation, values=UNINITIALISED)


_LAYER_PATH = re.compile(r"layers\.(\d+)\.(.*)")


class GrowthTransform:
    """The map of one growth event from a generation to the next, for a model given by its config, block layout and
    generation, applied one tensor at a time: `grown(path, fetch)` is the grown model's full tensor at `path`, from
    the old model's tensors that `fetch(old_path)` supplies. It holds no tensor of the model, so a rank can grow the
    tensors it needs (its shard of them) in turn without ever holding the whole model; grow() below applies it to a
    whole model.

    `paths`: the grown model's tensors in module order; `layout`: their block layouts; `origin[path]`: the old
    tensor it grows from (None: a tensor of a new layer); `old_block(path, i)`: the old (path, block) that block i
    is (old blocks keep their index and their Adam state), or None for a new block."""

    def __init__(self, config: LlamaConfig, layout: dict, generation: int, event: GrowthEvent, seed: int = 0):
        self.old, self.new = config, check_growth(config, event)
        self.event, self.seed, self.generation = event, seed, generation + 1
        self.std = event.init_std if event.init_std is not None else config.initializer_range
        self.plans = _axis_plans(self.old, self.new, event, self.std)
        self.old_tensors = dict(_skeleton(config, layout, generation).growable_layers())
        self.tensors = dict(_skeleton(self.new, None, self.generation).growable_layers())
        self.paths = list(self.tensors)

        # which old layer each new layer is (None: new), and which grown layer a depth_init="copy" layer copies
        old_layers, new_layers = config.num_hidden_layers, self.new.num_hidden_layers
        layer_origin, copies = list(range(old_layers)), {}
        if new_layers > old_layers:
            positions = final_positions(event, old_layers, new_layers)
            sources = event.copy_from
            if sources is None:  # stack: cycle through the old layers in order when appending, else the one before
                sources = [max(p - k - 1, 0) if event.layer_positions != "append" else k % old_layers
                           for k, p in enumerate(positions)]
            remaining = iter(range(old_layers))
            layer_origin = [None if i in positions else next(remaining) for i in range(new_layers)]
            if event.depth_init == "copy":
                copies = dict(zip(positions, (layer_origin.index(src) for src in sources)))
        self.origin, self.copy_of, self.layout = {}, {}, {}
        for path, tensor in self.tensors.items():
            match = _LAYER_PATH.fullmatch(path)
            origin = path
            if match:
                index, rest = int(match.group(1)), match.group(2)
                origin = None if layer_origin[index] is None else f"layers.{layer_origin[index]}.{rest}"
                if index in copies:
                    self.copy_of[path] = f"layers.{copies[index]}.{rest}"
            self.origin[path] = origin
            if origin is None:
                self.layout[path] = [((0,) * len(tensor.full_shape), tensor.full_shape, self.generation)]
            else:
                old = self.old_tensors[origin]
                self.layout[path] = grown_layout(old.layout(), old.full_shape, tensor.full_shape, self.generation,
                                                 self._spread(old))

    def _spread(self, tensor: GrowableLayer) -> tuple[int, ...]:
        """Per dim, the factor a head_dim growth moves its old positions by (1 elsewhere)."""
        k = self.plans["head_dim"].k if "head_dim" in self.plans else 1
        return tuple(k if axis in HEAD_AXES else 1 for axis in tensor.axes)

    def moment_scale(self, path: str) -> float:
        """The factor on the gradients (and so exp_avg; exp_avg_sq by its square) of `path`'s old blocks."""
        if "head_dim" not in self.plans or self.origin[path] is None:
            return 1.0
        return self.plans["head_dim"].moment_scale(path.rpartition(".")[2])

    def old_block(self, path: str, index: int) -> tuple[str, int] | None:
        origin = self.origin[path]
        if origin is None or index >= len(self.old_tensors[origin].layout()):
            return None
        return origin, index

    def grown(self, path: str, fetch) -> torch.Tensor:
        """The grown model's full fp32 tensor at `path`; fetch(old_path) gives an old full tensor (it is called for
        the one old tensor this one grows from, if any)."""
        rng = _tensor_rng(self.seed, self.generation, path)
        origin, tensor = self.origin[path], self.tensors[path]
        if origin is not None:
            return _apply_plans(self.old_tensors[origin], fetch(origin), self.plans, rng, path).contiguous()
        if path in self.copy_of:          # G_stack-style: a copy of an existing layer, as grown
            return self.grown(self.copy_of[path], fetch)
        if isinstance(tensor, GrowableRMSNorm):
            return torch.ones(tensor.full_shape)
        # a new layer is grown from zero heads / zero FFN units with the pairs (or zero) rule
        config, identity = self.new, self.event.depth_init == "identity"
        q_groups, kv_groups = head_groups(0, config.num_attention_heads, 0, config.num_key_value_heads) \
            if identity else ([], [])
        unit_mode = "pairs" if identity else "zero"
        plans = {
            "q_heads": UnitPlan(0, config.num_attention_heads, config.head_dim, unit_mode, self.std, q_groups),
            "kv_heads": UnitPlan(0, config.num_key_value_heads, config.head_dim, unit_mode, self.std, kv_groups),
            "ffn": UnitPlan(0, config.intermediate_size, 1, unit_mode, self.std,
                            ffn_groups(0, config.intermediate_size) if identity else []),
        }
        empty = torch.empty([0 if a in plans else n for a, n in zip(tensor.axes, tensor.full_shape)])
        return _apply_plans(tensor, empty, plans, rng).contiguous()


@torch.no_grad()
def grow(model: Llama, event: GrowthEvent, seed: int = 0) -> int:
    """Apply `event` to `model` in place (validated first: nothing changes if it is invalid): the unsharded
    growth, the reference that sharded growth (megababel/engine/sharded_growth.py) matches bit for bit.

    Returns the new generation number. Old parameters keep their identity; new regions become new parameters
    tagged with the new generation. New random values come from generators keyed by (seed, generation, tensor), so
    every rank that calls grow() with the same seed builds the same model."""
    step = GrowthTransform(model.config, model.block_layout(), model.generation, event, seed)
    old = dict(model.growable_layers())
    like = model.norm.blocks()[0]
    grown = {path: step.grown(path, lambda origin: old[origin].full_tensor().float()) for path in step.paths}
    for path in step.paths:
        origin = step.origin[path]
        if origin is not None and (tuple(grown[path].shape) != old[origin].full_shape
                                   or step.layout[path] != old[origin].layout()):
            old[origin].grow_to(grown[path].to(like.dtype), step.generation, step.layout[path])
    if step.new.num_hidden_layers > step.old.num_hidden_layers:
        build = Builder(step.new, layout=step.layout, values=grown)
        old_layers = list(model.layers)
        layers = []
        for index in range(step.new.num_hidden_layers):
            origin = step.origin[f"layers.{index}.input_layernorm"]
            if origin is None:
                layers.append(DecoderLayer(step.new, build, f"layers.{index}").to(device=like.device, dtype=like.dtype))
            else:
                layers.append(old_layers[int(_LAYER_PATH.fullmatch(origin).group(1))])
        model.layers = nn.ModuleList(layers)
    for layer in model.layers:
        layer.self_attn.head_dim = step.new.head_dim
    model.config = step.new
    model.generation = step.generation
    return step.generation

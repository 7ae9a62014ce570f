"""Megatron-style tensor parallelism for growable layers, with explicit process groups (no global parallel state).

Which dim of a weight is split follows from its named axes alone (SPLIT_AXES): heads, FFN units and vocabulary
are split, the residual ("hidden") dim is replicated. So q/k/v and gate/up are column-parallel (output split),
o_proj and down_proj row-parallel (input split, all-reduce after), embed_tokens is a vocab-parallel embedding and
lm_head a column-parallel linear over the vocabulary whose logits never leave their rank (vocab-parallel
cross-entropy). RMSNorm gains are replicated.

How a grown tensor is split (TPSplit): the split dim is cut into *segments* at the block boundaries, i.e. one
segment per growth of that axis, and every segment is divided evenly over the TP ranks. So the heads (FFN units,
vocabulary rows) added by a growth are spread evenly over the ranks: each rank's shard grows by its share, and
every rank holds a piece of every block (of every generation). Rank r's local tensor is its piece of each segment,
in order. Weights and Adam moments are split and merged by the same index map, computed from the block layout.

Rank layout: TP groups are consecutive ranks (tp_rank = rank % tp), the data-parallel groups are the ranks with the
same tp_rank. `TensorParallel` holds both groups and answers DeepSpeed's `mpu` questions.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F

from megababel.config import ConfigError, LlamaConfig
from megababel.model.loss import VocabShard
from megababel.model.layers import (GrowableEmbedding, GrowableLinear, GrowableLayer, layout_entry, region,
                                    unpack_block)
from megababel.parallel.distributed import all_gather

SPLIT_AXES = ("q_heads", "kv_heads", "ffn", "vocab")   # a weight is split along its (only) axis among these


def split_dim(axes: tuple[str, ...]) -> int | None:
    dims = [d for d, axis in enumerate(axes) if axis in SPLIT_AXES]
    if len(dims) > 1:
        raise ValueError(f"a weight with axes {axes} has more than one tensor-parallel axis")
    return dims[0] if dims else None


@dataclass(frozen=True)
class TPSplit:
    """How one growable tensor is split over `size` tensor-parallel ranks (see the module docstring).

    `global_layout`: [(offset, shape, generation[, stride])] of the blocks of the unsharded tensor; local block i is
    this rank's piece of global block i. `unit`: rows that must stay together (head_dim for heads).

    A head_dim growth leaves strided blocks along a head axis (every k-th row of every head); a head stays whole on
    one rank, and a stride divides the head, so each rank's piece of a strided block is again strided, alike on
    every rank."""
    dim: int
    rank: int
    size: int
    global_shape: tuple[int, ...]
    global_layout: tuple
    axis: str
    unit: int = 1

    def __post_init__(self):
        for a, b in zip(self.segments[:-1], self.segments[1:]):
            if (b - a) % (self.size * self.unit):
                what = "heads" if self.unit > 1 else self.axis
                raise ConfigError(f"a {self.axis} segment [{a}, {b}) ({(b - a) // self.unit} {what}) cannot be split "
                                  f"evenly over {self.size} tensor-parallel ranks: every {what} count of the schedule and "
                                  f"every growth of it must be divisible by --tp {self.size}")

    @property
    def segments(self) -> tuple[int, ...]:
        """Boundaries along the split dim: where some block's run of rows starts (a strided block's first row
        rounded down to its stride: the blocks a head_dim growth interleaves share one run), and the end."""
        starts = set()
        for entry in self.global_layout:
            offset, _, _, stride = unpack_block(entry)
            starts.add(offset[self.dim] - offset[self.dim] % stride[self.dim])
        return tuple(sorted(starts | {self.global_shape[self.dim]}))

    @property
    def local_shape(self) -> tuple[int, ...]:
        shape = list(self.global_shape)
        shape[self.dim] //= self.size
        return tuple(shape)

    def positions(self, rank: int | None = None) -> torch.Tensor:
        """Global indices (along the split dim) of `rank`'s local rows, in local order."""
        rank = self.rank if rank is None else rank
        pieces = []
        for a, b in zip(self.segments[:-1], self.segments[1:]):
            share = (b - a) // self.size
            pieces.append(torch.arange(a + rank * share, a + (rank + 1) * share))
        return torch.cat(pieces)

    def _block_rows(self, entry) -> tuple[torch.Tensor, torch.Tensor]:
        """(this rank's local indices, the block's own indices) of a global block's rows along the split dim."""
        offset, shape, _, stride = unpack_block(entry)
        rows = self.positions()
        within = rows - offset[self.dim]
        mine = (within >= 0) & (within % stride[self.dim] == 0) & (within // stride[self.dim] < shape[self.dim])
        return mine.nonzero().flatten(), within[mine] // stride[self.dim]

    def local_layout(self) -> list[tuple]:
        layout = []
        for entry in self.global_layout:
            offset, shape, generation, stride = unpack_block(entry)
            local, _ = self._block_rows(entry)
            step = stride[self.dim]
            if len(local) != shape[self.dim] // self.size or (len(local) > 1 and bool((local.diff() != step).any())):
                raise ValueError(f"block {entry} does not split evenly over {self.size} tensor-parallel ranks")
            offset, shape = list(offset), list(shape)
            offset[self.dim], shape[self.dim] = int(local[0]), len(local)
            layout.append(layout_entry(offset, shape, generation, stride))
        return layout

    def take(self, full: torch.Tensor) -> torch.Tensor:
        """This rank's shard of the unsharded tensor."""
        return full.index_select(self.dim, self.positions())

    def take_block(self, block: torch.Tensor, index: int) -> torch.Tensor:
        """This rank's piece of global block `index` (e.g. its Adam moment)."""
        return block.index_select(self.dim, self._block_rows(self.global_layout[index])[1])

    def merge(self, shards: list[torch.Tensor], dim_offset: int = 0) -> torch.Tensor:
        """The unsharded tensor from every rank's shard (shards may carry `dim_offset` leading dims)."""
        lead = tuple(shards[0].shape[:dim_offset])
        full = shards[0].new_empty(lead + self.global_shape)
        for rank, shard in enumerate(shards):
            full.index_copy_(self.dim + dim_offset, self.positions(rank), shard)
        return full


# --- communication with autograd ----------------------------------------------------------------------------------

class _CopyToTP(torch.autograd.Function):
    """Identity forward; all-reduce of the gradient backward (the input feeds every rank's shard)."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class _ReduceFromTP(torch.autograd.Function):
    """All-reduce forward (sum of the ranks' partial results); identity backward."""

    @staticmethod
    def forward(ctx, x, group):
        x = x.contiguous().clone()
        dist.all_reduce(x, group=group)
        return x

    @staticmethod
    def backward(ctx, grad):
        return grad, None


# --- layers -------------------------------------------------------------------------------------------------------

class _VocabIndex:
    """Global token id -> row of this rank's vocab shard (-1 where another rank owns it), cached per device."""

    def vocab_index(self, device) -> torch.Tensor:
        cached = self.__dict__.get("_vocab_index")
        if cached is None or cached.device != device:
            split = self.tp_split
            cached = torch.full((split.global_shape[split.dim],), -1, dtype=torch.long)
            cached[split.positions()] = torch.arange(split.local_shape[split.dim])
            self.__dict__["_vocab_index"] = cached = cached.to(device)
        return cached


class GrowableColumnParallelLinear(GrowableLinear, _VocabIndex):
    """Output dim split: y_local = x @ W_local.T. The input is replicated; its gradient is all-reduced."""

    def forward(self, x, targets=None, **loss_options):
        """This rank's shard of the logits; or, given `targets` (lm_head, vocabulary-parallel), the loss, for which
        only per-token statistics cross ranks (megababel.model.loss)."""
        return super().forward(_CopyToTP.apply(x, self.tp_group), targets, **loss_options)

    def _vocab_shard(self, x):
        return VocabShard(self.vocab_index(x.device), self.tp_group)


class GrowableRowParallelLinear(GrowableLinear):
    """Input dim split: every rank multiplies its slice of the input, the partial outputs are all-reduced."""

    def forward(self, x):
        return _ReduceFromTP.apply(super().forward(x), self.tp_group)


class GrowableVocabParallelEmbedding(GrowableEmbedding, _VocabIndex):
    """Each rank holds some vocabulary rows; ids it does not own give zeros, and the ranks' outputs are summed."""

    def forward(self, ids):
        local = self.vocab_index(ids.device)[ids]
        missing = local < 0
        out = F.embedding(local.clamp(min=0), self.weight) * ~missing.unsqueeze(-1)
        return _ReduceFromTP.apply(out, self.tp_group)


# --- the layout -----------------------------------------------------------------------------------------------

def check_tensor_parallel(configs: list[LlamaConfig], tp: int, world: int):
    """Refuse, before any compute, a TP degree that cannot split every model of a run (the initial one, then the
    one after each growth) evenly."""
    if tp < 1:
        raise ConfigError(f"--tp must be >= 1, got {tp}")
    if world % tp:
        raise ConfigError(f"world size {world} is not divisible by --tp {tp}: launch a multiple of {tp} ranks "
                          f"(data parallel = world / tp)")
    if tp == 1:
        return
    previous = None
    for index, config in enumerate(configs):
        where = "the initial model" if index == 0 else f"the model after growth {index - 1}"
        for name in ("num_attention_heads", "num_key_value_heads", "intermediate_size", "vocab_size"):
            value = getattr(config, name)
            if value % tp:
                raise ConfigError(f"{name}={value} of {where} is not divisible by --tp {tp}: choose a --tp that "
                                  f"divides it, or a schedule whose {name} is a multiple of {tp} after every growth")
        if previous is not None and config.kv_group_size != previous.kv_group_size:
            raise ConfigError(f"{where} changes the query heads per key/value head ({previous.kv_group_size} -> "
                              f"{config.kv_group_size}); tensor parallelism needs it fixed")
        previous = config


class TensorParallel:
    """A TP x DP layout over the default process group. Create it on every rank (it creates process groups).

    Passed to DeepSpeed as `mpu` (zero.Init and deepspeed.initialize) and to the model builder."""

    def __init__(self, tp_size: int):
        world, rank = dist.get_world_size(), dist.get_rank()
        check_tensor_parallel([], tp_size, world)
        self.tp_size, self.dp_size = tp_size, world // tp_size
        self.tp_rank, self.dp_rank = rank % tp_size, rank // tp_size
        self.tp_group = self.dp_group = None
        for first in range(0, world, tp_size):        # every rank creates every group, in the same order
            ranks = list(range(first, first + tp_size))
            group = dist.new_group(ranks)
            if rank in ranks:
                self.tp_group, self.tp_ranks = group, ranks
        for tp_rank in range(tp_size):
            ranks = list(range(tp_rank, world, tp_size))
            group = dist.new_group(ranks)
            if rank in ranks:
                self.dp_group = group

    def __repr__(self):
        return f"TensorParallel(tp={self.tp_size}, dp={self.dp_size}, tp_rank={self.tp_rank}, dp_rank={self.dp_rank})"

    # the questions DeepSpeed asks its mpu
    def get_model_parallel_group(self):
        return self.tp_group

    def get_model_parallel_rank(self):
        return self.tp_rank

    def get_model_parallel_world_size(self):
        return self.tp_size

    get_tensor_model_parallel_group = get_model_parallel_group
    get_tensor_model_parallel_rank = get_model_parallel_rank
    get_tensor_model_parallel_world_size = get_model_parallel_world_size

    def get_tensor_model_parallel_src_rank(self):
        return self.tp_ranks[0]

    def get_data_parallel_group(self):
        return self.dp_group

    def get_data_parallel_rank(self):
        return self.dp_rank

    def get_data_parallel_world_size(self):
        return self.dp_size

    # building sharded layers
    def make(self, cls, full_shape: tuple, axes: tuple, init, blocks, unit: int = 1, **kw) -> GrowableLayer:
        """A growable layer of class `cls` holding this rank's shard of a tensor of `full_shape`. `init`: the full
        tensor, a function shape -> tensor drawn per global block (so values equal the unsharded model's), or None."""
        dim = split_dim(axes)
        if dim is None:
            return cls(*_ctor_args(cls, full_shape), axes=axes, init=init, blocks=blocks, **kw)
        blocks = blocks or [((0,) * len(full_shape), tuple(full_shape), 0)]
        split = TPSplit(dim, self.tp_rank, self.tp_size, tuple(full_shape), tuple(blocks), axes[dim], unit)
        if callable(init) and not isinstance(init, torch.Tensor):
            draw, init = init, torch.empty(full_shape)
            for entry in blocks:
                offset, shape, _, stride = unpack_block(entry)
                init[region(offset, shape, stride)] = draw(tuple(shape))
        local = None if init is None else split.take(init)
        parallel = {GrowableLinear: GrowableColumnParallelLinear if dim == 0 else GrowableRowParallelLinear,
                    GrowableEmbedding: GrowableVocabParallelEmbedding}[cls]
        layer = parallel(*_ctor_args(cls, split.local_shape), axes=axes, init=local, blocks=split.local_layout(),
                         tp_split=split, **kw)
        layer.tp_group = self.tp_group
        return layer

    def merge_state(self, split: TPSplit, local: torch.Tensor, moments: dict) -> tuple[torch.Tensor, dict]:
        """Collective over the TP group: the unsharded weight and each global block's moments from every rank's
        shard (local `moments`: {block index: (exp_avg, exp_avg_sq)} shaped like the local blocks)."""
        parts, local_layout = [local], split.local_layout()
        if moments:
            for k in range(2):
                full = torch.zeros_like(local)
                for index, pair in moments.items():
                    full[_slices(local_layout[index])] = pair[k]
                parts.append(full)
        gathered = all_gather(torch.stack(parts), group=self.tp_group)
        merged = split.merge(gathered, dim_offset=1)
        blocks = {i: (merged[1][_slices(split.global_layout[i])], merged[2][_slices(split.global_layout[i])])
                  for i in moments}
        return merged[0], blocks


# --- what the engine needs to know of a (possibly) sharded layer -----------------------------------------------------

def shard_of(layer: GrowableLayer, full: torch.Tensor) -> torch.Tensor:
    """This rank's part of an unsharded tensor of `layer` (the tensor itself when the layer is not sharded)."""
    return full if layer.tp_split is None else layer.tp_split.take(full)


def block_shard(layer: GrowableLayer, index: int, tensors):
    """This rank's part of each unsharded tensor of block `index` (e.g. its Adam moments); None stays None."""
    if tensors is None or layer.tp_split is None:
        return tensors
    return tuple(layer.tp_split.take_block(m, index) for m in tensors)


def merge_layer_state(tp: "TensorParallel | None", layer: GrowableLayer, local: torch.Tensor, moments: dict):
    """Collective over the TP group when `layer` is sharded: its unsharded weight and block moments."""
    if layer.tp_split is None:
        return local, moments
    return tp.merge_state(layer.tp_split, local, moments)


def unflagged_shards(model) -> list[str]:
    """Sharded parameters that DeepSpeed would not know are sharded (it would count them once in the gradient norm)."""
    return [name for name, p in model.named_parameters()
            if getattr(p, "tp_split", None) is not None and not getattr(p, "tensor_model_parallel", False)]


def _slices(block) -> tuple[slice, ...]:
    offset, shape, _, stride = unpack_block(block)
    return region(offset, shape, stride)


def _ctor_args(cls, shape):
    """Positional constructor sizes of a layer class for a weight of `shape`."""
    if issubclass(cls, GrowableLinear):
        return shape[1], shape[0]          # in_features, out_features
    return tuple(shape)

"""Growable layers: one logical weight stored as rectangular blocks, one block set per growth generation.

Every growth event adds a *generation*: the new region of each weight is stored in new nn.Parameters, so an
optimizer can give each generation its own param group (and learning-rate schedule), while old parameters keep their
identity (and hence their optimizer state). A 2-D weight that grows from [o, i] to [o', i'] gains at most two blocks,
an L-shape: rows [o:o'] x cols [0:i'] and rows [0:o] x cols [i:i'].

The forward pass assembles the blocks into one tensor (a single copy, its backward a set of slices) and then does
ONE matmul; a layer with a single block uses its parameter directly. `consolidate()` folds blocks into one.

Each block parameter carries `block_meta` (BlockMeta): its generation, where it sits in the full tensor (offset and,
per dim, a stride: a head_dim growth by k moves every old row of a head axis from r to k*r, so old blocks become
every k-th row and the new rows k strided blocks between them), the full shape, and the named axes of the full
tensor ("hidden", "q_heads", "kv_heads", "ffn", "vocab"). Growth, tensor parallelism, ZeRO re-partitioning and export
read this metadata instead of guessing from parameter names. A layout entry is (offset, shape, generation), with a
fourth element, the strides, only where one is not 1.

Blocks are registered directly on the layer (`weight_0`, `weight_1`, ...), not in a child ParameterList, so that
ZeRO-3, which gathers a module's own parameters before its forward, sees them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from megababel.model.loss import linear_cross_entropy


@dataclass(frozen=True)
class BlockMeta:
    generation: int
    offset: tuple[int, ...]       # start of this block in the full tensor, per dim
    shape: tuple[int, ...]        # this block's shape
    full_shape: tuple[int, ...]   # shape of the whole (assembled) tensor
    axes: tuple[str, ...]         # name of each dim of the full tensor
    stride: tuple[int, ...] = ()  # step between this block's elements in the full tensor, per dim (() = all 1)

    def __post_init__(self):
        if not self.stride:
            object.__setattr__(self, "stride", (1,) * len(self.shape))

    @property
    def slices(self) -> tuple[slice, ...]:
        return region(self.offset, self.shape, self.stride)

    @property
    def entry(self) -> tuple:
        """This block's layout entry: (offset, shape, generation), plus the strides where one is not 1."""
        return layout_entry(self.offset, self.shape, self.generation, self.stride)


def region(offset, shape, stride=None) -> tuple[slice, ...]:
    """The slices of a block in the full tensor."""
    stride = stride or (1,) * len(shape)
    return tuple(slice(o, o + (n - 1) * st + 1, st) for o, n, st in zip(offset, shape, stride))


def layout_entry(offset, shape, generation: int, stride=None) -> tuple:
    offset, shape = tuple(offset), tuple(shape)
    if stride is not None and any(st != 1 for st in stride):
        return offset, shape, generation, tuple(stride)
    return offset, shape, generation


def unpack_block(entry) -> tuple[tuple, tuple, int, tuple]:
    """(offset, shape, generation, stride) of a layout entry, with or without its strides."""
    offset, shape, generation, *rest = entry
    return tuple(offset), tuple(shape), generation, tuple(rest[0]) if rest else (1,) * len(shape)


class _AssembleBlocks(torch.autograd.Function):
    """Copy blocks into one tensor of `full_shape` and `dtype`; each block's gradient is its slice of the output
    gradient (cast back to the block's dtype). Assembling straight into the autocast dtype makes the copy replace
    the cast that autocast would do anyway, so under bf16 autocast several blocks cost what one parameter does."""

    @staticmethod
    def forward(ctx, full_shape, slices, dtype, *blocks):
        out = blocks[0].new_empty(full_shape, dtype=dtype)
        for region, block in zip(slices, blocks):
            out[region] = block
        ctx.slices, ctx.block_dtype = slices, blocks[0].dtype
        return out

    @staticmethod
    def backward(ctx, grad):
        return (None, None, None, *(grad[region].to(ctx.block_dtype) for region in ctx.slices))


class GrowableLayer(nn.Module):
    """Base class of the growable layers: a module that owns the blocks of one weight tensor (named by `axes`) and
    computes with the assembled weight."""

    def __init__(self, full_shape: tuple[int, ...], axes: tuple[str, ...], generation: int = 0,
                 init: torch.Tensor | Callable | None = None, blocks: list[tuple] | None = None, tp_split=None):
        """`init`: the full tensor, or a function shape -> tensor called per block, or None (uninitialised).
        `blocks`: [(offset, shape, generation[, stride]), ...] tiling the full shape (default: one block of
        `generation`);
        used to rebuild a grown layer, e.g. under ZeRO-3 where parameters must exist when __init__ returns.
        `tp_split` (tensor_parallel.TPSplit): this layer holds one tensor-parallel shard; shapes and blocks given
        here are the shard's, the split knows the unsharded ones."""
        super().__init__()
        self.tp_split = tp_split
        if len(full_shape) != len(axes):
            raise ValueError(f"axes {axes} do not name every dim of shape {full_shape}")
        self.axes = tuple(axes)
        self.full_shape = tuple(int(s) for s in full_shape)
        self._block_names: list[str] = []
        self._next_block_id = 0
        if isinstance(init, torch.Tensor) and tuple(init.shape) != self.full_shape:
            raise ValueError(f"initial tensor has shape {tuple(init.shape)}, expected {self.full_shape}")
        if blocks is None:
            blocks = [((0,) * len(self.full_shape), self.full_shape, generation)]
        blocks = [unpack_block(entry) for entry in blocks]
        if sum(math.prod(shape) for _, shape, _, _ in blocks) != math.prod(self.full_shape):
            raise ValueError(f"blocks {blocks} do not tile shape {self.full_shape}")
        for offset, shape, block_generation, stride in blocks:
            if init is None:
                data = torch.empty(shape)
            elif callable(init):
                data = init(tuple(shape))
            else:
                data = init[region(offset, shape, stride)]
            self._add_block(data, offset, block_generation, stride)

    # --- blocks -------------------------------------------------------------------------------------------------
    def blocks(self) -> list[nn.Parameter]:
        return [getattr(self, name) for name in self._block_names]

    def _add_block(self, data: torch.Tensor, offset: tuple[int, ...], generation: int,
                   stride: tuple[int, ...] | None = None) -> nn.Parameter:
        data = data.detach()
        # initial values are made on the CPU (seeded draws); a parameter belongs where a new tensor goes: under
        # ZeRO-3's zero.Init its device (which broadcasts it from there), else the default device
        device = torch.empty(0).device
        if data.device != device:
            data = data.to(device)
        # always an own contiguous copy: `data` may be (a view of) a tensor the caller keeps, e.g. a checkpoint's
        # value, which training would then change in place (clone() alone would keep a transposed layout)
        data = data.clone(memory_format=torch.contiguous_format)
        param = nn.Parameter(data)
        param.block_meta = BlockMeta(generation, tuple(offset), tuple(data.shape), self.full_shape, self.axes,
                                     tuple(stride or ()))
        if self.tp_split is not None:    # the flags DeepSpeed reads (gradient norm, checkpoints), plus our split
            param.tensor_model_parallel, param.partition_dim, param.partition_stride = True, self.tp_split.dim, 1
            param.tp_split = self.tp_split
        name = f"weight_{self._next_block_id}"
        self._next_block_id += 1
        self.register_parameter(name, param)
        self._block_names.append(name)
        return param

    def _set_full_shape(self, full_shape: tuple[int, ...]):
        self.full_shape = tuple(full_shape)
        for param in self.blocks():
            param.block_meta = replace(param.block_meta, full_shape=self.full_shape)

    def layout(self) -> list[tuple]:
        """[(offset, shape, generation[, stride])] of every block: what `blocks=` needs to rebuild this layer."""
        return [p.block_meta.entry for p in self.blocks()]

    def global_layout(self) -> list[tuple]:
        """layout() of the unsharded tensor (the same as layout() without tensor parallelism)."""
        return self.layout() if self.tp_split is None else list(self.tp_split.global_layout)

    @property
    def generations(self) -> list[int]:
        return sorted({p.block_meta.generation for p in self.blocks()})

    # --- the assembled weight -----------------------------------------------------------------------------------
    @property
    def weight(self) -> torch.Tensor:
        """The full weight, differentiable with respect to every block."""
        return self.assembled()

    def assembled(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The full weight in `dtype` (default: the blocks' dtype), differentiable with respect to every block."""
        blocks = self.blocks()
        if len(blocks) == 1:
            return blocks[0] if dtype is None else blocks[0].to(dtype)
        return _AssembleBlocks.apply(self.full_shape, tuple(p.block_meta.slices for p in blocks),
                                     dtype or blocks[0].dtype, *blocks)

    @torch.no_grad()
    def full_tensor(self) -> torch.Tensor:
        """A detached copy of the full weight."""
        weight = self.weight.detach()
        return weight.clone() if len(self._block_names) == 1 else weight   # several blocks: assembled afresh

    # --- growth and consolidation -------------------------------------------------------------------------------
    @torch.no_grad()
    def grow_to(self, new_full: torch.Tensor, generation: int, layout: list[tuple] | None = None):
        """Replace the weight by `new_full` (at least as large in every dim).

        Old blocks keep their Parameter identity and take their region of `new_full` in place (growth may rescale
        old values to stay function-preserving); the new region becomes new blocks tagged `generation`. `layout`:
        the grown layout (grown_layout: the old blocks, moved where a head_dim growth spreads them, then the new
        ones); default: the old blocks stay where they are and the new region is added.
        """
        if self.tp_split is not None:
            raise ValueError("a tensor-parallel shard does not grow in place: grow the unsharded model and re-shard")
        old_shape, new_shape = self.full_shape, tuple(new_full.shape)
        if len(new_shape) != len(old_shape) or any(n < o for n, o in zip(new_shape, old_shape)):
            raise ValueError(f"cannot grow a {self.axes} tensor from {old_shape} to {new_shape}: it may only grow")
        if layout is None:
            layout = grown_layout(self.layout(), old_shape, new_shape, generation)
        self._set_full_shape(new_shape)
        old = self.blocks()
        for param, entry in zip(old, layout):
            offset, shape, _, stride = unpack_block(entry)
            param.block_meta = replace(param.block_meta, offset=offset, stride=stride)
            param.copy_(new_full[param.block_meta.slices])
        for offset, shape, block_generation, stride in map(unpack_block, layout[len(old):]):
            self._add_block(new_full[region(offset, shape, stride)], offset, block_generation, stride)

    @torch.no_grad()
    def consolidate(self, generations: list[int] | None = None):
        """Fold the blocks of `generations` (default: all) into one block, tagged with the oldest of them.

        The folded blocks must tile a rectangle anchored at the origin (true for any prefix of generations).
        Function unchanged; optimizer state of the folded blocks is not carried (call before creating the optimizer).
        """
        if self.tp_split is not None:
            raise ValueError("consolidate the unsharded model, then shard it")
        chosen = [n for n in self._block_names
                  if generations is None or getattr(self, n).block_meta.generation in generations]
        if len(chosen) <= 1:
            return
        metas = [getattr(self, n).block_meta for n in chosen]
        extent = tuple(max(m.offset[d] + (m.shape[d] - 1) * m.stride[d] + 1 for m in metas)
                       for d in range(len(self.full_shape)))
        if any(min(m.offset[d] for m in metas) for d in range(len(extent))) or \
                sum(math.prod(m.shape) for m in metas) != math.prod(extent):
            raise ValueError(f"blocks of generations {generations} do not tile a rectangle at the origin")
        full = self.full_tensor()
        for name in chosen:
            delattr(self, name)
            self._block_names.remove(name)
        param = self._add_block(full[tuple(slice(0, e) for e in extent)], (0,) * len(extent),
                                min(m.generation for m in metas))
        # the folded block first, then renumber weight_0, weight_1, ... so a rebuilt layer has the same names
        params = [param] + [p for p in self.blocks() if p is not param]
        for name in self._block_names:
            delattr(self, name)
        self._block_names, self._next_block_id = [], 0
        for p in params:
            name = f"weight_{self._next_block_id}"
            self._next_block_id += 1
            self.register_parameter(name, p)
            self._block_names.append(name)
        return param

    def extra_repr(self) -> str:
        return f"shape={self.full_shape}, axes={self.axes}, blocks={len(self._block_names)}"


def new_regions(old_shape: tuple[int, ...], new_shape: tuple[int, ...],
                spread: tuple[int, ...] | None = None) -> list[tuple[tuple, tuple, tuple]]:
    """The (offset, shape, stride) of each block a tensor growing from `old_shape` to `new_shape` adds: along each
    growing dim its new positions, over the old positions of the dims before it and every position of the dims
    after it (an L-shape for a 2-D tensor). `spread[d]` = k: dim d's old positions move from r to k*r (a head_dim
    growth by k), so its new positions are the k - 1 strided sets between them, then the range past k * old."""
    spread = spread or (1,) * len(old_shape)
    blocks = []
    for dim, (old, new, k) in enumerate(zip(old_shape, new_shape, spread)):
        ranges = [(j, old, k) for j in range(1, k)] + ([(k * old, new - k * old, 1)] if new > k * old else [])
        for start, count, step in ranges:
            before = [(0, old_shape[d], spread[d]) for d in range(dim)]
            after = [(0, new_shape[d], 1) for d in range(dim + 1, len(new_shape))]
            offset, shape, stride = zip(*before, (start, count, step), *after)
            if all(shape):
                blocks.append((offset, shape, stride))
    return blocks


def grown_layout(layout: list[tuple], old_shape: tuple[int, ...], new_shape: tuple[int, ...],
                 generation: int, spread: tuple[int, ...] | None = None) -> list[tuple]:
    """The block layout (see GrowableLayer.layout) of a tensor after growing to `new_shape`: the old blocks (moved
    from r to k*r along a dim spread by k), then one new block of `generation` per new region."""
    spread = spread or (1,) * len(old_shape)
    moved = []
    for entry in layout:
        offset, shape, block_generation, stride = unpack_block(entry)
        moved.append(layout_entry([o * k for o, k in zip(offset, spread)], shape, block_generation,
                                  [st * k for st, k in zip(stride, spread)]))
    return moved + [layout_entry(offset, shape, generation, stride)
                    for offset, shape, stride in new_regions(old_shape, new_shape, spread)]


def growable_layers(module: nn.Module):
    """(path, GrowableLayer) for every growable weight under `module`, in module order."""
    return [(name, m) for name, m in module.named_modules() if isinstance(m, GrowableLayer)]


class GrowableLinear(GrowableLayer):
    """y = x @ W.T without bias, W of shape [out_features, in_features]."""

    def __init__(self, in_features: int, out_features: int, axes=("out", "in"), **kw):
        super().__init__((out_features, in_features), axes, **kw)

    @property
    def in_features(self) -> int:
        return self.full_shape[1]

    @property
    def out_features(self) -> int:
        return self.full_shape[0]

    def forward(self, x: torch.Tensor, targets: torch.Tensor | None = None, reduction: str = "mean",
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """x @ W.T; or, given `targets` (the output layer), the cross-entropy of those logits without ever holding
        them all (megababel.model.loss), so that ZeRO-3 gathers W for it like for any forward of this layer."""
        weight = self._compute_weight(x)
        if targets is None:
            return F.linear(x, weight)
        return linear_cross_entropy(x, weight, targets, reduction=reduction, mask=mask, shard=self._vocab_shard(x))

    def _compute_weight(self, x: torch.Tensor) -> torch.Tensor:
        if len(self._block_names) > 1 and torch.is_autocast_enabled(x.device.type):
            # assemble directly in the autocast dtype: the copy replaces autocast's own cast of the weight
            return self.assembled(torch.get_autocast_dtype(x.device.type))
        return self.weight

    def _vocab_shard(self, x: torch.Tensor):
        return None


class GrowableEmbedding(GrowableLayer):
    """Token embedding, W of shape [num_embeddings, embedding_dim]."""

    def __init__(self, num_embeddings: int, embedding_dim: int, axes=("vocab", "hidden"), **kw):
        super().__init__((num_embeddings, embedding_dim), axes, **kw)

    @property
    def num_embeddings(self) -> int:
        return self.full_shape[0]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight)


class GrowableRMSNorm(GrowableLayer):
    """RMSNorm with a learned gain, computed in fp32 like Hugging Face's LlamaRMSNorm."""

    def __init__(self, dim: int, eps: float, axes=("hidden",), **kw):
        super().__init__((dim,), axes, **kw)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).to(x.dtype)
        return normed * self.weight

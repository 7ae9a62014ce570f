"""Growth of a sharded engine: no rank ever holds the whole model or the whole Adam state.

Before the old engine is released, each rank copies out only its own pieces of every block's fp32 master weight and
Adam moments (`LocalPieces`): its ZeRO-3 partition, its ZeRO-1/2 fragment, or at ZeRO-0 the block itself, each
within its tensor-parallel shard. The grown engine is then built and filled one tensor at a time (`GrownState`):
the ranks assemble ONE old tensor from their pieces (the collective the growth math needs: a new row may copy any
old row, the vocabulary mean reads every old row), grow it with growth.GrowthTransform (random values keyed by tensor,
so every rank computes the same values as the unsharded growth), and each keeps its part of the result. An old
block's moments move to the same block of the grown model.

The pieces are kept in host memory (on a GPU they would compete with the grown engine for device memory). Peak per
rank: the grown engine, plus this rank's pieces of the old state (1/DP of it under ZeRO-3, in host memory), plus
one full tensor (and its moments) in flight. Where host memory is the limit (a CPU machine, where host memory is
also the engine's), `spill_dir` puts the pieces in a memory-mapped file instead: the kernel can evict them.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from megababel.growth.operators import GrowthTransform
from megababel.parallel import all_gather_flat, all_reduce

MOMENTS = ("exp_avg", "exp_avg_sq")


@dataclass
class _Piece:
    """This rank's part of one block (within its tensor-parallel shard): `tensors` {"value" | moment: flat tensor}.
    kind "whole": the block itself (ZeRO-0); "partition": a ZeRO-3 partition, rank r holding flat elements
    [r * size, (r + 1) * size) padded; "fragment": a ZeRO-1/2 fragment starting at flat element `start` (or none)."""
    kind: str
    shape: tuple
    tensors: dict
    group: object = None
    start: int = 0

    def gather(self, key: str) -> torch.Tensor | None:
        """The block's `key` tensor over the data-parallel ranks (collective for "partition" and "fragment")."""
        numel = math.prod(self.shape)
        if self.kind == "whole":
            local = self.tensors.get(key)
            return None if local is None else local.reshape(self.shape)
        if self.kind == "partition":
            if key not in self.tensors:
                return None
            return all_gather_flat(self.tensors[key], group=self.group)[:numel].view(self.shape)
        flat = torch.zeros(numel)
        if key in self.tensors:
            flat[self.start:self.start + self.tensors[key].numel()] = self.tensors[key]
        return all_reduce(flat, group=self.group).view(self.shape)


@dataclass
class _TensorMeta:
    """What is left of an old growable layer once its engine is gone: enough to reassemble and TP-merge it."""
    tp_split: object
    local_shape: tuple
    slices: list


def _host_copy(tensor: torch.Tensor) -> torch.Tensor:
    """An fp32 copy in host memory: a view into ZeRO's flat buffers would keep the whole buffer alive, and on a GPU
    the pieces would compete with the grown engine for device memory."""
    return tensor.detach().to("cpu", torch.float32, copy=True)


def _on_host(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor itself when it is an fp32 CPU tensor (ZeRO-0 on a CPU: nothing to copy, the engine lets go of
    it), else an fp32 copy in host memory."""
    return tensor.detach() if tensor.device.type == "cpu" and tensor.dtype == torch.float32 else _host_copy(tensor)


class LocalPieces:
    """This rank's pieces of every block of a GrowingEngine's fp32 masters and (unless `moments` is False) Adam
    moments. Built while the engine is alive; holds copies (or, at ZeRO-0, the tensors themselves), so the engine
    can then be released."""

    def __init__(self, engine, moments: bool = True, spill_dir: str | os.PathLike | None = None):
        from deepspeed.utils import safe_get_local_fp32_param, safe_get_local_optimizer_state
        self.tp, self.spilled = engine.tp, False
        self.meta, self.pieces = {}, {}
        self.moments_kept = moments
        engine.link_optimizer_state()
        for path, tensor in engine.model.growable_layers():
            self.meta[path] = _TensorMeta(tensor.tp_split, tensor.full_shape,
                                          [p.block_meta.slices for p in tensor.blocks()])
            for index, p in enumerate(tensor.blocks()):
                shape = tuple(p.block_meta.shape)
                if hasattr(p, "ds_id"):                      # ZeRO-3: this rank's partition of the block
                    tensors = dict(value=_host_copy(safe_get_local_fp32_param(p)))
                    for key in MOMENTS if moments else ():
                        try:
                            tensors[key] = _host_copy(safe_get_local_optimizer_state(p, key))
                        except KeyError:                     # no optimizer step yet: no state
                            pass
                    piece = _Piece("partition", shape, tensors, group=p.ds_process_group)
                elif hasattr(p, "_hp_mapping"):              # ZeRO-1/2: this rank's fragment, if it holds one
                    tensors, start, mapping = {}, 0, p._hp_mapping
                    if mapping is not None:
                        start = mapping.lp_fragment_address.start
                        tensors["value"] = _host_copy(mapping.get_hp_fragment())
                        for key in MOMENTS if moments else ():
                            if key in (mapping.optim_fragment or {}):
                                tensors[key] = _host_copy(mapping.get_hp_fragment(key))
                    piece = _Piece("fragment", shape, tensors, group=p._dp_group, start=start)
                else:                                        # ZeRO-0: every rank holds the block (and its master)
                    master = engine.fp32_master(p)
                    tensors = dict(value=_on_host(master))
                    state = engine.adam_state(master) if moments else {}
                    tensors.update({key: _on_host(state[key]) for key in MOMENTS if key in state})
                    piece = _Piece("whole", shape, tensors)
                self.pieces[(path, index)] = piece
        if spill_dir is not None:
            self._spill(Path(spill_dir))

    def _spill(self, directory: Path):
        """Move the pieces into a file under `directory`, mapped back into memory: its pages are read on demand and,
        being clean file pages, the kernel can evict them when the grown engine needs the memory. The file is
        unlinked at once (the mapping keeps it until the pieces are dropped), so nothing is left behind."""
        rank = dist.get_rank() if dist.is_initialized() else 0
        path = directory / f"megababel-growth-rank{rank}-pid{os.getpid()}.pt"
        flat = {f"{n}/{key}": t for n, piece in enumerate(self.pieces.values()) for key, t in piece.tensors.items()}
        try:
            torch.save(flat, path)
            del flat
            for piece in self.pieces.values():
                piece.tensors.clear()
            loaded = torch.load(path, mmap=True, weights_only=True)
        finally:
            path.unlink(missing_ok=True)
        pieces = list(self.pieces.values())
        for name, tensor in loaded.items():
            n, key = name.split("/")
            pieces[int(n)].tensors[key] = tensor
        self.spilled = True

    def full(self, path: str) -> torch.Tensor:
        """The old unsharded fp32 tensor at `path` (collective: every rank, same order)."""
        meta = self.meta[path]
        local = torch.empty(meta.local_shape)
        for index, region in enumerate(meta.slices):
            local[region] = self.pieces[(path, index)].gather("value")
        return local if meta.tp_split is None else self.tp.merge_state(meta.tp_split, local, {})[0]

    def moments(self, path: str) -> dict:
        """{block index: (exp_avg, exp_avg_sq)} of the old unsharded tensor at `path`, for blocks that have them
        (collective). The pieces' moments are dropped: each old block's moments move once."""
        meta, local = self.meta[path], {}
        for index in range(len(meta.slices)):
            piece = self.pieces[(path, index)]
            pair = tuple(piece.gather(key) for key in MOMENTS)
            if self.spilled and pair[0] is not None:     # own memory: these may become live optimizer state
                pair = tuple(m.clone() for m in pair)
            for key in MOMENTS:
                piece.tensors.pop(key, None)
            if pair[0] is not None:
                local[index] = pair
        if meta.tp_split is None:
            return local
        return self.tp.merge_state(meta.tp_split, torch.empty(meta.local_shape), local)[1]


class GrownState:
    """The grown model's state as GrowingEngine._build reads it: `get(path)` / `[path]` its full fp32 tensor,
    `moments.get((path, block))` a block's moments (None for new blocks). Each is assembled on access from the
    ranks' LocalPieces (collective: the engine asks on every rank in the same order)."""

    def __init__(self, old: LocalPieces, transform: GrowthTransform):
        self.old, self.transform = old, transform
        self.moments = _GrownMoments(old, transform)

    def get(self, path: str, default=None):
        if path not in self.transform.origin:
            return default
        from deepspeed.runtime.zero.partition_parameters import restore_init_context, shutdown_init_context
        # called while zero.Init builds the grown model: its tensor constructors would create bf16 tensors in a
        # bf16 run (torch.randn included); the growth math must run in fp32, as the unsharded growth does
        shutdown_init_context()
        try:
            return self.transform.grown(path, self.old.full)
        finally:
            restore_init_context()

    def __getitem__(self, path: str) -> torch.Tensor:
        return self.get(path)


class _GrownMoments:
    def __init__(self, old: LocalPieces, transform: GrowthTransform):
        self.old, self.transform = old, transform
        self.path, self.blocks = None, {}      # the old tensor whose moments are being handed out

    def get(self, key, default=None):
        path, index = key
        if not self.old.moments_kept or path not in self.transform.origin:
            return default
        source = self.transform.old_block(path, index)
        if source is None:
            return default
        if source[0] != self.path:
            self.path, self.blocks = source[0], self.old.moments(source[0])
        pair = self.blocks.pop(source[1], default)
        scale = self.transform.moment_scale(path)
        if pair is None or scale == 1:
            return pair
        return pair[0] * scale, pair[1] * (scale * scale)     # rows the growth rescaled (growth/operators.py)

"""Checkpoints of a growing run: weights, Adam state and everything needed to resume exactly, on any layout.

    OUT/checkpoints/step_00000120_gen2/   (the step to run next; the generation tells a save just before a growth
                                           from the one right after it)
        megababel.json      step, schedule, config, generation, block layout, param groups (+ Adam steps),
                            engine counters, loader position, data stage, tokens, FLOPs, RNG, world and TP of the saver
        tensors/00042.pt    one file per weight: the full fp32 tensor and each block's exp_avg / exp_avg_sq
        tokenizer.model, ranking.json   the run's tokenizer and vocabulary ranking (export needs them)
    OUT/checkpoints/latest  name of the newest complete checkpoint

Tensors are merged from parameter metadata (block offsets), not in DeepSpeed's per-rank partition files, so a
checkpoint resumes under any ZeRO stage and any number of data-parallel ranks (and exports without DeepSpeed).
Rank 0 writes one tensor at a time while all ranks gather it. Everything goes into step_N.tmp/, which is renamed
to step_N/ once complete, and `latest` is replaced atomically afterwards: a crash mid-save leaves the previous
checkpoint as `latest`, intact.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
import torch.distributed as dist

FORMAT = "megababel-checkpoint/1"


class CheckpointError(ValueError):
    pass


def _fsync_dir(path: Path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(directory: str | os.PathLike, engine, state: dict, files: dict | None = None) -> Path | None:
    """Collective. `state`: the run's own state (step, loader, tokens, ...), JSON-serialisable. `files`: {name:
    path} copied into the checkpoint (the tokenizer and vocabulary ranking, so that it exports on its own)."""
    directory = Path(directory)
    rank = dist.get_rank() if dist.is_initialized() else 0
    name = f"step_{state['step']:08d}_gen{engine.model.generation}"
    tmp, final = directory / f"{name}.tmp", directory / name
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "tensors").mkdir(parents=True)
    paths = []
    for i, (path, full, moments) in enumerate(engine.iter_state()):
        paths.append(path)
        if rank == 0:
            file = tmp / "tensors" / f"{i:05d}.pt"
            torch.save(dict(path=path, weight=full, moments=moments), file)
    meta = dict(format=FORMAT, **state, config=engine.model.config.to_dict(), generation=engine.model.generation,
                layout={p: [[list(o), list(s), g] for o, s, g in blocks]
                        for p, blocks in engine.model.block_layout().items()},
                tensor_files={path: f"tensors/{i:05d}.pt" for i, path in enumerate(paths)},
                groups=[vars(g) for g in engine.groups],
                group_steps=[[g, d, s] for (g, d), s in engine.group_steps().items()],
                counters=engine.counters(), world_size=dist.get_world_size() if dist.is_initialized() else 1,
                tensor_parallel=engine.tp.tp_size if engine.tp else 1,
                torch_rng=torch.get_rng_state().tolist())
    if rank == 0:
        for file_name, source in (files or {}).items():
            shutil.copyfile(source, tmp / file_name)
        (tmp / "megababel.json").write_text(json.dumps(meta, indent=1))
        for file in (tmp / "tensors").iterdir():
            with open(file, "rb") as f:
                os.fsync(f.fileno())
        _fsync_dir(tmp / "tensors")
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        latest_tmp = directory / "latest.tmp"
        latest_tmp.write_text(name + "\n")
        os.replace(latest_tmp, directory / "latest")
        _fsync_dir(directory)
    if dist.is_initialized():
        dist.barrier()
    return final


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A step directory, or a checkpoints directory (its `latest`)."""
    path = Path(path)
    if (path / "latest").is_file():
        path = path / (path / "latest").read_text().strip()
    if not (path / "megababel.json").is_file():
        raise CheckpointError(f"{path}: not a complete megababel checkpoint (no megababel.json); give a step_N "
                              f"directory or a checkpoints directory with a `latest` file")
    return path


class _MomentStore:
    """Moments read lazily, one tensor file at a time (never the whole Adam state in memory)."""

    def __init__(self, directory: Path, tensor_files: dict):
        self.directory, self.tensor_files = directory, tensor_files
        self._path, self._moments = None, {}

    def get(self, key, default=None):
        path, index = key
        if path != self._path:
            data = torch.load(self.directory / self.tensor_files[path], weights_only=True, mmap=True)
            self._path, self._moments = path, data["moments"]
        pair = self._moments.get(index)
        return default if pair is None else tuple(m.clone() for m in pair)   # own memory, not the file mapping


def load_checkpoint(path: str | os.PathLike) -> dict:
    """The saved metadata plus what GrowingEngine needs: config, layout, values, moments (lazy), steps, groups."""
    from .config import LlamaConfig
    from .engine import GroupInfo

    path = resolve_checkpoint(path)
    try:
        meta = json.loads((path / "megababel.json").read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}/megababel.json is unreadable ({e}): the checkpoint is damaged") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: format {meta.get('format')!r}, expected {FORMAT!r}")
    values = {}
    for tensor_path, file in meta["tensor_files"].items():
        if not (path / file).is_file():
            raise CheckpointError(f"{path}: {file} is missing: the checkpoint is incomplete or damaged")
        try:
            data = torch.load(path / file, weights_only=True, mmap=True)
        except Exception as e:  # noqa: BLE001 - torch raises RuntimeError, pickle errors, EOFError, ...
            raise CheckpointError(f"{path}: {file} is unreadable ({type(e).__name__}): the checkpoint is damaged; "
                                  f"use an earlier one") from None
        expected = tuple(max(o[d] + s[d] for o, s, _ in meta["layout"][tensor_path])
                         for d in range(len(meta["layout"][tensor_path][0][0])))
        if tuple(data["weight"].shape) != expected:
            raise CheckpointError(f"{path}: {tensor_path} has shape {tuple(data['weight'].shape)}, its layout says "
                                  f"{expected}: damaged checkpoint")
        values[tensor_path] = data["weight"]
    meta.update(
        path=path, config=LlamaConfig.from_dict(meta["config"]), values=values,
        layout={p: [(tuple(o), tuple(s), g) for o, s, g in blocks] for p, blocks in meta["layout"].items()},
        moments=_MomentStore(path, meta["tensor_files"]),
        steps={(g, bool(d)): s for g, d, s in meta["group_steps"]},
        groups=[GroupInfo(**g) for g in meta["groups"]])
    return meta

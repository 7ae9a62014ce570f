"""Checkpoints: one writer and one reader for the engine state (state.py) plus the run's own record.

    OUT/checkpoints/step_00000120_gen2/   (the step to run next; the generation tells a save just before a growth
                                           from the one right after it)
        megababel.json      format, the engine state's metadata (config, generation, block layout, param groups and
                            their Adam steps, counters), the run record (run: step, tokens, loader position, what a
                            resume must match, RNG states, ...), and a sha256 of every other file
        tensors/00042.pt    one file per weight: the full fp32 tensor and each block's exp_avg / exp_avg_sq
        tokenizer.model, ranking.json   the run's tokenizer and vocabulary ranking (export needs them)
    OUT/checkpoints/latest  name of the newest complete checkpoint

Tensors are merged from parameter metadata (block offsets), not DeepSpeed's per-rank partition files, so a checkpoint
resumes under any ZeRO stage, TP degree and number of data-parallel ranks, and exports without DeepSpeed. Rank 0
writes one tensor at a time while all ranks gather it. Everything goes into NAME.tmp/, renamed to NAME/ once
complete and fsynced; `latest` is replaced atomically afterwards. A crash mid-save leaves the previous checkpoint
intact; leftover .tmp folders are removed by the next save. Every file's sha256 is checked on load.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from megababel.checkpoint.state import EngineState

FORMAT = "megababel-checkpoint/2"
NAME = re.compile(r"^step_(\d+)_gen(\d+)$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and the fix."""


def _fsync_dir(path: Path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def checkpoint_name(step: int, generation: int) -> str:
    return f"step_{step:08d}_gen{generation}"


class CheckpointWriter:
    """Writes one checkpoint folder: tensors one at a time, then the metadata; complete or absent, never half."""

    def __init__(self, final: Path):
        self.final, self.tmp = Path(final), Path(final).with_name(Path(final).name + ".tmp")
        shutil.rmtree(self.tmp, ignore_errors=True)
        (self.tmp / "tensors").mkdir(parents=True)
        self.tensor_files: dict[str, str] = {}

    def add_tensor(self, path: str, weight: torch.Tensor, moments: dict):
        name = f"tensors/{len(self.tensor_files):05d}.pt"
        torch.save(dict(path=path, weight=weight, moments=moments), self.tmp / name)
        self.tensor_files[path] = name

    def finish(self, meta: dict, files: dict | None = None) -> Path:
        """`meta`: JSON-serialisable; `files`: {name: source path} copied in (tokenizer, ranking)."""
        for name, source in (files or {}).items():
            shutil.copyfile(source, self.tmp / name)
        checksums = {}
        for file in sorted(p for p in self.tmp.rglob("*") if p.is_file()):
            with open(file, "rb") as f:
                os.fsync(f.fileno())
            checksums[str(file.relative_to(self.tmp))] = file_sha256(file)
        meta = dict(format=FORMAT, **meta, tensor_files=self.tensor_files, checksums=checksums)
        (self.tmp / "megababel.json").write_text(json.dumps(meta, indent=1))
        _fsync_dir(self.tmp / "tensors")
        _fsync_dir(self.tmp)
        shutil.rmtree(self.final, ignore_errors=True)
        os.replace(self.tmp, self.final)
        _fsync_dir(self.final.parent)
        return self.final


def list_checkpoints(directory: str | os.PathLike) -> list[Path]:
    """Complete checkpoints in `directory` (a metadata file present), oldest first by (step, generation)."""
    directory = Path(directory)
    found = []
    for path in directory.iterdir() if directory.is_dir() else []:
        match = NAME.match(path.name)
        if match and (path / "megababel.json").is_file():
            found.append(((int(match[1]), int(match[2])), path))
    return [path for _, path in sorted(found)]


def save_checkpoint(directory: str | os.PathLike, engine, run: dict, files: dict | None = None,
                    keep_last: int = 0) -> Path:
    """Collective. `run`: the run's own record (JSON-serialisable, with `step`). `keep_last` > 0: afterwards delete
    all but the newest that many checkpoints of `directory`."""
    directory = Path(directory)
    rank = dist.get_rank() if dist.is_initialized() else 0
    final = directory / checkpoint_name(run["step"], engine.model.generation)
    writer = None
    if rank == 0:
        directory.mkdir(parents=True, exist_ok=True)
        for leftover in directory.glob("*.tmp"):       # from a save that crashed: never loadable, only disk
            shutil.rmtree(leftover, ignore_errors=True)
        writer = CheckpointWriter(final)
    for path, full, moments in engine.iter_state():    # collective: every rank gathers, rank 0 writes
        if writer is not None:
            writer.add_tensor(path, full, moments)
    meta = engine.state_meta()                         # collective too (Adam steps)
    if writer is not None:
        writer.finish(dict(engine=meta, run=run, world_size=dist.get_world_size() if dist.is_initialized() else 1,
                           tensor_parallel=engine.tp.tp_size if engine.tp else 1), files)
        latest_tmp = directory / "latest.tmp"
        latest_tmp.write_text(final.name + "\n")
        os.replace(latest_tmp, directory / "latest")
        _fsync_dir(directory)
        if keep_last > 0:
            for old in list_checkpoints(directory)[:-keep_last]:
                shutil.rmtree(old, ignore_errors=True)
    if dist.is_initialized():
        dist.barrier()
    return final


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A step directory; or a checkpoints directory: its `latest`, else its newest complete checkpoint."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint or checkpoints directory")
    if not (path / "megababel.json").is_file():
        latest = path / "latest"
        named = path / latest.read_text().strip() if latest.is_file() else None
        if named is not None and (named / "megababel.json").is_file():
            path = named
        elif list_checkpoints(path):
            path = list_checkpoints(path)[-1]
    if not (path / "megababel.json").is_file():
        raise CheckpointError(f"{path}: not a complete megababel checkpoint (no megababel.json); give a step_N "
                              f"directory or a checkpoints directory holding one")
    return path


class _MomentStore:
    """Moments read lazily, one tensor file at a time (never the whole Adam state in memory)."""

    def __init__(self, directory: Path, tensor_files: dict):
        self.directory, self.tensor_files = directory, tensor_files
        self._path, self._moments = None, {}

    def get(self, key, default=None):
        path, index = key
        if path not in self.tensor_files:
            return default
        if path != self._path:
            data = torch.load(self.directory / self.tensor_files[path], weights_only=True, mmap=True)
            self._path, self._moments = path, data["moments"]
        pair = self._moments.get(index)
        return default if pair is None else tuple(m.clone() for m in pair)   # own memory, not the file mapping


@dataclass
class Checkpoint:
    path: Path
    state: EngineState          # values memory-mapped, moments lazy
    run: dict                   # the run record the trainer saved
    meta: dict                  # the whole megababel.json


def _read_meta(path: Path) -> dict:
    try:
        meta = json.loads((path / "megababel.json").read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}/megababel.json is unreadable ({e}): the checkpoint is damaged; use an "
                              f"earlier one") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: format {meta.get('format')!r}, this megababel reads {FORMAT!r}; resume or "
                              f"export it with the megababel version that wrote it")
    return meta


def verify_checkpoint(path: Path, meta: dict):
    """Every file listed in the checksums exists and has its recorded sha256."""
    for name, expected in meta["checksums"].items():
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"{path}: {name} is missing: the checkpoint is incomplete; use an earlier one")
        if file_sha256(file) != expected:
            raise CheckpointError(f"{path}: {name} does not match its recorded sha256: the checkpoint is damaged; "
                                  f"use an earlier one")


def load_checkpoint(path: str | os.PathLike, verify: bool = True) -> Checkpoint:
    path = resolve_checkpoint(path)
    meta = _read_meta(path)
    if verify:
        verify_checkpoint(path, meta)
    layout = meta["engine"]["layout"]
    values = {}
    for tensor_path, file in meta["tensor_files"].items():
        try:
            data = torch.load(path / file, weights_only=True, mmap=True)
        except Exception as e:  # noqa: BLE001 - torch raises RuntimeError, pickle errors, EOFError, ...
            raise CheckpointError(f"{path}: {file} is unreadable ({type(e).__name__}): the checkpoint is damaged; "
                                  f"use an earlier one") from None
        blocks = layout[tensor_path]
        expected = _extent(blocks)
        if tuple(data["weight"].shape) != expected:
            raise CheckpointError(f"{path}: {tensor_path} has shape {tuple(data['weight'].shape)}, its layout says "
                                  f"{expected}: damaged checkpoint")
        values[tensor_path] = data["weight"]
    state = EngineState.from_meta(meta["engine"], values, _MomentStore(path, meta["tensor_files"]))
    return Checkpoint(path=path, state=state, run=meta["run"], meta=meta)


def _extent(blocks: list) -> tuple[int, ...]:
    """The full shape a layout's blocks tile: [offset, shape, generation] entries, with the strides as a fourth
    element where a head_dim growth spread the block (model/layers.py)."""
    def last(block, d):
        stride = block[3][d] if len(block) > 3 else 1
        return block[0][d] + (block[1][d] - 1) * stride + 1
    return tuple(max(last(block, d) for block in blocks) for d in range(len(blocks[0][0])))


def write_state(out: Path, state: EngineState, run: dict, files: dict | None = None) -> Path:
    """A checkpoint of an in-memory state, single process (tools: import from Hugging Face)."""
    writer = CheckpointWriter(out)
    try:
        for path in state.layout:
            moments = {i: state.moments.get((path, i)) for i in range(len(state.layout[path]))}
            writer.add_tensor(path, state.values[path], {i: m for i, m in moments.items() if m is not None})
        return writer.finish(dict(engine=state.meta(), run=run, world_size=1, tensor_parallel=1), files)
    except BaseException:
        shutil.rmtree(writer.tmp, ignore_errors=True)
        raise

"""The run record: what a checkpoint keeps of a run besides the model, as one typed object saved and restored whole.

`RunIdentity` is what decides what a run does (resolved schedule, sequence length, global batch, seed, precision,
gradient clipping, tokenizer and vocabulary ranking): a resume must match it exactly (train/resume.py).
`RunRecord` adds where the run stands: steps, tokens, FLOPs, time, the generations' history, the loader's position,
the RNG states and the last validation. Its dict form is the checkpoint's `run` entry; field names are the JSON keys
(`record` holds the identity, its name since the first checkpoint format), so older checkpoints still load.
"""
from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from megababel.config import ConfigError


@dataclass
class RunIdentity:
    schedule: dict | None = None          # Schedule.resolved(): growth steps included
    seq_len: int | None = None
    global_batch: int | None = None       # sequences per optimizer step of the first generation
    seed: int | None = None
    precision: str | None = None          # "bf16" or "fp32"
    gradient_clipping: float | None = None
    tokenizer_sha256: str | None = None
    ranking_sha256: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, saved: dict | None) -> "RunIdentity":
        """A checkpoint's identity; keys it lacks stay None (and then differ from any run's: refused on resume)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in (saved or {}).items() if k in known})


@dataclass
class RunRecord:
    step: int = 0                         # optimizer steps done: the step a resume starts at
    tokens: int = 0
    flops: float = 0.0
    train_seconds: float = 0.0
    vocab: int | None = None              # the vocabulary stage being trained
    loader: dict | None = None            # PackedLoader.state_dict()
    record: RunIdentity = field(default_factory=RunIdentity)
    history: list = field(default_factory=list)    # one entry per generation: when it began, its config, losses
    data: str | None = None               # the (first) dataset directory
    datasets: dict | None = None          # every dataset by name (--data NAME=DIR ...), the mixture's sources
    schedule_source: str | None = None
    rng: dict | None = None               # rng_states()
    validation_loss: float | None = None
    validation_bpb: float | None = None
    imported_from: str | None = None      # tools/convert_from_hf.py: weights only, a run starts at step 0
    trained_seq_len: int | None = None    # the length the saved generation trains at: an export's context

    def to_dict(self) -> dict:
        saved = {f.name: getattr(self, f.name) for f in fields(self)}
        saved["record"] = self.record.to_dict()
        # absent from older checkpoints: saved only when set
        for optional in ("imported_from", "datasets", "trained_seq_len"):
            if saved[optional] is None:
                del saved[optional]
        return saved

    @classmethod
    def from_dict(cls, saved: dict) -> "RunRecord":
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in saved.items() if k in known}
        values["record"] = RunIdentity.from_dict(saved.get("record"))
        return cls(**values)


def vocabulary_fingerprints(folder: Path) -> dict:
    """sha256 of a folder's tokenizer.model and fingerprint of its ranking.json (a dataset or a checkpoint)."""
    from megababel.data.tokenizer import Tokenizer, TokenizerError, VocabRanking
    try:
        tokenizer = Tokenizer.load(folder / "tokenizer.model")
        ranking = VocabRanking.load(folder / "ranking.json")
    except TokenizerError as e:
        raise ConfigError(f"{folder}: {e}") from None
    return dict(tokenizer_sha256=tokenizer.sha256, ranking_sha256=ranking.fingerprint)


# --- RNG states: saved with every checkpoint, restored on resume ----------------------------------------------
def rng_states() -> dict:
    states = dict(torch=torch.get_rng_state().tolist(), python=_jsonable(random.getstate()),
                  numpy=_jsonable(np.random.get_state()))
    if torch.cuda.is_available():
        states["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return states


def restore_rng_states(states: dict):
    torch.set_rng_state(torch.tensor(states["torch"], dtype=torch.uint8))
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in states["cuda"]])


def _jsonable(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    return value.item() if isinstance(value, np.generic) else value



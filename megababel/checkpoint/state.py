"""The state contract: what a growing model and its optimizer are, unsharded, independent of DeepSpeed.

`GrowingEngine.state()` produces an `EngineState`, `GrowingEngine.from_state()` builds an engine from one, and the
checkpoint writer/reader (io.py) stores and loads exactly this, so save, resume, growth, export and import
all speak one format. Tensors are the unsharded model's (merged over ZeRO partitions, TP shards and generation
blocks); `values` and `moments` may be lazy (a checkpoint reads one tensor file at a time).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Protocol

import torch

from megababel.config import LlamaConfig


@dataclass
class GroupInfo:
    """One AdamW param group: the parameters of one generation, decayed (matrices) or not (gains). Its learning
    rate follows the schedule's curve for a group born at step `born` with peak `lr` and `warmup` steps."""
    generation: int
    decay: bool
    born: int
    lr: float
    warmup: int


class MomentSource(Protocol):
    def get(self, key: tuple[str, int], default=None): ...


@dataclass
class EngineState:
    config: LlamaConfig
    generation: int
    layout: dict           # {path: [(offset, shape, generation[, stride]), ...]} of every weight (model/layers.py)
    values: Mapping[str, torch.Tensor]             # {path: full fp32 tensor}
    moments: MomentSource | dict = field(default_factory=dict)   # (path, block) -> (exp_avg, exp_avg_sq)
    group_steps: dict = field(default_factory=dict)               # (generation, decayed) -> Adam step
    groups: list[GroupInfo] = field(default_factory=list)
    counters: dict = field(default_factory=lambda: dict(global_steps=0, global_samples=0))

    def meta(self) -> dict:
        """The JSON-serialisable part (everything but tensors)."""
        return dict(config=self.config.to_dict(), generation=self.generation,
                    layout={p: [[list(part) if isinstance(part, tuple) else part for part in block]
                                for block in blocks] for p, blocks in self.layout.items()},
                    groups=[vars(g) for g in self.groups],
                    group_steps=[[g, d, s] for (g, d), s in self.group_steps.items()], counters=dict(self.counters))

    @classmethod
    def from_meta(cls, meta: dict, values, moments) -> "EngineState":
        return cls(config=LlamaConfig.from_dict(meta["config"]), generation=meta["generation"],
                   layout={p: [tuple(tuple(part) if isinstance(part, list) else part for part in block)
                               for block in blocks] for p, blocks in meta["layout"].items()},
                   values=values, moments=moments, group_steps={(g, bool(d)): s for g, d, s in meta["group_steps"]},
                   groups=[GroupInfo(**g) for g in meta["groups"]], counters=dict(meta["counters"]))

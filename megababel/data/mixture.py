"""A data mixture: each global batch drawn from several sources by weight, each source its own PackedLoader.

    loader = MixtureLoader({"wiki": wiki_loader, "stories": stories_loader}, {"wiki": 0.7, "stories": 0.3},
                           batch_size=8, dp_rank=0, dp_world=1)

A source is a dataset's name, optionally narrowed to a quantile range of its documents by difficulty
(data/sources.py's SourceKey, e.g. `wiki[rarity:0-0.5]`). The slots of a global batch
go to the sources by smooth weighted round robin: slot k goes to the source furthest behind its share,
weight x (sequences drawn + 1) - its own sequences drawn (ties to the first source), so every source is within one
sequence of its share at every step, with no randomness. Each source reads its own stream from its own position, so a
document is read again only after its source's epoch ends. Data-parallel rank r takes the global batch's slots
r*B .. (r+1)*B - 1, reading only those. The position is each source's (epoch, position) and the sequences drawn
since the weights were set: a run resumes exactly, on any number of ranks.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from megababel.data.loader import PackedLoader
from megababel.data.readers import DataError

class MixtureLoader:
    """The PackedLoader interface (next_batch, state_dict, set_seq_len, ...) over weighted sources."""

    def __init__(self, loaders: dict[str, PackedLoader], weights: dict[str, float], batch_size: int, dp_rank: int = 0,
                 dp_world: int = 1):
        self.loaders, self.dp_rank, self.dp_world = loaders, dp_rank, dp_world
        self.set_weights(weights)
        self.seq_len = next(iter(loaders.values())).seq_len
        self.set_batch_size(batch_size)

    def set_weights(self, weights: dict[str, float]):
        """New weights from the next batch on (a growth's mixture); the sources keep their positions."""
        missing = sorted(set(weights) - set(self.loaders))
        if missing:
            raise DataError(f"mixture sources {missing} have no loader")
        self.weights = {k: weights.get(k, 0.0) for k in self.loaders}
        self.drawn = {k: 0 for k in self.loaders}

    def set_batch_size(self, batch_size: int):
        self.batch_size, self.global_batch = batch_size, batch_size * self.dp_world
        for key, loader in self.loaders.items():     # each source must hold its largest share of one batch
            loader.check_fits(loader.seq_len, math.ceil(self.weights[key] * self.global_batch) + 1)

    def set_seq_len(self, seq_len: int, batch_size: int):
        for loader in self.loaders.values():
            loader.set_seq_len(seq_len, 1)
        self.seq_len = seq_len
        self.set_batch_size(batch_size)

    def continue_from(self, previous: "MixtureLoader"):
        """Another vocabulary stage of the same sources: each source continues at the same fraction of its epoch."""
        for key, loader in self.loaders.items():
            loader.continue_from(previous.loaders[key])
        if previous.weights == self.weights:      # the same mixture goes on (else set_weights started it afresh)
            self.drawn = dict(previous.drawn)

    def slots(self) -> list[str]:
        """The source of each slot of the next global batch (the same on every rank)."""
        drawn, total, out = dict(self.drawn), sum(self.drawn.values()), []
        for _ in range(self.global_batch):
            key = max(self.loaders, key=lambda k: self.weights[k] * (total + 1) - drawn[k])
            drawn[key] += 1
            total += 1
            out.append(key)
        return out

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        slots = self.slots()
        mine = range(self.dp_rank * self.batch_size, (self.dp_rank + 1) * self.batch_size)
        rows = np.zeros((self.batch_size, self.seq_len + 1), dtype=np.int64)
        for key, loader in self.loaders.items():
            ours = [k for k, s in enumerate(slots) if s == key]     # this source's slots, in order
            if not ours:
                continue
            wanted = [(i, k - mine.start) for i, k in enumerate(ours) if k in mine]
            rows[[r for _, r in wanted]] = loader.take(len(ours), [i for i, _ in wanted])
            self.drawn[key] += len(ours)
        rows = torch.from_numpy(rows)
        return rows[:, :-1], rows[:, 1:]

    def state_dict(self) -> dict:
        return dict(sources={k: loader.state_dict() for k, loader in self.loaders.items()}, drawn=dict(self.drawn),
                    weights=dict(self.weights))

    def load_state_dict(self, state: dict):
        if "sources" not in state or set(state["sources"]) != set(self.loaders):
            raise DataError(f"loader state has sources {sorted(state.get('sources', {})) or 'none (one dataset)'}, "
                            f"this run reads {sorted(self.loaders)}: resume with the same data mixture")
        for key, loader in self.loaders.items():
            loader.load_state_dict(state["sources"][key])
        if state.get("weights") != self.weights:
            raise DataError(f"loader state has mixture weights {state.get('weights')}, this generation reads "
                            f"{self.weights}: resume with the same schedule")
        self.drawn = {k: int(state["drawn"][k]) for k in self.loaders}

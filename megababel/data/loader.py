"""Packing loader: documents -> fixed-length training sequences, sharded over data-parallel ranks, resumable.

Epoch e shuffles the documents with a generator seeded by (seed, e) and lays them end to end as one token stream,
each document as BOS + tokens + EOS. From position p (tokens of the epoch's stream consumed), the next global batch
is `global_batch` consecutive sequences stream[p + j*L : p + j*L + L + 1] (inputs are the first L tokens, targets
the last L), so every token is a target exactly once; data-parallel rank r takes its contiguous slice of them.
Ranks therefore see disjoint data that covers the epoch (the last incomplete global batch of an epoch is dropped).

The position is two integers, (epoch, tokens consumed in the epoch), the same on every rank: a run resumes exactly
from `state_dict()`, on the same or on a different number of ranks (the global order does not depend on the number
of ranks). A new sequence length (`set_seq_len`, a growth's seq_len) repacks the same stream from the same position:
no token is skipped or read twice.
"""
from __future__ import annotations

import numpy as np
import torch

from megababel.data.readers import DataError
from megababel.data.shards import TokenDataset


class PackedLoader:
    def __init__(self, dataset: TokenDataset, seq_len: int, batch_size: int, dp_rank: int = 0, dp_world: int = 1,
                 seed: int = 0, shuffle: bool = True, documents: np.ndarray | None = None):
        """`documents`: read only these documents of the dataset (a difficulty slice, data/difficulty.py)."""
        if seq_len <= 0 or batch_size <= 0:
            raise DataError(f"seq_len and batch_size must be positive (got {seq_len}, {batch_size})")
        if not 0 <= dp_rank < dp_world:
            raise DataError(f"dp_rank {dp_rank} is outside a data-parallel world of {dp_world}")
        self.documents = np.arange(dataset.n_docs) if documents is None else np.asarray(documents, dtype=np.int64)
        if len(self.documents) == 0:
            raise DataError(f"{dataset.directory}: the split has no documents" + ("" if documents is None else
                            " in this selection"))
        self.dataset, self.batch_size = dataset, batch_size
        self.dp_rank, self.dp_world, self.seed, self.shuffle = dp_rank, dp_world, seed, shuffle
        self.global_batch = batch_size * dp_world
        self.stream_tokens = int((dataset.doc_length[self.documents] + 2).sum())      # one epoch's stream
        self.epoch, self.position = 0, 0
        self._layout_epoch = None
        self.seq_len = seq_len
        self.check_fits(seq_len, self.global_batch)

    def check_fits(self, seq_len: int, global_batch: int):
        """DataError unless one epoch holds `global_batch` sequences of `seq_len` tokens."""
        if (self.stream_tokens - 1) // seq_len < global_batch:
            raise DataError(f"{self.dataset.directory}: one epoch holds {(self.stream_tokens - 1) // seq_len} "
                            f"sequences of {seq_len} tokens, fewer than one global batch of {global_batch}")

    @property
    def sequences_per_epoch(self) -> int:
        return (self.stream_tokens - 1) // self.seq_len

    # --- position ----------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        # consumed: the position in sequences, as saved before positions were counted in tokens
        return dict(epoch=self.epoch, position=self.position, consumed=self.position // self.seq_len,
                    seed=self.seed, seq_len=self.seq_len, shuffle=self.shuffle, n_docs=len(self.documents),
                    n_tokens=self.stream_tokens - 2 * len(self.documents))

    def set_batch_size(self, batch_size: int):
        """A new per-rank batch from the next batch on (a schedule's batch change); the position stays, so the
        sequence order continues exactly."""
        self.check_fits(self.seq_len, batch_size * self.dp_world)
        self.batch_size, self.global_batch = batch_size, batch_size * self.dp_world

    def set_seq_len(self, seq_len: int, batch_size: int):
        """Repack from the next batch on: sequences of `seq_len` tokens, `batch_size` per rank, from the same
        position in the same stream (a growth's seq_len)."""
        self.check_fits(seq_len, batch_size * self.dp_world)
        self.seq_len = seq_len
        self.batch_size, self.global_batch = batch_size, batch_size * self.dp_world

    def continue_from(self, previous: "PackedLoader"):
        """Take over from the loader of another vocabulary stage of the same documents (same seed, so the same
        order): same epoch, same fraction of it, counted in whole sequences of each."""
        self.epoch = previous.epoch
        consumed = previous.position // previous.seq_len
        self.position = consumed * self.sequences_per_epoch // previous.sequences_per_epoch * self.seq_len

    def load_state_dict(self, state: dict):
        for key in ("seed", "seq_len", "shuffle", "n_docs", "n_tokens"):
            mine = self.state_dict()[key]
            if state.get(key) != mine:
                raise DataError(f"loader state does not match this loader: {key} {state.get(key)!r} vs {mine!r} "
                                f"(resume with the same data, seed and sequence length)")
        position = state.get("position", state["consumed"] * self.seq_len)
        if position % 1 or position < 0:
            raise DataError(f"loader state: bad position {position}")
        self.epoch, self.position = int(state["epoch"]), int(position)

    # --- packing -----------------------------------------------------------------------------------------------
    def _layout(self):
        """Document order and stream start of each placed document, for the current epoch."""
        if self._layout_epoch != self.epoch:
            n = len(self.documents)
            if self.shuffle:
                rng = np.random.default_rng([self.seed, self.epoch])
                self._order = self.documents[rng.permutation(n)]
            else:
                self._order = self.documents
            self._starts = np.zeros(n + 1, dtype=np.int64)
            np.cumsum(self.dataset.doc_length[self._order] + 2, out=self._starts[1:])
            self._layout_epoch = self.epoch
        return self._order, self._starts

    def _stream(self, begin: int, end: int) -> np.ndarray:
        """Tokens [begin, end) of the current epoch's stream."""
        order, starts = self._layout()
        ds = self.dataset
        out = np.empty(end - begin, dtype=np.int64)
        filled = 0
        slot = int(np.searchsorted(starts, begin, side="right")) - 1
        while filled < len(out):
            doc = int(order[slot])
            piece_start = begin + filled - starts[slot]              # offset inside BOS + doc + EOS
            length = int(ds.doc_length[doc]) + 2
            take = min(length - piece_start, len(out) - filled)
            for pos in range(piece_start, piece_start + take):
                if pos == 0 or pos == length - 1:
                    out[filled + pos - piece_start] = ds.bos_id if pos == 0 else ds.eos_id
            inner_lo, inner_hi = max(piece_start, 1), min(piece_start + take, length - 1)
            if inner_hi > inner_lo:
                out[filled + inner_lo - piece_start: filled + inner_hi - piece_start] = \
                    ds.doc(doc)[inner_lo - 1: inner_hi - 1]
            filled += take
            slot += 1
        return out

    def sequence(self, k: int) -> np.ndarray:
        """Sequence k (of L + 1 tokens) counted from the current position."""
        begin = self.position + k * self.seq_len
        return self._stream(begin, begin + self.seq_len + 1)

    def take(self, count: int, wanted) -> np.ndarray:
        """The next `count` sequences (all ranks'); returns rows [len(wanted), L + 1] of those at the indices
        `wanted` (0 .. count-1) and advances past all of them. An epoch's tail too short for `count` is dropped."""
        if self.position + count * self.seq_len + 1 > self.stream_tokens:
            self.epoch, self.position = self.epoch + 1, 0
        rows = np.stack([self.sequence(k) for k in wanted]) if len(wanted) else \
            np.zeros((0, self.seq_len + 1), dtype=np.int64)
        self.position += count * self.seq_len
        return rows

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets) of shape [batch_size, seq_len] for this rank; advances the global position."""
        first = self.dp_rank * self.batch_size
        rows = torch.from_numpy(self.take(self.global_batch, range(first, first + self.batch_size)))
        return rows[:, :-1], rows[:, 1:]

    def __iter__(self):
        while True:
            yield self.next_batch()

"""Token shards: memory-mappable files of token ids plus an index.

A dataset directory holds, per split (train, valid), shards `<split>_00000.tokens` (raw uint16 when every id fits,
else uint32; documents concatenated, no BOS/EOS) and `<split>_00000.offsets.npy` (int64, n_docs + 1 document
boundaries), and one `index.json` describing them. Every file is written under a temporary name and renamed when
complete, and index.json is written last: a directory without index.json is an unfinished run, never mistaken for
a complete dataset. Readers check the index against the files before using them.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from megababel.data.readers import DataError

FORMAT = "megababel-tokens/1"
INDEX = "index.json"


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def atomic_write_bytes(path: Path, data: bytes):
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class ShardWriter:
    """Appends documents to shards of about `shard_tokens` tokens for one split."""

    def __init__(self, directory: Path, split: str, vocab_size: int, shard_tokens: int = 1 << 26):
        self.directory, self.split, self.shard_tokens = Path(directory), split, shard_tokens
        self.dtype = token_dtype(vocab_size)
        self.vocab_size = vocab_size
        self.shards: list[dict] = []
        self._pieces: list[np.ndarray] = []
        self._lengths: list[int] = []
        self._tokens = 0
        self.n_bytes = 0        # UTF-8 bytes of the documents' text, for bits per byte

    def add(self, ids: np.ndarray, n_bytes: int = 0):
        self.n_bytes += n_bytes
        ids = np.asarray(ids)
        if ids.size and int(ids.max()) >= self.vocab_size:
            raise DataError(f"token id {int(ids.max())} >= vocab_size {self.vocab_size}")
        self._pieces.append(ids.astype(self.dtype, copy=False))
        self._lengths.append(len(ids))
        self._tokens += len(ids)
        if self._tokens >= self.shard_tokens:
            self._flush()

    def _flush(self):
        if not self._lengths:
            return
        stem = f"{self.split}_{len(self.shards):05d}"
        tokens = np.concatenate(self._pieces) if self._pieces else np.zeros(0, self.dtype)
        offsets = np.zeros(len(self._lengths) + 1, dtype=np.int64)
        np.cumsum(self._lengths, out=offsets[1:])
        atomic_write_bytes(self.directory / f"{stem}.tokens", tokens.tobytes())
        tmp = self.directory / f"{stem}.offsets.npy.tmp"
        with open(tmp, "wb") as f:
            np.save(f, offsets)
        os.replace(tmp, self.directory / f"{stem}.offsets.npy")
        self.shards.append(dict(tokens=f"{stem}.tokens", offsets=f"{stem}.offsets.npy",
                                n_docs=len(self._lengths), n_tokens=int(offsets[-1])))
        self._pieces, self._lengths, self._tokens = [], [], 0

    def close(self) -> dict:
        self._flush()
        return dict(shards=self.shards, n_docs=sum(s["n_docs"] for s in self.shards),
                    n_tokens=sum(s["n_tokens"] for s in self.shards), n_bytes=self.n_bytes)


def write_index(directory: Path, index: dict):
    atomic_write_bytes(Path(directory) / INDEX, json.dumps(dict(format=FORMAT, **index), indent=1).encode())


def read_index(directory: Path) -> dict:
    path = Path(directory) / INDEX
    if not path.is_file():
        raise DataError(f"{directory}: no {INDEX}: not a megababel token dataset, or its preprocessing did not "
                        f"finish; run tools/preprocess_data.py again")
    try:
        index = json.loads(path.read_text())
    except ValueError as e:
        raise DataError(f"{path}: corrupt index ({e}); run tools/preprocess_data.py again") from None
    if index.get("format") != FORMAT:
        raise DataError(f"{path}: format {index.get('format')!r}, expected {FORMAT!r}")
    return index


class TokenDataset:
    """Read-only, memory-mapped documents of one split of a token dataset directory."""

    def __init__(self, directory: str | os.PathLike, split: str = "train"):
        self.directory = Path(directory)
        self.index = read_index(self.directory)
        splits = self.index.get("splits", {})
        if split not in splits:
            raise DataError(f"{self.directory}: no split {split!r} (have {sorted(splits)})")
        self.vocab_size = int(self.index["vocab_size"])
        self.n_bytes = int(splits[split].get("n_bytes", 0))
        self.bos_id, self.eos_id = int(self.index["bos_id"]), int(self.index["eos_id"])
        dtype = token_dtype(self.vocab_size)
        self._tokens, starts, lengths = [], [], []
        for shard in splits[split]["shards"]:
            tokens_path, offsets_path = self.directory / shard["tokens"], self.directory / shard["offsets"]
            if not tokens_path.is_file() or not offsets_path.is_file():
                raise DataError(f"{self.directory}: shard {shard['tokens']} listed in {INDEX} is missing")
            if tokens_path.stat().st_size != shard["n_tokens"] * dtype.itemsize:
                raise DataError(f"{tokens_path}: {tokens_path.stat().st_size} bytes, the index says "
                                f"{shard['n_tokens']} {dtype.name} tokens: corrupt shard or index")
            offsets = np.load(offsets_path)
            if len(offsets) != shard["n_docs"] + 1 or offsets[0] != 0 or offsets[-1] != shard["n_tokens"] or \
                    np.any(np.diff(offsets) < 0):
                raise DataError(f"{offsets_path}: document offsets disagree with {INDEX}: corrupt shard or index")
            self._tokens.append(np.memmap(tokens_path, dtype=dtype, mode="r") if shard["n_tokens"] else
                                np.zeros(0, dtype))
            starts.append(offsets[:-1])
            lengths.append(np.diff(offsets))
        self.doc_shard = np.concatenate([np.full(len(s), k) for k, s in enumerate(starts)]) if starts else \
            np.zeros(0, np.int64)
        self.doc_start = np.concatenate(starts) if starts else np.zeros(0, np.int64)
        self.doc_length = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)

    @property
    def n_docs(self) -> int:
        return len(self.doc_length)

    @property
    def n_tokens(self) -> int:
        return int(self.doc_length.sum())

    def doc(self, i: int) -> np.ndarray:
        start = self.doc_start[i]
        return self._tokens[self.doc_shard[i]][start: start + self.doc_length[i]]

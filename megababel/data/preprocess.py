"""Preprocessing: text -> frequency ranking + token shards for each vocabulary stage.

Output directory:
    tokenizer.model        the tokenizer used (a dataset is self-contained)
    ranking.json           piece frequencies on the training split and the model-row order (VocabRanking)
    vocab_<V>/index.json   + shards: the corpus encoded under vocabulary stage V, as model-row ids, splits train/valid

The text is read and encoded once, with the full tokenizer (SentencePiece's own threads), into temporary shards,
counting pieces on the training split; the ranking follows from the counts. Every stage is then derived from those
shards by `VocabStage.remap` (each out-of-stage token replaced by its segmentation under the stage), which gives the
same ids as encoding the text under the stage (checked on TinyStories, WikiText and Shakespeare, every document,
stages 300-8000) and is ~13x faster (bench/README.md).
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from tqdm import tqdm

from megababel.data.tokenizer import Tokenizer, TokenizerError, VocabRanking, VocabStage, require_stage_support
from megababel.data.difficulty import write_difficulty
from megababel.data.readers import DataError, check_source, read_documents
from megababel.data.shards import INDEX, ShardWriter, TokenDataset, write_index

RANKING = "ranking.json"


def stage_dir(out_dir: str | os.PathLike, size: int) -> Path:
    return Path(out_dir) / f"vocab_{size}"


def _split_documents(sources, valid_sources, valid_every, read_kw) -> Iterator[tuple[str, str]]:
    """(split, text) for every document: all of valid_sources go to valid; else every `valid_every`-th document."""
    n = 0
    for source in sources:
        for text in read_documents(source, **read_kw):
            n += 1
            yield ("valid" if not valid_sources and valid_every and n % valid_every == 0 else "train"), text
    for source in valid_sources:
        for text in read_documents(source, **read_kw):
            yield "valid", text


def _batches(items: Iterable, size: int) -> Iterator[list]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _encode_all(documents: Iterator[tuple[str, str]], encode_batch, writers: dict, desc: str,
                progress: bool, on_train=None) -> dict:
    stats = dict(docs=0, tokens=0, bytes=0, seconds=0.0)
    start = time.perf_counter()
    bar = tqdm(desc=desc, unit="doc", disable=not progress, mininterval=1.0)
    for batch in _batches(documents, 512):
        encoded = encode_batch([text for _, text in batch])
        for (split, text), ids in zip(batch, encoded):
            n_bytes = len(text.encode("utf-8"))
            writers[split].add(ids, n_bytes)
            if split == "train" and on_train is not None:
                on_train(ids)
            stats["tokens"] += len(ids)
            stats["bytes"] += n_bytes
        stats["docs"] += len(batch)
        elapsed = time.perf_counter() - start
        bar.update(len(batch))
        bar.set_postfix(tokens=f"{stats['tokens']:,}", tok_s=f"{stats['tokens'] / max(elapsed, 1e-9):,.0f}",
                        refresh=False)
    bar.close()
    stats["seconds"] = time.perf_counter() - start
    return stats


def _finish(directory: Path, writers: dict, meta: dict) -> dict:
    splits = {split: writer.close() for split, writer in writers.items()}
    if splits["train"]["n_docs"] == 0:
        raise DataError("the inputs hold no training documents")
    write_index(directory, dict(meta, splits=splits))
    return splits


def preprocess(sources: list[str], out_dir: str | os.PathLike, tokenizer: Tokenizer, stages: list[int],
               valid_sources: list[str] = (), valid_every: int = 100, workers: int = 2, text_key: str = "text",
               txt_mode: str = "paragraph", encoding_errors: str = "strict", shard_tokens: int = 1 << 26,
               overwrite: bool = False, progress: bool = True, ranking: str | os.PathLike | None = None) -> dict:
    """Build a dataset directory (see the module docstring). Returns statistics per pass. `ranking`: another
    dataset's ranking.json to use instead of this corpus's frequencies, so that both datasets share model rows and
    one run can mix them (data/mixture.py)."""
    out_dir = Path(out_dir)
    given_ranking = None if ranking is None else VocabRanking.load(ranking, tokenizer)
    # --- everything that can be checked is checked before any compute -------------------------------------------
    if not sources:
        raise DataError("no input given")
    for source in list(sources) + list(valid_sources):
        check_source(source)
    if not stages:
        raise DataError("no vocabulary stage given; pass --stages, e.g. --stages 500 2000 32000")
    require_stage_support()
    n_required = len(tokenizer.required_ids)
    for size in stages:
        if size > tokenizer.vocab_size or size < n_required:
            raise TokenizerError(f"vocabulary stage {size} must be between {n_required} (pieces every text needs) and "
                                 f"the tokenizer's {tokenizer.vocab_size} pieces")
    if out_dir.exists() and any(out_dir.iterdir()):
        if not overwrite:
            raise DataError(f"{out_dir} exists and is not empty; pass --overwrite to replace it")
        for index in out_dir.glob(f"*/{INDEX}"):      # first un-complete every old stage, then clear
            index.unlink()
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    read_kw = dict(text_key=text_key, txt_mode=txt_mode, errors=encoding_errors)
    documents = lambda: _split_documents(sources, valid_sources, valid_every, read_kw)  # noqa: E731
    (out_dir / "tokenizer.model").write_bytes(tokenizer.proto_bytes)

    # --- pass 1: full tokenizer, counts --------------------------------------------------------------------------
    pass1 = out_dir / "_pass1_tokenizer_ids"
    pass1.mkdir()
    counts = np.zeros(tokenizer.vocab_size, dtype=np.int64)

    def count(ids):
        counts[:] += np.bincount(np.asarray(ids, dtype=np.int64), minlength=tokenizer.vocab_size)

    writers = {s: ShardWriter(pass1, s, tokenizer.vocab_size, shard_tokens) for s in ("train", "valid")}
    stats = {"pass1": _encode_all(documents(), lambda texts: tokenizer.encode_batch(texts, workers), writers,
                                  "pass 1: full vocabulary", progress, count)}
    _finish(pass1, writers, dict(vocab_size=tokenizer.vocab_size, bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id,
                                 ids="tokenizer"))
    ranking = VocabRanking.from_counts(tokenizer, counts) if given_ranking is None else given_ranking
    ranking.save(out_dir / RANKING)

    # --- one directory per stage ---------------------------------------------------------------------------------
    for size in sorted(set(stages)):
        stage = VocabStage(tokenizer, ranking, size)
        directory = stage_dir(out_dir, size)
        directory.mkdir()
        writers = {s: ShardWriter(directory, s, size, shard_tokens) for s in ("train", "valid")}
        meta = dict(vocab_size=size, bos_id=stage.bos_id, eos_id=stage.eos_id, ids="model rows",
                    tokenizer_sha256=tokenizer.sha256, stage=size)
        t0, tokens = time.perf_counter(), 0
        for split in ("train", "valid"):
            source = TokenDataset(pass1, split)
            writers[split].n_bytes = source.n_bytes
            for doc in tqdm(range(source.n_docs), desc=f"stage {size} ({split})", unit="doc", disable=not progress,
                            mininterval=1.0):
                ids = stage.remap(source.doc(doc))
                writers[split].add(ids)
                tokens += len(ids)
        stats[f"vocab_{size}"] = dict(tokens=tokens, seconds=time.perf_counter() - t0)
        _finish(directory, writers, meta)
    shutil.rmtree(pass1)
    write_difficulty(out_dir)             # per-document scores for difficulty curricula (data/difficulty.py)
    return stats

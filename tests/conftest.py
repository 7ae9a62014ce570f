"""Shared fixtures (a batch of real text). Tests are laid out like the package: unit/<subpackage>/ for in-process
tests, integration/ for multi-rank, launcher, Slurm and packaging tests, helpers/ for what they share (importable as
`helpers`: setup.cfg's pytest pythonpath)."""
from __future__ import annotations

import inspect
from collections import Counter

import pytest
import torch

from helpers import SHARED_DATA


def _real_text_ids() -> list[int]:
    """TinyStories through the Llama 2 tokenizer when ../shared/data is there, else the UTF-8 bytes of
    standard-library docstrings (real English text installed with Python)."""
    tokenizer = SHARED_DATA / "tokenizers" / "llama2" / "tokenizer.model"
    stories = SHARED_DATA / "tinystories" / "train.txt"
    if tokenizer.exists() and stories.exists():
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor(model_file=str(tokenizer))
        return sp.encode(stories.read_text(encoding="utf-8")[:20000])
    import collections, json, pathlib  # noqa: E401  (any well-documented modules will do)
    text = "\n\n".join(inspect.getdoc(obj) or "" for mod in (collections, json, pathlib)
                       for _, obj in inspect.getmembers(mod))
    return list(text.encode("utf-8"))[:20000]


@pytest.fixture(scope="session")
def text_batch():
    """(ids [4, 65], vocab): real text, token ids re-numbered by frequency rank so a small vocab covers them."""
    ids = _real_text_ids()[: 4 * 65]
    rank = {tok: r for r, (tok, _) in enumerate(Counter(ids).most_common())}
    ranked = torch.tensor([rank[t] for t in ids]).view(4, 65)
    return ranked, len(rank)


@pytest.fixture
def distributed_env(monkeypatch):
    """A one-process torch.distributed world (gloo) for in-process Trainer and engine tests. Set through
    monkeypatch, so that it is removed afterwards: subprocesses of later tests must not inherit this port."""
    from megababel.parallel import free_port
    for key, value in dict(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                           MASTER_PORT=str(free_port()), DS_ACCELERATOR="cpu").items():
        monkeypatch.setenv(key, value)

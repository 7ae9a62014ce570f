"""Shared fixtures: tiny configs and a batch of real text."""
from __future__ import annotations

import inspect
from collections import Counter
from pathlib import Path

import pytest
import torch

from megababel import LlamaConfig

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT / ".." / "shared" / "data"
# The tests' two-growth schedule (width + FFN + vocabulary 1000 -> 2000 at 1/4 of the run, depth + vocabulary 4000 at
# 1/2): the `tiny` preset before the planner chose it; tests that count steps and checkpoints name it explicitly.
TWO_GROWTHS = ROOT / "tests" / "two_growths.json"


def load_script(relative_path: str):
    """Import a script of the repository (launch/, tools/) as a module, to call its main(argv)."""
    import importlib.util

    path = ROOT / relative_path
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_config(**overrides) -> LlamaConfig:
    fields = dict(hidden_size=64, head_dim=16, num_hidden_layers=2, vocab_size=128, multiple_of=32)
    fields.update(overrides)
    return LlamaConfig(**fields)


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

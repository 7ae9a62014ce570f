"""What the tests share: the checkout's paths, the tests' two-growth schedule, a tiny config. The workers beside this
file are scripts the multi-rank tests start, one process per rank."""
from __future__ import annotations

from pathlib import Path

from megababel import LlamaConfig

HELPERS = Path(__file__).resolve().parent
ROOT = HELPERS.parents[1]
SHARED_DATA = ROOT / ".." / "shared" / "data"
# The tests' two-growth schedule (width + FFN + vocabulary 1000 -> 2000 at 1/4 of the run, depth + vocabulary 4000 at
# 1/2): the `tiny` preset before the planner chose it; tests that count steps and checkpoints name it explicitly.
TWO_GROWTHS = HELPERS / "two_growths.json"


def tiny_config(**overrides) -> LlamaConfig:
    fields = dict(hidden_size=64, head_dim=16, num_hidden_layers=2, vocab_size=128, multiple_of=32)
    fields.update(overrides)
    return LlamaConfig(**fields)

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


def train_grown(model, ids, steps: int = 21) -> tuple[list[float], list[list[str]]]:
    """Train a just-grown model with AdamW on `ids`: (losses, the newest generation's parameters that got no
    gradient in the first and in the second backward)."""
    import torch
    new = {n: p for n, p in model.named_parameters() if p.block_meta.generation == model.generation}
    assert new, "growth added no parameters"
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    losses, dead = [], []
    for step in range(steps):
        optimizer.zero_grad(set_to_none=True)
        _, loss = model(ids[:, :-1], ids[:, 1:])
        loss.backward()
        losses.append(loss.item())
        if step <= 1:
            dead.append(sorted(n for n, p in new.items() if p.grad is None or p.grad.abs().max() == 0))
        if step < steps - 1:
            optimizer.step()
    return losses, dead

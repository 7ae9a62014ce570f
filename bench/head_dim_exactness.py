"""How exact is head_dim growth? The largest change of any logit when a model grows head_dim, in fp32 and bf16.

    python bench/head_dim_exactness.py

A 2-layer model at hidden 64 (4 heads of 16: MHA, or GQA with 2 key/value heads) grows head_dim to 32 (or 48),
alone or with other growths in the same event, on a fixed batch of token ids. tests/unit/growth/
test_head_dim_growth.py asserts the bounds (fp32 within 1e-5); this prints the observed values.
"""
from __future__ import annotations

import torch

from megababel import GrowthEvent, Llama, LlamaConfig, grow

BASE = dict(hidden_size=64, head_dim=16, num_hidden_layers=2, vocab_size=256, multiple_of=32)
CASES = {
    "MHA, head_dim 16 -> 32": ({}, dict(head_dim=32)),
    "GQA, head_dim 16 -> 32": (dict(num_key_value_heads=2), dict(head_dim=32)),
    "MHA, head_dim 16 -> 48": ({}, dict(head_dim=48)),
    "GQA, with hidden 64 -> 128": (dict(num_key_value_heads=2), dict(head_dim=32, hidden_size=128)),
    "MHA, with width, FFN, depth, vocabulary": ({}, dict(head_dim=32, hidden_size=128, intermediate_size=256,
                                                        num_hidden_layers=4, layer_positions="interleave",
                                                        vocab_size=512)),
    "GQA, with width, FFN, depth, vocabulary": (dict(num_key_value_heads=2), dict(
        head_dim=32, hidden_size=192, intermediate_size=320, num_hidden_layers=3, vocab_size=512)),
}


def largest_change(config: dict, event: dict, dtype: torch.dtype, ids: torch.Tensor) -> tuple[float, float]:
    model = Llama(LlamaConfig(**dict(BASE, **config)), seed=0).to(dtype)
    with torch.no_grad():
        before = model(ids)[0].float()
        grow(model, GrowthEvent(**event))
        after = model(ids)[0].float()[..., :before.shape[-1]]
    return (after - before).abs().max().item(), before.abs().max().item()


def main():
    ids = torch.randint(0, BASE["vocab_size"], (4, 64), generator=torch.Generator().manual_seed(0))
    print("| growth | fp32 max abs logit change | bf16 max abs logit change | max abs logit |")
    print("|---|---|---|---|")
    for name, (config, event) in CASES.items():
        fp32, scale = largest_change(config, event, torch.float32, ids)
        bf16, _ = largest_change(config, event, torch.bfloat16, ids)
        print(f"| {name} | {fp32:.1e} | {bf16:.1e} | {scale:.2f} |")


if __name__ == "__main__":
    main()

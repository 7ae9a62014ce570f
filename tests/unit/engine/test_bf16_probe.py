"""megababel.engine.distributed.slow_bf16_here: the probe behind the launcher's warning agrees with what bf16 and fp32
matmuls actually take on this CPU."""
from __future__ import annotations

import time

import pytest
import torch

from megababel.engine.distributed import slow_bf16_here


def _seconds(dtype) -> float:
    a, b = torch.randn(512, 256, dtype=dtype), torch.randn(256, 256, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(10):
        started = time.perf_counter()
        for _ in range(4):
            a @ b
        best = min(best, time.perf_counter() - started)
    return best


@pytest.mark.skipif(torch.cuda.is_available(), reason="the probe is about CPUs")
def test_the_probe_says_slow_exactly_where_bf16_matmuls_are_much_slower_than_fp32():
    """Emulated bf16 runs ~50x slower than fp32 (an AVX2-only CPU); native bf16 (AMX, AVX512-BF16) at least as fast
    as fp32 or a little slower. 5x separates the two."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)         # one core each: a busy machine shares it less unevenly than two
    try:
        ratio = _seconds(torch.bfloat16) / _seconds(torch.float32)
    finally:
        torch.set_num_threads(threads)
    assert slow_bf16_here() == (ratio > 5), f"bf16 / fp32 time: {ratio:.1f}x"

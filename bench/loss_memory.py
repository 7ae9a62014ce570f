"""Peak memory and time of the output layer + cross-entropy: the plain loss (the whole batch's logits, then
F.cross_entropy in fp32, as megababel did before issue 33) against the fused, chunked one (megababel.model.loss,
what the model runs now). Forward and backward of lm_head alone, through the model's own GrowableLinear.

    python bench/loss_memory.py                      # vocabulary 32000, 8 x 2048 tokens, hidden 2048, fp32 and bf16
    python bench/loss_memory.py --hidden 768         # a 125M model's width
    python bench/loss_memory.py --quick              # smoke test (small shapes)

Each variant runs in its own process (a fresh allocator, nothing left from the one before); its peak is the
process's peak resident memory above what it held once the inputs existed (the hidden states, the weight, their
gradient buffers). Every variant runs --rounds times, variants interleaved; the table gives the median time and the
largest peak. Writes bench/results/loss_memory.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results"
VARIANTS = ("plain", "fused")


def rss_peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024        # Linux: kilobytes


def one(variant: str, dtype: str, vocab: int, tokens: int, hidden: int, threads: int) -> dict:
    import torch
    import torch.nn.functional as F

    from megababel.model.layers import GrowableLinear
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    head = GrowableLinear(hidden, vocab, axes=("vocab", "hidden"), init=lambda shape: torch.randn(shape, generator=g))
    x = torch.randn(tokens, hidden, generator=g, requires_grad=True)
    targets = torch.randint(0, vocab, (tokens,), generator=g)
    x.grad, head.weight_0.grad = torch.zeros_like(x), torch.zeros_like(head.weight_0)     # the buffers both keep
    baseline = rss_peak_mib()
    start = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
        if variant == "plain":
            logits = head(x)
            loss = F.cross_entropy(logits.float(), targets)
        else:
            loss = head(x, targets)
    loss.backward()
    seconds = time.perf_counter() - start
    return dict(variant=variant, dtype=dtype, loss=loss.item(), seconds=seconds,
                peak_mib=rss_peak_mib() - baseline, baseline_mib=baseline)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--tokens", type=int, default=8 * 2048)
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--one", nargs=2, metavar=("VARIANT", "DTYPE"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.vocab, args.tokens, args.hidden, args.rounds = 1000, 512, 64, 1
    if args.one:
        print(json.dumps(one(*args.one, args.vocab, args.tokens, args.hidden, args.threads)))
        return
    results = []
    for round_ in range(args.rounds):
        for dtype in args.dtypes:
            for variant in VARIANTS:
                out = subprocess.run([sys.executable, __file__, "--one", variant, dtype, "--vocab", str(args.vocab),
                                      "--tokens", str(args.tokens), "--hidden", str(args.hidden),
                                      "--threads", str(args.threads)], capture_output=True, text=True, check=True)
                results.append(dict(json.loads(out.stdout.strip().splitlines()[-1]), round=round_))
                r = results[-1]
                print(f"round {round_} {dtype} {variant}: loss {r['loss']:.6f}, {r['seconds']:.1f} s, "
                      f"peak +{r['peak_mib']:.0f} MiB", flush=True)
    shape = dict(vocab=args.vocab, tokens=args.tokens, hidden=args.hidden, threads=args.threads)
    logits_mib = args.tokens * args.vocab * 4 / 2**20
    lines = [f"Output layer + cross-entropy, forward and backward: vocabulary {args.vocab}, {args.tokens} tokens, "
             f"hidden {args.hidden} ({logits_mib:.0f} MiB of fp32 logits), {args.threads} threads, "
             f"{args.rounds} rounds, each variant in its own process.", "",
             "| dtype | variant | peak above inputs (MiB) | seconds (median) | loss |", "|---|---|---|---|---|"]
    for dtype in args.dtypes:
        for variant in VARIANTS:
            rs = [r for r in results if r["dtype"] == dtype and r["variant"] == variant]
            lines.append(f"| {dtype} | {variant} | {max(r['peak_mib'] for r in rs):.0f} | "
                         f"{statistics.median(r['seconds'] for r in rs):.1f} | {rs[0]['loss']:.6f} |")
    if not args.quick:
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / "loss_memory.json").write_text(json.dumps(dict(shape=shape, runs=results), indent=1))
        (OUT / "loss_memory.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

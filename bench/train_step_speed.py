"""Training-step throughput: megababel (fresh, grown unconsolidated, grown consolidated) vs transformers' Llama.

    python bench/train_step_speed.py                      # bench/README.md's table: fp32 and bf16 autocast
    python bench/train_step_speed.py --dtypes bf16 --rounds 6 --compile
    python bench/train_step_speed.py --foreach            # foreach AdamW instead of fused

One step = forward + backward + AdamW on a [batch, seq] batch. All variants live in one process and are timed in
interleaved rounds (variant A, B, C, D, A, B, ...) so that machine drift hits them alike; the figure is the median
step time. The grown model reaches the target shape through 3 growth events (4 generations), every kind of growth
included. The same data, loss computation and optimizer settings are used for every variant.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from megababel import GrowthEvent, Llama, LlamaConfig, grow  # noqa: E402
from megababel.counters import count_parameters  # noqa: E402
from megababel.hf_adapter import to_hf_config  # noqa: E402

TARGET = LlamaConfig(hidden_size=512, num_hidden_layers=8, head_dim=128, vocab_size=32000)   # ~60M parameters
GROWTH_START = LlamaConfig(hidden_size=256, num_hidden_layers=4, head_dim=128, vocab_size=8000)
GROWTH_EVENTS = [GrowthEvent(hidden_size=384, intermediate_size=1024, vocab_size=16000),
                 GrowthEvent(num_hidden_layers=6, layer_positions="interleave", vocab_size=24000),
                 GrowthEvent(hidden_size=512, intermediate_size=1536, num_hidden_layers=8, vocab_size=32000)]


def grown_model() -> Llama:
    model = Llama(GROWTH_START, seed=0)
    for event in GROWTH_EVENTS:
        grow(model, event)
    assert model.config == TARGET, model.config
    return model


def build_variants(names: list[str], fused: bool, compile_: bool) -> dict:
    variants = {}
    for name in names:
        if name == "megababel fresh":
            model = Llama(TARGET, seed=0)
        elif name == "megababel grown, unconsolidated":
            model = grown_model()
        elif name == "megababel grown, consolidated":
            model = grown_model().consolidate()
        elif name == "transformers LlamaForCausalLM":
            from transformers import LlamaForCausalLM
            model = LlamaForCausalLM(to_hf_config(TARGET))
        else:
            raise ValueError(name)
        is_hf = name.startswith("transformers")
        forward = model
        if compile_ and not is_hf:
            forward = torch.compile(model)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=fused or None)
        blocks = sum(1 for _ in model.parameters())
        variants[name] = dict(model=model, forward=forward, optimizer=optimizer, is_hf=is_hf, tensors=blocks)
    return variants


def step(variant, x, y, autocast_dtype):
    with torch.autocast("cpu", dtype=autocast_dtype, enabled=autocast_dtype is not None):
        if variant["is_hf"]:
            logits = variant["forward"](input_ids=x).logits
        else:
            logits = variant["forward"](x)[0]
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))
    variant["optimizer"].zero_grad(set_to_none=True)
    loss.backward()
    variant["optimizer"].step()
    return loss.item()


def run(args) -> list[dict]:
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    tokens = torch.randint(0, TARGET.vocab_size, (args.batch, args.seq + 1))
    x, y = tokens[:, :-1], tokens[:, 1:]
    names = ["transformers LlamaForCausalLM", "megababel fresh", "megababel grown, unconsolidated",
             "megababel grown, consolidated"]
    results = []
    for dtype_name in args.dtypes:
        dtype = {"fp32": None, "bf16": torch.bfloat16}[dtype_name]
        variants = build_variants(names, args.fused, args.compile)
        times = {n: [] for n in names}
        for n, v in variants.items():              # warm-up (and compilation)
            for _ in range(args.warmup):
                step(v, x, y, dtype)
        for r in range(args.rounds):
            order = names[r % len(names):] + names[:r % len(names)]     # rotate: no variant always runs first
            for n in order:
                v = variants[n]
                t0 = time.perf_counter()
                for _ in range(args.steps_per_round):
                    step(v, x, y, dtype)
                times[n].append((time.perf_counter() - t0) / args.steps_per_round)
            print(f"[{dtype_name}] round {r + 1}/{args.rounds}: " +
                  ", ".join(f"{n}: {times[n][-1]:.2f}s" for n in names), flush=True)
        hf_tps = args.batch * args.seq / statistics.median(times[names[0]])
        consolidated_tps = args.batch * args.seq / statistics.median(times[names[3]])
        for n in names:
            tps = args.batch * args.seq / statistics.median(times[n])
            spread = (args.batch * args.seq / max(times[n]), args.batch * args.seq / min(times[n]))
            results.append(dict(dtype=dtype_name, variant=n, tokens_per_s=round(tps, 1),
                                tokens_per_s_range=[round(x) for x in spread],
                                vs_hf=round(tps / hf_tps, 3), vs_consolidated=round(tps / consolidated_tps, 3),
                                parameters=count_parameters(variants[n]["model"]).total if not variants[n]["is_hf"]
                                else variants[n]["model"].num_parameters(),
                                parameter_tensors=variants[n]["tensors"],
                                step_seconds=[round(t, 3) for t in times[n]]))
        del variants
    return results


def assembly_seconds(dtype=None, consolidated=False, repeats: int = 5) -> float:
    """Median time to produce every weight of the grown model in `dtype` (as F.linear receives it) and
    back-propagate into the parameters' .grad: the extra work of an unconsolidated step shows as the difference
    between consolidated=False and True."""
    model = grown_model()
    if consolidated:
        model.consolidate()
    tensors = [t for _, t in model.growable_layers()]
    grads = [torch.ones(t.full_shape, dtype=dtype or torch.float32) for t in tensors]
    times = []
    for _ in range(repeats):
        model.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        for t, g in zip(tensors, grads):
            t.assembled(dtype).backward(g)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def to_markdown(results: list[dict], args) -> str:
    lines = [f"batch {args.batch} x seq {args.seq}, {args.threads} threads, AdamW "
             f"({'fused' if args.fused else 'foreach'}){', torch.compile' if args.compile else ''}; "
             f"median of {args.rounds} rounds x {args.steps_per_round} steps",
             "", "| dtype | variant | tokens/s (median) | range over rounds | vs HF | vs consolidated | param tensors |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        lo, hi = r["tokens_per_s_range"]
        lines.append(f"| {r['dtype']} | {r['variant']} | {r['tokens_per_s']:.0f} | {lo}-{hi} | {r['vs_hf']:.2f}x | "
                     f"{r['vs_consolidated']:.2f}x | {r['parameter_tensors']} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--steps-per-round", type=int, default=2)
    p.add_argument("--foreach", dest="fused", action="store_false",
                   help="foreach AdamW instead of the default fused AdamW (for every variant)")
    p.add_argument("--compile", action="store_true", help="torch.compile the megababel models")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = p.parse_args(argv)
    results = run(args)
    table = to_markdown(results, args)
    table += "\n\nweights as the matmuls receive them, forward + backward into .grad, per step (the whole cost of " \
             "storing generations as blocks):\n\n| dtype | grown, unconsolidated | grown, consolidated |\n|---|---|---|"
    for name in args.dtypes:
        dtype = {"fp32": None, "bf16": torch.bfloat16}[name]
        table += (f"\n| {name} | {assembly_seconds(dtype) * 1000:.0f} ms | "
                  f"{assembly_seconds(dtype, consolidated=True) * 1000:.0f} ms |")
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    tag = "_".join(args.dtypes) + ("_fused" if args.fused else "_foreach") + ("_compile" if args.compile else "")
    (args.out / f"train_step_speed_{tag}.json").write_text(json.dumps(
        dict(args={k: str(v) for k, v in vars(args).items()}, torch=torch.__version__,
             machine=platform.processor() or platform.machine(), results=results), indent=1))
    (args.out / f"train_step_speed_{tag}.md").write_text(table + "\n")


if __name__ == "__main__":
    main()

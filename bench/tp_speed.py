"""Tensor parallelism on CPU: tokens/s and memory per rank at TP=1 vs TP=2 (and DP=2 for reference), 60M model.

    python bench/tp_speed.py                       # fp32 and bf16, ZeRO-0 (~5 minutes on 2 cores)
    python bench/tp_speed.py --dtypes fp32 --steps 3

Each layout trains through megababel's Trainer, as launch/train.py --tp N does (TinyStories with the Llama 2
tokenizer's full vocabulary), in fresh processes sharing the machine's 2 cores (2 threads for 1 process, 1 thread
each for 2), at the same global batch (8 sequences x 256 tokens): TP=1 (1 process, micro batch 8), DP=2 (2 processes, micro
batch 4 each) and TP=2 (2 processes, each holding half of every head / FFN / vocabulary matrix, micro batch 8).
After the timed steps each layout also grows once (hidden 512 -> 768, FFN 1536 -> 2048, 8 -> 10 layers), so the
table shows what growth costs when the weights and Adam moments have to be re-split across TP ranks.
Per rank: parameters held, resident memory in steady state and its peak, tokens/s (global), growth seconds and
the peak resident memory during the growth.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
from bench_data import SPEED_STAGES, tinystories
from growth_speed import GrowthProbe

MODEL = dict(hidden_size=512, head_dim=128, num_hidden_layers=8, vocab_size=32000)   # ~60M parameters
EVENT = dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=10, layer_positions="interleave")
LAYOUTS = {"TP=1": (1, 1), "DP=2": (2, 1), "TP=2": (2, 2)}     # name: (processes, tensor-parallel degree)
GLOBAL_BATCH, SEQ = 8, 256


def worker(tp_size: int, bf16: bool, steps: int):
    from megababel.engine import init_distributed
    from megababel.train.trainer import RunConfig, Trainer

    rank, world = init_distributed()
    torch.set_num_threads(max(1, 2 // world))
    probe = GrowthProbe()
    schedule = dict(model=MODEL, training=dict(steps=steps + 2), growths=[dict(EVENT, at_step=steps + 1)])
    with tempfile.TemporaryDirectory() as out:
        run = RunConfig(schedule=schedule, data=tinystories(SPEED_STAGES),
                        micro_batch_size=GLOBAL_BATCH * tp_size // world, seq_len=SEQ, tp=tp_size, bf16=bf16, eval_every=0, out=Path(out))
        trainer = Trainer(run, callbacks=[probe]).setup()
        trainer.fit()
    result = dict(rank=rank, world=world, tp=tp_size, bf16=bf16, params_total=probe.params_after,
                  params_held_before_growth=probe.held, tokens_per_s=round(probe.tokens_per_s(trainer)),
                  steady_rss_mb=round(probe.steady / 2**20), peak_rss_mb=round(probe.peak_before / 2**20),
                  growth_peak_rss_mb=round(probe.peak / 2**20),
                  growth_seconds=round(probe.seconds, 2), losses=probe.losses)
    print("RESULT " + json.dumps(result), flush=True)
    torch.distributed.barrier()
    os._exit(0)     # skip interpreter teardown (a communication thread destroyed at exit can abort the process)


def run(world: int, tp: int, bf16: bool, steps: int) -> list[dict]:
    from megababel.parallel.local_ranks import run_local_ranks
    tinystories(SPEED_STAGES)                 # built once here, before the ranks read it
    command = [__file__, "--worker", tp, "--steps", steps] + (["--bf16"] if bf16 else [])
    logs = run_local_ranks(world, command, threads=max(1, 2 // world), timeout=1800)
    return [json.loads(next(line for line in log.splitlines() if line.startswith("RESULT "))[7:]) for log in logs]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--bf16", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = p.parse_args(argv)
    if args.worker is not None:
        return worker(args.worker, args.bf16, args.steps)
    rows = []
    for dtype in args.dtypes:
        for name, (world, tp) in LAYOUTS.items():
            for r in run(world, tp, dtype == "bf16", args.steps):
                rows.append(dict(r, layout=name, dtype=dtype))
                print(json.dumps(rows[-1]), flush=True)
    lines = [f"{rows[0]['params_total'] / 1e6:.1f}M parameters after growth; global batch {GLOBAL_BATCH} x {SEQ}, "
             f"ZeRO-0, {args.steps} timed steps", "",
             "| dtype | layout | rank | parameters held | tokens/s | RSS MB | peak RSS MB (build + train) | growth s | "
             "peak RSS MB during growth | first loss |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['dtype']} | {r['layout']} | {r['rank']} | {r['params_held_before_growth'] / 1e6:.1f}M | "
                     f"{r['tokens_per_s']} | {r['steady_rss_mb']} | {r['peak_rss_mb']} | {r['growth_seconds']} | "
                     f"{r['growth_peak_rss_mb']} | {r['losses'][0]:.5f} |")
    table = "\n".join(lines)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "tp_speed.md").write_text(table + "\n")
    (args.out / "tp_speed.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()

"""Growth-event latency and peak memory per rank, and ZeRO-3 vs ZeRO-0 training throughput (CPU, gloo).

    python bench/growth_speed.py                     # 60M -> 120M: 1 and 2 ranks x ZeRO-0 and ZeRO-3 (~5 minutes)
    python bench/growth_speed.py --small             # 17M -> 34M, what tests/test_deepspeed.py checks

Each configuration runs in fresh processes (one per rank, 2 cores shared, 1 thread per rank with 2 ranks): a few
training steps (steady state), then one growth event (hidden 512 -> 768, FFN 1536 -> 2048, 8 -> 10 layers;
every kind of block). Per rank it reports the growth's wall time, resident memory in steady state, and the peak
resident memory during the growth (VmHWM, reset just before it), plus training tokens/s before the growth.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {
    "large": dict(model=dict(hidden_size=512, head_dim=128, num_hidden_layers=8, vocab_size=32000),
                  event=dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=10, layer_positions="interleave")),
    "small": dict(model=dict(hidden_size=256, head_dim=64, num_hidden_layers=4, vocab_size=32000),
                  event=dict(hidden_size=384, intermediate_size=1024, num_hidden_layers=5, layer_positions="interleave")),
}


def _status(field: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def worker(stage: int, size: str, steps: int, micro: int, seq: int):
    import torch
    sys.path.insert(0, str(ROOT))
    from megababel import GrowthEvent
    from megababel.counters import count_parameters
    from megababel.deepspeed_config import load_ds_config
    from megababel.engine import GrowingEngine
    from megababel.parallel import init_distributed
    from megababel.schedule import parse_schedule

    rank, world = init_distributed()
    torch.set_num_threads(max(1, 2 // world))
    spec = CONFIGS[size]
    schedule = parse_schedule(dict(model=spec["model"], training=dict(steps=1000)), micro * world * seq)
    engine = GrowingEngine(schedule.model, load_ds_config(stage, micro, 1, world, bf16=False), schedule, seed=0)
    g = torch.Generator().manual_seed(rank)
    batch = torch.randint(0, spec["model"]["vocab_size"], (micro, seq + 1), generator=g)
    engine.train_step(batch[:, :-1], batch[:, 1:], 0)              # warm-up (allocations, lazy Adam state)
    t0 = time.perf_counter()
    for step in range(1, steps + 1):
        engine.train_step(batch[:, :-1], batch[:, 1:], step)
    tokens_per_s = steps * micro * world * seq / (time.perf_counter() - t0)
    params_before = count_parameters(engine.model).total
    steady = _status("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:                  # reset the peak (VmHWM) to the current RSS
        f.write("5")
    torch.distributed.barrier()
    t0 = time.perf_counter()
    engine.grow(GrowthEvent(**spec["event"]), step=steps + 1)
    seconds = time.perf_counter() - t0
    peak = _status("VmHWM")
    for step in range(steps + 1, steps + 3):                         # the grown engine trains: its steady state
        engine.train_step(batch[:, :-1], batch[:, 1:], step)
    steady_after = _status("VmRSS")
    result = dict(rank=rank, world=world, stage=stage, growth_seconds=round(seconds, 2),
                  steady_rss_mb=round(steady / 2**20), peak_rss_during_growth_mb=round(peak / 2**20),
                  steady_rss_after_mb=round(steady_after / 2**20),
                  tokens_per_s=round(tokens_per_s), params_before=params_before,
                  params_after=count_parameters(engine.model).total)
    print("RESULT " + json.dumps(result), flush=True)
    torch.distributed.barrier()
    os._exit(0)     # skip interpreter teardown (a communication thread destroyed at exit can abort the process)


def run(stage: int, world: int, size: str, steps: int, micro: int, seq: int) -> list[dict]:
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "tests"))   # the rank launcher is a test helper, not part of the library
    from local_ranks import run_local_ranks
    command = [__file__, "--worker", stage, "--size", size, "--steps", steps, "--micro", micro, "--seq", seq]
    logs = run_local_ranks(world, command, threads=max(1, 2 // world), timeout=1200)
    return [json.loads(next(line for line in log.splitlines() if line.startswith("RESULT "))[7:]) for log in logs]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--small", action="store_true")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--micro", type=int, default=2)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--size", default=None, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = p.parse_args(argv)
    size = args.size or ("small" if args.small else "large")
    if args.worker is not None:
        return worker(args.worker, size, args.steps, args.micro, args.seq)
    rows = []
    for world in (1, 2):
        for stage in (0, 3):
            for r in run(stage, world, size, args.steps, args.micro, args.seq):
                rows.append(r)
                print(json.dumps(r), flush=True)
    lines = [f"{size}: {rows[0]['params_before'] / 1e6:.1f}M -> {rows[0]['params_after'] / 1e6:.1f}M parameters, "
             f"micro batch {args.micro} x seq {args.seq} per rank", "",
             "| ranks | ZeRO | rank | growth s | RSS before MB | peak RSS during growth MB | RSS after (grown) MB | "
             "peak / after | train tokens/s (before) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['world']} | {r['stage']} | {r['rank']} | {r['growth_seconds']} | {r['steady_rss_mb']} | "
                     f"{r['peak_rss_during_growth_mb']} | {r['steady_rss_after_mb']} | "
                     f"{r['peak_rss_during_growth_mb'] / r['steady_rss_after_mb']:.2f} | {r['tokens_per_s']} |")
    table = "\n".join(lines)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"growth_speed_{size}.md").write_text(table + "\n")
    (args.out / f"growth_speed_{size}.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()

"""Growth-event latency and peak memory per rank, and ZeRO-3 vs ZeRO-0 training throughput (CPU, gloo).

    python bench/growth_speed.py                     # 60M -> 120M: 1 and 2 ranks x ZeRO-0 and ZeRO-3 (~5 minutes)
    python bench/growth_speed.py --small             # 17M -> 34M, what tests/integration/test_deepspeed.py checks
    python bench/growth_speed.py --worlds 2 --stages 3 --tree /tmp/old --label old   # another checkout's growth

Each configuration trains through megababel's Trainer, as launch/train.py does (fp32, TinyStories with the Llama 2
tokenizer's full vocabulary), in fresh processes (one per rank, 2 cores shared, 1 thread per rank with 2 ranks): a
few training steps (steady state), then one growth event (hidden 512 -> 768, FFN 1536 -> 2048, 8 -> 10 layers;
every kind of block). Per rank it reports the growth's wall time, resident memory in steady state, and the peak
resident memory during the growth (VmHWM, reset just before it, after returning freed heap to the OS so that the
baseline is the engine, not the activations' leftover heap), the resident memory right after the growth (the grown
engine, before any step), and training tokens/s before the growth. `--tree DIR`: train with the megababel package
of another checkout (e.g. a `git worktree` of an older commit), to compare growths within one session.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
from bench_data import SPEED_STAGES, tinystories
from megababel.train.trainer import Callback

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


def _trim_heap():
    import ctypes
    ctypes.CDLL("libc.so.6").malloc_trim(0)


def _reset_peak():
    with open("/proc/self/clear_refs", "w") as f:                  # VmHWM := the current RSS
        f.write("5")


def schedule_spec(size: str, steps: int) -> dict:
    """Step 0 warms up (allocations, lazy Adam state), steps 1..`steps` are timed, the growth comes before step
    steps + 1, and two steps after it reach the grown engine's steady state."""
    spec = CONFIGS[size]
    return dict(model=spec["model"], training=dict(steps=steps + 3),
                growths=[dict(spec["event"], at_step=steps + 1)])


class GrowthProbe(Callback):
    """Time per step before the growth (step 0, the warm-up, excluded), parameters this rank holds, resident memory
    before / at the peak of / after the growth, losses."""

    def __init__(self):
        self.step_seconds, self.losses = [], []

    def on_fit_start(self, trainer):
        self.held = sum(p.numel() for p in trainer.engine.model.parameters())

    def on_step_end(self, trainer, row):
        self.losses.append(row["loss"])
        if trainer.engine.model.generation == 0 and row["step"] > 0:
            self.step_seconds.append(trainer.tokens_per_step / row["tokens_per_s"])

    def tokens_per_s(self, trainer) -> float:
        return trainer.tokens_per_step * len(self.step_seconds) / sum(self.step_seconds)

    def on_before_growth(self, trainer, growth):
        self.params_before, self.peak_before = trainer.parameters, _status("VmHWM")
        _trim_heap()
        self.steady = _status("VmRSS")
        _reset_peak()
        torch.distributed.barrier()

    def on_growth(self, trainer, record):
        self.peak, self.seconds, self.params_after = _status("VmHWM"), record["seconds"], record["parameters"]
        self.right_after = _status("VmRSS")
        self.largest_tensor = max(math.prod(t.tp_split.global_shape if t.tp_split else t.full_shape)
                                  for _, t in trainer.engine.model.growable_layers())

    def on_fit_end(self, trainer, result):
        self.steady_after = _status("VmRSS")


def worker(stage: int, size: str, steps: int, micro: int, seq: int):
    import megababel
    from megababel.engine import init_distributed
    from megababel.train.trainer import RunConfig, Trainer

    rank, world = init_distributed()
    torch.set_num_threads(max(1, 2 // world))
    probe = GrowthProbe()
    with tempfile.TemporaryDirectory() as out:
        run = RunConfig(schedule=schedule_spec(size, steps), data=tinystories(SPEED_STAGES), micro_batch_size=micro,
                        seq_len=seq, zero_stage=stage, eval_every=0, out=Path(out))
        trainer = Trainer(run, callbacks=[probe]).setup()
        trainer.fit()
    result = dict(rank=rank, world=world, stage=stage, growth_seconds=round(probe.seconds, 2),
                  steady_rss_mb=round(probe.steady / 2**20), peak_rss_during_growth_mb=round(probe.peak / 2**20),
                  steady_rss_after_mb=round(probe.steady_after / 2**20),
                  rss_right_after_growth_mb=round(probe.right_after / 2**20),
                  largest_tensor_mb=round(4 * probe.largest_tensor / 2**20), package=megababel.__file__,
                  tokens_per_s=round(probe.tokens_per_s(trainer)),
                  params_before=probe.params_before, params_after=probe.params_after)
    print("RESULT " + json.dumps(result), flush=True)
    torch.distributed.barrier()
    os._exit(0)     # skip interpreter teardown (a communication thread destroyed at exit can abort the process)


def run(stage: int, world: int, size: str, steps: int, micro: int, seq: int, tree: Path | None = None) -> list[dict]:
    from megababel.parallel.local_ranks import run_local_ranks
    tinystories(SPEED_STAGES)                 # built once here, before the ranks read it
    command = [__file__, "--worker", stage, "--size", size, "--steps", steps, "--micro", micro, "--seq", seq]
    # another checkout's package comes first on the ranks' path (PYTHONPATH precedes the installed package)
    env = None if tree is None else dict(PYTHONPATH=str(Path(tree).resolve()))
    logs = run_local_ranks(world, command, threads=max(1, 2 // world), timeout=1200, env=env)
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
    p.add_argument("--worlds", type=int, nargs="+", default=[1, 2])
    p.add_argument("--stages", type=int, nargs="+", default=[0, 3])
    p.add_argument("--tree", type=Path, default=None, help="train with the megababel package of this checkout")
    p.add_argument("--label", default="", help="suffix of the result files")
    args = p.parse_args(argv)
    size = args.size or ("small" if args.small else "large")
    if args.worker is not None:
        return worker(args.worker, size, args.steps, args.micro, args.seq)
    rows = []
    for world in args.worlds:
        for stage in args.stages:
            for r in run(stage, world, size, args.steps, args.micro, args.seq, args.tree):
                rows.append(r)
                print(json.dumps(r), flush=True)
    lines = [f"{size}: {rows[0]['params_before'] / 1e6:.1f}M -> {rows[0]['params_after'] / 1e6:.1f}M parameters, "
             f"micro batch {args.micro} x seq {args.seq} per rank", "",
             "| ranks | ZeRO | rank | growth s | RSS before MB | peak RSS during growth MB | RSS right after growth MB "
             "| peak - right after MB | RSS after steps (grown) MB | train tokens/s (before) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['world']} | {r['stage']} | {r['rank']} | {r['growth_seconds']} | {r['steady_rss_mb']} | "
                     f"{r['peak_rss_during_growth_mb']} | {r['rss_right_after_growth_mb']} | "
                     f"{r['peak_rss_during_growth_mb'] - r['rss_right_after_growth_mb']} | "
                     f"{r['steady_rss_after_mb']} | {r['tokens_per_s']} |")
    table = "\n".join(lines)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    name = f"growth_speed_{size}{'_' + args.label if args.label else ''}"
    (args.out / f"{name}.md").write_text(table + "\n")
    (args.out / f"{name}.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()

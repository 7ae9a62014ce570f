"""--compile on and off, through the Trainer, across growth: tokens/s and compile seconds of each generation, and
the graph breaks that remain.

    python bench/compile_speed.py                        # ZeRO-0 and ZeRO-3, bf16, 2 rounds (~15 minutes here)
    python bench/compile_speed.py --zero-stages 0 --rounds 1 --dtypes fp32
    python bench/compile_speed.py --quick                # smoke test
    python bench/compile_speed.py --report               # the table again from bench/results/compile_speed.json

Each run trains a three-generation schedule (hidden 256 -> 384 with FFN and vocabulary 8000 -> 16000, then 4 -> 6
layers; 8 x 256 tokens per step, TinyStories) exactly as launch/train.py does, in its own process with an empty
inductor cache, so every compile is a cold one (a rerun or a resume on the same machine finds inductor's on-disk
cache and compiles faster). A generation's tokens/s is the median over its steps after the first two (the first
compiles). Eager and compiled runs alternate in rounds. Graph breaks are torch._dynamo's own count, by reason.
Writes bench/results/compile_speed.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results"
START = dict(hidden_size=256, num_hidden_layers=4, head_dim=64, vocab_size=8000)
GROWTHS = [dict(hidden_size=384, intermediate_size=1024, vocab_size=16000),
           dict(num_hidden_layers=6, layer_positions="interleave")]
BATCH, SEQ = 8, 256


def schedule(steps_per_generation: int) -> dict:
    return dict(model=START, training=dict(steps=steps_per_generation * 3, warmup_steps=2),
                growths=[dict(g, at_step=steps_per_generation * (i + 1)) for i, g in enumerate(GROWTHS)])


def one_run(compile: bool, bf16: bool, zero_stage: int, steps: int, threads: int) -> dict:
    import torch

    from bench_data import tinystories
    from megababel.train.trainer import Callback, RunConfig, Trainer
    torch.set_num_threads(threads)

    class Steps(Callback):
        def __init__(self):
            self.rows = []

        def on_step_end(self, trainer, row):
            self.rows.append((row["generation"], row["tokens_per_s"]))

    data = tinystories([8000, 16000])
    steps_cb = Steps()
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(RunConfig(schedule=schedule(steps), data=data, micro_batch_size=BATCH, seq_len=SEQ,
                                    bf16=bf16, zero_stage=zero_stage, compile=compile, eval_every=0, out=Path(out)),
                          callbacks=[steps_cb])
        trainer.setup().fit()
        history = trainer.history
        trainer.close()
    generations = []
    for entry in history:
        g = entry["generation"]
        rates = [rate for gen, rate in steps_cb.rows if gen == g][2:]
        generations.append(dict(generation=g, parameters=entry["parameters"],
                                tokens_per_s=statistics.median(rates),
                                compile_seconds=entry.get("compile_seconds")))
    breaks = {}
    if compile:
        from torch._dynamo.utils import counters
        breaks = dict(counters["graph_break"])
    return dict(compile=compile, bf16=bf16, zero_stage=zero_stage, generations=generations, graph_breaks=breaks)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--zero-stages", type=int, nargs="+", default=[0, 3])
    p.add_argument("--dtypes", nargs="+", default=["bf16"], choices=["fp32", "bf16"])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--steps-per-generation", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--report", action="store_true", help="only the table, from the saved runs")
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        print("RESULT " + json.dumps(one_run(**json.loads(args.one))))
        return
    if args.quick:
        args.zero_stages, args.dtypes, args.rounds, args.steps_per_generation = [0], ["fp32"], 1, 3
    if args.report:
        return report(json.loads((OUT / "compile_speed.json").read_text()), args)
    runs = []
    for round_ in range(args.rounds):
        for zero_stage in args.zero_stages:
            for dtype in args.dtypes:
                for compile in ([False, True] if round_ % 2 == 0 else [True, False]):
                    spec = dict(compile=compile, bf16=dtype == "bf16", zero_stage=zero_stage,
                                steps=args.steps_per_generation, threads=args.threads)
                    with tempfile.TemporaryDirectory() as cache:     # a cold inductor cache for every run
                        env = dict(os.environ, DS_ACCELERATOR="cpu", TORCHINDUCTOR_CACHE_DIR=cache, RANK="0",
                                   LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                                   MASTER_PORT=str(29000 + os.getpid() % 1000))
                        done = subprocess.run([sys.executable, __file__, "--one", json.dumps(spec)], env=env,
                                              capture_output=True, text=True, cwd=ROOT / "bench")
                    if done.returncode:
                        raise SystemExit(done.stdout[-3000:] + done.stderr[-3000:])
                    run = json.loads(done.stdout.split("RESULT ", 1)[1])
                    runs.append(dict(run, round=round_, dtype=dtype))
                    print(f"round {round_} ZeRO-{zero_stage} {dtype} {'compiled' if compile else 'eager'}: " +
                          ", ".join(f"gen {g['generation']} {g['tokens_per_s']:.0f} tok/s"
                                    + (f" (compile {g['compile_seconds']:.0f} s)" if compile else "")
                                    for g in run["generations"]), flush=True)
    if not args.quick:
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / "compile_speed.json").write_text(json.dumps(runs, indent=1))
    report(runs, args)


def report(runs: list, args):
    lines = [f"--compile through the Trainer: {BATCH} x {SEQ} tokens per step, {args.steps_per_generation} steps per "
             f"generation, {args.threads} threads, {args.rounds} round(s); tokens/s the median over each "
             f"generation's steps after its first two; compile seconds cold (an empty inductor cache).", "",
             "| ZeRO | dtype | generation | parameters | eager tokens/s (rounds) | compiled tokens/s (rounds) | "
             "compiled / eager | compile s |", "|---|---|---|---|---|---|---|---|"]
    for zero_stage in args.zero_stages:
        for dtype in args.dtypes:
            pick = [r for r in runs if r["zero_stage"] == zero_stage and r["dtype"] == dtype]
            for g, entry in enumerate(pick[0]["generations"]):
                eagers = [r["generations"][g]["tokens_per_s"] for r in pick if not r["compile"]]
                compiled = [r["generations"][g] for r in pick if r["compile"]]
                eager, rate = statistics.median(eagers), statistics.median(c["tokens_per_s"] for c in compiled)
                seconds = statistics.median(c["compile_seconds"] for c in compiled)
                rounds = lambda values: " (" + ", ".join(f"{v:.0f}" for v in values) + ")" if len(values) > 1 else ""
                lines.append(f"| {zero_stage} | {dtype} | {g} | {entry['parameters'] / 1e6:.1f}M | {eager:.0f}"
                             f"{rounds(eagers)} | {rate:.0f}{rounds([c['tokens_per_s'] for c in compiled])} | "
                             f"{rate / eager:.2f}x | {seconds:.0f} |")
    lines += ["", "Graph breaks in one compiled run (torch._dynamo's reasons, first line, summed over its "
              "generations):", ""]
    for zero_stage in args.zero_stages:
        breaks = {}
        for reason, count in next(r["graph_breaks"] for r in runs
                                  if r["compile"] and r["zero_stage"] == zero_stage).items():
            text = re.sub(r" at 0x[0-9a-f]+", "", reason.split("Explanation:")[-1].split("Hint:")[0])
            first = " ".join(text.split()[:22])
            breaks[first] = breaks.get(first, 0) + count
        lines.append(f"- ZeRO-{zero_stage}: " + ("none" if not breaks else "; ".join(
            f"{count} x {reason}" for reason, count in sorted(breaks.items(), key=lambda kv: -kv[1]))))
    if not args.quick:
        (OUT / "compile_speed.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

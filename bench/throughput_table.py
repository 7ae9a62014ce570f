"""The planner's throughput table for this CPU: training tokens/s and model FLOP/s by model size, through the Trainer.

    python bench/throughput_table.py                 # every size, writes megababel/plan/throughput.json's "cpu" rows
    python bench/throughput_table.py --quick         # smoke test: two small sizes, nothing written
    python bench/throughput_table.py --sizes 0.2M 1.3M --micro-batch-size 32     # a larger micro batch, printed only

Each size trains a fresh model (no growth) exactly as `launch/train.py --bf16` does (ZeRO-0, bf16 weights with fp32
masters, one process, --threads threads), 8 x 256 tokens per step, in its own process. Its tokens/s is the median
over --steps steps after two warm-up steps; model FLOP/s = tokens/s x megababel.model.counters.flops_per_token (the
FLOPs every saving is counted in). The sizes are the generations of the budget benchmark's plans (final model 1.32M,
bench/budget_sweep.py) and two larger models, so the planner can price a plan's small generations.

The GPU rows (megababel/plan/throughput.json "h200") are bench/gpu_speed.py's measurements, copied by hand with their
source; this script never touches them.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TABLE = ROOT / "megababel" / "plan" / "throughput.json"
BATCH, SEQ = 8, 256
SIZES = {   # name: (model fields, the dataset whose vocabulary stage it reads)
    "0.2M": (dict(hidden_size=64, num_hidden_layers=2, head_dim=32, intermediate_size=176, vocab_size=1000),
             "wikipedia"),
    "0.5M": (dict(hidden_size=96, num_hidden_layers=2, head_dim=32, intermediate_size=264, vocab_size=2000),
             "wikipedia"),
    "0.7M": (dict(hidden_size=128, num_hidden_layers=2, head_dim=32, intermediate_size=352, vocab_size=2000),
             "wikipedia"),
    "1.3M": (dict(hidden_size=128, num_hidden_layers=4, head_dim=32, intermediate_size=352, vocab_size=2000),
             "wikipedia"),
    "7.5M": (dict(hidden_size=256, num_hidden_layers=4, head_dim=64, vocab_size=8000), "tinystories"),
    "60M": (dict(hidden_size=512, num_hidden_layers=8, head_dim=128, vocab_size=32000), "tinystories"),
}


def one_size(name: str, steps: int, threads: int, micro: int = BATCH) -> dict:
    import torch

    from bench_data import SPEED_STAGES, tinystories, wikipedia
    from megababel.config import LlamaConfig
    from megababel.model.counters import config_parameters, flops_per_token
    from megababel.train.trainer import Callback, RunConfig, Trainer
    torch.set_num_threads(threads)
    fields, dataset = SIZES[name]
    data = wikipedia([1000, 2000]) if dataset == "wikipedia" else tinystories(SPEED_STAGES)

    class Seconds(Callback):
        def __init__(self):
            self.seconds = []

        def on_step_end(self, trainer, row):
            self.seconds.append(trainer.tokens_per_step / row["tokens_per_s"])

    timer = Seconds()
    model = dict(fields, max_position_embeddings=SEQ)
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(RunConfig(schedule=dict(model=model, training=dict(steps=steps + 2, warmup_steps=1)),
                                    data=data, micro_batch_size=micro, seq_len=SEQ, bf16=True, eval_every=0,
                                    out=Path(out)), callbacks=[timer])
        trainer.setup().fit()
        trainer.close()
    config = LlamaConfig(**model)
    tokens_per_s = micro * SEQ / statistics.median(timer.seconds[2:])
    return dict(name=name, config=model, parameters=config_parameters(config),
                flops_per_token=flops_per_token(config, SEQ), tokens_per_s=round(tokens_per_s, 1),
                flops_per_s=round(tokens_per_s * flops_per_token(config, SEQ)),
                step_seconds=[round(s, 4) for s in timer.seconds[2:]])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--micro-batch-size", type=int, default=BATCH, help=f"sequences of {SEQ} per step (the table is "
                   f"written only at {BATCH})")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        print("RESULT " + json.dumps(one_size(args.one, args.steps, args.threads, args.micro_batch_size)))
        return
    if args.quick:
        args.sizes, args.steps = ["0.2M", "0.5M"], 2
    rows = []
    for name in args.sizes:
        env = dict(os.environ, DS_ACCELERATOR="cpu", RANK="0", LOCAL_RANK="0", WORLD_SIZE="1",
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(29000 + os.getpid() % 1000))
        done = subprocess.run([sys.executable, __file__, "--one", name, "--steps", str(args.steps), "--threads",
                               str(args.threads), "--micro-batch-size", str(args.micro_batch_size)], env=env,
                              capture_output=True, text=True, cwd=ROOT / "bench")
        if done.returncode:
            raise SystemExit(done.stdout[-3000:] + done.stderr[-3000:])
        rows.append(json.loads(done.stdout.split("RESULT ", 1)[1]))
        r = rows[-1]
        print(f"{name}: {r['parameters'] / 1e6:.2f}M parameters, {r['tokens_per_s']:,.0f} tokens/s, "
              f"{r['flops_per_s'] / 1e9:.2f} GFLOP/s", flush=True)
    if args.quick or args.micro_batch_size != BATCH:
        return rows
    table = json.loads(TABLE.read_text())
    table["devices"]["cpu"] = dict(
        label=f"this project's CPU box ({os.cpu_count()} cores, {platform.machine()}), {args.threads} threads, "
              f"bf16 (DeepSpeed ZeRO-0, fp32 masters), micro batch {BATCH} x {SEQ}, eager",
        command="python bench/throughput_table.py", seq_len=SEQ, micro_batch_size=BATCH,
        rows=[{k: r[k] for k in ("name", "parameters", "flops_per_token", "tokens_per_s", "flops_per_s")}
              for r in rows])
    TABLE.write_text(json.dumps(table, indent=1) + "\n")
    print(f"wrote {TABLE}")
    return rows


if __name__ == "__main__":
    main()

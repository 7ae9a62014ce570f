"""Memory and speed of one rank at 120M parameters: ZeRO-3 buffers sized from the model, gradient accumulation and
activation checkpointing, each next to the variant without it.

    python bench/batch_memory.py                  # ~8 minutes on 2 cores; results/batch_memory.{md,json}
    python bench/batch_memory.py --only zero3-derived zero3-accumulation --steps 2

Every variant trains through megababel's Trainer, as launch/train.py does (fp32 unless named bf16, 1 process with 2
threads, ZeRO-3 unless named, TinyStories with the Llama 2 tokenizer), the 119.9M model of bench/growth_speed.py (hidden 768, 10
layers, FFN 2048, vocabulary 32000), sequences of 256 tokens, in a fresh process: one warm-up step, then --steps
timed steps. Per variant: resident memory after the last step (VmRSS), the same after malloc_trim (freed heap
that glibc keeps from the steps' activations handed back: what is alive), its peak over the run (VmHWM), against the
model's training state (fp32 weights + gradients + 2 Adam moments = 16 bytes per parameter) and against
an idle process that has imported torch + DeepSpeed and started its process group; and tokens/s.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
from bench_data import SPEED_STAGES, tinystories
from growth_speed import _status
from megababel.train.trainer import Callback

MODEL = dict(hidden_size=768, head_dim=128, num_hidden_layers=10, intermediate_size=2048, vocab_size=32000)
SEQ = 256
# DeepSpeed's sizes before megababel derived them (ds_configs/zero3.json of issue 4, DeepSpeed's 5e8 reduce bucket)
FIXED_ZERO3 = dict(stage=3, stage3_param_persistence_threshold=0, stage3_prefetch_bucket_size=5e7,
                   stage3_max_live_parameters=1e9, stage3_max_reuse_distance=1e9, reduce_bucket_size=5e8)
# name: (ZeRO stage, micro batch, global batch in sequences, activation checkpointing, fixed ZeRO-3 sizes, bf16)
VARIANTS = {
    "zero3-fixed-sizes": (3, 2, 2, False, True, False),
    "zero3-derived": (3, 2, 2, False, False, False),
    "zero3-derived-bf16": (3, 2, 2, False, False, True),
    "zero3-micro8": (3, 8, 8, False, False, False),
    "zero3-accumulation": (3, 2, 8, False, False, False),          # the same 8 sequences per step as zero3-micro8
    "zero3-micro8-checkpointing": (3, 8, 8, True, False, False),
    "zero0-micro8": (0, 8, 8, False, False, False),
    "zero0-micro8-checkpointing": (0, 8, 8, True, False, False),
}


class StepProbe(Callback):
    def __init__(self):
        self.seconds = []

    def on_step_end(self, trainer, row):
        if row["step"] > 0:                                   # step 0 warms up (allocations, lazy Adam state)
            self.seconds.append(trainer.tokens_per_step / row["tokens_per_s"])

    def on_fit_end(self, trainer, result):
        self.rss, self.peak = _status("VmRSS"), _status("VmHWM")
        self.parameters = result["parameters"]
        # what is alive, without the freed heap glibc keeps from the steps' activations (CPU only: on a GPU the
        # activations are device memory)
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        self.trimmed = _status("VmRSS")


def worker(name: str, steps: int):
    from megababel.engine.deepspeed_config import load_ds_config
    from megababel.engine import init_distributed
    from megababel.train.trainer import RunConfig, Trainer

    init_distributed()
    torch.set_num_threads(2)
    if name == "idle":
        print("RESULT " + json.dumps(dict(name=name, rss=_status("VmRSS"), peak=_status("VmHWM"))), flush=True)
        os._exit(0)
    stage, micro, global_batch, checkpointing, fixed, bf16 = VARIANTS[name]
    probe = StepProbe()
    with tempfile.TemporaryDirectory() as out:
        ds_config = None
        if fixed:
            config = load_ds_config(3, micro, 1, 1, bf16=False)
            config["zero_optimization"] = dict(config["zero_optimization"], **FIXED_ZERO3)
            ds_config = Path(out) / "ds.json"
            ds_config.write_text(json.dumps(config))
        run = RunConfig(schedule=dict(model=MODEL, training=dict(steps=steps + 1)), data=tinystories(SPEED_STAGES),
                        micro_batch_size=micro, global_batch_tokens=global_batch * SEQ, seq_len=SEQ,
                        zero_stage=stage, activation_checkpointing=checkpointing, ds_config=ds_config, bf16=bf16,
                        eval_every=0, out=Path(out) / "run")
        trainer = Trainer(run, callbacks=[probe]).setup()
        trainer.fit()
    tokens_per_s = trainer.tokens_per_step * len(probe.seconds) / sum(probe.seconds)
    print("RESULT " + json.dumps(dict(name=name, rss=probe.rss, trimmed=probe.trimmed, peak=probe.peak,
                                      parameters=probe.parameters,
                                      tokens_per_s=tokens_per_s, step_seconds=probe.seconds)), flush=True)
    os._exit(0)     # skip interpreter teardown (a communication thread destroyed at exit can abort the process)


def run(name: str, steps: int) -> dict:
    from megababel.parallel.local_ranks import run_local_ranks
    log = run_local_ranks(1, [__file__, "--worker", name, "--steps", steps], threads=2, timeout=3600)[0]
    return json.loads(next(line for line in log.splitlines() if line.startswith("RESULT "))[7:])


def to_markdown(rows: list[dict], steps: int) -> str:
    idle = next(r for r in rows if r["name"] == "idle")["rss"]
    gb = 2**30
    lines = [f"119.9M parameters, 1 rank, fp32, seq {SEQ}, {steps} timed steps; memory in GiB; model state = 16 "
             f"B/parameter = {16 * rows[-1]['parameters'] / gb:.2f} GiB; idle process (torch + DeepSpeed + process "
             f"group) {idle / gb:.2f} GiB", "",
             "| variant | ZeRO | micro batch x accumulation | activation checkpointing | RSS | RSS trimmed | "
             "peak RSS | trimmed / model state | (trimmed - idle) / model state | tokens/s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["name"] == "idle":
            continue
        stage, micro, global_batch, checkpointing, _, bf16 = VARIANTS[r["name"]]
        state = 16 * r["parameters"]
        lines.append(f"| {r['name']} | {stage}{' bf16' if bf16 else ''} | {micro} x {global_batch // micro} | "
                     f"{'yes' if checkpointing else 'no'} | "
                     f"{r['rss'] / gb:.2f} | {r['trimmed'] / gb:.2f} | {r['peak'] / gb:.2f} | "
                     f"{r['trimmed'] / state:.2f} | {(r['trimmed'] - idle) / state:.2f} | {r['tokens_per_s']:.0f} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = p.parse_args(argv)
    if args.worker:
        return worker(args.worker, args.steps)
    tinystories(SPEED_STAGES)                 # built once here, before the workers read it
    rows = []
    for name in ["idle"] + args.only:
        rows.append(run(name, args.steps))
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "step_seconds"}), flush=True)
    table = to_markdown(rows, args.steps)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "batch_memory.md").write_text(table + "\n")
    (args.out / "batch_memory.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()

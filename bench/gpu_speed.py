"""GPU training throughput, MFU and peak memory of megababel (eager and --compile) next to transformers'
LlamaForCausalLM, and of the seed plan's generations, on one GPU.

    python bench/gpu_speed.py                                  # 125M, 350M, 1B; bf16; results/gpu_speed.{md,json}
    python bench/gpu_speed.py --sizes 125M --variants megababel megababel+compile --micro-batch-sizes 8 16 32
    python bench/gpu_speed.py --sizes seed-g0 seed-g1 seed-g2 seed-g3 --variants megababel+compile
    DS_ACCELERATOR=cpu python bench/gpu_speed.py --sizes tiny --seq-len 128 --micro-batch-sizes 2 --steps 2   # smoke

Each (size, variant, micro batch) runs in its own process, so its peak memory is its own (torch's peak allocated
bytes above what the process held before building anything; an earlier variant's optimizer state cannot linger).
A micro batch that runs out of memory is recorded as such; the largest that fits is what --micro-batch-sizes found.
`seed-gN` is generation N of the `seed` preset's plan, built fresh at its shape (a grown model has the same shapes
in more blocks).

megababel trains through its Trainer exactly as `launch/train.py --bf16` does (DeepSpeed ZeRO-0, bf16 weights, fp32
masters, AdamW); the reference is LlamaForCausalLM of the same shape (its default SDPA attention) in a DeepSpeed
engine built from the same DeepSpeed config, so the optimizer and precision paths are the same and only the model
code differs. Each reports the median step after one warm-up step (with --compile, the steps after the compile).
MFU = model FLOPs per token (megababel.model.counters.flops_per_token: 6 x matmul weights + attention, causal masking
not discounted, the usual convention) x tokens/s / the GPU's dense bf16 peak: PEAK_TFLOPS by the exact device name
(an H200 NVL or H100 PCIe has a lower peak than the SXM parts), else --peak-tflops, else no MFU.
Data: TinyStories with the Llama 2 tokenizer (full vocabulary), from ../shared/data.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
from bench_data import SPEED_STAGES, tinystories
from megababel import LlamaConfig
from megababel.model.counters import config_parameters, flops_per_token
from megababel.train.trainer import Callback, RunConfig, Trainer

SIZES = {   # Llama-2 shapes at about GPT-3's 125M / 350M / 1.3B sizes (head_dim 64 / 64 / 128), vocabulary 32000
    "tiny": dict(hidden_size=128, head_dim=32, num_hidden_layers=2, intermediate_size=352),
    "125M": dict(hidden_size=768, head_dim=64, num_hidden_layers=12, intermediate_size=2048),
    "350M": dict(hidden_size=1024, head_dim=64, num_hidden_layers=24, intermediate_size=2816),
    "1B": dict(hidden_size=2048, head_dim=128, num_hidden_layers=18, intermediate_size=5504),
}
# dense bf16 peaks by torch.cuda.get_device_name(); only exact names, since the PCIe and NVL parts are slower
PEAK_TFLOPS = {"NVIDIA H100 80GB HBM3": 989.0, "NVIDIA H200": 989.0, "NVIDIA H100 PCIe": 756.0,
               "NVIDIA H100 NVL": 835.0, "NVIDIA H200 NVL": 835.0, "NVIDIA A100-SXM4-80GB": 312.0,
               "NVIDIA A100-SXM4-40GB": 312.0, "NVIDIA A100 80GB PCIe": 312.0}


def size_fields(size: str) -> dict:
    """Model fields of a --sizes name (vocabulary 32000 unless a seed generation has its own)."""
    if size.startswith("seed-g"):
        from megababel.plan.presets import load_schedule
        schedule = load_schedule("seed", 8 * 2048)
        configs = [schedule.model] + [g.config for g in schedule.growths]
        if int(size[6:]) >= len(configs):
            raise SystemExit(f"--sizes {size}: the seed plan has generations seed-g0 .. seed-g{len(configs) - 1}")
        config = configs[int(size[6:])]
        return {k: v for k, v in config.to_dict().items() if k != "max_position_embeddings"}
    return dict(SIZES[size], vocab_size=32000)


class StepTimes(Callback):
    def __init__(self):
        self.seconds = []

    def on_step_end(self, trainer, row):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        if row["step"] > 0:                               # step 0: warm-up (allocations, kernels chosen)
            self.seconds.append(trainer.tokens_per_step / row["tokens_per_s"])


def megababel_steps(size: str, args, data: Path) -> list[float]:
    times = StepTimes()
    model = dict(size_fields(size), max_position_embeddings=max(2048, args.seq_len))
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(RunConfig(schedule=dict(model=model, training=dict(steps=args.steps + 1 + 2 * args.compile)),
                                    data=data, micro_batch_size=args.micro_batch_size, seq_len=args.seq_len,
                                    bf16=True, activation_checkpointing=args.activation_checkpointing,
                                    compile=args.compile, eval_every=0, out=Path(out)), callbacks=[times])
        trainer.setup().fit()
    trainer.close()
    return times.seconds[2 * args.compile:]        # compiled: also the recompile of the second step


def transformers_steps(size: str, args, data: Path) -> list[float]:
    """The reference: LlamaForCausalLM in a DeepSpeed engine of the same config, on the same kind of batches."""
    from transformers import LlamaForCausalLM

    from megababel.data.loader import PackedLoader
    from megababel.data.shards import TokenDataset
    from megababel.engine.deepspeed_config import load_ds_config
    from megababel.engine.module_engine import ModuleEngine
    from megababel.hf.adapter import to_hf_config

    config = LlamaConfig(**size_fields(size), max_position_embeddings=max(2048, args.seq_len))
    model = LlamaForCausalLM(to_hf_config(config))
    if args.activation_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=dict(use_reentrant=False))
    engine = ModuleEngine(model, load_ds_config(0, args.micro_batch_size, 1, 1, bf16=True))
    loader = PackedLoader(TokenDataset(data / f"vocab_{config.vocab_size}", "train"), args.seq_len,
                          args.micro_batch_size)
    seconds = []
    for step in range(args.steps + 1):
        x, y = (t.to(engine.device) for t in loader.next_batch())
        start = time.perf_counter()
        logits = engine(input_ids=x).logits
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        engine.backward_step(loss)
        loss.item()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        if step > 0:
            seconds.append(time.perf_counter() - start)
    engine.close()
    return seconds


def one_run(size: str, variant: str, args) -> dict:
    """One variant in this process: step seconds and peak memory above the process's baseline."""
    data = tinystories(SPEED_STAGES)
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    baseline = torch.cuda.memory_allocated() if cuda else 0
    args.compile = variant == "megababel+compile"
    steps = transformers_steps if variant == "transformers" else megababel_steps
    try:
        seconds = steps(size, args, data)
    except torch.OutOfMemoryError:
        return dict(oom=True)
    peak = (torch.cuda.max_memory_allocated() - baseline) / 2**30 if cuda else None
    return dict(oom=False, seconds=seconds, peak_memory_gb=peak)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", nargs="+", default=["125M", "350M", "1B"],
                   help=f"{', '.join(SIZES)} or seed-g0 .. seed-g3 (the seed plan's generations)")
    p.add_argument("--variants", nargs="+", default=["megababel", "megababel+compile", "transformers"],
                   choices=["megababel", "megababel+compile", "transformers"])
    p.add_argument("--micro-batch-sizes", type=int, nargs="+", default=[8],
                   help="each in its own run; past the first that runs out of memory, larger ones are skipped")
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--steps", type=int, default=6, help="timed steps per run (after the warm-up)")
    p.add_argument("--activation-checkpointing", action="store_true")
    p.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak (default: by the GPU's name)")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    p.add_argument("--one", nargs=3, metavar=("SIZE", "VARIANT", "MICRO"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    for size in args.sizes:
        if size not in SIZES and not (size.startswith("seed-g") and size[6:].isdigit()):
            p.error(f"--sizes {size}: not one of {', '.join(SIZES)} or seed-gN")
    if args.one:
        size, variant, args.micro_batch_size = args.one[0], args.one[1], int(args.one[2])
        print("RESULT " + json.dumps(one_run(size, variant, args)))
        return
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    peak = args.peak_tflops or PEAK_TFLOPS.get(device)
    tinystories(SPEED_STAGES)                 # prepared once, before the runs
    rows = []
    for size in args.sizes:
        config = LlamaConfig(**size_fields(size))
        for variant in args.variants:
            for micro in sorted(args.micro_batch_sizes):
                command = [sys.executable, __file__, "--one", size, variant, str(micro), "--seq-len",
                           str(args.seq_len), "--steps", str(args.steps)]
                if args.activation_checkpointing:
                    command.append("--activation-checkpointing")
                env = dict(os.environ, RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                           MASTER_PORT=str(29500 + os.getpid() % 500))
                done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=Path(__file__).parent)
                if done.returncode or "RESULT " not in done.stdout:
                    oom = "OutOfMemory" in done.stderr or "out of memory" in done.stderr
                    result = dict(oom=True) if oom else None
                    if result is None:
                        print(done.stdout[-2000:] + done.stderr[-3000:], file=sys.stderr)
                        result = dict(oom=False, failed=True)
                else:
                    result = json.loads(done.stdout.split("RESULT ", 1)[1])
                row = dict(size=size, parameters=config_parameters(config), implementation=variant,
                           micro_batch_size=micro, oom=result.get("oom", False), failed=result.get("failed", False))
                if "seconds" in result:
                    tokens_per_s = micro * args.seq_len / statistics.median(result["seconds"])
                    flops = flops_per_token(config, args.seq_len) * tokens_per_s
                    row.update(tokens_per_s=round(tokens_per_s), tflops=round(flops / 1e12, 1),
                               mfu=None if peak is None else round(flops / (peak * 1e12), 4),
                               peak_memory_gb=None if result["peak_memory_gb"] is None else
                               round(result["peak_memory_gb"], 1),
                               step_seconds=[round(s, 4) for s in result["seconds"]])
                rows.append(row)
                print(json.dumps({k: v for k, v in row.items() if k != "step_seconds"}), flush=True)
                if row["oom"]:
                    break               # larger micro batches will not fit either
    lines = [f"{device}, bf16 (DeepSpeed ZeRO-0, fp32 masters), seq {args.seq_len}"
             f"{', activation checkpointing' if args.activation_checkpointing else ''}; median of {args.steps} "
             f"steps, each variant in its own process; peak {peak} TFLOP/s", "",
             "| size | parameters | implementation | micro batch | tokens/s | model TFLOP/s | MFU | "
             "peak GPU memory GB |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "tokens_per_s" not in r:
            lines.append(f"| {r['size']} | {r['parameters'] / 1e6:.0f}M | {r['implementation']} | "
                         f"{r['micro_batch_size']} | {'out of memory' if r['oom'] else 'failed'} | | | |")
            continue
        mfu = "-" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
        lines.append(f"| {r['size']} | {r['parameters'] / 1e6:.0f}M | {r['implementation']} | "
                     f"{r['micro_batch_size']} | {r['tokens_per_s']} | {r['tflops']} | {mfu} | "
                     f"{r['peak_memory_gb'] if r['peak_memory_gb'] is not None else '-'} |")
    table = "\n".join(lines)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_speed.md").write_text(table + "\n")
    (args.out / "gpu_speed.json").write_text(json.dumps(dict(device=device, args=vars(args) | {"out": str(args.out)},
                                                             rows=rows), indent=1))


if __name__ == "__main__":
    main()

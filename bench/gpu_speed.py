"""GPU training throughput and MFU of megababel next to transformers' LlamaForCausalLM, one run, one GPU.

    python bench/gpu_speed.py                                  # 125M, 350M, 1B; bf16; results/gpu_speed.{md,json}
    python bench/gpu_speed.py --sizes 125M --steps 5
    DS_ACCELERATOR=cpu python bench/gpu_speed.py --sizes tiny --seq-len 128 --micro-batch-size 2 --steps 2   # smoke

megababel trains through its Trainer exactly as `launch/train.py --bf16` does (DeepSpeed ZeRO-0, bf16 weights, fp32
masters, AdamW); the reference is LlamaForCausalLM of the same shape (its default SDPA attention) in a DeepSpeed
engine built from the same DeepSpeed config, so the optimizer and precision paths are the same and only the model
code differs. The variants alternate (megababel, transformers, megababel, ...) and each reports the median step.
MFU = model FLOPs per token (megababel.model.counters.flops_per_token: 6 x matmul weights + attention, causal masking not
discounted, the usual convention) x tokens/s / the GPU's dense bf16 peak (--peak-tflops; H100/H200 SXM: 989).
Data: TinyStories with the Llama 2 tokenizer (full vocabulary), from ../shared/data.
"""
from __future__ import annotations

import argparse
import json
import statistics
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
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


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
    model = dict(SIZES[size], vocab_size=32000, max_position_embeddings=max(2048, args.seq_len))
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(RunConfig(schedule=dict(model=model, training=dict(steps=args.steps + 1)), data=data,
                                    micro_batch_size=args.micro_batch_size, seq_len=args.seq_len, bf16=True,
                                    activation_checkpointing=args.activation_checkpointing, eval_every=0,
                                    out=Path(out)), callbacks=[times])
        trainer.setup().fit()
    trainer.close()
    return times.seconds


def transformers_steps(size: str, args, data: Path) -> list[float]:
    """The reference: LlamaForCausalLM in a DeepSpeed engine of the same config, on the same kind of batches."""
    from transformers import LlamaForCausalLM

    from megababel.data.loader import PackedLoader
    from megababel.data.shards import TokenDataset
    from megababel.engine.deepspeed_config import load_ds_config
    from megababel.engine.module_engine import ModuleEngine
    from megababel.hf.adapter import to_hf_config

    config = LlamaConfig(**SIZES[size], vocab_size=32000, max_position_embeddings=max(2048, args.seq_len))
    model = LlamaForCausalLM(to_hf_config(config))
    if args.activation_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=dict(use_reentrant=False))
    engine = ModuleEngine(model, load_ds_config(0, args.micro_batch_size, 1, 1, bf16=True))
    loader = PackedLoader(TokenDataset(data / "vocab_32000", "train"), args.seq_len, args.micro_batch_size)
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


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", nargs="+", default=["125M", "350M", "1B"], choices=list(SIZES))
    p.add_argument("--micro-batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--steps", type=int, default=10, help="timed steps per round (after one warm-up step)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--activation-checkpointing", action="store_true")
    p.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak (default: from the GPU's name)")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = p.parse_args(argv)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    peak = args.peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if k in device), None)
    data = tinystories(SPEED_STAGES)
    rows = []
    for size in args.sizes:
        config = LlamaConfig(**SIZES[size], vocab_size=32000)
        times, peaks = {"megababel": [], "transformers": []}, {}
        for _ in range(args.rounds):
            for name, steps in (("megababel", megababel_steps), ("transformers", transformers_steps)):
                if torch.cuda.is_available():
                    torch.cuda.reset_peak_memory_stats()
                times[name] += steps(size, args, data)
                peaks[name] = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
        for name, seconds in times.items():
            tokens_per_s = args.micro_batch_size * args.seq_len / statistics.median(seconds)
            flops = flops_per_token(config, args.seq_len) * tokens_per_s
            rows.append(dict(size=size, parameters=config_parameters(config), implementation=name,
                             tokens_per_s=round(tokens_per_s), tflops=round(flops / 1e12, 1),
                             mfu=None if peak is None else round(flops / (peak * 1e12), 4),
                             peak_memory_gb=None if peaks[name] is None else round(peaks[name], 1),
                             step_seconds=[round(s, 4) for s in seconds]))
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "step_seconds"}), flush=True)
    lines = [f"{device}, bf16 (DeepSpeed ZeRO-0, fp32 masters), micro batch {args.micro_batch_size} x seq "
             f"{args.seq_len}{', activation checkpointing' if args.activation_checkpointing else ''}; median of "
             f"{args.rounds} x {args.steps} steps; peak {peak} TFLOP/s", "",
             "| size | parameters | implementation | tokens/s | model TFLOP/s | MFU | peak GPU memory GB |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        mfu = "-" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
        lines.append(f"| {r['size']} | {r['parameters'] / 1e6:.0f}M | {r['implementation']} | {r['tokens_per_s']} | "
                     f"{r['tflops']} | {mfu} | {r['peak_memory_gb'] or '-'} |")
    table = "\n".join(lines)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_speed.md").write_text(table + "\n")
    (args.out / "gpu_speed.json").write_text(json.dumps(dict(device=device, args=vars(args) | {"out": str(args.out)},
                                                             rows=rows), indent=1))


if __name__ == "__main__":
    main()

"""Training-step throughput of a fresh vs a grown 60M model as users train it, and megababel's Llama vs transformers'.

    python bench/train_step_speed.py                      # bench/README.md's tables: fp32 and bf16 (~10 minutes)
    python bench/train_step_speed.py --dtypes bf16 --rounds 2

1. What users run. Each variant trains through megababel's Trainer exactly as launch/train.py does (DeepSpeed ZeRO-0,
   one process, fp32 or --bf16: bf16 weights with fp32 masters; TinyStories with the Llama 2 tokenizer), batch 8 x
   256. "fresh" builds the 60M model at step 0; "grown" starts at 11M (hidden 256, 4 layers, vocabulary 8000) and
   reaches the same shape through 3 growth events before steps 1-3 (every kind of growth), so most of its weights are
   3-7 generation blocks. Only steps of the final shape after one warm-up step are timed. The variants alternate in
   rounds (fresh, grown, grown, fresh, ...: each round a new Trainer) so that machine drift hits them alike.
2. The model against transformers (issue 2's target). Forward + backward of the same batch through
   LlamaForCausalLM and megababel's Llama (fresh, grown with its blocks, grown then consolidated), in fp32 or cast
   to bf16, interleaved in rounds. This compares model implementations, so it times them directly: no optimizer,
   no data loader, no training (AdamW costs the same for equal parameters and is in part 1).
3. The direct cost of generation blocks: producing every weight of the grown model as the matmuls receive it and
   back-propagating into .grad, blocks vs consolidated.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
from bench_data import SPEED_STAGES, tinystories
from megababel import GrowthEvent, Llama, LlamaConfig, grow
from megababel.model.counters import count_parameters
from megababel.hf.adapter import to_hf_config
from megababel.train.trainer import Callback, RunConfig, Trainer

TARGET = dict(hidden_size=512, num_hidden_layers=8, head_dim=128, vocab_size=32000)          # ~60M parameters
GROWTH_START = dict(hidden_size=256, num_hidden_layers=4, head_dim=128, vocab_size=8000)
GROWTHS = [dict(hidden_size=384, intermediate_size=1024, vocab_size=16000),
           dict(num_hidden_layers=6, layer_positions="interleave", vocab_size=24000),
           dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=8, vocab_size=32000)]
BATCH, SEQ = 8, 256


# --- 1. through the Trainer --------------------------------------------------------------------------------------
def schedule_spec(variant: str, steps: int) -> dict:
    """`steps` steps of the final shape (the first a warm-up); "grown" first trains steps 0-2 at its smaller shapes,
    growing before steps 1, 2 and 3."""
    if variant == "fresh":
        return dict(model=TARGET, training=dict(steps=steps))
    return dict(model=GROWTH_START, training=dict(steps=len(GROWTHS) + steps),
                growths=[dict(g, at_step=i + 1) for i, g in enumerate(GROWTHS)])


class StepTimer(Callback):
    """Seconds of each step of the final generation, after its first (warm-up) step."""

    def __init__(self, final_generation: int):
        self.final_generation, self.seconds, self.warm = final_generation, [], False

    def on_step_end(self, trainer, row):
        if row["generation"] == self.final_generation:
            if self.warm:
                self.seconds.append(trainer.tokens_per_step / row["tokens_per_s"])
            self.warm = True

    def on_fit_end(self, trainer, result):
        self.parameter_tensors = sum(1 for _ in trainer.engine.model.parameters())
        self.parameters = count_parameters(trainer.engine.model).total


def trainer_round(variant: str, bf16: bool, steps: int, data: Path) -> StepTimer:
    timer = StepTimer(0 if variant == "fresh" else len(GROWTHS))
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(RunConfig(schedule=schedule_spec(variant, steps + 1), data=data, micro_batch_size=BATCH,
                                    seq_len=SEQ, bf16=bf16, eval_every=0, out=Path(out)), callbacks=[timer])
        trainer.setup().fit()
    trainer.close()
    return timer


def run_trainer(args) -> list[dict]:
    data = tinystories(SPEED_STAGES)
    results = []
    for dtype in args.dtypes:
        times, info = {"fresh": [], "grown": []}, {}
        for r in range(args.rounds):
            for variant in (["fresh", "grown"] if r % 2 == 0 else ["grown", "fresh"]):
                timer = trainer_round(variant, dtype == "bf16", args.steps_per_round, data)
                times[variant] += timer.seconds
                info[variant] = dict(parameters=timer.parameters, parameter_tensors=timer.parameter_tensors)
                print(f"[trainer {dtype}] round {r + 1}/{args.rounds} {variant}: "
                      f"{BATCH * SEQ / statistics.median(timer.seconds):.0f} tokens/s", flush=True)
        fresh = statistics.median(times["fresh"])
        for variant, seconds in times.items():
            results.append(dict(part="trainer", dtype=dtype, variant=variant, **info[variant],
                                tokens_per_s=round(BATCH * SEQ / statistics.median(seconds), 1),
                                tokens_per_s_range=[round(BATCH * SEQ / max(seconds)),
                                                    round(BATCH * SEQ / min(seconds))],
                                vs_fresh=round(fresh / statistics.median(seconds), 3),
                                step_seconds=[round(t, 3) for t in seconds]))
    return results


# --- 2. model implementations ------------------------------------------------------------------------------------
def grown_model() -> Llama:
    model = Llama(LlamaConfig(**GROWTH_START), seed=0)
    for growth in GROWTHS:
        grow(model, GrowthEvent(**growth))
    assert model.config == LlamaConfig(**TARGET), model.config
    return model


MODELS = {
    "transformers LlamaForCausalLM": lambda: __import__("transformers").LlamaForCausalLM(
        to_hf_config(LlamaConfig(**TARGET))),
    "megababel fresh": lambda: Llama(LlamaConfig(**TARGET), seed=0),
    "megababel grown (blocks)": grown_model,
    "megababel grown, consolidated": lambda: grown_model().consolidate(),
}


def forward_backward(name: str, model, x, y):
    logits = model(input_ids=x).logits if name.startswith("transformers") else model(x)[0]
    F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1)).backward()
    model.zero_grad(set_to_none=True)


def run_models(args) -> list[dict]:
    torch.manual_seed(0)
    tokens = torch.randint(0, TARGET["vocab_size"], (BATCH, SEQ + 1))
    x, y = tokens[:, :-1], tokens[:, 1:]
    names, results = list(MODELS), []
    for dtype_name in args.dtypes:
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
        models = {n: MODELS[n]().to(dtype) for n in names}
        for n in names:                                     # warm-up
            forward_backward(n, models[n], x, y)
        times = {n: [] for n in names}
        for r in range(args.model_rounds):
            for n in names[r % len(names):] + names[:r % len(names)]:      # rotate: no variant always runs first
                t0 = time.perf_counter()
                forward_backward(n, models[n], x, y)
                times[n].append(time.perf_counter() - t0)
        hf = statistics.median(times[names[0]])
        for n in names:
            seconds = times[n]
            results.append(dict(part="model", dtype=dtype_name, variant=n,
                                vs_hf=round(hf / statistics.median(seconds), 3),
                                tokens_per_s=round(BATCH * SEQ / statistics.median(seconds), 1),
                                tokens_per_s_range=[round(BATCH * SEQ / max(seconds)),
                                                    round(BATCH * SEQ / min(seconds))],
                                parameter_tensors=sum(1 for _ in models[n].parameters())))
            print(f"[model {dtype_name}] {n}: {results[-1]['tokens_per_s']:.0f} tokens/s forward+backward", flush=True)
        del models
    return results


# --- 3. the direct cost of blocks ----------------------------------------------------------------------------------
def assembly_seconds(dtype=None, consolidated=False, repeats: int = 5) -> float:
    """Median time to produce every weight of the grown model in `dtype` (as F.linear receives it) and
    back-propagate into the parameters' .grad."""
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
    lines = [f"1. Through the Trainer (DeepSpeed ZeRO-0, AdamW), batch {BATCH} x {SEQ}, {args.threads} threads; median "
             f"of {args.rounds} rounds x {args.steps_per_round} timed steps per variant", "",
             "| dtype | variant | tokens/s (median) | range | vs fresh | parameter tensors |", "|---|---|---|---|---|---|"]
    for r in (r for r in results if r["part"] == "trainer"):
        lo, hi = r["tokens_per_s_range"]
        lines.append(f"| {r['dtype']} | {r['variant']} | {r['tokens_per_s']:.0f} | {lo}-{hi} | {r['vs_fresh']:.2f}x | "
                     f"{r['parameter_tensors']} |")
    lines += ["", f"2. Forward + backward, model against model (weights in the dtype); median of {args.model_rounds} "
              f"rounds", "", "| dtype | model | tokens/s (median) | range | vs HF | parameter tensors |",
              "|---|---|---|---|---|---|"]
    for r in (r for r in results if r["part"] == "model"):
        lo, hi = r["tokens_per_s_range"]
        lines.append(f"| {r['dtype']} | {r['variant']} | {r['tokens_per_s']:.0f} | {lo}-{hi} | {r['vs_hf']:.2f}x | "
                     f"{r['parameter_tensors']} |")
    lines += ["", "3. Every weight as the matmuls receive it, forward + backward into .grad, per step:", "",
              "| dtype | grown (blocks) | grown, consolidated |", "|---|---|---|"]
    for name in args.dtypes:
        dtype = {"fp32": None, "bf16": torch.bfloat16}[name]
        lines.append(f"| {name} | {assembly_seconds(dtype) * 1000:.0f} ms | "
                     f"{assembly_seconds(dtype, consolidated=True) * 1000:.0f} ms |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=4, help="Trainer rounds per variant (part 1)")
    p.add_argument("--steps-per-round", type=int, default=3, help="timed steps per Trainer round (part 1)")
    p.add_argument("--model-rounds", type=int, default=8, help="forward+backward rounds per model (part 2)")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = run_trainer(args) + run_models(args)
    table = to_markdown(results, args)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    tag = "_".join(args.dtypes)
    (args.out / f"train_step_speed_{tag}.json").write_text(json.dumps(
        dict(args={k: str(v) for k, v in vars(args).items()}, torch=torch.__version__,
             machine=platform.processor() or platform.machine(), results=results), indent=1))
    (args.out / f"train_step_speed_{tag}.md").write_text(table + "\n")


if __name__ == "__main__":
    main()

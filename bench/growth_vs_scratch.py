"""Growth versus scratch on TinyStories: how much compute does growing save, and which growth choices matter?

    python bench/growth_vs_scratch.py                    # everything, ~50 min on 2 cores; resumes where it stopped
    python bench/growth_vs_scratch.py --report           # table + plot again from the saved runs
    python bench/growth_vs_scratch.py --only scratch both --seeds 0      # a subset
    python bench/growth_vs_scratch.py --quick --out /tmp/gvs             # smoke test: tiny budget, one seed

Every run trains toward the same final model (hidden 256, 8 layers, FFN 704, vocabulary 8000 of the Llama 2
tokenizer: 10.5M parameters) with GrowingEngine (DeepSpeed ZeRO-0, AdamW, one process, bf16 autocast, 2 threads),
batch 8 x 256 tokens, the same data order for every schedule of a seed (the seed sets init and data order).
  scratch         the final model from step 0; its peak learning rate is tuned first (seed 0, --lrs)
  width/depth/both  grown 2x in width (128 -> 256), depth (4 -> 8 layers) or both (128x4 -> 256x4 -> 256x8),
                  each with a "-vocab" twin whose vocabulary grows too (2000 -> 8000, or 2000 -> 4000 -> 8000)
  both/...        ablations of "both": Adam state reset at growth, one global LR curve, stacked (copied) layers
                  instead of function-preserving ones, zero-init of new heads/FFN units/layers, zero-init width
Seeds 0, 1, 2 for scratch and the six growth schedules, 0 and 1 for the ablations (--seeds, --ablation-seeds).
Every progressive run gets the scratch run's training FLOPs (project counter, megababel/counters.py, small stages
included), so it sees more tokens; the tuned scratch learning rate is used everywhere.
Validation: the first 160 paragraphs of TinyStories valid.txt, all tokens, in bits per byte (comparable across
vocabulary stages), after every 10 steps and 1, 2, 4, 8, 16, 32 steps after each growth.

Outputs in --out (default bench/results/growth_vs_scratch): runs/<name>-seed<k>.json (one per run, reused on a
re-run unless --rerun), table.md (pasted into bench/README.md) and curves.png.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from megababel.counters import config_parameters, flops_per_token  # noqa: E402
from megababel.data.loader import PackedLoader  # noqa: E402
from megababel.data.shards import TokenDataset  # noqa: E402
from megababel.deepspeed_config import load_ds_config  # noqa: E402
from megababel.engine import GrowingEngine, release_engine  # noqa: E402
from megababel.parallel import init_distributed  # noqa: E402
from megababel.schedule import parse_schedule  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
SEQ, BATCH = 256, 8
TOKENS_PER_STEP = SEQ * BATCH
VALID_PARAGRAPHS = 160
EVAL_EVERY = 10
AFTER_GROWTH = (1, 2, 4, 8, 16, 32)
COMMON = dict(head_dim=32, multiple_of=32, max_position_embeddings=SEQ)
FFN = {128: 352, 256: 704}
WIDER = dict(hidden_size=256, intermediate_size=704)
DEEPER = dict(num_hidden_layers=8, layer_positions="interleave")
# name: (starting hidden size, layers), [(fraction of the run's steps, growth event)]
PLANS = {
    "scratch": ((256, 8), []),
    "width": ((128, 8), [(1 / 3, WIDER)]),
    "depth": ((256, 4), [(1 / 3, DEEPER)]),
    "both": ((128, 4), [(1 / 4, WIDER), (1 / 2, DEEPER)]),
}
VOCAB_STEPS = {0: [8000], 1: [2000, 8000], 2: [2000, 4000, 8000]}     # vocabulary per stage, by number of growths
ABLATIONS = {   # name: (what changes in "both"'s stages (list per stage) or training section)
    "adam-reset": dict(stages=[dict(optimizer_state="reset")] * 2),
    "global-lr": dict(training=dict(lr_schedule="global")),
    "stack": dict(stages=[{}, dict(depth_init="copy", layer_positions="append", copy_from=[0, 1, 2, 3])]),
    "zero-units": dict(stages=[dict(heads_init="zero", ffn_init="zero"), dict(depth_init="zero")]),
    "zero-width": dict(stages=[dict(width_init="zero"), {}]),
}
MAIN = ["scratch", "width", "width-vocab", "depth", "depth-vocab", "both", "both-vocab"]
ALL = MAIN + [f"both/{a}" for a in ABLATIONS]


# --- data -----------------------------------------------------------------------------------------------------
def prepare_data(cache: Path) -> Path:
    """TinyStories through the Llama 2 tokenizer, vocabulary stages 2000/4000/8000, once."""
    if (cache / "vocab_8000" / "index.json").is_file():
        return cache
    from megababel.data.preprocess import preprocess
    from megababel.tokenizer import Tokenizer
    stories, valid = SHARED / "tinystories" / "train.txt", SHARED / "tinystories" / "valid.txt"
    for path in (stories, valid):
        if not path.is_file():
            sys.exit(f"{path} not found: this benchmark needs ../shared/data (see its README)")
    paragraphs = [p for p in valid.read_text().split("\n\n") if p.strip()][:VALID_PARAGRAPHS]
    cache.parent.mkdir(parents=True, exist_ok=True)
    subset = cache.parent / f"{cache.name}-valid-subset.txt"      # outside `cache`: preprocess empties it
    subset.write_text("\n\n".join(paragraphs) + "\n")
    tokenizer = Tokenizer.load(SHARED / "tokenizers" / "llama2" / "tokenizer.model")
    preprocess([str(stories)], cache, tokenizer, [2000, 4000, 8000], valid_sources=[str(subset)], overwrite=True)
    return cache


class Validation:
    """Every validation token of one vocabulary stage, packed in order (BOS doc EOS ...), last row padded."""

    def __init__(self, directory: Path):
        ds = TokenDataset(directory, "valid")
        stream = np.concatenate([np.concatenate([[ds.bos_id], ds.doc(i), [ds.eos_id]]) for i in range(ds.n_docs)])
        rows = -(-(len(stream) - 1) // SEQ)
        padded = np.full(rows * SEQ + 1, -100, dtype=np.int64)
        padded[:len(stream)] = stream
        x = torch.stack([torch.from_numpy(padded[i * SEQ:(i + 1) * SEQ]) for i in range(rows)]).clamp(min=0)
        y = torch.stack([torch.from_numpy(padded[i * SEQ + 1:(i + 1) * SEQ + 1]) for i in range(rows)])
        self.batches = [(x[i:i + 16], y[i:i + 16]) for i in range(0, rows, 16)]
        self.n_bytes = ds.n_bytes

    @torch.no_grad()
    def bits_per_byte(self, engine) -> float:
        nats = 0.0
        for x, y in self.batches:
            nats += engine.forward(x, y)[1].float().item() * int((y != -100).sum())
        return nats / math.log(2) / self.n_bytes


# --- schedules ------------------------------------------------------------------------------------------------
def model_spec(hidden: int, layers: int, vocab: int) -> dict:
    return dict(hidden_size=hidden, num_hidden_layers=layers, intermediate_size=FFN[hidden], vocab_size=vocab,
                **COMMON)


def schedule_spec(name: str, lr: float, scratch_steps: int) -> dict:
    """The schedule of a run; a progressive run's steps are set so that its training FLOPs equal scratch's."""
    base, _, ablation = name.partition("/")
    plan, vocab = base.removesuffix("-vocab"), base.endswith("-vocab")
    (hidden, layers), growths = PLANS[plan]
    vocabs = VOCAB_STEPS[len(growths)] if vocab else [8000] * (len(growths) + 1)
    stages = [dict(event, **({"vocab_size": vocabs[i + 1]} if vocab else {})) for i, (_, event) in enumerate(growths)]
    training = dict(lr=lr, warmup_steps=max(1, scratch_steps // 10), min_lr_ratio=0.1, weight_decay=0.1)
    if ablation:
        change = ABLATIONS[ablation]
        training.update(change.get("training", {}))
        stages = [dict(stage, **extra) for stage, extra in zip(stages, change.get("stages", [{}] * len(stages)))]
    spec = dict(model=model_spec(hidden, layers, vocabs[0]), training=dict(training, steps=scratch_steps),
                growths=[])
    # cost of one step in each stage, from the configs the stages produce
    probe = parse_schedule(dict(spec, growths=[dict(s, at_step=i + 1) for i, s in enumerate(stages)],
                                training=dict(training, steps=len(stages) + 2)), TOKENS_PER_STEP)
    configs = [probe.model] + [s.config for s in probe.growths]
    fractions = [0.0] + [f for f, _ in growths] + [1.0]
    per_step = sum((fractions[i + 1] - fractions[i]) * flops_per_token(c, SEQ) * TOKENS_PER_STEP
                   for i, c in enumerate(configs))
    final = parse_schedule(dict(model=model_spec(256, 8, 8000), training=dict(steps=1)), TOKENS_PER_STEP).model
    steps = round(scratch_steps * flops_per_token(final, SEQ) * TOKENS_PER_STEP / per_step)
    spec["training"]["steps"] = steps
    spec["growths"] = [dict(s, at_step=round(f * steps)) for s, (f, _) in zip(stages, growths)]
    return spec


# --- one run --------------------------------------------------------------------------------------------------
def train(name: str, spec: dict, seed: int, data: Path, validation: dict, log_every: int = 25) -> dict:
    schedule = parse_schedule(spec, TOKENS_PER_STEP)
    torch.manual_seed(seed)
    ds_config = load_ds_config(0, BATCH, 1, 1, bf16=False, gradient_clipping=1.0)
    engine = GrowingEngine(schedule.model, ds_config, schedule, seed=seed, autocast_dtype=torch.bfloat16)
    vocab = schedule.model.vocab_size
    loader = PackedLoader(TokenDataset(data / f"vocab_{vocab}", "train"), SEQ, BATCH, seed=seed)
    growth_steps = [s.at_step for s in schedule.growths]
    eval_steps = set(range(0, schedule.steps, EVAL_EVERY)) | {schedule.steps} | set(growth_steps)
    eval_steps |= {g + k for g in growth_steps for k in AFTER_GROWTH if g + k < schedule.steps}
    state = dict(flops=0.0, wall=0.0)
    evals, growths = [], []

    def evaluate(step):
        evals.append(dict(step=step, flops=state["flops"], wall=round(state["wall"], 3), tokens=step * TOKENS_PER_STEP,
                          bpb=validation[vocab].bits_per_byte(engine), generation=engine.model.generation,
                          parameters=config_parameters(engine.model.config)))
        return evals[-1]["bpb"]

    evaluate(0)
    pending, started, loss = list(schedule.growths), time.perf_counter(), float("nan")
    for step in range(schedule.steps):
        while pending and pending[0].at_step == step:
            stage = pending.pop(0)
            before = evals[-1]["bpb"]
            t0 = time.perf_counter()
            engine.grow(stage.event, step, stage.lr, stage.warmup_steps,
                        reset_optimizer=stage.optimizer_state == "reset")
            if engine.model.config.vocab_size != vocab:      # same documents, same fraction of the epoch
                old, vocab = loader, engine.model.config.vocab_size
                loader = PackedLoader(TokenDataset(data / f"vocab_{vocab}", "train"), SEQ, BATCH, seed=seed)
                loader.continue_from(old)
            state["wall"] += time.perf_counter() - t0
            growths.append(dict(step=step, flops=state["flops"], before=before, after=evaluate(step),
                                seconds=round(time.perf_counter() - t0, 2), vocab=vocab))
        x, y = loader.next_batch()
        t0 = time.perf_counter()
        loss = engine.train_step(x, y, step)
        state["wall"] += time.perf_counter() - t0
        state["flops"] += flops_per_token(engine.model.config, SEQ) * TOKENS_PER_STEP
        if step + 1 in eval_steps:
            evaluate(step + 1)
        if (step + 1) % log_every == 0 or step + 1 == schedule.steps:
            elapsed = time.perf_counter() - started
            print(f"  {name} seed {seed}: step {step + 1}/{schedule.steps} loss {loss:.3f} val {evals[-1]['bpb']:.4f} "
                  f"bits/byte, gen {engine.model.generation}, {(step + 1) * TOKENS_PER_STEP / state['wall']:,.0f} "
                  f"tok/s, ETA {elapsed / (step + 1) * (schedule.steps - step - 1):.0f} s", flush=True)
    release_engine(engine.engine)
    return dict(name=name, seed=seed, spec=spec, evals=evals, growths=growths, final_bpb=evals[-1]["bpb"],
                flops=state["flops"], wall=state["wall"], steps=schedule.steps)


# --- command line ---------------------------------------------------------------------------------------------
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "growth_vs_scratch")
    p.add_argument("--data", type=Path, default=Path.home() / ".cache" / "megababel" / "bench-tinystories")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--ablation-seeds", type=int, nargs="+", default=[0, 1], help="seeds of the ablation runs")
    p.add_argument("--lrs", type=float, nargs="+", default=[2e-3, 4e-3, 8e-3], help="scratch peak LRs to try")
    p.add_argument("--scratch-steps", type=int, default=150)
    p.add_argument("--only", nargs="+", default=None, choices=ALL, metavar="RUN", help=f"subset of {ALL}")
    p.add_argument("--rerun", action="store_true", help="train again even if a saved run exists")
    p.add_argument("--report", action="store_true", help="only make the table and plot from saved runs")
    p.add_argument("--quick", action="store_true", help="smoke test: 24 scratch steps, seed 0, one LR")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    if args.quick:
        args.scratch_steps, args.seeds, args.lrs = 24, [0], args.lrs[:1]
    if args.scratch_steps < 20:
        p.error(f"--scratch-steps must be at least 20 (warm-up and growth steps need room), got {args.scratch_steps}")
    ablation_seeds = [s for s in args.ablation_seeds if s in args.seeds] or args.seeds[:1]
    runs_dir = args.out / "runs"
    from growth_report import write_report     # tables and plot
    if not args.report:
        torch.set_num_threads(args.threads)
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        init_distributed()
        data = prepare_data(args.data)
        validation = {v: Validation(data / f"vocab_{v}") for v in (2000, 4000, 8000)}
        runs_dir.mkdir(parents=True, exist_ok=True)

        def run(name, seed, lr):
            path = runs_dir / f"{name.replace('/', '_')}-lr{lr:g}-seed{seed}.json"
            if path.is_file() and not args.rerun:
                return json.loads(path.read_text())
            print(f"{name} seed {seed} lr {lr:g}", flush=True)
            result = train(name, schedule_spec(name, lr, args.scratch_steps), seed, data, validation)
            result["lr"] = lr
            path.write_text(json.dumps(result))
            print(f"  -> final {result['final_bpb']:.4f} bits/byte, {result['flops']:.3g} FLOPs, "
                  f"{result['wall']:.0f} s", flush=True)
            return result

        wanted = args.only or ALL
        lrs = sorted(args.lrs)
        tuning = {lr: run("scratch", args.seeds[0], lr) for lr in lrs}
        best = min(tuning.values(), key=lambda r: r["final_bpb"])["lr"]
        while len(lrs) > 1 and best in (lrs[0], lrs[-1]) and len(lrs) < len(args.lrs) + 2:   # best at an edge
            lr = best * 2 if best == lrs[-1] else best / 2
            lrs = sorted(lrs + [lr])
            tuning[lr] = run("scratch", args.seeds[0], lr)
            best = min(tuning.values(), key=lambda r: r["final_bpb"])["lr"]
        (args.out / "tuned_lr.json").write_text(json.dumps(dict(lr=best, tried=lrs)))
        print(f"tuned scratch learning rate: {best:g}", flush=True)
        for name in wanted:
            for seed in (ablation_seeds if "/" in name else args.seeds):
                run(name, seed, best)
    write_report(args.out)


if __name__ == "__main__":
    main()

"""Growth versus scratch on TinyStories: how much compute does growing save, and which growth choices matter?

    python bench/growth_vs_scratch.py                    # everything, ~50 min on 2 cores; resumes where it stopped
    python bench/growth_vs_scratch.py --report           # table + plot again from the saved runs
    python bench/growth_vs_scratch.py --only scratch both --seeds 0      # a subset
    python bench/growth_vs_scratch.py --quick --out /tmp/gvs             # smoke test: tiny budget, one seed

Every run trains toward the same final model (hidden 256, 8 layers, FFN 704, vocabulary 8000 of the Llama 2
tokenizer: 10.5M parameters) through megababel's Trainer exactly as `launch/train.py --bf16` trains (DeepSpeed
ZeRO-0, bf16 weights with fp32 master weights, AdamW, one process, 2 threads), batch 8 x 256 tokens, the same data order for every schedule of a seed (the seed sets init and data order).
  scratch         the final model from step 0; its peak learning rate is tuned first (seed 0, --lrs)
  width/depth/both  grown 2x in width (128 -> 256), depth (4 -> 8 layers) or both (128x4 -> 256x4 -> 256x8),
                  each with a "-vocab" twin whose vocabulary grows too (2000 -> 8000, or 2000 -> 4000 -> 8000)
  both/...        ablations of "both": Adam state reset at growth, one global LR curve, stacked (copied) layers
                  instead of function-preserving ones, zero-init of new heads/FFN units/layers, zero-init width
Seeds 0, 1, 2 for scratch and the six growth schedules, 0 and 1 for the ablations (--seeds, --ablation-seeds).
Every progressive run gets the scratch run's training FLOPs (project counter, megababel/model/counters.py, small stages
included), so it sees more tokens; the tuned scratch learning rate is used everywhere.
Validation: the first 160 paragraphs of TinyStories valid.txt (40 with --quick), all tokens, in bits per byte
(comparable across vocabulary stages), after every 10 steps and 1, 2, 4, 8, 16, 32 steps after each growth.

Outputs in --out (default bench/results/growth_vs_scratch): runs/<name>-seed<k>.json (one per run, reused on a
re-run unless --rerun), table.md (pasted into bench/README.md) and curves.png.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
from megababel.model.counters import config_parameters, flops_per_token
from megababel.data.shards import TokenDataset
from megababel.engine import init_distributed
from megababel.engine.distributed import slow_bf16_here
from megababel.plan.schedule import parse_schedule
from megababel.train.trainer import Callback, RunConfig, Trainer
from bench_data import tinystories

SEQ, BATCH = 256, 8
# The precision runs train in: bf16 (DeepSpeed bf16 weights, fp32 masters), which every saved result used, except on
# a CPU without native bf16, where PyTorch emulates it ~50x slower than fp32: there fp32. A run records its precision,
# budget_sweep.run_path names fp32 runs apart, and the clock's reports never compare runs of two precisions.
PRECISION = "fp32" if slow_bf16_here() else "bf16"
TOKENS_PER_STEP = SEQ * BATCH
VALID_PARAGRAPHS = 160
QUICK_VALID_PARAGRAPHS = 40     # a smoke test: fewer tokens per evaluation (the suite's quick run: 413 s -> 332 s)
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
def prepare_data(cache: Path, valid_paragraphs: int = VALID_PARAGRAPHS) -> Path:
    """TinyStories through the Llama 2 tokenizer, vocabulary stages 2000/4000/8000, once. A cache built with another
    number of validation paragraphs is refused: its runs would not be comparable."""
    data = tinystories([2000, 4000, 8000], cache, valid_paragraphs)
    built = TokenDataset(data / "vocab_2000", "valid").n_docs
    if built != valid_paragraphs:
        raise SystemExit(f"--data {cache} holds {built} validation paragraphs, not {valid_paragraphs}: "
                         f"give --data another folder (--quick validates on {QUICK_VALID_PARAGRAPHS})")
    return data


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


# --- one run ---------------------------------------------------------------------------------------------------
class BenchRecorder(Callback):
    """Validation bits per byte (all tokens of the valid subset) at fixed steps and right after each growth, with
    the trainer's cumulative FLOPs and training wall time (train steps and growths only, not these evaluations)."""

    def __init__(self, name: str, seed: int, validation: dict, log_every: int = 25, eval_every: int = EVAL_EVERY,
                 clock=None):
        self.name, self.seed, self.validation, self.log_every = name, seed, validation, log_every
        self.eval_every, self.clock = eval_every, clock     # clock: bench/clock.py's final evaluations, or None
        self.evals, self.growths, self.final_evals = [], [], []
        self.start_step, self.initial_eval = 0, None    # a decay branch: where it starts, the clock's figure there
        self.continued = False     # restored from a stopped run's checkpoint (train's `partial`): no new start
        self.saves_state = False   # write its state into each checkpoint the Trainer saves

    STATE = "bench_recorder.json"      # beside a checkpoint: what was measured up to its step
    STATE_FIELDS = ("evals", "growths", "final_evals", "start_step", "initial_eval")

    def on_save(self, trainer, path):
        if self.saves_state and trainer.rank == 0:
            (Path(path) / self.STATE).write_text(json.dumps({k: getattr(self, k) for k in self.STATE_FIELDS}))

    def continue_from(self, checkpoint: Path):
        """The measurements of a stopped run up to `checkpoint`, which it resumes from."""
        state = json.loads((Path(checkpoint) / self.STATE).read_text())
        for key in self.STATE_FIELDS:
            setattr(self, key, state[key])
        self.continued = True

    def evaluate(self, trainer) -> float:
        config = trainer.engine.model.config
        self.evals.append(dict(step=trainer.step, flops=trainer.flops, wall=round(trainer.train_seconds, 3),
                               tokens=trainer.step * TOKENS_PER_STEP,
                               bpb=self.validation[config.vocab_size].bits_per_byte(trainer.engine),
                               generation=trainer.engine.model.generation, parameters=config_parameters(config),
                               load=round(os.getloadavg()[0], 2)))     # > ~3.5 on 2 cores: something else ran
        return self.evals[-1]["bpb"]

    def on_fit_start(self, trainer):
        # a decay branch (bench/annealed_family.py) starts at its member's step and ends at the branch's end
        start, steps = (self.start_step if self.continued else trainer.step), trainer.schedule.end_step
        self.start_step, self.timed_from = start, trainer.step
        growth_steps = [g.at_step for g in trainer.schedule.growths if g.at_step >= start]
        self.eval_steps = set(range(start, steps, self.eval_every)) | {steps} | set(growth_steps)  # right before each
        self.eval_steps |= {g + k for g in growth_steps for k in AFTER_GROWTH if g + k < steps}
        if self.clock is not None:
            self.eval_steps |= self.clock.curve_steps(steps, start)
            self.final_steps = self.clock.final_steps(steps, start)
        self.started = time.perf_counter()
        if self.continued:              # measured up to here before it stopped
            return
        self.evaluate(trainer)
        if self.clock is not None and start > 0:        # the member before its branch, on the clock's articles
            self.initial_eval = dict(step=start, flops=trainer.flops, **self.clock.evaluate(trainer))

    def on_growth(self, trainer, record):
        before = self.evals[-1]["bpb"]
        self.growths.append(dict(step=record["step"], flops=trainer.flops, before=before, after=self.evaluate(trainer),
                                 seconds=round(record["seconds"], 2), vocab=record["config"].vocab_size))

    def on_step_end(self, trainer, row):
        step, steps = trainer.step, trainer.schedule.end_step      # steps done
        if step in self.eval_steps:
            self.evaluate(trainer)
        if self.clock is not None and step in self.final_steps:
            self.final_evals.append(dict(step=step, flops=trainer.flops, **self.clock.evaluate(trainer)))
        if step % self.log_every == 0 or step == steps:
            elapsed = time.perf_counter() - self.started
            print(f"  {self.name} seed {self.seed}: step {step}/{steps} loss {row['loss']:.3f} val "
                  f"{self.evals[-1]['bpb']:.4f} bits/byte, gen {row['generation']}, "
                  f"{step * TOKENS_PER_STEP / trainer.train_seconds:,.0f} tok/s, "
                  f"ETA {elapsed / max(1, step - self.timed_from) * (steps - step):.0f} s", flush=True)


PARTIAL_EVERY = 1000    # steps between a resumable run's checkpoints (a few minutes of the clock's runs)


def resumable(partial: Path) -> bool:
    """Whether a stopped run left a checkpoint in its `partial` folder (train's) to resume from."""
    return any((Path(partial) / "checkpoints").glob("step_*"))


def train(name: str, spec: dict, seed: int, data: Path, validation: dict, eval_every: int = EVAL_EVERY,
          micro_batch_size: int = BATCH, clock=None, out: Path | None = None, partial: Path | None = None,
          callbacks=(), **run_options) -> dict:
    """One run through the Trainer, exactly as launch/train.py --bf16 --seed SEED would train it (DeepSpeed ZeRO-0, bf16
    weights with fp32 masters, gradient clipping 1.0; fp32 where PRECISION says so), without checkpoints unless `out` is
    given (then the Trainer's OUT, e.g. with keep_generations=True in `run_options`: RunConfig fields, also resume and
    anneal_steps for a decay branch). `partial`: a folder where the run checkpoints every PARTIAL_EVERY steps and when
    stopped (SIGTERM), with what was measured so far; a re-run resumes from there exactly (the Trainer's resume), so a
    run longer than a session still ends. `clock`: bench/clock.py's Clock, whose final evaluations the result then holds
    ("final_evals"). `callbacks`: more Trainer callbacks."""
    recorder = BenchRecorder(name, seed, validation, log_every=max(25, eval_every * 5), eval_every=eval_every,
                             clock=clock)
    continuing = False        # resuming the stopped run in `partial` (not a decay branch's first start)
    if partial is not None:
        if out is not None:
            raise ValueError("give out or partial, not both")
        out, recorder.saves_state = partial, True
        run_options.update(save_every=PARTIAL_EVERY, keep_last=1)
        continuing = resumable(partial)
        if continuing:            # (a decay branch's resume=MEMBER is for its first start only)
            run_options["resume"] = "auto"
    with (contextlib.nullcontext(out) if out is not None else tempfile.TemporaryDirectory()) as out:
        trainer = Trainer(RunConfig(schedule=spec, data=data, micro_batch_size=micro_batch_size, seq_len=SEQ,
                                    bf16=PRECISION == "bf16",
                                    gradient_clipping=1.0, seed=seed, eval_every=0, out=Path(out), **run_options),
                          callbacks=[recorder, *callbacks])
        trainer.setup()
        if continuing:
            recorder.continue_from(trainer.resumed_from)
            print(f"  {name} seed {seed}: resumed at step {trainer.step} from {trainer.resumed_from}", flush=True)
        fitted = trainer.fit()
    trainer.close()
    if fitted["preempted"]:     # SIGTERM/SIGUSR1 stop the Trainer cleanly: a partial run must not be saved as done
        raise SystemExit(f"{name} seed {seed}: stopped by {trainer.stop_signal} at step {fitted['step']} of "
                         f"{trainer.schedule.end_step}; " + ("checkpointed: a re-run resumes it" if partial else
                                                             "not saved, a re-run trains it again"))
    return dict(name=name, seed=seed, spec=spec, evals=recorder.evals, growths=recorder.growths,
                final_bpb=recorder.evals[-1]["bpb"], flops=trainer.flops, wall=trainer.train_seconds,
                steps=trainer.schedule.end_step, precision=f"deepspeed-{PRECISION}",
                **({} if clock is None else dict(final_evals=recorder.final_evals, clock=clock.describe())),
                **({} if recorder.initial_eval is None else dict(initial_eval=recorder.initial_eval)))


# --- command line ---------------------------------------------------------------------------------------------
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "growth_vs_scratch")
    p.add_argument("--data", type=Path, default=None,
                   help="tokenized TinyStories cache (default ~/.cache/megababel/bench-tinystories[-quick])")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--ablation-seeds", type=int, nargs="+", default=[0, 1], help="seeds of the ablation runs")
    p.add_argument("--lrs", type=float, nargs="+", default=[2e-3, 4e-3, 8e-3], help="scratch peak LRs to try")
    p.add_argument("--scratch-steps", type=int, default=150)
    p.add_argument("--only", nargs="+", default=None, choices=ALL, metavar="RUN", help=f"subset of {ALL}")
    p.add_argument("--rerun", action="store_true", help="train again even if a saved run exists")
    p.add_argument("--report", action="store_true", help="only make the table and plot from saved runs")
    p.add_argument("--quick", action="store_true",
                   help=f"smoke test: 24 scratch steps, seed 0, one LR, {QUICK_VALID_PARAGRAPHS} validation paragraphs "
                        "(its own --data cache)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    args.data = args.data or Path.home() / ".cache" / "megababel" / ("bench-tinystories" + "-quick" * args.quick)
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
        data = prepare_data(args.data, QUICK_VALID_PARAGRAPHS if args.quick else VALID_PARAGRAPHS)
        validation = {v: Validation(data / f"vocab_{v}") for v in (2000, 4000, 8000)}
        runs_dir.mkdir(parents=True, exist_ok=True)

        def run(name, seed, lr):
            fp32 = "" if PRECISION == "bf16" else f"-{PRECISION}"
            path = runs_dir / f"{name.replace('/', '_')}-lr{lr:g}-seed{seed}{fp32}.json"
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

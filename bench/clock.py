"""A fair clock for the compute saving: scratch's loss-versus-FLOPs curve, and each plan's compute-equivalent saving.

    python bench/clock.py --curve                 # scratch at 20 40 28 14 5 tokens/parameter, LR tuned at each
    python bench/clock.py --curve --wsd           # and scratch+wsd at each (where wsd won at 20)
    python bench/clock.py --plans g3@2-vocab+copy g3@2-vocab+copy+narrow --seeds 0 1 2     # plans at 20
    python bench/clock.py --plans g3@2-vocab+copy --seeds 3 4                # confirm on seeds not used to choose
    python bench/clock.py --plans g3@2-vocab+copy+easyfirst --controls --seeds 0 1 2   # and its no-growth control
    python bench/clock.py --report                # clock.md, clock_curve.png, the noise study; the planner's row
    python bench/clock.py --curve --budgets 28 --curve-lrs 0.0015 --curve-extensions 0 --curve-seed 1
                                                  # one fp32 curve point, on a CPU without native bf16
    python bench/clock.py --report --precision fp32                         # clock_fp32.md, clock_curve_fp32.png
Run two of the same command side by side with --threads 1 --processes 2: they share the runs (bench/budget_sweep.py's
claims); every finished run is saved and never trained again.

Why (the review behind issue 32): bench/budget_sweep.py's saving is the first FLOPs at which a plan's curve on 40
validation articles crosses one final evaluation of scratch. Evaluations there wiggle by 0.002-0.014 bits/byte, as
much as the differences measured, and scratch scored the same way "saves" 6-7% against itself. Here:
- The final figure comes from the last FINAL_POINTS evaluations (at 98, 98.5, .. 100% of the steps): the value at
  the last step of the quadratic fitted through them (near their mean where the curve is flat), on every article
  of Wikipedia's valid.txt (486 articles, ~3.2 MB, never trained on), whatever a run trains on. Each article's
  loss is saved, so any subset's figure can be recomputed (--report's noise study measures how stable the final
  figure is for a given number of articles).
- The scratch curve: the final model from scratch at several budgets, each at its tuned peak LR (cosine; `+wsd`
  runs the warmup-stable-decay schedule next to it at 20). The lower of the two schedules at each budget is the
  curve.
- Compute-equivalent saving of a run = 1 - its FLOPs / the FLOPs scratch needs to reach its final figure, read off
  the curve (linear in log FLOPs between measured budgets; outside them the saving is only bounded), with its
  bounds if the curve is convex in log FLOPs (bench/scratch_curve.py).
- The crossing saving (bench/budget_report.py's, on the 40-article curve, evaluated every 1% in the last 10%) is
  reported next to it, and every saving with a 95% confidence interval over seeds (Student's t).
- Once a plan has run at seeds 0-2, --report writes the planner's row at its budget (megababel/plan/
  measured_savings.json, in place of the budget sweep's): the plan whose worst of those seeds saved the most.
Budgets and final model as bench/budget_sweep.py (1.32M parameters, batch 8 x 256, one epoch of text at most).
Outputs in --out (default bench/results/clock): runs/*.json, clock.md, clock_curve.png.
"""
from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import budget_sweep
from budget_sweep import all_of, one_epoch
from growth_vs_scratch import PRECISION, SEQ

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "bench" / "results" / "clock"
VALID_TEXT = ROOT / ".." / "shared" / "data" / "wikipedia" / "valid.txt"
CURVE_BUDGETS = (20, 40, 28, 14, 5)      # tokens/parameter; 20 first: the plans are compared there
CURVE_LRS = (7.5e-4, 1.5e-3, 3e-3)
PLAN_BUDGET = 20
FINAL_POINTS, FINAL_SPACING = 5, 0.005   # the final figure: a quadratic through evaluations at 98, 98.5, .. 100%
TAIL, TAIL_EVERY = 0.10, 0.01            # the 40-article curve: also every 1% of the steps in the last 10%
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}  # by d.o.f.


# --- the clock's evaluations -----------------------------------------------------------------------------------
class ArticleValidation:
    """Every article of a text file (blank-line separated) at one vocabulary stage of a dataset's tokenizer, packed
    in order (BOS article EOS ...) into rows of SEQ tokens; `nats(engine)` is each article's summed next-token loss
    (a target belongs to the article it is a token of)."""

    def __init__(self, data: Path, vocab_size: int, text: Path = VALID_TEXT, articles: int | None = None):
        from megababel.data.readers import read_documents
        from megababel.data.tokenizer import Tokenizer, VocabRanking, VocabStage
        tokenizer = Tokenizer.load(data / "tokenizer.model")
        stage = VocabStage(tokenizer, VocabRanking.load(data / "ranking.json", tokenizer), vocab_size)
        documents = list(read_documents(str(text)))[:articles]
        self.n_bytes = np.array([len(d.encode("utf-8")) for d in documents], dtype=np.float64)
        pieces = [np.concatenate([[tokenizer.bos_id], ids, [tokenizer.eos_id]])
                  for ids in stage.encode_batch(documents)]
        stream = np.concatenate(pieces).astype(np.int64)
        owner = np.repeat(np.arange(len(pieces)), [len(p) for p in pieces])
        rows = -(-(len(stream) - 1) // SEQ)
        inputs = np.zeros(rows * SEQ, dtype=np.int64)
        targets = np.full(rows * SEQ, -100, dtype=np.int64)
        article = np.zeros(rows * SEQ, dtype=np.int64)
        inputs[:len(stream) - 1], targets[:len(stream) - 1], article[:len(stream) - 1] = \
            stream[:-1], stream[1:], owner[1:]
        self.inputs, self.targets = torch.from_numpy(inputs).view(rows, SEQ), torch.from_numpy(targets).view(rows, SEQ)
        self.article = torch.from_numpy(article).view(rows, SEQ)
        self.vocab_size, self.n_articles, self.n_tokens = vocab_size, len(documents), len(stream)

    @torch.no_grad()
    def nats(self, engine, batch: int = 16) -> np.ndarray:
        total = torch.zeros(self.n_articles, dtype=torch.float64)
        for first in range(0, len(self.inputs), batch):
            x, y = self.inputs[first:first + batch], self.targets[first:first + batch]
            logits = engine.forward(x)[0].float().cpu()
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="none",
                                   ignore_index=-100).double()
            total.index_add_(0, self.article[first:first + batch].reshape(-1), loss)
        return total.numpy()


def bits_per_byte(nats, n_bytes) -> float:
    return float(np.sum(nats) / math.log(2) / np.sum(n_bytes))


class Clock:
    """What BenchRecorder (bench/growth_vs_scratch.py) asks of the clock: extra curve steps near the end, the final
    evaluation steps, and the evaluation itself (at the model's vocabulary stage)."""

    def __init__(self, data: Path, articles: int | None = None):
        self.data, self.articles, self._sets = data, articles, {}

    def curve_steps(self, steps: int, start: int = 0) -> set:
        """Every 1% in the last 10% of the steps from `start` (a decay branch's: its own steps)."""
        return {start + round((steps - start) * (1 - TAIL + k * TAIL_EVERY)) for k in range(round(TAIL / TAIL_EVERY))}

    def final_steps(self, steps: int, start: int = 0) -> set:
        return {steps - round(j * FINAL_SPACING * (steps - start)) for j in range(FINAL_POINTS)}

    def evaluate(self, trainer) -> dict:
        vocab = trainer.engine.model.config.vocab_size
        if vocab not in self._sets:
            self._sets[vocab] = ArticleValidation(self.data, vocab, articles=self.articles)
        validation = self._sets[vocab]
        nats = validation.nats(trainer.engine)
        return dict(vocab=vocab, bpb=bits_per_byte(nats, validation.n_bytes), nats=[round(v, 4) for v in nats],
                    n_bytes=validation.n_bytes.astype(int).tolist())

    def describe(self) -> dict:
        return dict(text="wikipedia/valid.txt", articles=self.articles or "all", points=FINAL_POINTS,
                    spacing=FINAL_SPACING)


def final_figure(run: dict, articles=None) -> float:
    """A run's final bits/byte (on `articles`, indices; default all): the value at the last evaluated step of the
    least-squares quadratic through its final evaluations. It follows a curve that still falls and flattens (a WSD
    decay, steepest before its end), where their plain mean credits the run with where it stood 1% earlier (+0.006
    for scratch+wsd at 20) and a straight line overshoots the flattening (-0.002); on cosine's flat end it stays
    within 0.002 of the mean. Fewer than 3 distinct steps: their mean."""
    steps, values = [], []
    for e in run["final_evals"]:
        nats, n_bytes = np.array(e["nats"]), np.array(e["n_bytes"])
        if articles is not None:
            nats, n_bytes = nats[articles], n_bytes[articles]
        steps.append(float(e.get("step", 0)))
        values.append(bits_per_byte(nats, n_bytes))
    if len(set(steps)) < 3:
        return float(np.mean(values))
    last, first = max(steps), min(steps)
    x = [(s - last) / (last - first) for s in steps]           # the last step at 0: the fit's constant term
    return float(np.polyfit(x, values, 2)[-1])


def final_mean(run: dict) -> float:
    """The plain mean of a run's final evaluations (reported next to final_figure)."""
    return float(np.mean([e["bpb"] for e in run["final_evals"]]))


def interval(values) -> tuple[float, float, float]:
    """Mean and the 95% confidence interval of the mean (Student's t) over seeds; one seed: no interval (nan)."""
    values = np.asarray(values, dtype=float)
    mean = float(values.mean())
    if len(values) < 2:
        return mean, math.nan, math.nan
    half = T_975[len(values) - 1] * values.std(ddof=1) / math.sqrt(len(values))
    return mean, mean - half, mean + half


# --- orchestration -------------------------------------------------------------------------------------------
def load_runs(out: Path, precision: str = "bf16") -> dict:
    """{(budget, name, lr, seed): run}, the finished runs that trained in `precision` (runs of two precisions are
    never compared: growth_vs_scratch.PRECISION)."""
    from budget_report import precision as precision_of
    runs = {}
    for path in sorted((out / "runs").glob("*.json")):
        r = json.loads(path.read_text())
        if r["evals"][-1]["step"] == r["steps"] and r.get("final_evals") and precision_of(r) == precision:
            runs[r["budget"], r["name"], r["lr"], r["seed"]] = r
    return runs


def tuned_lr(out: Path, budget: float, name: str = "scratch") -> float | None:
    """`name`'s best LR at `budget` (seed 0), tuned in this machine's precision or else in bf16's runs: an fp32
    run (a CPU without native bf16) takes the LR bf16 tuned, rather than tuning again."""
    for precision in dict.fromkeys([PRECISION, "bf16"]):
        tried = {lr: final_figure(r) for (b, n, lr, s), r in load_runs(out, precision).items()
                 if b == budget and n == name and s == 0}
        if tried:
            return min(tried, key=tried.get)
    return None


def tune(out, budget, name, lrs, data, validation, clock, extensions: int = 2, seed: int = 0) -> float:
    """`name` at `budget` on the LR grid (at `seed`), extended by doubling/halving while the best sits at an edge
    (at most `extensions` times); the best LR by final figure."""
    tried = all_of({lr: (out, budget, name, lr, seed, data, validation) for lr in sorted(lrs)}, clock=clock)
    for _ in range(extensions):
        figures = {lr: final_figure(r) for lr, r in tried.items()}
        best, edges = min(figures, key=figures.get), sorted(figures)
        if best not in (edges[0], edges[-1]):
            break
        lr = best * 2 if best == edges[-1] else best / 2
        tried[lr] = budget_sweep.run(out, budget, name, lr, seed, data, validation, clock=clock)
    figures = {lr: final_figure(r) for lr, r in tried.items()}
    return min(figures, key=figures.get)


def control(plan: str, budget: float) -> str | None:
    """The no-growth control of `plan` at `budget` (planner.control_of; None: scratch is its control)."""
    from megababel.plan.planner import control_of
    growths = budget_sweep.schedule_spec(plan, budget, 1e-3)["growths"]
    return control_of(plan, budget_sweep.scratch_steps(budget), growths[0]["at_step"]) if growths else None


def prepare(threads: int) -> tuple[Path, dict]:
    """This process ready to train the clock's runs: torch threads, a one-process distributed world, the Wikipedia
    build (vocabulary stages 1000 and 2000) and its 40-article validation sets."""
    from bench_data import wikipedia
    from growth_vs_scratch import Validation
    from megababel.engine import init_distributed
    torch.set_num_threads(threads)
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    init_distributed()
    data = wikipedia([1000, 2000], valid_articles=budget_sweep.VALID_ARTICLES)
    return data, {v: Validation(data / f"vocab_{v}") for v in (1000, 2000)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--curve", action="store_true", help="scratch at each of --budgets, LR tuned; scratch+wsd at 20")
    p.add_argument("--wsd", action="store_true", help="with --curve: scratch+wsd at every budget, not only at 20")
    p.add_argument("--budgets", type=float, nargs="+", default=list(CURVE_BUDGETS))
    p.add_argument("--curve-lrs", type=float, nargs="+", default=list(CURVE_LRS), metavar="LR",
                   help="scratch's LR grid at each --curve budget, extended while the best sits at an edge (e.g. "
                        "0.00075 0.0015 above 20 tokens/parameter, where longer training rarely wants a higher LR: "
                        "0.003 runs only if 0.0015 wins)")
    p.add_argument("--curve-extensions", type=int, default=2, metavar="N", help="with --curve: how many times the "
                   "LR grid may be extended past an edge (0: the grid only)")
    p.add_argument("--curve-seed", type=int, default=0, help="with --curve: the seed the curve trains at (0, where "
                   "bf16 tuned; fp32's curve on a CPU without native bf16 began at seed 1: clock_report.curve_seed)")
    p.add_argument("--plans", nargs="+", default=[], metavar="PLAN", help="plans (with levers) at --plan-budget, "
                   "at scratch's tuned LR there, for --seeds (scratch too, at those seeds)")
    p.add_argument("--controls", action="store_true", help="with --plans: each plan's no-growth control too (scratch "
                   "with its curriculum, warm-up and LR decay, planner.control_of), at the same seeds")
    p.add_argument("--plan-budget", type=float, default=PLAN_BUDGET, help="tokens/parameter of the plans' runs")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--articles", type=int, default=None, help="final evaluations on the first N articles (default "
                   "all 486); the runs of one --out must share it")
    p.add_argument("--report", action="store_true", help="only the report, from saved runs")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--processes", type=int, default=1)
    p.add_argument("--precision", choices=["bf16", "fp32"], default=PRECISION, help="the precision of the runs the "
                   f"report covers (default {PRECISION}: what this machine trains in, fp32 only on a CPU without "
                   "native bf16; the runs themselves always train in this machine's)")
    p.add_argument("--quick", action="store_true", help="smoke test: budget 0.05, one LR, 10 articles, plan g2@25")
    args = p.parse_args(argv)
    if args.quick:
        args.budgets, args.plan_budget, args.articles, args.seeds = [0.05], 0.05, 10, [0]
        args.plans = args.plans or ["g2@25"]
    budget_sweep.PROCESSES = args.processes
    if not args.report:
        data, validation = prepare(args.threads)
        clock = Clock(data, args.articles)
        if any("first" in n for n in args.plans):     # the data curricula's sources, made once before any run
            from bench_data import simple_stories, with_difficulty
            with_difficulty(data), simple_stories(data)
        lrs, extensions = ((3e-3,), 0) if args.quick else (args.curve_lrs, args.curve_extensions)
        if args.curve or args.quick:
            for budget in args.budgets:
                lr = tune(args.out, budget, "scratch", lrs, data, validation, clock, extensions, args.curve_seed)
                if budget == args.plan_budget or args.wsd:
                    tune(args.out, budget, "scratch+wsd", [lr] if args.quick else [lr / 2, lr, lr * 2], data,
                         validation, clock, extensions, args.curve_seed)
                if budget == args.plan_budget:
                    all_of({seed: (args.out, budget, "scratch", lr, seed, data, validation) for seed in args.seeds},
                           clock=clock)
        if args.plans:
            lr = tuned_lr(args.out, args.plan_budget)
            if lr is None:
                raise SystemExit(f"--plans: scratch is not tuned at {args.plan_budget:g} tokens/parameter yet: run "
                                 f"--curve")
            plans = [n for n in args.plans if one_epoch(args.plan_budget, n, data)]
            if args.controls:
                plans += [c for c in map(lambda n: control(n, args.plan_budget), plans) if c and c not in plans]
            all_of({(n, s): (args.out, args.plan_budget, n, lr, s, data, validation) for s in args.seeds
                    for n in ["scratch"] + plans}, clock=clock)
    from clock_report import write_report
    write_report(args.out, precision=args.precision)


if __name__ == "__main__":
    main()

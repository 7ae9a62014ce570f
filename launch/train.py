"""Progressive training on DeepSpeed: the model grows (width, FFN, depth, vocabulary) while it trains.

    python launch/train.py                                       # 1 process, ZeRO-0, tiny preset, embedded corpus
    DS_ACCELERATOR=cpu deepspeed --num_gpus 2 launch/train.py --zero-stage 3      # 2 ranks, ZeRO-3 (CPU: gloo)
    deepspeed launch/train.py --zero-stage 3 --bf16 --schedule seed --data data/slimpajama --micro-batch-size 8 --seq-len 2048
    python launch/train.py --schedule my_schedule.yaml --data data/tinystories --out runs/ts
    python launch/train.py --schedule auto --final tinystories --tokens-per-parameter 1 --data data/ts --seq-len 256
    python launch/train.py --save-every 100 --keep-last 3 --out runs/a        # checkpoints in runs/a/checkpoints
    deepspeed --num_gpus 1 launch/train.py --resume runs/a/checkpoints --out runs/a   # any ZeRO stage / rank count
    sbatch --nodes=2 launch/slurm/train.sbatch --zero-stage 3 --out runs/a      # Slurm: see launch/slurm/README.md
    DS_ACCELERATOR=cpu deepspeed --num_gpus 4 launch/train.py --zero-stage 3 --tp 2  # tensor parallel 2 x data parallel 2
    deepspeed --num_gpus 8 launch/train.py --zero-stage 3 --bf16 --seq-len 2048 --micro-batch-size 4 \
        --global-batch-tokens 1048576 --activation-checkpointing    # 1M tokens per step: 16 micro-steps per rank

(`--stage` is the old name of `--zero-stage` and still works.)

Batch: --global-batch-tokens (or training.global_batch_tokens, or a growth's global_batch_tokens for the stages
after it) sets the tokens per optimizer step; gradient accumulation is derived from it, the micro batch and the
data-parallel size. An accumulated step trains on the same sequences as one big batch would, so changing
--micro-batch-size or the number of ranks at the same global batch keeps the run (and a resume) the same.

This script is the command line and the logging around megababel.trainer.Trainer, which owns the loop. --schedule:
a preset (tiny, tinystories, seed) or a YAML/JSON file (format: megababel/schedule.py); it is validated, with the
data of every vocabulary stage, before anything is built. --schedule auto --final NAME_OR_FILE --tokens-per-parameter
X (or --tokens, --flops): the growth planner's schedule for that final model and budget, at this run's batch and
the data's vocabulary stages (what it picks and why is printed; tools/plan_growth.py writes it to a file). --data: a directory from tools/preprocess_data.py;
default: the embedded corpus (Python docstrings, own tokenizer, vocabulary stages 1000/2000/4000), built into
~/.cache/megababel on first use. Rank 0 writes OUT/log.csv, TensorBoard events in OUT/tensorboard, OUT/loss.png
(validation bits per byte, growth marked) and OUT/summary.txt.

Resume (--resume CKPT, or --resume auto: the newest complete checkpoint in OUT/checkpoints) is exact or refused:
a different schedule, --steps, --seq-len, global batch, --seed, precision, tokenizer or vocabulary ranking is an
error naming the field. A fresh run never writes into an OUT/checkpoints that holds another run's checkpoints.

SIGUSR1 or SIGTERM (Slurm's --signal before the time limit, preemption) makes every rank stop after the current
step, write a checkpoint and OUT/preempted, and exit 0. A NaN/inf loss stops the run with exit status 3, without
saving: the last good checkpoint stays the newest.

--tp N: tensor parallelism over groups of N consecutive ranks (megababel/parallel/), data parallelism (and ZeRO
partitioning) over world / N. Every model of the schedule must split evenly: checked before anything is built.
Checkpoints hold the unsharded model, so a run resumes under any --tp.
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from megababel.checkpoint.io import CheckpointError  # noqa: E402
from megababel.config import ConfigError  # noqa: E402
from megababel.data.readers import DataError  # noqa: E402
from megababel.data.tokenizer import TokenizerError  # noqa: E402
from megababel.train.trainer import Callback, RunConfig, Trainer, TrainingDiverged  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--zero-stage", "--stage", dest="zero_stage", type=int, default=0, choices=(0, 1, 2, 3),
                   help="ZeRO stage (default 0); --stage is the old name")
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel degree (default 1); data parallel = world / tp")
    p.add_argument("--schedule", default="tiny", help="preset name, YAML/JSON file, or auto (default: tiny)")
    auto = p.add_argument_group("--schedule auto: the growth planner (megababel/planner.py) picks the schedule")
    auto.add_argument("--final", default=None, help="preset or schedule file whose final model to reach")
    budget = auto.add_mutually_exclusive_group()
    budget.add_argument("--tokens", type=float, default=None, help="budget: scratch's training tokens")
    budget.add_argument("--tokens-per-parameter", type=float, default=None, help="budget: tokens per parameter")
    budget.add_argument("--flops", type=float, default=None, help="budget: training FLOPs")
    p.add_argument("--data", type=Path, default=None, help="dataset directory (default: the embedded corpus)")
    p.add_argument("--steps", type=int, default=None, help="override training.steps of the schedule")
    p.add_argument("--micro-batch-size", type=int, default=8,
                   help="sequences per rank per forward/backward (default 8)")
    p.add_argument("--global-batch-tokens", type=int, default=None,
                   help="tokens per optimizer step (overrides training.global_batch_tokens); gradient accumulation = "
                        "this / (micro batch x data-parallel ranks x seq len). Default: no accumulation")
    p.add_argument("--activation-checkpointing", action="store_true",
                   help="recompute each decoder layer's activations in backward: less memory, ~1/3 more compute")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--bf16", action="store_true", help="bf16 weights and compute, fp32 master weights (DeepSpeed)")
    p.add_argument("--offload-optimizer", action="store_true", help="ZeRO optimizer state in CPU memory")
    p.add_argument("--growth-spill-dir", type=Path, default=None,
                   help="at a growth, keep each rank's pieces of the old state in a memory-mapped file in DIR "
                        "instead of host memory (for machines where host memory is the limit)")
    p.add_argument("--gradient-clipping", type=float, default=None, help="override the DeepSpeed config's")
    p.add_argument("--ds-config", default=None, help="DeepSpeed JSON (default: ds_configs/zero<N>.json)")
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--save-every", type=int, default=0, help="checkpoint every N steps and at the end (0: never)")
    p.add_argument("--save-after-growth", action="store_true", help="also checkpoint right after each growth")
    p.add_argument("--keep-last", type=int, default=0, help="keep only the newest N checkpoints (0: all)")
    p.add_argument("--keep-generations", action="store_true", help="also keep each generation's last state (just "
                   "before each growth, and the final model) in OUT/generations: a model family "
                   "(tools/export_family.py)")
    p.add_argument("--resume", default=None,
                   help="checkpoint (step_N dir, or a checkpoints dir: its newest); 'auto': OUT/checkpoints if any")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads per rank")
    p.add_argument("--out", type=Path, default=Path("runs/demo"))
    p.add_argument("--wandb", default=None, metavar="PROJECT", help="also log to Weights & Biases (rank 0; "
                   "WANDB_MODE=offline works without a network; megababel/wandb_logger.py says what is logged)")
    p.add_argument("--wandb-run-name", default=None, help="the W&B run's display name (default: W&B's)")
    p.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)   # set by the deepspeed launcher
    args = p.parse_args(argv)
    if args.threads is not None and args.threads <= 0:
        p.error(f"--threads must be positive, got {args.threads}")
    return p, args


class RunLogger(Callback):
    """Rank 0's view of the run: progress bar, log.csv, TensorBoard, growth messages, loss plot, summary."""

    def __init__(self, out: Path, is_main: bool):
        self.out, self.is_main = out, is_main
        self.rows, self.events, self.val_points = [], [], []

    def say(self, message: str):
        if self.is_main:
            tqdm.write(message)

    def on_fit_start(self, trainer):
        run = trainer.run
        self.say(f"data {trainer.data_dir}; schedule {run.schedule}: {len(trainer.schedule.growths)} growths, "
                 f"{trainer.schedule.steps} steps; ZeRO-{run.zero_stage}, {trainer.world} rank(s) = TP {run.tp} x "
                 f"DP {trainer.dp_world}, {'bf16' if run.bf16 else 'fp32'}"
                 f"{', activation checkpointing' if run.activation_checkpointing else ''}")
        plans = [f"{sequences * run.seq_len:,} tokens ({run.micro_batch_size} x {accumulation} x {trainer.dp_world})"
                 for sequences, accumulation in trainer.batches]
        self.say("global batch per generation (micro batch x accumulation x DP): " + ", ".join(plans))
        if trainer.plan is not None:
            self.say(trainer.plan.explain())
        schedule = trainer.schedule
        if schedule.warmup_steps >= schedule.steps:     # e.g. --steps cut a preset short: fine for a smoke run
            self.say(f"warning: training.warmup_steps {schedule.warmup_steps} >= {schedule.steps} steps: the LR "
                     f"never reaches its peak {schedule.lr:g}; lower warmup_steps in the schedule for a real run")
        if getattr(trainer, "resumed_from", None):
            self.say(f"resumed from {trainer.resumed_from} at step {trainer.step}")
        if not self.is_main:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "preempted").unlink(missing_ok=True)
        log_path, start = self.out / "log.csv", trainer.step
        kept = []      # resuming into the same run: keep the rows before the checkpoint, drop the ones after it
        if start and log_path.is_file():
            kept = [row for row in csv.DictReader(open(log_path)) if int(row["step"]) < start]
        self.log_file = open(log_path, "w", newline="")
        self.log = csv.DictWriter(self.log_file, ["step", "tokens", "flops", "loss", "train_bpb", "generation",
                                                  "vocab", "parameters", "tokens_per_s", "lr"])
        self.log.writeheader()
        self.log.writerows(kept)
        from torch.utils.tensorboard import SummaryWriter
        self.board = SummaryWriter(str(self.out / "tensorboard"), purge_step=start)
        self.bar = tqdm(total=trainer.schedule.steps, initial=start, desc="training", unit="step",
                        dynamic_ncols=True, mininterval=1.0)

    def on_step_end(self, trainer, row):
        row = dict(row, loss=round(row["loss"], 6), train_bpb=round(row["train_bpb"], 5),
                   tokens_per_s=round(row["tokens_per_s"]), lr=f"{row['lr']:.4g}")
        self.rows.append(row)
        if not self.is_main:
            return
        self.log.writerow(row)
        self.log_file.flush()    # a checkpoint may follow this step: a kill right after it must not lose the row
        for key in ("loss", "train_bpb", "parameters", "tokens_per_s", "generation", "vocab"):
            self.board.add_scalar(f"train/{key}", row[key], row["step"])
        for info, group in zip(trainer.engine.groups, trainer.engine.engine.optimizer.param_groups):
            if info.decay:
                self.board.add_scalar(f"lr/generation_{info.generation}", group["lr"], row["step"])
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{row['loss']:.3f}", tok_s=row["tokens_per_s"], gen=row["generation"],
                             params=f"{row['parameters'] / 1e6:.2f}M", refresh=False)

    def on_validation(self, trainer, loss, bits_per_byte):
        self.val_points.append((trainer.tokens, bits_per_byte))
        if self.is_main:
            self.board.add_scalar("validation/bits_per_byte", bits_per_byte, trainer.step)

    def on_growth(self, trainer, record):
        config = record["config"]
        change = "" if record["loss_before"] is None else (
            f"; validation loss on the previous stage's tokens {record['loss_before']:.5f} -> "
            f"{record['loss_after']:.5f}")
        self.say(f"step {record['step']}: growth -> generation {record['generation']}: hidden {config.hidden_size}, "
                 f"ffn {config.intermediate_size}, layers {config.num_hidden_layers}, vocabulary {config.vocab_size}, "
                 f"{record['parameters']:,} parameters ({record['seconds']:.1f} s){change}")
        self.events.append((trainer.tokens, f"gen {record['generation']}: {record['parameters'] / 1e6:.2f}M, "
                                            f"V={config.vocab_size}"))
        if self.is_main:
            self.board.add_text("growth", f"step {record['step']}: generation {record['generation']}, {config}",
                                record["step"])

    def abort(self):
        """Close the progress bar and the logs of a run that stops with an error (the bar would print over it)."""
        if self.is_main and hasattr(self, "bar"):
            self.bar.close()
            self.log_file.close()
            self.board.close()

    def on_save(self, trainer, path):
        if self.is_main:
            self.log_file.flush()

    def on_fit_end(self, trainer, result):
        if result["preempted"]:
            if self.is_main:
                (self.out / "preempted").write_text(f"{trainer.step}\n")
            self.say(f"signal {trainer.stop_signal}: checkpoint saved at step {trainer.step}; stopping (resume "
                     f"with --resume auto, or requeue the Slurm job)")
        final = self.val_points[-1][1] if self.val_points else float("nan")
        summary = (f"final validation {final:.3f} bits/byte after {trainer.tokens:,} tokens, {trainer.flops:.3g} "
                   f"training FLOPs; model {trainer.parameters:,} parameters in {trainer.engine.model.generation + 1} "
                   f"generations, vocabulary {trainer.engine.model.config.vocab_size}")
        if not self.is_main:
            return
        self.bar.close()
        self.log_file.close()
        self.board.close()
        save_plot(self.rows, self.events, self.val_points, self.out / "loss.png")
        (self.out / "summary.txt").write_text(summary + "\n")
        print(summary)
        print(f"logs: {self.out / 'log.csv'}, plot: {self.out / 'loss.png'}")


def save_plot(rows, events, val_points, path: Path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no loss plot")
        return
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot([r["tokens"] / 1e6 for r in rows], [r["train_bpb"] for r in rows], lw=0.8, label="train (batch)")
    ax.plot([t / 1e6 for t, _ in val_points], [v for _, v in val_points], "o-", label="validation")
    for tokens, label in events:
        ax.axvline(tokens / 1e6, color="grey", ls="--", lw=0.8)
        ax.annotate(label, (tokens / 1e6, ax.get_ylim()[1]), rotation=90, va="top", ha="right", fontsize=8)
    ax.set_xlabel("training tokens (millions)")
    ax.set_ylabel("bits per byte")
    ax.set_title("megababel progressive training (growth events dashed)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def fail(p: argparse.ArgumentParser, message: str, status: int = 2):
    """One line on stderr (rank 0 only: every rank finds the same problem), then exit: no traceback."""
    if os.environ.get("RANK", "0") == "0":
        sys.stderr.write(f"{p.prog}: error: {message}\n")
    sys.exit(status)


def main(argv=None):
    p, args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    run = RunConfig(**{k: v for k, v in vars(args).items()
                       if k not in ("threads", "local_rank", "wandb", "wandb_run_name")})
    logger = RunLogger(args.out, is_main=os.environ.get("RANK", "0") == "0")
    callbacks = [logger]
    if args.wandb:
        try:
            import wandb  # noqa: F401
        except ImportError:
            fail(p, "--wandb needs the wandb package: pip install wandb (or pip install 'megababel[wandb]')")
        from megababel.train.wandb_logger import WandbLogger
        callbacks.append(WandbLogger(args.wandb, name=args.wandb_run_name))
    trainer = Trainer(run, callbacks=callbacks)
    try:
        trainer.setup()
        logger.is_main = trainer.rank == 0
        result = trainer.fit()
    except (ConfigError, DataError, CheckpointError, TokenizerError) as e:
        for callback in callbacks:
            callback.abort()
        fail(p, str(e))
    except TrainingDiverged as e:
        for callback in callbacks:
            callback.abort()
        fail(p, str(e), status=3)
    first = logger.val_points[0][1] if logger.val_points else float("nan")
    return dict(result, final_validation_bpb=result["validation_bpb"], initial_validation_bpb=first,
                losses=[r["loss"] for r in logger.rows])


if __name__ == "__main__":
    main()
    if dist.is_initialized():     # every rank leaves together: no rank tears down while another still talks
        dist.barrier()
        dist.destroy_process_group()

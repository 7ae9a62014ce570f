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

Batch: --global-batch-tokens (or training.global_batch_tokens, or a growth's global_batch_tokens for the
generations after it) sets the tokens per optimizer step; gradient accumulation is derived from it, the micro batch and the
data-parallel size. An accumulated step trains on the same sequences as one big batch would, so changing
--micro-batch-size or the number of ranks at the same global batch keeps the run (and a resume) the same.

This is the command line and the logging (train/run_logger.py) around train/trainer.py's Trainer, which owns the loop. --schedule:
a preset (tiny, tinystories, seed) or a YAML/JSON file (format: megababel/plan/schedule.py); it is validated, with the
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

Annealed family members: a --keep-generations run keeps each generation's last state in OUT/generations, taken at
its peak LR (a mid-run model). `--resume OUT/generations/step_..._genG --anneal-steps N --out OUT/anneal/genG`, with
the run's other flags, trains a copy N steps more at the generation's shape, its LRs decaying to their minimum
(Schedule.branch); tools/export_family.py then exports OUT/anneal/genG as member G and counts its FLOPs.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from megababel.config import ConfigError
from megababel.data.readers import DataError
from megababel.data.tokenizer import TokenizerError


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--zero-stage", "--stage", dest="zero_stage", type=int, default=0, choices=(0, 1, 2, 3),
                   help="ZeRO stage (default 0); --stage is the old name")
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel degree (default 1); data parallel = world / tp")
    p.add_argument("--schedule", default="tiny", help="preset name, YAML/JSON file, or auto (default: tiny)")
    auto = p.add_argument_group("--schedule auto: the growth planner (megababel/plan/planner.py) picks the schedule")
    auto.add_argument("--final", default=None, help="preset or schedule file whose final model to reach")
    budget = auto.add_mutually_exclusive_group()
    budget.add_argument("--tokens", type=float, default=None, help="budget: scratch's training tokens")
    budget.add_argument("--tokens-per-parameter", type=float, default=None, help="budget: tokens per parameter")
    budget.add_argument("--flops", type=float, default=None, help="budget: training FLOPs")
    p.add_argument("--data", nargs="+", default=None, metavar="[NAME=]DIR",
                   help="dataset directory (default: the embedded corpus), or several as NAME=DIR, which the "
                        "schedule's `data` mixture weights (validation: the first)")
    p.add_argument("--steps", type=int, default=None, help="override training.steps of the schedule")
    p.add_argument("--micro-batch-size", type=int, default=8,
                   help="sequences per rank per forward/backward (default 8)")
    p.add_argument("--global-batch-tokens", type=int, default=None,
                   help="tokens per optimizer step (overrides training.global_batch_tokens); gradient accumulation = "
                        "this / (micro batch x data-parallel ranks x seq len). Default: no accumulation")
    p.add_argument("--activation-checkpointing", action="store_true",
                   help="recompute each decoder layer's activations in backward: less memory, ~1/3 more compute")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile each decoder layer, anew after every growth and on resume (the first steps "
                        "of each generation pay the compile time, which the log reports)")
    p.add_argument("--fill-micro-batch", action="store_true",
                   help="each generation smaller than the final takes a larger micro batch (a power-of-two multiple "
                        "of --micro-batch-size whose activations fit in the final model's), with less gradient "
                        "accumulation: the same tokens per step in fewer, larger micro-steps")
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
    p.add_argument("--anneal-steps", type=int, default=0, metavar="N",
                   help="a decay branch: from the --resume checkpoint (a family member, e.g. RUN/generations/"
                        "step_..._genG), N more steps with no growth and every LR falling linearly to min_lr_ratio x "
                        "its peak, saved in this --out; the run it branches off is untouched")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads per rank")
    p.add_argument("--out", type=Path, default=Path("runs/demo"))
    p.add_argument("--wandb", default=None, metavar="PROJECT", help="also log to Weights & Biases (rank 0; "
                   "WANDB_MODE=offline works without a network; megababel/train/wandb_logger.py says what is logged)")
    p.add_argument("--wandb-run-name", default=None, help="the W&B run's display name (default: W&B's)")
    p.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)   # set by the deepspeed launcher
    args = p.parse_args(argv)
    if args.threads is not None and args.threads <= 0:
        p.error(f"--threads must be positive, got {args.threads}")
    return p, args


def fail(p: argparse.ArgumentParser, message: str, status: int = 2):
    """One line on stderr (rank 0 only: every rank finds the same problem), then exit: no traceback."""
    if os.environ.get("RANK", "0") == "0":
        sys.stderr.write(f"{p.prog}: error: {message}\n")
    sys.exit(status)


def data_argument(p: argparse.ArgumentParser, values: list[str] | None) -> Path | dict | None:
    """--data DIR, or NAME=DIR ...: a Path, or {name: Path} in the order given."""
    if values is None:
        return None
    if len(values) == 1 and "=" not in values[0]:
        return Path(values[0])
    named = {}
    for value in values:
        name, sep, directory = value.partition("=")
        if not sep or not name or not directory or name in named:
            fail(p, f"--data {value}: give one DIR, or several NAME=DIR with distinct names (e.g. --data "
                    f"wiki=data/wiki stories=data/stories)")
        named[name] = Path(directory)
    return named


def main(argv=None):
    p, args = parse_args(argv)
    args.data = data_argument(p, args.data)
    # imported after parsing: --help and a bad flag answer without torch's ~2 s import
    import torch

    from megababel.checkpoint.io import CheckpointError
    from megababel.train.run_logger import RunLogger
    from megababel.train.trainer import RunConfig, Trainer, TrainingDiverged
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


def entry_point(argv=None):
    """`megababel-train`, `python -m megababel.train`, `deepspeed --module megababel.train`, launch/train.py: train,
    then every rank leaves together (no rank tears down while another still talks)."""
    main(argv)
    import torch.distributed as dist
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()

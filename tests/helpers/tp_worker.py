"""One rank of a small tensor-parallel progressive run through the Trainer, for tests.

    python tests/helpers/tp_worker.py STAGE TP OUT.pt [--save-every K --checkpoints DIR] [--resume CKPT] [--clip C]
                                             [--micro M] [--activation-checkpointing] [--bf16]

Schedule: width + FFN + vocabulary growth (1000 -> 2000) at step 4, depth at step 8, every count divisible by 2 so
TP=2 can split it; the embedded corpus, global batch of 4 sequences of 32 tokens (all TP ranks of a data-parallel
group see the same slice; --micro M: micro-batches of M per data-parallel rank, accumulated). Rank 0 saves the losses, the loss on a fixed validation batch around each growth, and
the unsharded state (weights, moments, steps) right after each growth and at the end."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from megababel.train.trainer import Callback, RunConfig, Trainer

SCHEDULE = dict(
    model=dict(hidden_size=64, head_dim=16, num_hidden_layers=2, multiple_of=32, vocab_size=1000,
               num_key_value_heads=2),
    training=dict(steps=12, lr=3e-3, warmup_steps=2, weight_decay=0.1),
    growths=[dict(at_step=4, hidden_size=128, intermediate_size=256, vocab_size=2000),
             dict(at_step=8, num_hidden_layers=4, layer_positions="interleave")])
GLOBAL_BATCH, SEQ = 4, 32


def unsharded(state) -> tuple:
    return dict(state.values), dict(state.moments), dict(state.group_steps)


class Recorder(Callback):
    def __init__(self):
        self.record = dict(losses={}, growth=[])

    def fixed_loss(self, trainer) -> float:
        return trainer.engine.evaluate(trainer.data.val_batches[:1])

    def on_step_end(self, trainer, row):
        self.record["losses"][row["step"]] = row["loss"]

    def on_before_growth(self, trainer, growth):
        self.before = self.fixed_loss(trainer)

    def on_growth(self, trainer, record):
        values, moments, steps = unsharded(trainer.engine.state())
        self.record["growth"].append(dict(before=self.before, after=self.fixed_loss(trainer), values=values,
                                          moments=moments, steps=steps))

    def on_fit_end(self, trainer, result):
        self.record["final"] = unsharded(trainer.engine.state())


def main():
    p = argparse.ArgumentParser()
    p.add_argument("stage", type=int)
    p.add_argument("tp", type=int)
    p.add_argument("out", type=Path)
    p.add_argument("--save-every", type=int, default=0)
    p.add_argument("--checkpoints", type=Path, default=None, help="run folder (its checkpoints/ subfolder)")
    p.add_argument("--resume", type=Path, default=None)
    p.add_argument("--clip", type=float, default=None)
    p.add_argument("--micro", type=int, default=None)
    p.add_argument("--activation-checkpointing", action="store_true")
    p.add_argument("--bf16", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(1)
    dp_world = int(os.environ.get("WORLD_SIZE", "1")) // args.tp
    recorder = Recorder()
    run = RunConfig(schedule=SCHEDULE, zero_stage=args.stage, tp=args.tp,
                    micro_batch_size=args.micro or GLOBAL_BATCH // dp_world, global_batch_tokens=GLOBAL_BATCH * SEQ,
                    activation_checkpointing=args.activation_checkpointing, bf16=args.bf16, seq_len=SEQ, eval_every=0, gradient_clipping=args.clip, save_every=args.save_every,
                    resume=args.resume, out=args.checkpoints or args.out.with_suffix(".run"))
    trainer = Trainer(run, callbacks=[recorder])
    trainer.setup().fit()
    if trainer.rank == 0:
        torch.save(recorder.record, args.out.with_name(args.out.name + ".tmp"))
        os.replace(args.out.with_name(args.out.name + ".tmp"), args.out)
    torch.distributed.barrier()
    sys.stdout.flush()
    os._exit(0)      # see ds_worker.py: skip interpreter teardown once results are written


if __name__ == "__main__":
    main()

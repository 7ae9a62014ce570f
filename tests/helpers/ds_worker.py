"""One rank of a small progressive DeepSpeed run through the Trainer, for tests:

    python tests/helpers/ds_worker.py STAGE OUT.pt [MICRO GLOBAL]

Schedule: width + FFN growth at step 4, depth growth at step 8 (no vocabulary change, so every growth is exact), on
the embedded corpus (vocabulary stage 1000), global batch of 4 sequences of 32 tokens over however many ranks run;
or GLOBAL sequences per step made of micro-batches of MICRO per rank (gradient accumulation).
Rank 0 saves the losses, the loss on a fixed validation batch before/after each growth, and the full Adam moments
before/after each growth."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from megababel.train.trainer import Callback, RunConfig, Trainer

SCHEDULE = dict(
    model=dict(hidden_size=64, head_dim=16, num_hidden_layers=2, multiple_of=32, vocab_size=1000,
               num_key_value_heads=2),
    training=dict(steps=12, lr=3e-3, warmup_steps=2, weight_decay=0.1),
    growths=[dict(at_step=4, hidden_size=96, intermediate_size=256),
             dict(at_step=8, num_hidden_layers=4, layer_positions="interleave")])
GLOBAL_BATCH, SEQ = 4, 32


class Recorder(Callback):
    def __init__(self):
        self.record = dict(losses=[], growth=[])

    def fixed_loss(self, trainer) -> float:
        return trainer.engine.evaluate(trainer.data.val_batches[:1])

    def on_step_end(self, trainer, row):
        self.record["losses"].append(row["loss"])

    def on_before_growth(self, trainer, growth):
        self.pending = dict(before=self.fixed_loss(trainer), moments_before=trainer.engine.state().moments)

    def on_growth(self, trainer, record):
        state = trainer.engine.state()
        self.record["growth"].append(dict(self.pending, after=self.fixed_loss(trainer), steps=state.group_steps,
                                          moments_after=state.moments))


def main():
    stage, out = int(sys.argv[1]), Path(sys.argv[2])
    torch.set_num_threads(1)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    micro, global_batch = map(int, sys.argv[3:5]) if len(sys.argv) > 3 else (GLOBAL_BATCH // world, GLOBAL_BATCH)
    recorder = Recorder()
    trainer = Trainer(RunConfig(schedule=SCHEDULE, zero_stage=stage, micro_batch_size=micro,
                                global_batch_tokens=global_batch * SEQ, seq_len=SEQ, eval_every=0,
                                out=out.with_suffix(".run")), callbacks=[recorder])
    trainer.setup().fit()
    if trainer.rank == 0:
        torch.save(recorder.record, out.with_name(out.name + ".tmp"))
        os.replace(out.with_name(out.name + ".tmp"), out)
    torch.distributed.barrier()
    # Leave without interpreter teardown: a gloo/DeepSpeed communication thread destroyed at exit can abort the
    # process ("terminate called without an active exception") after the results are safely written.
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()

"""One rank of a sharded growth, for tests: the engine's state just before and just after each growth.

    python tests/helpers/growth_worker.py ZERO_STAGE TP OUT.pt [--bf16] [--spill-dir DIR] [--head-dim] [--kv-heads N]

A small GQA model trains 2 steps (so Adam has moments), grows everything at once (width, FFN, vocabulary, depth
interleaved), trains a step, then grows by copied layers and FFN. Rank 0 saves the unsharded state (weights,
moments, layout) before and after each growth; the test grows the "before" state with the unsharded growth and
compares."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from megababel.engine import sharded_growth
from megababel.engine.deepspeed_config import load_ds_config
from megababel.engine.growing_engine import GrowingEngine
from megababel.parallel import TensorParallel
from megababel.engine import init_distributed
from megababel.plan.schedule import parse_schedule

SCHEDULE = dict(
    model=dict(hidden_size=64, head_dim=16, num_hidden_layers=2, intermediate_size=192, vocab_size=1000,
               num_key_value_heads=2),
    training=dict(steps=8, lr=3e-3, warmup_steps=1, weight_decay=0.1),
    growths=[dict(at_step=2, hidden_size=128, intermediate_size=256, vocab_size=2000, num_hidden_layers=4,
                  layer_positions="interleave"),
             dict(at_step=3, num_hidden_layers=6, depth_init="copy", intermediate_size=320)])
# head_dim 16 -> 32 with everything else (4 heads stay 4, each twice as wide), then head_dim 64 alone (the attention
# width, 256, then exceeds hidden_size, 128)
HEAD_DIM_SCHEDULE = dict(
    model=dict(hidden_size=64, head_dim=16, num_hidden_layers=2, intermediate_size=192, vocab_size=1000,
               num_key_value_heads=2),
    training=dict(steps=8, lr=3e-3, warmup_steps=1, weight_decay=0.1),
    growths=[dict(at_step=2, head_dim=32, hidden_size=128, intermediate_size=256, vocab_size=2000,
                  num_hidden_layers=4, layer_positions="interleave"),
             dict(at_step=3, head_dim=64)])
SEED = 7


def snapshot(engine) -> dict:
    state = engine.state()
    return dict(values=dict(state.values), moments=dict(state.moments), layout=state.layout,
                generation=state.generation, config=state.config)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("stage", type=int)
    p.add_argument("tp", type=int)
    p.add_argument("out", type=Path)
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--spill-dir", default=None)
    p.add_argument("--head-dim", action="store_true", help="the head_dim growth schedule")
    p.add_argument("--kv-heads", type=int, default=None, help="override the schedule's num_key_value_heads")
    args = p.parse_args()
    torch.set_num_threads(1)
    rank, world = init_distributed()
    tp = TensorParallel(args.tp) if args.tp > 1 else None
    spec = HEAD_DIM_SCHEDULE if args.head_dim else SCHEDULE
    if args.kv_heads:
        spec = dict(spec, model=dict(spec["model"], num_key_value_heads=args.kv_heads))
    schedule = parse_schedule(spec, 16)
    engine = GrowingEngine(schedule.model, load_ds_config(args.stage, 2, 1, world // args.tp, bf16=args.bf16),
                           schedule, seed=SEED, tp=tp, growth_spill_dir=args.spill_dir)
    spills = []          # count the growths whose pieces went to a mapped file
    real_spill = sharded_growth.LocalPieces._spill
    sharded_growth.LocalPieces._spill = lambda self, directory: (spills.append(directory), real_spill(self, directory))
    tokens = torch.randint(0, 1000, (2, 17), generator=torch.Generator().manual_seed(rank // args.tp))
    x, y = tokens[:, :-1], tokens[:, 1:]
    records, step = [], 0
    for growth in schedule.growths:
        while step < growth.at_step:
            engine.train_step(x, y, step)
            step += 1
        before = snapshot(engine)
        engine.grow(growth, step)
        records.append(dict(before=before, after=snapshot(engine), event=growth.event, spilled=len(spills)))
    if rank == 0:
        torch.save(records, args.out)
    torch.distributed.barrier()
    sys.stdout.flush()
    os._exit(0)      # see ds_worker.py: skip interpreter teardown once results are written


if __name__ == "__main__":
    main()

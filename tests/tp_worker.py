"""One rank of a small tensor-parallel progressive run, for tests.

    python tests/tp_worker.py STAGE TP OUT.pt [--steps N] [--save-at K CKPT_DIR] [--resume CKPT_DIR]

Schedule: width + FFN + vocabulary growth at step 4, depth at step 8; every count divisible by 2 so TP=2 can split
it. Global batch of 4 sequences from a fixed generator, data-parallel rank r trains on its contiguous slice (all TP
ranks of a data-parallel group see the same slice). Rank 0 saves the losses, the loss on a fixed batch around each
growth, and the unsharded weights, moments and steps right after the first growth and at the end."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from megababel.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from megababel.deepspeed_config import load_ds_config  # noqa: E402
from megababel.engine import GrowingEngine  # noqa: E402
from megababel.parallel import init_distributed  # noqa: E402
from megababel.schedule import parse_schedule  # noqa: E402
from megababel.parallel.tensor_parallel import TensorParallel  # noqa: E402

SCHEDULE = dict(
    model=dict(hidden_size=64, head_dim=16, num_hidden_layers=2, multiple_of=32, vocab_size=96, num_key_value_heads=2),
    training=dict(steps=12, lr=3e-3, warmup_steps=2, weight_decay=0.1),
    growths=[dict(at_step=4, hidden_size=128, intermediate_size=256, vocab_size=128),
            dict(at_step=8, num_hidden_layers=4, layer_positions="interleave")])
GLOBAL_BATCH, SEQ = 4, 32


def main():
    p = argparse.ArgumentParser()
    p.add_argument("stage", type=int)
    p.add_argument("tp", type=int)
    p.add_argument("out", type=Path)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--save-at", nargs=2, default=None)
    p.add_argument("--resume", type=Path, default=None)
    p.add_argument("--clip", type=float, default=None)
    args = p.parse_args()
    torch.set_num_threads(1)
    rank, world = init_distributed()
    tp = TensorParallel(args.tp) if args.tp > 1 else None
    dp_rank, dp_world = (tp.dp_rank, tp.dp_size) if tp else (rank, world)
    schedule = parse_schedule(SCHEDULE, GLOBAL_BATCH * SEQ)
    micro = GLOBAL_BATCH // dp_world
    ds_config = load_ds_config(args.stage, micro, 1, dp_world, bf16=False, gradient_clipping=args.clip)
    start = 0
    if args.resume:
        saved = load_checkpoint(args.resume)
        start = saved["step"]
        engine = GrowingEngine(saved["config"], ds_config, schedule, seed=0, layout=saved["layout"],
                               values=saved["values"], generation=saved["generation"], groups=saved["groups"],
                               moments=saved["moments"], steps=saved["steps"], counters=saved["counters"], tp=tp)
    else:
        engine = GrowingEngine(schedule.model, ds_config, schedule, seed=0, tp=tp)
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, 96, (GLOBAL_BATCH, SEQ + 1), generator=g) for _ in range(schedule.steps)]
    fixed = [(b[:, :-1], b[:, 1:]) for b in torch.randint(0, 96, (1, 2, SEQ + 1), generator=g)]
    record = dict(losses={}, growth=[])
    pending = [s for s in schedule.growths if s.at_step >= start]
    for step in range(start, args.steps):
        if args.save_at and step == int(args.save_at[0]):
            save_checkpoint(args.save_at[1], engine, dict(step=step))
        if pending and pending[0].at_step == step:
            growth = pending.pop(0)
            before = engine.evaluate(fixed)
            engine.grow(growth.event, step)
            after = engine.evaluate(fixed)
            values, moments, steps = engine.gather()
            record["growth"].append(dict(before=before, after=after, values=values, moments=moments, steps=steps))
        mine = batches[step][dp_rank * micro:(dp_rank + 1) * micro]
        record["losses"][step] = engine.train_step(mine[:, :-1], mine[:, 1:], step)
    record["final"] = engine.gather()
    if rank == 0:
        torch.save(record, args.out.with_name(args.out.name + ".tmp"))
        os.replace(args.out.with_name(args.out.name + ".tmp"), args.out)
    torch.distributed.barrier()
    sys.stdout.flush()
    os._exit(0)      # see ds_worker.py: skip interpreter teardown once results are written


if __name__ == "__main__":
    main()

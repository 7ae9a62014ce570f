"""One rank of a small progressive DeepSpeed run, for tests: python tests/ds_worker.py STAGE OUT.pt [STEPS].

Schedule: width + FFN growth at step 4, depth growth at step 8 (no vocabulary change, so every growth is exact).
Global batch of 4 sequences from a fixed generator; rank r trains on its contiguous slice. Rank 0 saves losses,
the loss on a fixed batch before/after each growth, and the full Adam moments before/after each growth."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from megababel.deepspeed_config import load_ds_config  # noqa: E402
from megababel.engine import GrowingEngine  # noqa: E402
from megababel.parallel import init_distributed  # noqa: E402
from megababel.schedule import parse_schedule  # noqa: E402

SCHEDULE = dict(
    model=dict(hidden_size=64, head_dim=16, num_hidden_layers=2, multiple_of=32, vocab_size=96, num_key_value_heads=2),
    training=dict(steps=12, lr=3e-3, warmup_steps=2, weight_decay=0.1),
    growths=[dict(at_step=4, hidden_size=96, intermediate_size=256),
            dict(at_step=8, num_hidden_layers=4, layer_positions="interleave")])
GLOBAL_BATCH, SEQ = 4, 32


def main():
    stage, out = int(sys.argv[1]), Path(sys.argv[2])
    torch.set_num_threads(1)
    rank, world = init_distributed()
    schedule = parse_schedule(SCHEDULE, GLOBAL_BATCH * SEQ)
    micro = GLOBAL_BATCH // world
    engine = GrowingEngine(schedule.model, load_ds_config(stage, micro, 1, world, bf16=False), schedule, seed=0)
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, 96, (GLOBAL_BATCH, SEQ + 1), generator=g) for _ in range(schedule.steps)]
    fixed = [(b[:, :-1], b[:, 1:]) for b in torch.randint(0, 96, (1, 2, SEQ + 1), generator=g)]
    record = dict(losses=[], growth=[])
    pending = list(schedule.growths)
    for step in range(schedule.steps):
        if pending and pending[0].at_step == step:
            growth = pending.pop(0)
            before = engine.evaluate(fixed)
            _, moments_before, _ = engine.gather()
            engine.grow(growth.event, step)
            _, moments_after, steps = engine.gather()
            record["growth"].append(dict(before=before, after=engine.evaluate(fixed), steps=steps,
                                         moments_before=moments_before, moments_after=moments_after))
        mine = batches[step][rank * micro:(rank + 1) * micro]
        record["losses"].append(engine.train_step(mine[:, :-1], mine[:, 1:], step))
    if rank == 0:
        torch.save(record, out.with_name(out.name + ".tmp"))
        os.replace(out.with_name(out.name + ".tmp"), out)
    torch.distributed.barrier()
    # Leave without interpreter teardown: a gloo/DeepSpeed communication thread destroyed at exit can abort the
    # process ("terminate called without an active exception") after the results are safely written.
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()

"""Five growth events in one process (ZeRO stage argv[1]); prints JSON: RSS after each event and the model's size."""
from __future__ import annotations

import gc
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from megababel import GrowthEvent  # noqa: E402
from megababel.counters import count_parameters  # noqa: E402
from megababel.deepspeed_config import load_ds_config  # noqa: E402
from megababel.engine import GrowingEngine  # noqa: E402
from megababel.parallel import init_distributed  # noqa: E402
from megababel.schedule import parse_schedule  # noqa: E402


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def main():
    stage = int(sys.argv[1])
    torch.set_num_threads(1)
    init_distributed()
    spec = dict(model=dict(hidden_size=256, head_dim=64, num_hidden_layers=2, vocab_size=8000),
                training=dict(steps=100))
    schedule = parse_schedule(spec, 64)
    engine = GrowingEngine(schedule.model, load_ds_config(stage, 1, 1, 1, bf16=False), schedule, seed=0)
    x = torch.randint(0, 8000, (1, 17))
    engine.train_step(x[:, :-1], x[:, 1:], 0)
    record = []
    for k in range(1, 6):
        engine.grow(GrowthEvent(intermediate_size=engine.model.config.intermediate_size + 64), step=k)
        engine.train_step(x[:, :-1], x[:, 1:], k)
        gc.collect()
        params = count_parameters(engine.model).total
        from deepspeed.runtime.engine import DeepSpeedEngine
        from megababel.model import Llama
        alive = dict(engines=sum(isinstance(o, DeepSpeedEngine) for o in gc.get_objects()),
                     models=sum(isinstance(o, Llama) for o in gc.get_objects()))
        record.append(dict(rss=rss(), parameters=params, **alive))
    print("RESULT " + json.dumps(record))


if __name__ == "__main__":
    main()

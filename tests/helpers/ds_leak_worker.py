"""Five growth events in one process through the Trainer (ZeRO stage argv[1]); prints JSON: RSS after each growth
(and the training step that follows it), the model's size, and how many engines and models are alive."""
from __future__ import annotations

import gc
import json
import os
import sys
from pathlib import Path

import torch

from megababel.model.counters import count_parameters
from megababel.train.trainer import Callback, RunConfig, Trainer

# FFN +64 at each of steps 1..5 (the embedded corpus' largest vocabulary stage keeps the model big enough for the
# RSS bound of the test to mean something)
SCHEDULE = dict(model=dict(hidden_size=512, head_dim=64, num_hidden_layers=2, intermediate_size=1024,
                           vocab_size=4000),
                training=dict(steps=6, warmup_steps=1),
                growths=[dict(at_step=k, intermediate_size=1024 + 64 * k) for k in range(1, 6)])


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class LeakProbe(Callback):
    def __init__(self):
        self.record = []

    def on_step_end(self, trainer, row):
        if row["step"] == 0:
            return
        gc.collect()
        from deepspeed.runtime.engine import DeepSpeedEngine
        from megababel.model.llama import Llama
        alive = dict(engines=sum(isinstance(o, DeepSpeedEngine) for o in gc.get_objects()),
                     models=sum(isinstance(o, Llama) for o in gc.get_objects()))
        self.record.append(dict(rss=rss(), parameters=count_parameters(trainer.engine.model).total, **alive))


def main():
    torch.set_num_threads(1)
    probe = LeakProbe()
    trainer = Trainer(RunConfig(schedule=SCHEDULE, zero_stage=int(sys.argv[1]), micro_batch_size=1, seq_len=16,
                                eval_every=0, out=Path(sys.argv[2])), callbacks=[probe])
    trainer.setup().fit()
    print("RESULT " + json.dumps(probe.record))


if __name__ == "__main__":
    main()

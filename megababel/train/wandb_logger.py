"""Weights & Biases logging for a Trainer run: what OUT/log.csv holds, plus growth events, on rank 0.

    trainer = Trainer(run, callbacks=[WandbLogger("my-project", name="ts-grow")])
    python launch/train.py --wandb my-project [--wandb-run-name NAME]       # the launcher's flags
    WANDB_MODE=offline python launch/train.py --wandb p ...                 # no network; `wandb sync OUT/wandb/...`

Per step: train/loss, train/bits_per_byte, train/tokens_per_s, train/parameters, train/generation, train/vocab,
train/tokens, train/flops, and lr/generation_<k> for every generation alive; per validation: validation/loss and
validation/bits_per_byte; per growth: growth/generation, growth/parameters, growth/loss_before, growth/loss_after
and growth/seconds at the growth's step, and a row of the "growths" table (step, generation, hidden, FFN, layers,
vocabulary, parameters). The run's config is the RunConfig and the resolved schedule. The run id is kept in
OUT/wandb_run_id, so a run resumed into the same OUT continues the same W&B run. wandb is imported only here, only
when asked for.
"""
from __future__ import annotations

import uuid
from dataclasses import asdict
from pathlib import Path

from megababel.train.callbacks import Callback

RUN_ID_FILE = "wandb_run_id"


class WandbLogger(Callback):
    def __init__(self, project: str, name: str | None = None):
        self.project, self.name, self.run = project, name, None
        self.growths = []

    def on_fit_start(self, trainer):
        if trainer.rank != 0:
            return
        import wandb
        out = Path(trainer.run.out)
        out.mkdir(parents=True, exist_ok=True)
        id_file = out / RUN_ID_FILE
        run_id = id_file.read_text().strip() if id_file.is_file() else uuid.uuid4().hex[:8]
        config = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(trainer.run).items()}
        self.run = wandb.init(project=self.project, name=self.name, id=run_id, resume="allow", dir=str(out),
                              config=dict(config, schedule=trainer.identity.schedule, world=trainer.world))
        id_file.write_text(run_id + "\n")
        self.run.define_metric("*", step_metric="train/step")

    def _log(self, values: dict, step: int):
        self.run.log(dict(values, **{"train/step": step}))

    def on_step_end(self, trainer, row):
        if self.run is None:
            return
        values = {f"train/{key}": row[key] for key in ("loss", "tokens_per_s", "parameters", "generation", "vocab",
                                                       "tokens", "flops")}
        values["train/bits_per_byte"] = row["train_bpb"]
        for info, lr in trainer.engine.param_group_lrs():
            if info.decay:
                values[f"lr/generation_{info.generation}"] = lr
        self._log(values, row["step"])

    def on_validation(self, trainer, loss, bits_per_byte):
        if self.run is not None:
            self._log({"validation/loss": loss, "validation/bits_per_byte": bits_per_byte}, trainer.step)

    def on_growth(self, trainer, record):
        if self.run is None:
            return
        import wandb
        config = record["config"]
        self.growths.append([record["step"], record["generation"], config.hidden_size, config.intermediate_size,
                             config.num_hidden_layers, config.vocab_size, record["parameters"]])
        values = {f"growth/{key}": record[key] for key in ("generation", "parameters", "seconds")}
        values.update({f"growth/{key}": record[key] for key in ("loss_before", "loss_after")
                       if record[key] is not None})
        values["growths"] = wandb.Table(columns=["step", "generation", "hidden", "ffn", "layers", "vocabulary",
                                                 "parameters"], data=list(self.growths))
        self._log(values, record["step"])

    def abort(self):
        """A run that stops with an error: mark the W&B run failed."""
        if self.run is not None:
            self.run.finish(exit_code=1)
            self.run = None

    def on_fit_end(self, trainer, result):
        if self.run is None:
            return
        self.run.summary.update(dict(final_step=result["step"], preempted=result["preempted"],
                                     final_validation_bits_per_byte=result["validation_bpb"]))
        self.run.finish()
        self.run = None

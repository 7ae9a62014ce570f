"""RunConfig: everything a run is given (the launcher's flags, one field each), checked before anything is built."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from megababel.config import ConfigError


@dataclass
class RunConfig:
    """Everything a run is given. Field names are the launcher's flags (seq_len <-> --seq-len)."""
    schedule: str | Path | dict = "tiny"      # preset name, YAML/JSON file, a schedule dict, or "auto" (planner)
    final: str | Path | None = None           # --schedule auto: a preset/file whose final model to plan for
    tokens: float | None = None               # --schedule auto: the budget, as scratch's training tokens,
    tokens_per_parameter: float | None = None  # or tokens per parameter of the final model,
    flops: float | None = None                # or training FLOPs
    data: Path | dict | None = None           # tools/preprocess_data.py output, or {name: directory} of several
                                              # (a schedule's `data` mixes them); None: the embedded corpus
    steps: int | None = None                  # overrides the schedule's training.steps
    micro_batch_size: int = 8                 # sequences per data-parallel rank per forward/backward
    global_batch_tokens: int | None = None    # overrides training.global_batch_tokens (tokens per optimizer step)
    seq_len: int = 128
    zero_stage: int = 0
    tp: int = 1
    bf16: bool = False                        # DeepSpeed bf16: bf16 weights and compute, fp32 master weights
    offload_optimizer: bool = False
    activation_checkpointing: bool = False    # recompute each decoder layer's activations in backward
    compile: bool = False                     # torch.compile each decoder layer, anew for every generation
    fill_micro_batch: bool = False            # smaller generations: larger micro batches, less accumulation
    growth_spill_dir: Path | None = None      # at a growth, this rank's old state pieces in a mapped file there
    gradient_clipping: float | None = None    # None: the DeepSpeed config's
    ds_config: str | None = None
    seed: int = 0                             # initial weights, growth's random values and data order
    eval_every: int = 50                      # 0: no validation by the trainer (a callback may do its own)
    eval_batches: int = 4
    save_every: int = 0
    save_after_growth: bool = False
    keep_last: int = 0                        # 0: keep every checkpoint
    keep_generations: bool = False            # also keep each generation's last state in OUT/generations: the
                                              # model just before each growth, and the final one (a model family)
    resume: Path | str | None = None          # a checkpoint, a checkpoints directory, or "auto"
    anneal_steps: int = 0                     # > 0: a decay branch of this many steps from the --resume checkpoint
                                              # (no more growth, LRs decaying to their minimum), into its own --out
    out: Path = Path("runs/demo")

    def check(self):
        for name in ("micro_batch_size", "seq_len", "eval_batches", "tp"):
            _require_int(name, getattr(self, name), minimum=1)
        for name in ("eval_every", "save_every", "keep_last", "seed", "anneal_steps"):
            _require_int(name, getattr(self, name), minimum=0)
        for name in ("compile", "fill_micro_batch"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"--{name.replace('_', '-')} ({name}) must be true or false, got "
                                  f"{getattr(self, name)!r}")
        if not isinstance(self.keep_generations, bool):
            raise ConfigError(f"--keep-generations (keep_generations) must be true or false, got "
                              f"{self.keep_generations!r}")
        for name in ("steps", "global_batch_tokens"):
            if getattr(self, name) is not None:
                _require_int(name, getattr(self, name), minimum=1)
        if self.anneal_steps and self.resume is None:
            raise ConfigError("--anneal-steps trains a decay branch from a checkpoint: give --resume with the "
                              "checkpoint to branch from (e.g. RUN/generations/step_..._genG), and an --out of its own")
        if self.anneal_steps and self.keep_generations:
            raise ConfigError("--keep-generations with --anneal-steps: a decay branch has one generation; its last "
                              "checkpoint is the annealed member")
        if self.zero_stage not in (0, 1, 2, 3) or isinstance(self.zero_stage, bool):
            raise ConfigError(f"--zero-stage must be 0, 1, 2 or 3, got {self.zero_stage!r}")
        if self.offload_optimizer and self.zero_stage == 0:
            raise ConfigError("--offload-optimizer needs --zero-stage 1, 2 or 3")
        if self.gradient_clipping is not None and not (math.isfinite(self.gradient_clipping)
                                                       and self.gradient_clipping >= 0):
            raise ConfigError(f"--gradient-clipping must be a finite number >= 0, got {self.gradient_clipping}")
        if self.growth_spill_dir is not None and not (Path(self.growth_spill_dir).is_dir()
                                                      and os.access(self.growth_spill_dir, os.W_OK)):
            raise ConfigError(f"--growth-spill-dir {self.growth_spill_dir}: not a writable directory (create it, on "
                              f"a local disk with room for this rank's share of the model state)")
        budgets = [f for f in ("tokens", "tokens_per_parameter", "flops") if getattr(self, f) is not None]
        for name in budgets:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value)
                                                                                      and value > 0):
                raise ConfigError(f"--{name.replace('_', '-')} must be a finite number > 0, got {value!r}")
        if self.schedule == "auto":
            if self.final is None or len(budgets) != 1:
                raise ConfigError("--schedule auto plans a growth schedule for a final model and a budget: give "
                                  "--final (a preset or schedule file whose final model to reach) and one of "
                                  "--tokens, --tokens-per-parameter, --flops")
            if self.steps is not None:
                raise ConfigError("--steps with --schedule auto: the planner sets the steps from the budget; give "
                                  "--tokens instead")
        elif self.final is not None or budgets:
            raise ConfigError(f"--final / --{(budgets or ['tokens'])[0].replace('_', '-')} are for --schedule auto "
                              f"(got --schedule {self.schedule})")
        for name, directory in (self.data.items() if isinstance(self.data, dict) else [(None, self.data)]):
            if directory is not None and not Path(directory).is_dir():
                raise ConfigError(f"--data {'' if name is None else name + '='}{directory}: no such directory (make "
                                  f"one with tools/preprocess_data.py)")


def _require_int(name: str, value, minimum: int):
    flag = "--" + name.replace("_", "-")
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{flag} must be an integer >= {minimum}, got {value!r}")

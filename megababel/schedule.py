"""Growth schedules: the starting model, the training length and learning rates, and the growths.

A schedule is a YAML or JSON file (or a preset name):

    model: {hidden_size: 64, head_dim: 16, num_hidden_layers: 2, multiple_of: 32, vocab_size: 1000}
    training: {steps: 450, lr: 3.0e-3, warmup_steps: 30, min_lr_ratio: 0.1, weight_decay: 0.1}
    growths:                               # (`stages:` is accepted too, the name before 0.2)
      - at_step: 150                       # or at_tokens: 2_000_000, or at_fraction: 0.33 (of training.steps)
        hidden_size: 128                   # any GrowthEvent target: hidden_size, intermediate_size,
        intermediate_size: 352             #   num_hidden_layers, vocab_size
        vocab_size: 2000
      - at_tokens: 600000
        num_hidden_layers: 4
        layer_positions: interleave        # and any GrowthEvent init option (width_init, heads_init, ...)
        lr: 2.0e-3                         # peak lr / warm-up of the new generation (default: training's)
        warmup_steps: 20
        optimizer_state: keep              # keep (default): old blocks keep their Adam moments and steps;
                                           #   reset: every parameter starts from a fresh Adam state

training.lr_schedule: per_generation (default): each generation warms up from its birth step to its own peak and
decays to the end of training, old generations keep their curves; global: one curve from step 0 for every parameter
(new parameters join at the current learning rate), the baseline that bench/growth_vs_scratch.py compares against.

`load_schedule` validates the whole schedule before anything is built: every growth is checked against the model it
grows (shrinking, hidden not a multiple of head_dim, GQA groups, layer positions, ...), growths must come in order
and before the end of training; errors name the growth and the field.
"""
from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path

from .config import ConfigError, LlamaConfig
from .growth import GrowthEvent, check_growth

TRAINING_DEFAULTS = dict(steps=450, lr=3e-3, warmup_steps=30, min_lr_ratio=0.1, weight_decay=0.1,
                         lr_schedule="per_generation")
LR_SCHEDULES = ("per_generation", "global")
OPTIMIZER_STATES = ("keep", "reset")
EVENT_FIELDS = {f.name for f in fields(GrowthEvent)}

PRESETS = {
    # The default. The plan that saved the most compute in bench/growth_vs_scratch.py (see bench/README.md): width +
    # FFN + vocabulary at 1/4 of the run, then depth (interleaved identity layers) + vocabulary at 1/2, exact inits,
    # Adam state kept, per-generation learning rates; scaled to the embedded corpus, 2 CPU cores, about a minute.
    "tiny": dict(
        model=dict(hidden_size=64, head_dim=16, num_hidden_layers=2, multiple_of=32, vocab_size=1000,
                   max_position_embeddings=1024),
        training=dict(steps=450, lr=3e-3, warmup_steps=30, min_lr_ratio=0.1, weight_decay=0.1),
        growths=[dict(at_fraction=1 / 4, hidden_size=128, intermediate_size=352, vocab_size=2000),
                dict(at_fraction=1 / 2, num_hidden_layers=4, layer_positions="interleave", vocab_size=4000)]),
    # that plan exactly as measured (both-vocab): 2.6M -> 10.5M parameters on TinyStories with the Llama 2 tokenizer,
    # vocabulary 2000 -> 4000 -> 8000. --data: the benchmark's cache (~/.cache/megababel/bench-tinystories) or
    # tools/preprocess_data.py --stages 2000 4000 8000; --seq-len 256 --micro-batch-size 8 --bf16
    "tinystories": dict(
        model=dict(hidden_size=128, head_dim=32, num_hidden_layers=4, intermediate_size=352, multiple_of=32,
                   vocab_size=2000, max_position_embeddings=1024),
        training=dict(steps=227, lr=1e-3, warmup_steps=15, min_lr_ratio=0.1, weight_decay=0.1),
        growths=[dict(at_step=57, hidden_size=256, intermediate_size=704, vocab_size=4000),
                dict(at_step=114, num_hidden_layers=8, layer_positions="interleave", vocab_size=8000)]),
    # the seed's plan: ~49M parameters, about 2x per growth as the vocabulary grows, to ~1.05B (Llama 2 tokenizer)
    "seed": dict(
        model=dict(hidden_size=512, head_dim=128, num_hidden_layers=12, vocab_size=8000,
                   max_position_embeddings=2048),
        training=dict(steps=100_000, lr=6e-4, warmup_steps=2000, min_lr_ratio=0.1, weight_decay=0.1),
        growths=[dict(at_step=10_000, hidden_size=640, num_hidden_layers=14, intermediate_size=1792,
                     vocab_size=16000, layer_positions="interleave"),
                dict(at_step=25_000, hidden_size=896, num_hidden_layers=16, intermediate_size=2560,
                     vocab_size=32000, layer_positions="interleave"),
                dict(at_step=45_000, hidden_size=1280, num_hidden_layers=20, intermediate_size=3584,
                     layer_positions="interleave"),
                dict(at_step=70_000, hidden_size=1792, num_hidden_layers=24, intermediate_size=4864,
                     layer_positions="interleave")]),
}


@dataclass
class Growth:
    """One growth of the schedule, its step resolved (at_tokens / at_fraction -> at_step)."""
    at_step: int
    event: GrowthEvent
    lr: float
    warmup_steps: int
    config: LlamaConfig          # the model after this growth
    optimizer_state: str = "keep"


@dataclass
class Schedule:
    model: LlamaConfig
    steps: int
    lr: float
    warmup_steps: int
    min_lr_ratio: float
    weight_decay: float
    lr_schedule: str = "per_generation"
    growths: list[Growth] = field(default_factory=list)
    source: str = ""

    @property
    def final_config(self) -> LlamaConfig:
        return self.growths[-1].config if self.growths else self.model

    def vocab_sizes(self) -> list[int]:
        return sorted({self.model.vocab_size, *(g.config.vocab_size for g in self.growths)})

    def resolved(self) -> dict:
        """Everything that decides what a run does, positions resolved to steps, JSON-serialisable: a checkpoint
        records it so that a resume can prove it follows the same plan (see `schedule_differences`)."""
        def event_fields(event: GrowthEvent) -> dict:
            return {f.name: getattr(event, f.name) for f in fields(GrowthEvent)}
        return json.loads(json.dumps(dict(model=self.model.to_dict(), training=dict(
            steps=self.steps, lr=self.lr, warmup_steps=self.warmup_steps, min_lr_ratio=self.min_lr_ratio,
            weight_decay=self.weight_decay, lr_schedule=self.lr_schedule),
            growths=[dict(at_step=g.at_step, lr=g.lr, warmup_steps=g.warmup_steps, optimizer_state=g.optimizer_state,
                          **event_fields(g.event)) for g in self.growths])))   # tuples -> lists, as saved

    def lr_at(self, step: int, born: int, peak: float, warmup: int) -> float:
        """A generation born at `born`: linear warm-up, then cosine decay to min_lr_ratio at the end of training.
        Older generations keep following their own curve when new ones are born."""
        age = step - born
        if age < warmup:
            return peak * (age + 1) / warmup
        progress = min(1.0, (age - warmup) / max(1, self.steps - born - warmup))
        return peak * (self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))

    def group_lr(self, step: int, born: int, peak: float, warmup: int) -> float:
        """The learning rate of a param group at `step`, under training.lr_schedule."""
        if self.lr_schedule == "global":
            return self.lr_at(step, 0, self.lr, self.warmup_steps)
        return self.lr_at(step, born, peak, warmup)


def _error(where: str, message: str) -> ConfigError:
    return ConfigError(f"schedule {where}: {message}")


def parse_schedule(spec: dict, tokens_per_step: int, source: str = "<dict>") -> Schedule:
    spec = copy.deepcopy(spec)
    if "stages" in spec:       # the section's name before 0.2; "growth" now means only a ZeRO or vocabulary growth
        if "growths" in spec:
            raise _error("", "give `growths` (or its old name `stages`), not both")
        spec["growths"] = spec.pop("stages")
    unknown = set(spec) - {"model", "training", "growths"}
    if unknown:
        raise _error("", f"unknown section(s) {sorted(unknown)}; use model, training, growths")
    try:
        model = LlamaConfig.from_dict(spec.get("model", {}))
    except ConfigError as e:
        raise _error("model", str(e)) from None
    training = dict(TRAINING_DEFAULTS)
    unknown = set(spec.get("training", {})) - set(TRAINING_DEFAULTS)
    if unknown:
        raise _error("training", f"unknown field(s) {sorted(unknown)}; known: {sorted(TRAINING_DEFAULTS)}")
    training.update(spec.get("training", {}))
    if not isinstance(training["steps"], int) or training["steps"] <= 0:
        raise _error("training.steps", f"must be a positive integer, got {training['steps']!r}")
    for name in ("lr", "weight_decay", "min_lr_ratio", "warmup_steps"):
        if not isinstance(training[name], (int, float)) or training[name] < 0:
            raise _error(f"training.{name}", f"must be a non-negative number, got {training[name]!r}")
    if training["lr_schedule"] not in LR_SCHEDULES:
        raise _error("training.lr_schedule", f"must be one of {list(LR_SCHEDULES)}, got {training['lr_schedule']!r}")
    schedule = Schedule(model=model, source=source, **training)
    config, last_step = model, 0
    for i, growth in enumerate(spec.get("growths", []) or []):
        where = f"growth {i}"
        if not isinstance(growth, dict):
            raise _error(where, f"must be a mapping, got {growth!r}")
        growth = dict(growth)
        if sum(key in growth for key in ("at_step", "at_tokens", "at_fraction")) != 1:
            raise _error(where, "give exactly one of at_step, at_tokens or at_fraction")
        if "at_fraction" in growth:
            fraction = growth.pop("at_fraction")
            if not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
                raise _error(f"{where}.at_fraction", f"must be between 0 and 1, got {fraction!r}")
            step = max(1, round(fraction * schedule.steps))
        elif "at_tokens" in growth:
            at = growth.pop("at_tokens")
            if not isinstance(at, int) or at <= 0:
                raise _error(f"{where}.at_tokens", f"must be a positive integer, got {at!r}")
            step = -(-at // tokens_per_step)          # first step at or after that many tokens
        else:
            step = growth.pop("at_step")
            if not isinstance(step, int) or step <= 0:
                raise _error(f"{where}.at_step", f"must be a positive integer, got {step!r}")
        if step <= last_step:
            raise _error(f"{where}.at_step", f"step {step} is not after the previous growth's {last_step}")
        if step >= schedule.steps:
            raise _error(f"{where}.at_step", f"step {step} is at or after the end of training "
                                             f"(training.steps = {schedule.steps})")
        lr = growth.pop("lr", schedule.lr)
        warmup = growth.pop("warmup_steps", schedule.warmup_steps)
        if schedule.lr_schedule == "global" and (lr != schedule.lr or warmup != schedule.warmup_steps):
            raise _error(where, "lr / warmup_steps of a growth need training.lr_schedule: per_generation "
                                "(under global every parameter follows training's curve)")
        optimizer_state = growth.pop("optimizer_state", "keep")
        if optimizer_state not in OPTIMIZER_STATES:
            raise _error(f"{where}.optimizer_state", f"must be one of {list(OPTIMIZER_STATES)}, "
                                                     f"got {optimizer_state!r}")
        unknown = set(growth) - EVENT_FIELDS
        if unknown:
            raise _error(where, f"unknown field(s) {sorted(unknown)}; growth fields: {sorted(EVENT_FIELDS)}")
        event = GrowthEvent(**growth)
        try:
            new_config = check_growth(config, event)
        except ConfigError as e:
            raise _error(where, str(e)) from None
        schedule.growths.append(Growth(step, event, lr, warmup, new_config, optimizer_state))
        config, last_step = new_config, step
    return schedule


def schedule_differences(saved: dict, current: dict) -> list[str]:
    """Fields where two `Schedule.resolved()` dicts differ, as 'growth 1.at_step: 20 saved, 30 now'."""
    out = []
    for section in ("model", "training"):
        for key in sorted(set(saved.get(section, {})) | set(current.get(section, {}))):
            a, b = saved.get(section, {}).get(key), current.get(section, {}).get(key)
            if a != b:
                out.append(f"{section}.{key}: {a!r} saved, {b!r} now")
    old, new = saved.get("growths", []), current.get("growths", [])
    if len(old) != len(new):
        out.append(f"number of growths: {len(old)} saved, {len(new)} now")
    for i, (a, b) in enumerate(zip(old, new)):
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                out.append(f"growth {i}.{key}: {a.get(key)!r} saved, {b.get(key)!r} now")
    return out


def load_schedule(name_or_path: str | Path, tokens_per_step: int, overrides: dict | None = None) -> Schedule:
    """A preset name or a .yaml/.yml/.json file; `overrides` replace training fields (e.g. steps from the CLI)."""
    path = Path(name_or_path)
    if str(name_or_path) in PRESETS:
        spec = PRESETS[str(name_or_path)]
    elif path.is_file():
        text = path.read_text()
        try:
            if path.suffix in (".yaml", ".yml"):
                import yaml
                spec = yaml.safe_load(text)
            else:
                spec = json.loads(text)
        except Exception as e:  # noqa: BLE001 - yaml and json raise different types
            raise ConfigError(f"schedule {path}: cannot parse ({e})") from None
        if not isinstance(spec, dict):
            raise ConfigError(f"schedule {path}: expected a mapping with model, training, growths")
    else:
        raise ConfigError(f"schedule {name_or_path!r}: not a preset ({sorted(PRESETS)}) nor a file")
    spec = copy.deepcopy(spec)
    if overrides:
        spec.setdefault("training", {}).update(overrides)
    return parse_schedule(spec, tokens_per_step, str(name_or_path))

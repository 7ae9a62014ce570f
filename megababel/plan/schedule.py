"""Growth schedules: the starting model, the training length and learning rates, and the growths.

A schedule is a YAML or JSON file (or a preset name: megababel/plan/presets.py, whose `load_schedule` takes either):

    model: {hidden_size: 64, head_dim: 16, num_hidden_layers: 2, multiple_of: 32, vocab_size: 1000}
    training: {steps: 450, lr: 3.0e-3, warmup_steps: 30, min_lr_ratio: 0.1, weight_decay: 0.1}
    growths:                               # (`stages:`, the name before 0.2, is deprecated)
      - at_step: 150                       # or at_tokens: 2_000_000, or at_fraction: 0.33 (of training.steps)
        hidden_size: 128                   # any GrowthEvent target: hidden_size, intermediate_size,
        intermediate_size: 352             #   num_hidden_layers, vocab_size, head_dim (a whole multiple)
        vocab_size: 2000
      - at_tokens: 600000
        num_hidden_layers: 4
        layer_positions: interleave        # and any GrowthEvent init option (width_init, heads_init, ...)
        lr: 2.0e-3                         # peak lr / warm-up of the new generation (default: training's)
        warmup_steps: 20
        optimizer_state: keep              # keep (default): old blocks keep their Adam moments and steps;
                                           #   reset: every parameter starts from a fresh Adam state
        rewarmup_steps: 200                # older generations' LR ramps up again from ~0 over 200 steps
                                           #   (default 0: they keep their curve through the growth)
        seq_len: 256                       # the training sequence length from this growth on (default: as
                                           #   before; training.seq_len, else the run's --seq-len, at the start)
        data: {wiki: 0.8, stories: 0.2}    # the data mixture from this growth on (default: as before;
                                           #   training.data at the start): weights over the run's --data
                                           #   NAME=DIR sources, or difficulty slices of them, wiki[rarity:0-0.5]
                                           #   (megababel/data/mixture.py); without any, the run's one --data
    curriculum:                            # what is read changes between growths, the model unchanged: e.g. a
      - at_tokens: 300000                  #   scratch run reading what a grown run reads, or warming up its
        data: {wiki: 1.0}                  #   sequence length; at_step, at_tokens or at_fraction, then data
        seq_len: 128                       #   (needs training.data) and/or seq_len

training.lr_schedule: per_generation (default): each generation warms up from its birth step to its own peak and
decays to the end of training, old generations keep their curves; global: one curve from step 0 for every parameter
(new parameters join at the current learning rate), the baseline that bench/growth_vs_scratch.py compares against.
training.lr_decay, the curve's shape, under either: cosine (default) from the end of the warm-up to min_lr_ratio x
peak at the end of training; wsd (warmup-stable-decay, MiniCPM): the peak held until the last `decay_fraction` of
training.steps (default 0.2), then a linear decay to min_lr_ratio x peak at the last step. Under wsd every generation
decays in the same final window, so a growth never lands in a half-decayed curve, and a run can be extended or
branched off the stable phase.

`parse_schedule` (and `load_schedule_file`, `presets.load_schedule`) validates the whole schedule before anything is
built: every growth is checked against the model it
grows (shrinking, hidden not a multiple of head_dim, GQA groups, layer positions, ...), growths must come in order
and before the end of training; errors name the growth and the field. Types are strict: a key given twice in a file,
a boolean or a non-finite number where a number is meant, a float where an integer is meant and an option value
outside its choices are all refused.
"""
from __future__ import annotations

import copy
import json
import math
import warnings
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from megababel.config import ConfigError, LlamaConfig, describe, is_integer, is_number
from megababel.data.sources import check_weights
from megababel.growth.events import GrowthEvent, check_growth

TRAINING_DEFAULTS = dict(steps=450, lr=3e-3, warmup_steps=30, min_lr_ratio=0.1, weight_decay=0.1,
                         lr_schedule="per_generation", global_batch_tokens=None, lr_decay="cosine",
                         decay_fraction=0.2, seq_len=None, data=None)
LR_SCHEDULES = ("per_generation", "global")
LR_DECAYS = ("cosine", "wsd")
OPTIMIZER_STATES = ("keep", "reset")
EVENT_FIELDS = {f.name for f in fields(GrowthEvent)}
GROWTH_FIELDS = {"at_step", "at_tokens", "at_fraction", "lr", "warmup_steps", "optimizer_state",
                 "global_batch_tokens", "rewarmup_steps", "seq_len", "data"}   # beside the event's
CURRICULUM_FIELDS = ("at_step", "at_tokens", "at_fraction", "data", "seq_len")
STAGES_DEPRECATED = "schedule key `stages` is deprecated: rename it to `growths`"


@dataclass
class Growth:
    """One growth of the schedule, its step resolved (at_tokens / at_fraction -> at_step)."""
    at_step: int
    event: GrowthEvent
    lr: float
    warmup_steps: int
    config: LlamaConfig          # the model after this growth
    optimizer_state: str = "keep"
    global_batch_tokens: int | None = None    # tokens per optimizer step from this growth on (None: as before)
    rewarmup_steps: int = 0      # older generations' LR ramps up again over this many steps after the growth
    seq_len: int | None = None   # training sequence length from this growth on (None: the run's --seq-len)
    data: dict | None = None     # the data mixture from this growth on (None: the run's one dataset)


@dataclass
class CurriculumChange:
    """A curriculum entry: from `at_step` on, the data mixture and/or the training sequence length (None: as
    before), the model unchanged."""
    at_step: int
    data: dict | None = None
    seq_len: int | None = None


@dataclass
class Schedule:
    model: LlamaConfig
    steps: int
    lr: float
    warmup_steps: int
    min_lr_ratio: float
    weight_decay: float
    lr_schedule: str = "per_generation"
    global_batch_tokens: int | None = None    # tokens per optimizer step; None: micro batch x data-parallel ranks
    lr_decay: str = "cosine"
    decay_fraction: float = 0.2      # wsd: the final fraction of training.steps over which the LR decays
    seq_len: int | None = None       # the first generation's training sequence length (None: the run's --seq-len)
    data: dict | None = None         # the first generation's data mixture {source: weight} (None: one dataset)
    growths: list[Growth] = field(default_factory=list)
    curriculum: list[CurriculumChange] = field(default_factory=list)    # what is read, changed between growths
    source: str = ""
    anneal: tuple[int, int] | None = None    # a decay branch (branch()): (its first step, its length in steps)

    @property
    def end_step(self) -> int:
        """The step a run of this schedule stops at: training.steps, or a decay branch's end."""
        return self.anneal[0] + self.anneal[1] if self.anneal else self.steps

    def branch(self, generation: int, start: int, steps: int) -> "Schedule":
        """A decay branch off this schedule (a family member's anneal): from `start`, where `generation` trains, it
        trains `steps` more steps with no further growth, every param group's LR falling linearly from its value
        at step start - 1 to min_lr_ratio x its peak (a WSD-style cooldown of whatever curve it was on). The
        curves up to `start` are this schedule's, so a branch taken from a checkpoint continues it exactly."""
        if not (isinstance(steps, int) and steps >= 1):
            raise ConfigError(f"--anneal-steps must be an integer >= 1, got {steps!r}")
        # and it reads on what it read at `start`: no later change of the mixture either
        return replace(self, growths=self.growths[:generation], anneal=(start, steps),
                       curriculum=[c for c in self.curriculum if c.at_step < start])

    @property
    def final_config(self) -> LlamaConfig:
        return self.growths[-1].config if self.growths else self.model

    def batch_tokens(self, generation: int) -> int | None:
        """Tokens per optimizer step while `generation` trains (None: one micro batch per data-parallel rank)."""
        return self.growths[generation - 1].global_batch_tokens if generation else self.global_batch_tokens

    def generation_seq_len(self, generation: int) -> int | None:
        """The training sequence length of `generation` (None: the run's --seq-len)."""
        return self.growths[generation - 1].seq_len if generation else self.seq_len

    def generation_data(self, generation: int) -> dict | None:
        """The data mixture {source: weight} `generation` reads (None: the run's one dataset)."""
        return self.growths[generation - 1].data if generation else self.data

    def data_at(self, step: int, generation: int) -> dict | None:
        """The mixture read at the start of training step `step`, the model at `generation`: training.data, then
        the growths up to `generation` and the curriculum changes before `step`, whichever came last (the loop
        applies the changes at `step` itself; a checkpoint resumes from here)."""
        return self._read_at(step, generation, "data")

    def seq_len_at(self, step: int, generation: int) -> int | None:
        """The training sequence length at the start of step `step`, as data_at (None: the run's --seq-len)."""
        return self._read_at(step, generation, "seq_len")

    def _read_at(self, step: int, generation: int, what: str):
        changes = [(g.at_step, getattr(g, what)) for g in self.growths[:generation]]
        changes += [(c.at_step, getattr(c, what)) for c in self.curriculum
                    if c.at_step < step and getattr(c, what) is not None]
        return max(changes, key=lambda change: change[0])[1] if changes else getattr(self, what)

    def generation_at(self, step: int) -> int:
        """The generation that trains step `step`."""
        return sum(g.at_step <= step for g in self.growths)

    def data_sources(self) -> list[str]:
        """Every source any generation or curriculum change reads, in order of first use."""
        mixtures = [self.generation_data(g) for g in range(len(self.growths) + 1)]
        mixtures += [c.data for c in self.curriculum if c.data is not None]
        return list(dict.fromkeys(k for mixture in mixtures for k in (mixture or {})))

    def vocab_sizes(self) -> list[int]:
        return sorted({self.model.vocab_size, *(g.config.vocab_size for g in self.growths)})

    def resolved(self) -> dict:
        """Everything that decides what a run does, positions resolved to steps, JSON-serialisable: a checkpoint
        records it so that a resume can prove it follows the same plan (see `schedule_differences`)."""
        def event_fields(event: GrowthEvent) -> dict:
            return {f.name: getattr(event, f.name) for f in fields(GrowthEvent)}
        # the fields added since the first checkpoints only when used, as rewarmup below: older checkpoints'
        # records, which lack them, still match
        optional = {} if self.lr_decay == "cosine" else dict(lr_decay=self.lr_decay,
                                                              decay_fraction=self.decay_fraction)
        optional.update({} if self.seq_len is None else dict(seq_len=self.seq_len))
        optional.update({} if self.data is None else dict(data=self.data))
        optional.update({} if self.anneal is None else dict(anneal=dict(from_step=self.anneal[0],
                                                                         steps=self.anneal[1])))
        curriculum = dict(curriculum=[{k: v for k, v in vars(c).items() if v is not None}
                                      for c in self.curriculum]) if self.curriculum else {}
        return json.loads(json.dumps(dict(model=self.model.to_dict(), **curriculum, training=dict(
            steps=self.steps, lr=self.lr, warmup_steps=self.warmup_steps, min_lr_ratio=self.min_lr_ratio,
            weight_decay=self.weight_decay, lr_schedule=self.lr_schedule, global_batch_tokens=self.global_batch_tokens,
            **optional),
            growths=[dict(at_step=g.at_step, lr=g.lr, warmup_steps=g.warmup_steps, optimizer_state=g.optimizer_state,
                          global_batch_tokens=g.global_batch_tokens, **event_fields(g.event),
                          **({"rewarmup_steps": g.rewarmup_steps} if g.rewarmup_steps else {}),
                          **({"seq_len": g.seq_len} if g.seq_len is not None else {}),
                          **({"data": g.data} if g.data is not None else {}))
                     for g in self.growths])))   # tuples -> lists, as saved (rewarmup only when used: older
                                                 # checkpoints, which lack it, still resume)

    @property
    def decay_start(self) -> int:
        """wsd: the first step of the final decay."""
        return self.steps - max(1, round(self.decay_fraction * self.steps))

    def lr_at(self, step: int, born: int, peak: float, warmup: int) -> float:
        """A generation born at `born`: linear warm-up, then (cosine) decay to min_lr_ratio at the end of training,
        or (wsd) the peak until decay_start and a linear decay to min_lr_ratio at the last step. Older generations
        keep following their own curve when new ones are born."""
        age = step - born
        if self.lr_decay == "wsd":
            warm = (age + 1) / warmup if age < warmup else 1.0
            progress = min(1.0, max(0, step - self.decay_start + 1) / (self.steps - self.decay_start))
            return peak * warm * (1 - (1 - self.min_lr_ratio) * progress)
        if age < warmup:
            return peak * (age + 1) / warmup
        progress = min(1.0, (age - warmup) / max(1, self.steps - born - warmup))
        return peak * (self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))

    def group_lr(self, step: int, born: int, peak: float, warmup: int) -> float:
        """The learning rate of a param group at `step`, under training.lr_schedule (and a branch's decay)."""
        if self.anneal and step >= self.anneal[0]:
            start, steps = self.anneal
            base = self._curve_lr(max(start - 1, born, 0), born, peak, warmup)   # born at the branch: its 1st LR
            target = min(base, self.min_lr_ratio * (self.lr if self.lr_schedule == "global" else peak))
            return base + (target - base) * min(1.0, (step - start + 1) / steps)
        return self._curve_lr(step, born, peak, warmup)

    def _curve_lr(self, step: int, born: int, peak: float, warmup: int) -> float:
        if self.lr_schedule == "global":
            return self.lr_at(step, 0, self.lr, self.warmup_steps)
        lr = self.lr_at(step, born, peak, warmup)
        for g in self.growths:       # re-warm-up of the generations older than a growth, right after it
            if g.rewarmup_steps and born < g.at_step <= step < g.at_step + g.rewarmup_steps:
                lr *= (step - g.at_step + 1) / g.rewarmup_steps
        return lr


def _error(where: str, message: str) -> ConfigError:
    return ConfigError(f"schedule {where}: {message}" if where else f"schedule: {message}")


def _placed(where: str, error: ConfigError) -> ConfigError:
    """A model config's or growth event's error, placed in the schedule: 'schedule growth 1.init_std: ...'."""
    if error.field:
        return _error(f"{where}.{error.field}", error.problem)
    return _error(where, str(error))


def _integer(where: str, value, minimum: int) -> int:
    if not (is_integer(value) and value >= minimum):
        kind = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise _error(where, f"must be {kind}, got {describe(value)}")
    return value


def _number(where: str, value, in_range, expected_range: str) -> float:
    """A finite int or float (not a bool) for which in_range(value) holds."""
    if not (is_number(value) and math.isfinite(value) and in_range(value)):
        raise _error(where, f"must be a finite number {expected_range}, got {describe(value)}")
    return value


def _choice(where: str, value, choices: tuple[str, ...]) -> str:
    if not (isinstance(value, str) and value in choices):
        raise _error(where, f"must be one of {list(choices)}, got {describe(value)}")
    return value


def _mapping(where: str, value, what: str) -> dict:
    if not isinstance(value, dict):
        raise _error(where, f"must be a mapping of {what}, got {describe(value)}")
    return value


def _unknown(keys, known) -> list:
    return sorted(set(keys) - set(known), key=str)     # key=str: YAML keys need not be strings


def _training(section) -> dict:
    """training, defaults filled in, every field checked."""
    section = _mapping("training", section, f"field: value (fields: {', '.join(TRAINING_DEFAULTS)})")
    unknown = _unknown(section, TRAINING_DEFAULTS)
    if unknown:
        raise _error("training", f"unknown field(s) {unknown}; known: {sorted(TRAINING_DEFAULTS)}")
    training = {**TRAINING_DEFAULTS, **section}
    _integer("training.steps", training["steps"], 1)
    _integer("training.warmup_steps", training["warmup_steps"], 0)
    _number("training.lr", training["lr"], lambda value: value > 0, "> 0")
    _number("training.weight_decay", training["weight_decay"], lambda decay: decay >= 0, ">= 0")
    _number("training.min_lr_ratio", training["min_lr_ratio"], lambda ratio: 0 <= ratio <= 1, "in [0, 1]")
    _choice("training.lr_schedule", training["lr_schedule"], LR_SCHEDULES)
    _choice("training.lr_decay", training["lr_decay"], LR_DECAYS)
    _number("training.decay_fraction", training["decay_fraction"], lambda f: 0 < f <= 1,
            "in (0, 1] (the final fraction of training.steps over which wsd decays)")
    if "decay_fraction" in section and training["lr_decay"] != "wsd":
        raise _error("training.decay_fraction", "applies to training.lr_decay: wsd only; set lr_decay: wsd or "
                                                "remove decay_fraction")
    if training["global_batch_tokens"] is not None:
        _integer("training.global_batch_tokens", training["global_batch_tokens"], 1)
    if training["seq_len"] is not None:
        _integer("training.seq_len", training["seq_len"], 1)
    if training["data"] is not None:
        training["data"] = _mixture("training.data", training["data"])
    return training


def _mixture(where: str, weights) -> dict:
    try:
        return check_weights(weights, where)
    except ConfigError as e:
        raise ConfigError(f"schedule {e}") from None


def _growth_step(where: str, growth: dict, steps: int, tokens_per_step: int, last_step: int, last_tokens: int) -> int:
    """The step of a growth from its one position field (popped from `growth`). `tokens_per_step` is the batch of
    the generation that ends here, which started at `last_step` with `last_tokens` tokens seen."""
    return _entry_step(where, growth, steps,
                       lambda tokens: last_step + max(0, -(-(tokens - last_tokens) // tokens_per_step)))


def _entry_step(where: str, entry: dict, steps: int, tokens_to_step) -> int:
    """The step of a growth or curriculum change from its one position field (popped from `entry`);
    `tokens_to_step(tokens)`: the first step at or after that many training tokens."""
    given = [key for key in ("at_step", "at_tokens", "at_fraction") if key in entry]
    if len(given) != 1:
        raise _error(where, f"give exactly one of at_step, at_tokens or at_fraction, got {given or 'none'}")
    if "at_fraction" in entry:
        fraction = _number(f"{where}.at_fraction", entry.pop("at_fraction"), lambda f: 0 < f < 1,
                           "strictly between 0 and 1 (a fraction of training.steps)")
        return max(1, round(fraction * steps))
    if "at_tokens" in entry:
        return tokens_to_step(_integer(f"{where}.at_tokens", entry.pop("at_tokens"), 1))
    return _integer(f"{where}.at_step", entry.pop("at_step"), 1)


def _growths(section) -> list:
    if section is None:               # `growths:` with nothing under it: no growth
        return []
    if not isinstance(section, list):
        raise _error("growths", f"must be a list of growths (`- at_step: ...` entries), got {describe(section)}")
    return section


def parse_schedule(spec: dict, tokens_per_step: int, source: str = "<dict>") -> Schedule:
    spec = copy.deepcopy(_mapping("", spec, "sections model, training, growths"))
    if "stages" in spec:       # the section's name before 0.2; "stage" now means only a ZeRO or vocabulary stage
        if "growths" in spec:
            raise _error("", "give `growths` (or its old name `stages`), not both")
        # FutureWarning, not DeprecationWarning: Python shows it to the users who write schedules
        warnings.warn(STAGES_DEPRECATED, FutureWarning, stacklevel=2)
        spec["growths"] = spec.pop("stages")
    unknown = _unknown(spec, ("model", "training", "growths", "curriculum"))
    if unknown:
        raise _error("", f"unknown section(s) {unknown}; use model, training, growths, curriculum")
    try:
        model = LlamaConfig.from_dict(spec.get("model", {}))
    except ConfigError as e:
        raise _placed("model", e) from None
    schedule = Schedule(model=model, source=source, **_training(spec.get("training", {})))
    _check_seq_len("training.seq_len", schedule.seq_len, model)
    config, last_step, last_tokens, batch = model, 0, 0, schedule.global_batch_tokens
    seq_len, data = schedule.seq_len, schedule.data
    given = []         # per growth, whether it gives data / seq_len (if not: it reads on as before it)
    batches = [(0, 0, batch or tokens_per_step)]     # (first step, tokens before it, tokens per step) per generation
    for i, growth in enumerate(_growths(spec.get("growths"))):
        where = f"growth {i}"
        growth = dict(_mapping(where, growth, "growth fields (at_step, hidden_size, ...)"))
        unknown = _unknown(growth, EVENT_FIELDS | GROWTH_FIELDS)
        if unknown:
            raise _error(where, f"unknown field(s) {unknown}; growth fields: {sorted(EVENT_FIELDS | GROWTH_FIELDS)}")
        step = _growth_step(where, growth, schedule.steps, batch or tokens_per_step, last_step, last_tokens)
        if step <= last_step:
            raise _error(f"{where}.at_step", f"step {step} is not after the previous growth's {last_step}")
        if step >= schedule.steps:
            raise _error(f"{where}.at_step", f"step {step} is at or after the end of training "
                                             f"(training.steps = {schedule.steps})")
        lr = _number(f"{where}.lr", growth.pop("lr", schedule.lr), lambda value: value > 0, "> 0")
        warmup = _integer(f"{where}.warmup_steps", growth.pop("warmup_steps", schedule.warmup_steps), 0)
        if schedule.lr_schedule == "global" and (lr != schedule.lr or warmup != schedule.warmup_steps):
            raise _error(where, "lr / warmup_steps of a growth need training.lr_schedule: per_generation "
                                "(under global every parameter follows training's curve)")
        optimizer_state = _choice(f"{where}.optimizer_state", growth.pop("optimizer_state", "keep"),
                                  OPTIMIZER_STATES)
        rewarmup = _integer(f"{where}.rewarmup_steps", growth.pop("rewarmup_steps", 0), 0)
        if rewarmup and schedule.lr_schedule == "global":
            raise _error(where, "rewarmup_steps needs training.lr_schedule: per_generation")
        new_batch = growth.pop("global_batch_tokens", batch)
        if new_batch is not None:
            _integer(f"{where}.global_batch_tokens", new_batch, 1)
        given.append(dict(data="data" in growth, seq_len="seq_len" in growth))
        if "seq_len" in growth:
            seq_len = _integer(f"{where}.seq_len", growth.pop("seq_len"), 1)
        if "data" in growth:
            data = _mixture(f"{where}.data", growth.pop("data"))
            if schedule.data is None:
                raise _error(f"{where}.data", "a growth changes the mixture that training.data sets: give "
                                              "training.data too (the first generation's mixture)")
        event = GrowthEvent(**growth)
        try:
            new_config = check_growth(config, event)     # every event field first, then against the model
        except ConfigError as e:
            raise _placed(where, e) from None
        _check_seq_len(f"{where}.seq_len", seq_len, new_config)
        schedule.growths.append(Growth(step, event, lr, warmup, new_config, optimizer_state, new_batch, rewarmup,
                                       seq_len, data))
        last_tokens += (step - last_step) * (batch or tokens_per_step)
        config, last_step, batch = new_config, step, new_batch
        batches.append((step, last_tokens, batch or tokens_per_step))
    schedule.curriculum = _curriculum(spec.get("curriculum"), schedule, batches)
    for i, (growth, gives) in enumerate(zip(schedule.growths, given)):
        # a growth that does not give them reads on what the curriculum switched to before it, if anything
        if not gives["data"]:
            growth.data = schedule.data_at(growth.at_step, i)
        if not gives["seq_len"]:
            growth.seq_len = schedule.seq_len_at(growth.at_step, i)
    return schedule


def _curriculum(section, schedule: Schedule, batches: list) -> list[CurriculumChange]:
    """The curriculum's changes, steps resolved; `batches`: (first step, tokens before it, tokens per step) of each
    generation, for at_tokens."""
    if section is None:
        return []
    if not isinstance(section, list):
        raise _error("curriculum", f"must be a list of changes (`- at_step: ..., data: {{...}}` entries), got "
                                   f"{describe(section)}")
    growth_steps = {g.at_step: i for i, g in enumerate(schedule.growths)}
    changes, last_step = [], 0
    for i, entry in enumerate(section):
        where = f"curriculum {i}"
        entry = dict(_mapping(where, entry, "fields at_step (or at_tokens, at_fraction), data and/or seq_len"))
        unknown = _unknown(entry, CURRICULUM_FIELDS)
        if unknown:
            raise _error(where, f"unknown field(s) {unknown}; curriculum fields: {list(CURRICULUM_FIELDS)}")
        if "data" not in entry and "seq_len" not in entry:
            raise _error(where, "changes nothing: give data (the mixture from this step on) and/or seq_len")
        if "data" in entry and schedule.data is None:
            raise _error(f"{where}.data", "changes the mixture that training.data sets: give training.data too "
                                          "(the mixture read from step 0)")

        def tokens_to_step(tokens: int) -> int:
            first, before, per_step = max((b for b in batches if b[1] <= tokens), key=lambda b: b[0])
            return first + -(-(tokens - before) // per_step)
        step = _entry_step(where, entry, schedule.steps, tokens_to_step)
        if step <= last_step:
            raise _error(f"{where}.at_step", f"step {step} is not after the previous change's {last_step}" if i else
                                             f"step {step}: a change comes after step 0 (training.data is step 0's)")
        if step >= schedule.steps:
            raise _error(f"{where}.at_step", f"step {step} is at or after the end of training (training.steps = "
                                             f"{schedule.steps})")
        if step in growth_steps:
            raise _error(f"{where}.at_step", f"step {step} is growth {growth_steps[step]}'s: give the mixture there "
                                             f"(growth {growth_steps[step]}.data)")
        data = _mixture(f"{where}.data", entry.pop("data")) if "data" in entry else None
        seq_len = _integer(f"{where}.seq_len", entry.pop("seq_len"), 1) if "seq_len" in entry else None
        _check_seq_len(f"{where}.seq_len", seq_len, schedule.growths[schedule.generation_at(step) - 1].config
                       if schedule.generation_at(step) else schedule.model)
        changes.append(CurriculumChange(step, data, seq_len))
        last_step = step
    return changes


def _check_seq_len(where: str, seq_len: int | None, config: LlamaConfig):
    if seq_len is not None and seq_len > config.max_position_embeddings:
        raise _error(where, f"{seq_len} exceeds the model's max_position_embeddings {config.max_position_embeddings}: "
                            f"lower it or raise max_position_embeddings in `model`")


def schedule_differences(saved: dict, current: dict) -> list[str]:
    """Fields where two `Schedule.resolved()` dicts differ, as 'growth 1.at_step: 20 saved, 30 now'."""
    out = []
    for section in ("model", "training"):
        for key in sorted(set(saved.get(section, {})) | set(current.get(section, {}))):
            a, b = saved.get(section, {}).get(key), current.get(section, {}).get(key)
            if a != b:
                out.append(f"{section}.{key}: {a!r} saved, {b!r} now")
    if saved.get("curriculum", []) != current.get("curriculum", []):
        out.append(f"curriculum: {saved.get('curriculum', [])!r} saved, {current.get('curriculum', [])!r} now")
    old, new = saved.get("growths", []), current.get("growths", [])
    if len(old) != len(new):
        out.append(f"number of growths: {len(old)} saved, {len(new)} now")
    for i, (a, b) in enumerate(zip(old, new)):
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                out.append(f"growth {i}.{key}: {a.get(key)!r} saved, {b.get(key)!r} now")
    return out


class _DuplicateKey(Exception):
    def __init__(self, key, lines: tuple[int, int] | None = None):
        super().__init__(key)
        self.key, self.lines = key, lines       # lines: YAML's, 1-based; json's hook does not know them

    def where(self) -> str:
        if not self.lines:
            return ""
        first, second = self.lines
        return f" (line {first})" if first == second else f" (lines {first} and {second})"


def _unique_keys(pairs: list) -> dict:
    """json's object_pairs_hook: a JSON object whose key repeats is refused (json.loads keeps the last silently)."""
    seen = set()
    for key, _ in pairs:
        if key in seen:
            raise _DuplicateKey(key)
        seen.add(key)
    return dict(pairs)


def _yaml_loader():
    """yaml.SafeLoader refusing a mapping whose key repeats (PyYAML keeps the last one silently)."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            first_line = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":    # `<<: *defaults` may be overridden, by design
                    continue
                key, line = self.construct_object(key_node, deep=True), key_node.start_mark.line + 1
                try:
                    if key in first_line:
                        raise _DuplicateKey(key, (first_line[key], line))
                except TypeError:                               # an unhashable key: SafeLoader refuses it itself
                    continue
                first_line[key] = line
            return super().construct_mapping(node, deep)

    return UniqueKeyLoader


def _read_spec(path: Path):
    """The parsed file; ConfigError if it cannot be parsed or repeats a key."""
    text = path.read_text()
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml
            return yaml.load(text, Loader=_yaml_loader())    # a SafeLoader subclass: no arbitrary objects
        return json.loads(text, object_pairs_hook=_unique_keys)
    except _DuplicateKey as e:
        raise ConfigError(f"schedule {path}: key {e.key!r} appears twice in one mapping{e.where()}; "
                          f"remove one of them") from None
    except Exception as e:  # noqa: BLE001 - yaml and json raise different types
        raise ConfigError(f"schedule {path}: cannot parse ({' '.join(str(e).split())})") from None


def with_overrides(spec, overrides: dict | None):
    """A copy of `spec` whose training fields `overrides` replace (e.g. steps from the command line)."""
    spec = copy.deepcopy(spec)
    if overrides and isinstance(spec, dict):
        training = spec.setdefault("training", {})
        if isinstance(training, dict):        # anything else: parse_schedule says what is wrong with it
            training.update(overrides)
    return spec


def load_schedule_file(path: str | Path, tokens_per_step: int, overrides: dict | None = None) -> Schedule:
    """A .yaml/.yml/.json schedule file; `overrides` replace training fields. Errors name the file. (A preset name
    or a file: megababel.plan.presets.load_schedule.)"""
    source, path = str(path), Path(path)
    spec = _read_spec(path)
    if not isinstance(spec, dict):
        raise ConfigError(f"schedule {path}: expected a mapping with model, training, growths")
    try:
        return parse_schedule(with_overrides(spec, overrides), tokens_per_step, source)
    except ConfigError as e:
        if not str(e).startswith("schedule"):
            raise
        # name the file: "schedule growth 0.hidden_size: ..." -> "schedule plan.yaml: growth 0.hidden_size: ..."
        where, _, problem = str(e).removeprefix("schedule").lstrip().partition(": ")
        raise ConfigError(f"schedule {path}: {where + ': ' if where else ''}{problem}") from None

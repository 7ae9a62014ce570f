"""The growth planner: given the final model and a token (or FLOP) budget, the schedule the measurements say is best.

    from megababel.plan.planner import plan_growth
    plan = plan_growth(LlamaConfig(hidden_size=128, head_dim=32, num_hidden_layers=4, intermediate_size=352,
                                   vocab_size=2000), tokens=6_600_000, seq_len=256, tokens_per_step=2048)
    plan.schedule      # a schedule spec (megababel/plan/schedule.py format): model, training, growths
    plan.explain()     # why: the measured row it follows, the saving measured there, what is extrapolated

Plans are named as in bench/budget_sweep.py, which measures them through this module's `plan_schedule`. A plan is
a sequence of generations (the model between two growths), first to final:
  g1  half width (hidden, heads, FFN) and half depth -> the final model in one growth
  g2  half width and depth -> full width (+ FFN) -> full depth (interleaved identity layers)
  g3  half width and depth -> 3/4 width -> full width -> full depth
  (widths are whole numbers of heads, in whole key/value groups: the nearest to the fraction)
  @F  the first growth at F% of the run's training FLOPs, the others evenly spaced after it; the run ends at the
      FLOPs of training the final model from scratch on the budget (so it sees more tokens than scratch)
  -vocab  a vocabulary stage of half the final vocabulary until the first growth
  scratch  no growth: train the final model
Levers (bench/budget_sweep.py --levers), appended to a plan's name:
  +rewarmP    after each growth the older generations' LR ramps up again over P% of scratch's steps
  +halfbatch  every generation before the last growth trains at half the tokens per step (twice the steps)
  +copy       depth grows by stacking copies of the trained layers on top (G_stack; not function-preserving)
  +x4         start at a quarter of the depth and grow it 4x in its one growth
  +zerowidth  new width (hidden dims, heads, FFN units) starts at zero instead of noisy split copies
  +genlr      each generation's peak LR set by its width: lr x final hidden / its hidden
  +seqwarm    sequence-length warm-up by generation: each generation at half the next one's length, the last at the
              run's (g3 at 2048: 256, 512, 1024, 2048); each generation's FLOPs counted at its own length
  +seqwarmP   for scratch: the same four lengths as g3@P+seqwarm, changed where g3@P grows (at P% of the steps, then
              evenly), as schedule curriculum changes ("scratch+seqwarm2": scratch warmed up like g3@2's generations,
              the baseline a sequence-length warm-up is owed, since it can help a model that never grows too)
  +easyfirst  data curriculum by difficulty: the first generation reads the easier half of the run's dataset
              ("main[rarity:0-0.5]", data/difficulty.py), later ones both halves equally (no text read twice)
  +simplefirst  the first generation reads half its sequences from a simpler dataset named "simple" (e.g.
              TinyStories, --data main=DIR simple=DIR), later ones only "main"
  +easyfirstP, +simplefirstP  the same curricula switching at P% of the run's steps (the schedule's curriculum)
              instead of at the first growth; also for scratch ("scratch+easyfirst11.5": scratch reading what a
              grown run reads, the control that tells the curriculum's share of a saving from the growth's)
  +wsd        warmup-stable-decay LR (schedule.py's lr_decay: wsd, the last 20% decaying) instead of cosine; also
              for scratch ("scratch+wsd")
  +narrow     every generation has the final's heads: the first at half the final's head_dim, grown to it (head_dim
              growth, exact) at the first growth; until the width catches up the attention is wider than hidden
The rule: the best plan at the measured budget nearest in log(tokens per parameter), and scratch's tuned peak LR
there, scaled by 128 / hidden_size (the bench's final model is 128 wide; the 1/width scaling is the usual muP-style
assumption, not measured here). The best plan (bench/budget_report.py) is, among the grid plans and lever
combinations run at every seed, the one whose worst seed saved most FLOPs to reach scratch's final bits/byte.
MEASURED, bench/README.md's saving-versus-budget table, is data: measured_savings.json beside this module, which
bench/budget_report.py writes from the saved runs (tests/unit/plan/test_planner.py checks that the two agree). Its
saving is compute-equivalent: 1 - FLOPs / the FLOPs scratch needs to reach the plan's final loss, read off scratch's
finals at the sweep's budgets (what the same model would cost from scratch; reaching scratch's own final loss
sooner, the crossing saving, flatters small budgets: 69% against 34% at 1 token/parameter on seed 0). Where
bench/clock.py has measured a budget (a curve of scratch runs, plans chosen on seeds 0-2), its row replaces the
sweep's there. A budget far from every measured one is planned from the nearest and the explanation says so. Where
that plan did not save FLOPs in every seed (one that never reached scratch's loss counts as no saving), the plan is
"scratch": do not grow; family mode (`family=True`: the user wants the smaller models too) plans the growth anyway.
Where the row also measured the plan's no-growth control (control_of: scratch with the same data curriculum,
sequence-length warm-up and LR decay) and the growth did not save more than it at every seed where both ran, the
plan is that control: the curricula pay, the growth does not.
A final model named by a preset or a schedule file, and the plan of a run (`--schedule auto`): presets.py's
`final_model` and `plan_for_run` (this module imports no preset: the presets are made by it).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from importlib import resources

from megababel.config import ConfigError, LlamaConfig
from megababel.model.counters import config_parameters, flops_per_token
from megababel.plan.wall_clock import ThroughputTable, WallClock, wall_clock


@dataclass(frozen=True)
class Measured:
    """One row of the measured saving-versus-budget table (measured_savings.json: bench/budget_sweep.py, final
    model 1.32M)."""
    tokens_per_parameter: float      # scratch's training tokens / all parameters (embeddings included)
    plan: str                        # the best growth plan there, levers included
    lr: float                        # scratch's tuned peak LR at hidden 128
    flop_savings: tuple              # that plan's FLOP saving per seed; None: it never reached scratch's final loss
    saving: str = "crossing"         # how: "crossing" (the first FLOPs at which the plan's loss crosses scratch's
    #   final one), "compute-equivalent-finals" (bench/budget_sweep.py: 1 - FLOPs / scratch's FLOPs to the plan's final
    #   loss, read off scratch's finals at the sweep's budgets; past the largest, its lower bound if scratch's loss is
    #   convex in log FLOPs) or "compute-equivalent" (bench/clock.py: the same on a curve of scratch runs; a seed
    #   past the curve's end counts at its lower bound)
    crossing_savings: tuple = ()     # with "compute-equivalent-finals": the crossing saving per seed, for reference
    precision: str = "bf16"          # what the runs trained in ("fp32": bench/clock.py on a CPU without native bf16)
    control: str | None = None       # the plan's no-growth control (control_of), where the row measured it
    control_savings: tuple = ()      # its saving per seed, aligned with flop_savings (None: not run at that seed)

    @property
    def seeds(self) -> int:
        return len(self.flop_savings)

    @property
    def pays(self) -> bool:
        """Growing pays when every seed saved FLOPs (reached scratch's final loss sooner). Not the median: at 20
        tokens/parameter the median seed saved 1% while another never got there and the loss at equal FLOPs was
        level on average, a saving inside the seed noise that no one should plan on."""
        return all(v is not None and v > 0 for v in self.flop_savings)

    @property
    def growth_adds(self) -> bool | None:
        """Did the growth save more than its no-growth control at every seed where both ran? None: no control
        ran (growing is then judged against plain scratch alone)."""
        pairs = [(grown, control) for grown, control in zip(self.flop_savings, self.control_savings)
                 if control is not None]
        if not pairs:
            return None
        return all(grown is not None and grown > control for grown, control in pairs)

    def saving_text(self) -> str:
        per_seed = ", ".join("never" if v is None else f"{100 * v:.0f}%" for v in self.flop_savings)
        never = " (never: that seed did not reach it)" if None in self.flop_savings else ""
        if self.saving == "compute-equivalent":
            runs = "" if self.precision == "bf16" else f", {self.precision} runs"
            text = (f"compute-equivalent FLOP saving per seed (against scratch's curve, bench/clock.py{runs}): "
                    f"{per_seed}{never}")
            if self.growth_adds is not None:
                controls = ", ".join("not run" if v is None else f"{100 * v:.0f}%" for v in self.control_savings)
                text += (f"; its curricula without growth ({self.control}) saved {controls}: the growth "
                         + ("added to them at every seed" if self.growth_adds else "did not add to them at every "
                            "seed"))
            return text
        if self.saving == "compute-equivalent-finals":
            crossing = ", ".join("never" if v is None else f"{100 * v:.0f}%" for v in self.crossing_savings)
            return (f"compute-equivalent FLOP saving per seed (against scratch's finals at the measured budgets, "
                    f"bench/budget_sweep.py; a seed past the largest counts at its lower bound if scratch's loss is "
                    f"convex in log FLOPs): {per_seed}{never}; it reached scratch's own final loss with {crossing} "
                    f"fewer FLOPs")
        return f"FLOP saving to scratch's final loss per seed: {per_seed}{never}"


MEASURED_FILE = "measured_savings.json"     # package data of megababel.plan: bench/budget_report.py, bench/clock.py


def read_measured(text: str | None = None) -> tuple[tuple[Measured, ...], dict]:
    """The measured table (rows by budget) and the final model it was measured on (with its "parameters"), from
    measured_savings.json's `text` (default: the package's file)."""
    if text is None:
        text = resources.files("megababel.plan").joinpath(MEASURED_FILE).read_text()
    data = json.loads(text)
    rows = tuple(Measured(row["tokens_per_parameter"], row["plan"], row["lr"], tuple(row["flop_savings"]),
                          row.get("saving", "crossing"), tuple(row.get("crossing_savings", ())),
                          row.get("precision", "bf16"), row.get("control"), tuple(row.get("control_savings", ())))
                 for row in data["rows"])
    return tuple(sorted(rows, key=lambda m: m.tokens_per_parameter)), data["final_model"]


MEASURED, MEASURED_FINAL = read_measured()
BENCH_HIDDEN = MEASURED_FINAL["hidden_size"]      # the measured final model's width, which the tuned LRs are for
GENERATION_WIDTHS = {"g1": (0.5,), "g2": (0.5, 1.0), "g3": (0.5, 0.75, 1.0)}   # hidden / final hidden, per generation
MIN_STEPS = 20


# what a plan's explanation says of each lever it has, in this order
LEVER_EXPLANATIONS = {
    "narrow": "the first generation has the final's heads at half its head_dim; the first growth doubles head_dim "
              "(exact: every head twice as wide, RoPE kept)",
    "easyfirst": "data curriculum: the first generation reads the easier half of the data by vocabulary rarity, the "
                 "later ones both halves equally (the run's --data is named main)",
    "simplefirst": "data curriculum: the first generation reads half its sequences from a simpler dataset (--data "
                   "main=DIR simple=DIR), the later ones only main",
    "seqwarm": "sequence-length warm-up: each generation trains at half the next one's sequence length, the last at "
               "the run's (validation always at the run's)",
    "copy": "the depth growth stacks copies of the trained layers (G_stack): it does not keep the function (the loss "
            "jumps at that growth and recovers); every other growth does",
}


@dataclass
class Plan:
    name: str
    schedule: dict
    measured: Measured
    tokens_per_parameter: float
    scratch_steps: int
    notes: list
    wall: "WallClock | None" = None       # the plan priced on a device (wall_clock.py), None: not priced

    def wall_text(self) -> str | None:
        """The measured FLOP saving per seed read as wall-clock on the priced device."""
        if self.wall is None or self.name == "scratch":
            return None
        savings = [self.wall.saving(v) for v in self.measured.flop_savings]
        speeds = ", ".join(f"{100 * v:.0f}%" for v in self.wall.relative_speeds())
        per_seed = ", ".join("never" if v is None else f"{100 * v:.0f}%" for v in savings)
        text = (f"wall-clock on {self.wall.table.device} ({self.wall.table.label}): the generations train at "
                f"{speeds} of the final model's FLOP/s, so the FLOP saving per seed is a wall-clock saving of "
                f"{per_seed} (each generation's FLOPs at its size's measured throughput: megababel/plan/"
                f"throughput.json)")
        if any(speed < 0.9 for speed in self.wall.relative_speeds()[:-1]):
            text += ("; --schedule auto (or --fill-micro-batch) runs the small generations at larger micro batches "
                     "where the global batch accumulates gradients (not priced here: its effect on a GPU is not "
                     "measured yet)")
        outside = self.wall.outside()
        if outside:
            sizes = self.wall.table.rows
            text += (f"; sizes outside the measured {_size(sizes[0][0])}-{_size(sizes[-1][0])} "
                     f"({', '.join(_size(p) for p in outside)}) are priced at the nearest measured size")
        return text

    def explain(self) -> str:
        m = self.measured
        lines = [f"plan {self.name}: budget {self.tokens_per_parameter:.3g} tokens/parameter; measured at "
                 f"{m.tokens_per_parameter:g} tokens/parameter (bench/README.md): best plan {m.plan}, "
                 f"{m.saving_text()}"]
        if self.name == "scratch":
            lines.append("do not grow: growing did not pay at this budget; train the final model from scratch. For "
                         "the smaller models too (a model family from one run), plan in family mode: "
                         "tools/plan_growth.py --family, or launch/train.py --schedule auto --keep-generations")
        levers = [lever.rstrip("0123456789.") for lever in self.name.split("+")[1:]]     # easyfirst5 -> easyfirst
        lines += [text for lever, text in LEVER_EXPLANATIONS.items() if lever in levers]
        if self.wall_text():
            lines.append(self.wall_text())
        if self.name != "scratch" and not m.pays:
            lines.append(f"family mode: {self.name} is planned for its family of smaller models; at this budget "
                         f"growing did not save FLOPs in every seed: expect the final model to cost about as much as "
                         f"training it alone, or more")
        return "\n".join(lines + [f"note: {n}" for n in self.notes])


def _size(parameters: float) -> str:
    return f"{parameters / 1e9:.3g}B" if parameters >= 1e9 else f"{parameters / 1e6:.3g}M"


def _round_to(value: float, multiple: int) -> int:
    return max(multiple, int(round(value / multiple)) * multiple)


def generation_configs(final: LlamaConfig, plan: str, vocab_stage: int | None,
                       depth_factor: int = 2, narrow: bool = False) -> list[LlamaConfig]:
    """The generations of `plan` ("g1", "g2", "g3"), first to final; `vocab_stage`: the first generation's
    vocabulary (a vocabulary stage; None: the final's); `depth_factor`: the depth grows by this factor in its one
    growth (the +x4 lever: 4); `narrow` (the +narrow lever): every generation has the final's heads, the first at
    half the final's head_dim (the same width, twice the heads of the plain plan), the others at the final's
    head_dim (an attention wider than hidden_size until the width catches up)."""
    if plan not in GENERATION_WIDTHS:
        raise ConfigError.about("plan", f"unknown plan {plan!r}; plans: {sorted(GENERATION_WIDTHS)} or scratch")
    if final.num_hidden_layers % depth_factor:
        raise ConfigError.about("num_hidden_layers", f"{final.num_hidden_layers} does not divide by {depth_factor}: "
                                f"the plan starts at 1/{depth_factor} of the depth and grows it {depth_factor}x; use "
                                f"a multiple of {depth_factor} layers")
    group = final.num_attention_heads // final.num_key_value_heads
    configs, previous = [], 0
    for fraction in GENERATION_WIDTHS[plan]:
        # the nearest whole number of key/value groups (14 heads: 7, 11, 14 for g3), each generation wider than the
        # last
        heads = group * math.floor(final.num_attention_heads * fraction / group + 0.5)
        if not previous < heads <= final.num_attention_heads or (fraction < 1) == (heads == final.num_attention_heads):
            raise ConfigError.about("hidden_size", f"{final.hidden_size} ({final.num_attention_heads} heads of "
                                    f"{final.head_dim}) has no {fraction:g}x width generation of whole heads in "
                                    f"key/value groups of {group} for plan {plan}; use more heads (a head count "
                                    f"divisible by {4 * group} gives every plan exact widths)")
        previous = heads
        width = heads / final.num_attention_heads
        configs.append(LlamaConfig(**dict(
            final.to_dict(), hidden_size=heads * final.head_dim, num_attention_heads=heads,
            num_key_value_heads=heads // group, intermediate_size=_round_to(final.intermediate_size * width, 8),
            num_hidden_layers=final.num_hidden_layers // depth_factor, vocab_size=final.vocab_size)))
    configs[0] = LlamaConfig(**dict(configs[0].to_dict(), vocab_size=vocab_stage or final.vocab_size))
    if narrow:
        heads = dict(num_attention_heads=final.num_attention_heads, num_key_value_heads=final.num_key_value_heads)
        if final.head_dim % 4 or configs[0].hidden_size * 2 != final.attention_width:
            raise ConfigError.about("plan", f"+narrow starts at half the final's head_dim and its heads: it needs a "
                                    f"first generation half as wide as the final's attention and a head_dim "
                                    f"divisible by 4 (final {final.hidden_size}, head_dim {final.head_dim})")
        configs = [LlamaConfig(**dict(c.to_dict(), **heads, head_dim=final.head_dim // (2 if i == 0 else 1)))
                   for i, c in enumerate(configs)]
    configs.append(final)
    return configs


def _events(configs: list[LlamaConfig], levers: dict | None = None) -> list[dict]:
    """The growth events between consecutive generations: width (+ FFN) while the width changes, depth at the end; g1
    does both at once. The vocabulary reaches the final's at the first growth. New layers are identity layers
    interleaved with the old ones, or with +copy the trained layers stacked again on top (G_stack)."""
    levers = levers or LEVER_DEFAULTS
    events = []
    for before, after in zip(configs, configs[1:]):
        event = {}
        if after.head_dim != before.head_dim:
            event.update(head_dim=after.head_dim)
        if after.hidden_size != before.hidden_size:
            event.update(hidden_size=after.hidden_size, intermediate_size=after.intermediate_size)
            if after.attention_width != after.hidden_size or before.attention_width != before.hidden_size:
                event.update(num_attention_heads=after.num_attention_heads)     # the width does not tile hidden
            if levers["zero_width"]:
                event.update(width_init="zero", heads_init="zero", ffn_init="zero")
        if after.num_hidden_layers != before.num_hidden_layers:
            old, new = before.num_hidden_layers, after.num_hidden_layers
            if levers["depth_init"] == "copy":
                event.update(num_hidden_layers=new, layer_positions="append", depth_init="copy",
                             copy_from=[i % old for i in range(new - old)])
            else:
                event.update(num_hidden_layers=new, layer_positions="interleave")
        if event:
            events.append(event)
    return events


# the data curricula levers: (the first generation's mixture, every later generation's); "main" is the run's dataset
DATA_CURRICULA = {
    "easyfirst": ({"main[rarity:0-0.5]": 1.0}, {"main[rarity:0-0.5]": 0.5, "main[rarity:0.5-1]": 0.5}),
    "simplefirst": ({"main": 0.5, "simple": 0.5}, {"main": 1.0, "simple": 0.0}),
}
LEVER_DEFAULTS = dict(rewarm=0.0, halfbatch=False, depth_factor=2, depth_init="identity", zero_width=False,
                      generation_lr=False, narrow=False, wsd=False, seqwarm=False, data=None, data_switch=None,
                      seqwarm_switch=None)
SCRATCH_SEQWARM_CHANGES = 3     # scratch+seqwarmP warms up like a g3 plan: three doublings of the sequence length


def _percent(lever: str, name: str) -> float | None:
    """P of +nameP (None for a bare +name), refused unless 0 < P < 100."""
    switch = lever.removeprefix(name)
    if switch and not (switch.replace(".", "", 1).isdigit() and 0 < float(switch) < 100):
        raise ConfigError.about("plan", f"+{lever}: the switch +{name}P needs 0 < P < 100 (% of the run's steps), "
                                        f"got {switch!r}")
    return float(switch) if switch else None


def parse_levers(levers: list[str]) -> dict:
    """A plan name's +levers (bench/budget_sweep.py --levers measures them; see the module docstring)."""
    options = dict(LEVER_DEFAULTS)
    for lever in levers:
        if lever.startswith("rewarm") and lever[6:].replace(".", "", 1).isdigit():
            options["rewarm"] = float(lever[6:])
        elif lever.startswith("seqwarm"):
            options.update(seqwarm=True, seqwarm_switch=_percent(lever, "seqwarm"))
        elif lever.startswith(tuple(DATA_CURRICULA)):
            curriculum = next(name for name in DATA_CURRICULA if lever.startswith(name))
            switch = _percent(lever, curriculum)
            if options["data"] is not None:
                raise ConfigError.about("plan", f"+{options['data']} and +{lever} are two data curricula: pick one")
            options.update(data=curriculum, data_switch=switch)
        elif lever in ("halfbatch", "copy", "x4", "zerowidth", "genlr", "narrow", "wsd"):
            options.update(dict(halfbatch=dict(halfbatch=True), copy=dict(depth_init="copy"),
                                x4=dict(depth_factor=4), zerowidth=dict(zero_width=True),
                                genlr=dict(generation_lr=True), narrow=dict(narrow=True), wsd=dict(wsd=True))[lever])
        else:
            raise ConfigError.about("plan", f"unknown lever +{lever} in {levers}: levers are +rewarmP, +halfbatch, "
                                    f"+copy, +x4, +zerowidth, +genlr, +narrow, +wsd, +seqwarm[P], +easyfirst[P] "
                                    f"and +simplefirst[P]")
    return options


def plan_schedule(final: LlamaConfig, name: str, scratch_steps: int, seq_len: int, tokens_per_step: int, lr: float,
                  vocab_stage: int | None = None) -> dict:
    """The schedule of plan `name` (e.g. "g3@10-vocab", "scratch") ending at the final model, at the training FLOPs of
    `scratch_steps` steps of the final model. `vocab_stage`: the first generation's vocabulary (a vocabulary stage)
    of a -vocab plan (default half the final's)."""
    training = dict(lr=lr, warmup_steps=max(10, scratch_steps // 20), min_lr_ratio=0.1, weight_decay=0.1)
    model_fields = dict(multiple_of=final.multiple_of, max_position_embeddings=final.max_position_embeddings)
    name, *lever_names = name.split("+")
    levers = parse_levers(lever_names)
    if levers["wsd"]:
        training.update(lr_decay="wsd", decay_fraction=0.2)
    if name == "scratch":
        if dict(levers, wsd=False, data=None, data_switch=None, seqwarm=False, seqwarm_switch=None) != LEVER_DEFAULTS:
            raise ConfigError.about("plan", f"scratch takes only the +wsd lever, a data curriculum with its switch "
                                            f"(+easyfirstP) and +seqwarmP, got {lever_names}")
        spec = dict(model=final.to_dict(), training=dict(training, steps=scratch_steps), growths=[])
        if levers["data"] is not None and levers["data_switch"] is None:
            raise ConfigError.about("plan", f"scratch+{levers['data']} has no growth to switch at: give the switch, "
                                            f"+{levers['data']}P (the first P% of the steps)")
        if levers["seqwarm"] and levers["seqwarm_switch"] is None:
            raise ConfigError.about("plan", "scratch+seqwarm has no generations to warm up by: give +seqwarmP (the "
                                            "lengths of g3@P+seqwarm, changed at P% of the steps, then evenly)")
        return _with_curriculum(spec, levers, seq_len)
    if levers["seqwarm_switch"] is not None:
        raise ConfigError.about("plan", f"+seqwarm{levers['seqwarm_switch']:g} is scratch's sequence-length warm-up; "
                                        f"a grown plan warms up by generation: use +seqwarm")
    rewarm, half = levers["rewarm"], levers["halfbatch"]
    plan, _, rest = name.partition("@")
    vocab = rest.endswith("-vocab")
    first = int(rest.removesuffix("-vocab")) / 100
    configs = generation_configs(final, plan, (vocab_stage or final.vocab_size // 2) if vocab else None,
                                 levers["depth_factor"], levers["narrow"])
    events = _events(configs, levers)
    configs = [configs[0]] + [c for c, n in zip(configs[1:], configs) if _events([n, c])]
    total = scratch_steps * flops_per_token(final, seq_len) * tokens_per_step
    fractions = [first + i * (1 - first) / len(events) for i in range(len(events))] + [1.0]
    batches = [tokens_per_step // 2 if half else tokens_per_step] * len(events) + [tokens_per_step]
    seq_lens = [seq_len >> (len(events) - i) if levers["seqwarm"] else seq_len for i in range(len(events) + 1)]
    if levers["seqwarm"] and seq_lens[0] << len(events) != seq_len:
        raise ConfigError.about("seq_len", f"+seqwarm halves the sequence length {len(events)} times: {seq_len} is "
                                f"not divisible by {2 ** len(events)}; use a power of two such as 2048")
    at_steps, done, previous = [], 0.0, 0.0
    for config, fraction, batch, length in zip(configs, fractions, batches, seq_lens):
        done += (fraction - previous) * total / (flops_per_token(config, length) * batch)   # at its FLOPs/token
        at_steps.append(round(done))
        previous = fraction
    growths = [dict(event, at_step=step, **({"vocab_size": final.vocab_size} if vocab and i == 0 else {}))
               for i, (event, step) in enumerate(zip(events, at_steps))]
    if levers["data"] is not None and levers["data_switch"] is None:   # the first generation's curriculum, then
        first_data, later = DATA_CURRICULA[levers["data"]]                # the main data as it is
        training["data"] = first_data
        growths[0]["data"] = later
    if levers["seqwarm"]:
        training["seq_len"] = seq_lens[0]
        for growth, length in zip(growths, seq_lens[1:]):
            growth["seq_len"] = length
    for growth in growths:
        if rewarm:
            growth["rewarmup_steps"] = max(1, round(rewarm / 100 * scratch_steps))
    if half:
        training["global_batch_tokens"] = tokens_per_step // 2
        growths[-1]["global_batch_tokens"] = tokens_per_step
    if levers["generation_lr"]:      # each generation's peak LR by its width, lr x final / its hidden size
        training["lr"] = lr * final.hidden_size / configs[0].hidden_size
        for growth, config in zip(growths, configs[1:]):
            growth["lr"] = lr * final.hidden_size / config.hidden_size
    return _with_curriculum(dict(model=dict(configs[0].to_dict(), **model_fields),
                                 training=dict(training, steps=at_steps[-1]), growths=growths), levers)


def control_of(name: str, scratch_steps: int, first_growth_step: int) -> str | None:
    """The no-growth control of grown plan `name` (whose first growth is at `first_growth_step`, at the FLOPs of
    `scratch_steps` steps of scratch): scratch with the plan's levers that are not about the model, placed where
    the plan has them. Its data curriculum switches at the step the plan first grows (the same token stream
    until there), its sequence-length warm-up changes where g3@P would grow, its LR decays as the plan's. Against
    it, a plan's gain is the growth's alone. None where the plan has none of these levers (scratch is its control).
    Switches are named to 0.01% ("scratch+easyfirst11.49")."""
    plan, *lever_names = name.split("+")
    if plan == "scratch":
        return None
    levers, controls = parse_levers(lever_names), []
    if levers["data"] is not None:
        switch = levers["data_switch"] or 100 * first_growth_step / scratch_steps
        controls.append(f"{levers['data']}{round(switch, 2):g}")
    if levers["seqwarm"]:
        controls.append(f"seqwarm{plan.partition('@')[2].removesuffix('-vocab')}")
    if levers["wsd"]:
        controls.append("wsd")
    return "+".join(["scratch"] + controls) if controls else None


def _with_curriculum(spec: dict, levers: dict, seq_len: int | None = None) -> dict:
    """The schedule's curriculum changes of the switched levers (schedule.py refuses one at a growth's step):
    +easyfirstP / +simplefirstP: the curriculum's first mixture from step 0, its later one from P% of the steps on;
    +seqwarmP (scratch): seq_len / 8, / 4, / 2, then seq_len, changing at P% of the steps and then evenly, where
    g3@P's growths would be; one change where both fall on the same step."""
    steps, training, changes = spec["training"]["steps"], dict(spec["training"]), {}
    if levers["data_switch"] is not None:
        first_data, later = DATA_CURRICULA[levers["data"]]
        training["data"] = first_data
        changes.setdefault(max(1, round(levers["data_switch"] / 100 * steps)), {})["data"] = later
    if levers["seqwarm_switch"] is not None:
        n, first = SCRATCH_SEQWARM_CHANGES, levers["seqwarm_switch"] / 100
        if seq_len % (1 << n):
            raise ConfigError.about("seq_len", f"+seqwarm{levers['seqwarm_switch']:g} halves the sequence length {n} "
                                    f"times: {seq_len} is not divisible by {1 << n}; use a power of two such as 2048")
        training["seq_len"] = seq_len >> n
        for i in range(n):
            at = max(1, round((first + i * (1 - first) / n) * steps))
            changes.setdefault(at, {})["seq_len"] = seq_len >> (n - 1 - i)
    if not changes:
        return spec
    curriculum = [dict(at_step=at, **change) for at, change in sorted(changes.items())]
    return dict(spec, training=training, curriculum=curriculum)


def plan_growth(final: LlamaConfig, tokens: int | None = None, flops: float | None = None, seq_len: int = 2048,
                tokens_per_step: int = 2048 * 8, lr: float | None = None, vocab_stages=None, family: bool = False,
                levers: tuple = (), table=MEASURED, device: str | None = "h200") -> Plan:
    """The measured-best plan for training `final` on `tokens` (scratch's training tokens) or `flops` (training
    FLOPs); "scratch" (do not grow) where growing did not pay, unless `family` (the smaller models are wanted too).
    `vocab_stages`: the vocabulary stages the data has (None: any); `lr`: a peak LR instead of the rule's; `levers`:
    levers added to the measured plan (e.g. ("narrow",): more, narrower heads at the start, which tensor parallelism
    may need); `device`: price the plan's wall-clock on that device's throughput table (wall_clock.py; None: do
    not)."""
    if (tokens is None) == (flops is None):
        raise ConfigError.about("budget", "give exactly one of tokens or flops")
    if tokens_per_step <= 0 or seq_len <= 0:
        raise ConfigError.about("tokens_per_step", f"tokens per step and seq_len must be positive, got "
                                f"{tokens_per_step} and {seq_len}")
    if tokens is None:
        if not (flops > 0 and math.isfinite(flops)):
            raise ConfigError.about("flops", f"must be a positive number, got {flops}")
        tokens = flops / flops_per_token(final, seq_len)
    if not (tokens > 0 and math.isfinite(tokens)):
        raise ConfigError.about("tokens", f"must be a positive number, got {tokens}")
    steps = round(tokens / tokens_per_step)
    if steps < MIN_STEPS:
        raise ConfigError.about("tokens", f"{tokens:.3g} tokens are {steps} optimizer steps of {tokens_per_step} "
                                f"tokens; a plan needs at least {MIN_STEPS} (warm-up and growth steps need room): "
                                f"raise the budget or lower the tokens per step")
    per_parameter = tokens / config_parameters(final)
    measured = min(table, key=lambda m: abs(math.log(m.tokens_per_parameter / per_parameter)))
    notes = []
    ratio = per_parameter / measured.tokens_per_parameter
    if not 0.5 <= ratio <= 2:
        notes.append(f"no measurement within 2x of {per_parameter:.3g} tokens/parameter: planned from the nearest "
                     f"({measured.tokens_per_parameter:g}); the saving there need not hold here")
    name, vocab_stage = (measured.plan if measured.pays or family else "scratch"), None
    parse_levers(list(levers))          # an unknown lever is refused even where the plan is scratch
    if name != "scratch" and not family and measured.growth_adds is False:
        name = measured.control         # the curricula paid, the growth did not add to them at every seed
        notes.append(f"{measured.plan} did not save more than its no-growth control {name} at every seed: "
                     f"planned as that control (the same curricula, no growth)"
                     + (f"; the levers asked for ({', '.join(levers)}) are not applied to it" if levers else ""))
    elif name != "scratch":
        name += "".join(f"+{lever}" for lever in levers if lever not in name.split("+")[1:])
    plan, plus, lever_names = name.partition("+")     # "g3@2-vocab+copy": the plan, then its levers
    if plan.endswith("-vocab"):
        vocab_stage = final.vocab_size // 2
        if vocab_stages is not None:
            smaller = [s for s in vocab_stages if s < final.vocab_size]
            vocab_stage = max([s for s in smaller if s <= final.vocab_size // 2] or smaller or [0]) or None
            if vocab_stage is None:
                name = plan.removesuffix("-vocab") + plus + lever_names
                notes.append(f"the data has no vocabulary stage below {final.vocab_size}: planned without the "
                             f"vocabulary stage")
    if lr is None:
        lr = measured.lr * BENCH_HIDDEN / final.hidden_size
        if final.hidden_size != BENCH_HIDDEN:
            notes.append(f"peak LR {lr:.3g} = measured {measured.lr:g} x {BENCH_HIDDEN} / hidden_size (an assumed "
                         f"1/width scaling; pass an LR to override)")
    try:
        schedule = plan_schedule(final, name, steps, seq_len, tokens_per_step, lr, vocab_stage)
    except ConfigError as e:
        # the measured plan's +narrow needs a first generation half as wide as the final's attention; where this
        # final has none, plan without it (a lever the caller asked for is refused instead)
        if "+narrow" not in name or "narrow" in levers or "+narrow" not in str(e):
            raise
        name = name.replace("+narrow", "")
        notes.append(f"planned without +narrow (the measured plan's narrower heads at the start): {e.problem}")
        schedule = plan_schedule(final, name, steps, seq_len, tokens_per_step, lr, vocab_stage)
    wall = None
    if device is not None and name != "scratch":
        wall = wall_clock(schedule, final, seq_len, tokens_per_step, steps, ThroughputTable.load(device))
    return Plan(name, schedule, measured, per_parameter, steps, notes, wall)


def data_vocab_stages(data) -> list[int]:
    """The vocabulary stages a dataset directory (tools/preprocess_data.py) holds."""
    from pathlib import Path
    return sorted(int(d.name.removeprefix("vocab_")) for d in Path(data).glob("vocab_*")
                  if d.name.removeprefix("vocab_").isdigit())


"""Schedule presets, and `load_schedule`, which takes a preset name or a schedule file.

    from megababel.plan.presets import PRESETS, load_schedule
    schedule = load_schedule("tiny", tokens_per_step=1024)       # or a .yaml / .yml / .json file
    sorted(PRESETS), "seed_2x" in PRESETS, PRESETS["tiny"]       # a schedule spec: model, training, growths

Most presets are made by the growth planner (megababel/plan/planner.py) for their final model and budget. Nothing is
planned at import time: `PRESETS` is a mapping whose values are made the first time they are asked for and kept
(each access returns a copy, which the caller may change). Importing this module does not import the planner:
loading a schedule file does not need it.

Modules, bottom up, no import cycle: schedule.py (the format, parsing and validation), planner.py (plans, from the
measured savings; it imports neither of the others), presets.py (this one: presets, which the planner makes when
asked, loading by name or path, and what needs both: `final_model` of a preset or file, `plan_for_run`).
"""
from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from megababel.config import ConfigError, LlamaConfig
from megababel.model.counters import config_parameters
from megababel.plan.schedule import Schedule, load_schedule_file, parse_schedule, with_overrides

if TYPE_CHECKING:
    from megababel.plan.planner import Plan


def planned_preset(final: dict, tokens: float, seq_len: int, tokens_per_step: int, vocab_stages: list,
                   batch_in_schedule: bool = False, family: bool = False, levers: tuple = ()) -> dict:
    """A preset made by the growth planner for the `final` model at a budget of `tokens` (scratch's; a float below
    1000 means tokens per parameter), with the growths at fractions of the run, so that --steps scales the whole
    plan. `vocab_stages`: the vocabulary stages of the data; `batch_in_schedule`: the preset fixes its tokens per
    step (global batch); `family`: planned in family mode (grows even where growing saved nothing, for the smaller
    models); `levers`: levers added to the measured plan."""
    from megababel.plan.planner import plan_growth
    if tokens < 1000:
        tokens *= config_parameters(LlamaConfig(**final))
    spec = plan_growth(LlamaConfig(**final), tokens=tokens, seq_len=seq_len, tokens_per_step=tokens_per_step,
                       vocab_stages=vocab_stages, family=family, levers=levers).schedule
    steps = spec["training"]["steps"]
    spec["growths"] = [dict({k: v for k, v in g.items() if k != "at_step"}, at_fraction=g["at_step"] / steps)
                       for g in spec["growths"]]
    if batch_in_schedule:
        spec["training"].setdefault("global_batch_tokens", tokens_per_step)
    return spec


# the arguments of `planned_preset` for the presets the planner makes
PLANNED = {
    # The default, made by the growth planner: a 1.8M-parameter final model (hidden 128, 4 layers, vocabulary 4000)
    # on the embedded corpus (vocabulary stages 1000/2000/4000) at 0.25 tokens/parameter (450 steps of 8 x 128
    # tokens for scratch), so g3@10-vocab: half width and depth and vocabulary 2000, then 3/4 width + vocabulary
    # 4000 at 10% of the FLOPs, full width, then depth; 880 steps.
    "tiny": dict(final=dict(hidden_size=128, head_dim=16, num_hidden_layers=4, intermediate_size=352, multiple_of=32,
                            vocab_size=4000, max_position_embeddings=1024),
                 tokens=450 * 8 * 128, seq_len=128, tokens_per_step=8 * 128, vocab_stages=[1000, 2000, 4000]),
    # the planner's plan for the TinyStories benchmark's 10.5M final model (hidden 256, 8 layers, vocabulary 8000 of
    # the Llama 2 tokenizer) at its budget (150 steps of 8 x 256 tokens for scratch, 0.03 tokens/parameter).
    # --data: tools/preprocess_data.py --stages 2000 4000 8000 (or the benchmark's cache); --seq-len 256 --bf16
    "tinystories": dict(final=dict(hidden_size=256, head_dim=32, num_hidden_layers=8, intermediate_size=704,
                                   multiple_of=32, vocab_size=8000, max_position_embeddings=1024),
                        tokens=150 * 8 * 256, seq_len=256, tokens_per_step=8 * 256, vocab_stages=[2000, 4000, 8000]),
    # the seed's final model, the 1.05B Llama (hidden 1792, 24 layers, FFN 4864, head_dim 128, vocabulary 32000 of
    # Llama 2), planned for 20 tokens/parameter (21B tokens) at 256 sequences of 2048 tokens per step (gradient
    # accumulation fills the batch on fewer ranks). --data: a dataset with vocabulary stages 8000 16000 32000. At 20
    # tokens/parameter the measured best is g3@2-vocab+copy+narrow (first growth at 2% of the FLOPs, depth by
    # stacking the trained layers, which does not keep the function, narrower heads at the start): 7% fewer FLOPs
    # (5..11, 3 seeds, 1.32M final model; the same plan with wide heads 9% (2..16), no difference the benchmark can
    # see; bench/README.md). Planned in family mode, so it stays a growth plan should a re-measurement stop paying.
    # +narrow is asked for here whatever the measurement: every generation has the final's 14 heads, the first at
    # head_dim 64 (hidden 896), so tensor parallelism 2 divides every generation (7 heads of 128 would divide by
    # nothing); the first growth doubles head_dim, exactly.
    "seed": dict(final=dict(hidden_size=1792, head_dim=128, num_hidden_layers=24, intermediate_size=4864,
                            vocab_size=32000, max_position_embeddings=2048),
                 tokens=20.0, seq_len=2048, tokens_per_step=256 * 2048, vocab_stages=[8000, 16000, 32000],
                 batch_in_schedule=True, family=True, levers=("narrow",)),
}

# the presets written out by hand
FIXED = {
    # the seed notes' hand-made plan: ~49M parameters, about 2x per growth as the vocabulary grows, to the same
    # ~1.05B; what the growth-at-scale benchmarks (bench/seed_growth.py) and memory plans exercise
    "seed_2x": dict(
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
    # seed_2x for tensor parallelism 2, 4 and 8: every generation has 16 heads, so every head count (and every
    # growth's added FFN units and vocabulary rows) divides by 8, and the width grows by widening the heads
    # instead: head_dim 32 -> 64 -> 128, exact (RoPE kept). The attention (16 x head_dim) need not equal hidden_size,
    # as in Hugging Face's `head_dim`; the final model is the seed's hidden 1792, 24 layers, FFN 4864, head_dim 128,
    # with 16 heads instead of 14 (attention 2048 wide): 1.09B instead of 1.05B. Same vocabulary stages, about 2x
    # per growth: 49M -> 112M -> 223M -> 501M -> 1.09B.
    "seed_2x_tp": dict(
        model=dict(hidden_size=512, head_dim=32, num_attention_heads=16, num_hidden_layers=12, vocab_size=8000,
                   max_position_embeddings=2048),
        training=dict(steps=100_000, lr=6e-4, warmup_steps=2000, min_lr_ratio=0.1, weight_decay=0.1),
        growths=[dict(at_step=10_000, hidden_size=768, head_dim=64, num_attention_heads=16, intermediate_size=1792,
                      vocab_size=16000),
                 dict(at_step=25_000, hidden_size=1024, num_attention_heads=16, num_hidden_layers=14,
                      intermediate_size=2304, vocab_size=32000, layer_positions="interleave"),
                 dict(at_step=45_000, hidden_size=1280, head_dim=128, num_attention_heads=16, num_hidden_layers=18,
                      intermediate_size=3328, layer_positions="interleave"),
                 dict(at_step=70_000, hidden_size=1792, num_attention_heads=16, num_hidden_layers=24,
                      intermediate_size=4864, layer_positions="interleave")]),
}

PRESET_NAMES = (*PLANNED, *FIXED)


class _Presets(Mapping):
    """Preset name -> schedule spec, each made on first access and kept; every access returns a fresh copy.
    Membership, iteration and len() use the names only: `name in PRESETS` and `sorted(PRESETS)` plan nothing."""

    def __init__(self):
        self._made: dict[str, dict] = {}

    def __getitem__(self, name: str) -> dict:
        if name not in self._made:
            if name in PLANNED:
                self._made[name] = planned_preset(**PLANNED[name])
            elif name in FIXED:
                self._made[name] = FIXED[name]
            else:
                raise KeyError(name)
        return copy.deepcopy(self._made[name])

    def __contains__(self, name) -> bool:
        return name in PRESET_NAMES

    def __iter__(self) -> Iterator[str]:
        return iter(PRESET_NAMES)

    def __len__(self) -> int:
        return len(PRESET_NAMES)

    def __repr__(self) -> str:
        return f"<schedule presets {', '.join(PRESET_NAMES)}>"


PRESETS = _Presets()


def preset(name: str) -> dict:
    """The schedule spec of preset `name` (made by the planner the first time it is asked for)."""
    if name not in PRESETS:
        raise ConfigError(f"schedule {name!r}: not a preset; presets: {sorted(PRESETS)}")
    return PRESETS[name]


def load_schedule(name_or_path: str | Path, tokens_per_step: int, overrides: dict | None = None) -> Schedule:
    """A preset name or a .yaml/.yml/.json file; `overrides` replace training fields (e.g. steps from the CLI)."""
    name = str(name_or_path)
    if name in PRESETS:
        return parse_schedule(with_overrides(PRESETS[name], overrides), tokens_per_step, name)
    if Path(name_or_path).is_file():
        return load_schedule_file(name_or_path, tokens_per_step, overrides)
    raise ConfigError(f"schedule {name_or_path!r}: not a preset ({sorted(PRESETS)}) nor a file")


def final_model(schedule: str | Path) -> LlamaConfig:
    """The final model of a preset name or schedule file (what --final names)."""
    return load_schedule(schedule, 1).final_config


def plan_for_run(run, tokens_per_step: int, data) -> Plan:
    """The planner's plan for a RunConfig with schedule "auto" (its final, a preset or file; its budget and seq_len)
    at `tokens_per_step`, for the vocabulary stages of the dataset `data`; a run that keeps its generations wants
    the family, so it is planned in family mode."""
    from megababel.plan.planner import data_vocab_stages, plan_growth
    final = final_model(run.final)
    tokens = run.tokens if run.tokens is not None else (
        None if run.tokens_per_parameter is None else run.tokens_per_parameter * config_parameters(final))
    return plan_growth(final, tokens=tokens, flops=run.flops, seq_len=run.seq_len, tokens_per_step=tokens_per_step,
                       vocab_stages=data_vocab_stages(data), family=run.keep_generations, device=throughput_device())


def throughput_device() -> str:
    """The throughput table (megababel/plan/throughput.json) that prices this machine: the H200's on any GPU (the
    one GPU measured so far; others differ), else the CPU's."""
    import torch
    return "h200" if torch.cuda.is_available() else "cpu"

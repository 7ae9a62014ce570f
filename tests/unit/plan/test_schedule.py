"""Schedules: validation errors, learning-rate curves (per generation vs global), Adam state kept vs reset."""
from __future__ import annotations

import json
import math
import re

import pytest
import torch

from megababel.config import ConfigError
from megababel.growth.events import GrowthEvent
from megababel.plan.presets import PRESETS, load_schedule
from megababel.plan.schedule import GROWTH_FIELDS, parse_schedule

MODEL = dict(hidden_size=64, head_dim=16, num_hidden_layers=2, multiple_of=32, vocab_size=96)
NAN, INF = math.nan, math.inf


def schedule(training=None, growths=None):
    return parse_schedule(dict(model=MODEL, training={**dict(steps=40, lr=1e-3, warmup_steps=4), **(training or {})},
                               growths=growths or []), tokens_per_step=128)


def refusal(call, *args) -> str:
    """The message of the ConfigError that call(*args) raises."""
    with pytest.raises(ConfigError) as refused:
        call(*args)
    message = str(refused.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("training, growths, message", [
    (dict(lr_schedule="cosine"), [], "training.lr_schedule"),
    (dict(lr_decay="linear"), [], "training.lr_decay"),
    (dict(lr_decay="wsd", decay_fraction=0.0), [], "training.decay_fraction"),
    (dict(lr_decay="wsd", decay_fraction=1.5), [], "training.decay_fraction"),
    (dict(decay_fraction=0.1), [], "training.decay_fraction: applies to training.lr_decay: wsd"),
    ({}, [dict(at_step=5, hidden_size=96, optimizer_state="fresh")], "growth 0.optimizer_state"),
    (dict(lr_schedule="global"), [dict(at_step=5, hidden_size=96, lr=1e-2)], "lr_schedule: per_generation"),
    ({}, [dict(at_step=5, hidden_size=96), dict(at_step=5, num_hidden_layers=4)], "growth 1.at_step"),
    ({}, [dict(at_step=40, hidden_size=96)], "end of training"),
])
def test_bad_schedules_name_the_field(training, growths, message):
    with pytest.raises(ConfigError, match=message):
        schedule(training, growths)


@pytest.mark.parametrize("training, field, expected", [
    (dict(steps=True), "training.steps", "got True (a boolean"),      # isinstance(True, int) holds in Python
    (dict(global_batch_tokens=65536.0), "training.global_batch_tokens", "positive integer"),
    (dict(seq_len=True), "training.seq_len", "a boolean"),
    (dict(seq_len=10**6), "training.seq_len", "exceeds the model's max_position_embeddings"),
    (dict(data={"wiki": 0.7, "stories": 0.2}), "training.data", "the weights sum to 0.9, not 1"),
    (dict(data={"wiki": 1.5, "stories": -0.5}), "training.data.stories", "a number >= 0"),
    (dict(data={"wiki[rarity:0.5-0.2]": 1.0}), "training.data", "0 <= LOW < HIGH <= 1"),
    (dict(data={"wiki rarity": 1.0}), "training.data", "is not NAME or NAME"),
    (dict(data=["wiki"]), "training.data", "a mapping source: weight"),
    (dict(steps=40.0), "training.steps", "positive integer"),
    (dict(steps=0), "training.steps", "positive integer"),
    (dict(warmup_steps=False), "training.warmup_steps", "integer >= 0"),
    (dict(warmup_steps=2.5), "training.warmup_steps", "integer >= 0"),
    (dict(warmup_steps=-1), "training.warmup_steps", "integer >= 0"),
    (dict(lr=True), "training.lr", "a boolean"),
    (dict(lr=NAN), "training.lr", "not finite"),
    (dict(lr=INF), "training.lr", "not finite"),
    (dict(lr=0.0), "training.lr", "> 0"),
    (dict(lr="3e-3"), "training.lr", "write 3.0e-3"),                 # how PyYAML reads `lr: 3e-3`
    (dict(weight_decay=-0.1), "training.weight_decay", ">= 0"),
    (dict(weight_decay=INF), "training.weight_decay", "not finite"),
    (dict(min_lr_ratio=1.5), "training.min_lr_ratio", "in [0, 1]"),
    (dict(min_lr_ratio=True), "training.min_lr_ratio", "a boolean"),
    (dict(min_lr_ratio=NAN), "training.min_lr_ratio", "not finite"),
    (dict(lr_schedule=None), "training.lr_schedule", "per_generation"),
])
def test_training_fields_are_strictly_typed(training, field, expected):
    message = refusal(schedule, training)
    assert f"schedule {field}: " in message and expected in message


FIRST_GROWTH = dict(at_step=5, hidden_size=96)
DEPTH = dict(at_step=10, num_hidden_layers=4)

# one bad value per field of a growth, as the second growth: (growth, the field named, what the message says)
BAD_GROWTHS = [
    (dict(at_step=True, num_hidden_layers=4), "at_step", "a boolean"),
    (dict(at_step=10.0, num_hidden_layers=4), "at_step", "positive integer"),
    (dict(at_tokens=True, num_hidden_layers=4), "at_tokens", "a boolean"),
    (dict(at_tokens=1.5e3, num_hidden_layers=4), "at_tokens", "positive integer"),
    (dict(at_fraction=True, num_hidden_layers=4), "at_fraction", "a boolean"),
    (dict(at_fraction=NAN, num_hidden_layers=4), "at_fraction", "not finite"),
    (dict(at_fraction=1.0, num_hidden_layers=4), "at_fraction", "strictly between 0 and 1"),
    (dict(DEPTH, lr=True), "lr", "a boolean"),
    (dict(DEPTH, lr=NAN), "lr", "not finite"),
    (dict(DEPTH, lr=-1e-3), "lr", "> 0"),
    (dict(DEPTH, warmup_steps=True), "warmup_steps", "a boolean"),
    (dict(DEPTH, warmup_steps=1.5), "warmup_steps", "integer >= 0"),
    (dict(DEPTH, global_batch_tokens=0), "global_batch_tokens", "positive integer"),
    (dict(DEPTH, seq_len=0), "seq_len", "positive integer"),
    (dict(DEPTH, seq_len=64.0), "seq_len", "positive integer"),
    (dict(DEPTH, seq_len=10**6), "seq_len", "exceeds the model's max_position_embeddings"),
    (dict(DEPTH, data={"wiki": 1.0}), "data", "give training.data too"),
    (dict(DEPTH, global_batch_tokens=True), "global_batch_tokens", "a boolean"),
    (dict(DEPTH, optimizer_state=True), "optimizer_state", "['keep', 'reset']"),
    (dict(DEPTH, rewarmup_steps=2.5), "rewarmup_steps", "an integer >= 0"),
    (dict(DEPTH, hidden_size=True), "hidden_size", "a boolean"),
    (dict(DEPTH, intermediate_size=512.0), "intermediate_size", "positive integer"),
    (dict(at_step=10, num_hidden_layers=NAN), "num_hidden_layers", "not finite"),
    (dict(at_step=10, vocab_size=-5), "vocab_size", "positive integer"),
    (dict(DEPTH, head_dim=24.5), "head_dim", "positive integer"),
    (dict(DEPTH, head_dim=3), "head_dim", "would shrink"),
    (dict(DEPTH, num_attention_heads=0), "num_attention_heads", "positive integer"),
    (dict(DEPTH, layer_positions="middle"), "layer_positions", "'append', 'interleave' or a list"),
    (dict(DEPTH, layer_positions=[True, 3]), "layer_positions", "'append', 'interleave' or a list"),
    (dict(DEPTH, depth_init="copy", copy_from="0"), "copy_from", "a list of old layer indices"),
    (dict(DEPTH, depth_init="copy", copy_from=[0.0, 1.0]), "copy_from", "a list of old layer indices"),
    (dict(DEPTH, width_init="magic"), "width_init", "['split', 'zero']"),
    (dict(DEPTH, heads_init="copy"), "heads_init", "['pairs', 'zero']"),
    (dict(DEPTH, ffn_init=None), "ffn_init", "['pairs', 'zero']"),
    (dict(DEPTH, depth_init="random"), "depth_init", "['identity', 'zero', 'copy']"),
    (dict(DEPTH, vocab_init=True), "vocab_init", "['mean', 'random']"),
    (dict(DEPTH, init_std=0), "init_std", "positive finite number"),
    (dict(DEPTH, init_std=True), "init_std", "a boolean"),
    (dict(DEPTH, init_std=INF), "init_std", "not finite"),
]


@pytest.mark.parametrize("growth, field, expected", BAD_GROWTHS)
def test_every_growth_field_is_validated_before_any_model_is_built(growth, field, expected):
    message = refusal(schedule, {}, [FIRST_GROWTH, growth])
    assert f"schedule growth 1.{field}: " in message and expected in message


def test_the_bad_growths_cover_every_growth_field():
    """A field added to GrowthEvent or to a schedule's growths needs its case above."""
    covered = {field for _, field, _ in BAD_GROWTHS}
    assert covered >= {f.name for f in GrowthEvent.__dataclass_fields__.values()} | GROWTH_FIELDS


@pytest.mark.parametrize("model, field, expected", [
    (dict(MODEL, hidden_size=True), "model.hidden_size", "a boolean"),
    (dict(MODEL, vocab_size=96.0), "model.vocab_size", "positive integer"),
    (dict(MODEL, rms_norm_eps=NAN), "model.rms_norm_eps", "not finite"),
    (dict(MODEL, rope_theta=INF), "model.rope_theta", "not finite"),
    (dict(MODEL, initializer_range=True), "model.initializer_range", "a boolean"),
    (dict(MODEL, hidden_size=72), "model.hidden_size", "not a multiple of head_dim 16"),
])
def test_model_fields_are_named_in_the_schedule(model, field, expected):
    message = refusal(parse_schedule, dict(model=model), 128)
    assert f"schedule {field}: " in message and expected in message


@pytest.mark.parametrize("spec, expected", [
    ([MODEL], "schedule: must be a mapping of sections"),
    (dict(model=[64]), "schedule model: a model config must be a mapping"),
    (dict(model=MODEL, training=5), "schedule training: must be a mapping"),
    (dict(model=MODEL, training=None), "schedule training: must be a mapping"),
    (dict(model=MODEL, growths=dict(a=1)), "schedule growths: must be a list"),
    (dict(model=MODEL, growths=[5]), "schedule growth 0: must be a mapping"),
    (dict(model={**MODEL, 1: 2, "n_embd": 3}), "unknown config field(s) [1, 'n_embd']"),
    (dict(model=MODEL, training={1: 2, "epochs": 3}), "schedule training: unknown field(s) [1, 'epochs']"),
])
def test_sections_of_the_wrong_shape_are_refused_cleanly(spec, expected):
    assert expected in refusal(parse_schedule, spec, 128)


TRAINING = "training: {steps: 40, lr: 1.0e-3}\n"
YAML_MODEL = "model: {hidden_size: 64, head_dim: 16, num_hidden_layers: 2, multiple_of: 32, vocab_size: 96}\n"


@pytest.mark.parametrize("name, text, expected", [
    ("block.yaml", YAML_MODEL + "training:\n  steps: 40\n  lr: 1.0e-3\n  steps: 50\n",
     "key 'steps' appears twice in one mapping (lines 3 and 5)"),
    ("flow.yml", "model: {hidden_size: 64, head_dim: 16, hidden_size: 32}\n" + TRAINING,
     "key 'hidden_size' appears twice in one mapping (line 1)"),
    ("sections.yaml", YAML_MODEL + TRAINING + YAML_MODEL, "key 'model' appears twice in one mapping (lines 1 and 3)"),
    ("growth.yaml", YAML_MODEL + TRAINING + "growths:\n  - {at_step: 5, hidden_size: 96, at_step: 6}\n",
     "key 'at_step' appears twice"),
    ("top.json", '{"model": {"hidden_size": 64}, "model": {"hidden_size": 64, "head_dim": 16}}',
     "key 'model' appears twice in one mapping"),
    ("nested.json", '{"model": {"hidden_size": 64, "head_dim": 16}, "training": {"lr": 1e-3, "lr": 2e-3}}',
     "key 'lr' appears twice in one mapping"),
])
def test_a_key_given_twice_in_a_file_is_refused(tmp_path, name, text, expected):
    path = tmp_path / name
    path.write_text(text)
    message = refusal(load_schedule, path, 128)
    assert message.startswith(f"schedule {path}: ") and expected in message and "remove one of them" in message


def test_yaml_merge_keys_may_still_be_overridden(tmp_path):
    """`<<: *base` then the same key is YAML's way to override a default, not a repeated key."""
    path = tmp_path / "merge.yaml"
    path.write_text("model:\n  <<: {hidden_size: 64, head_dim: 16, num_hidden_layers: 2, vocab_size: 96}\n"
                    "  hidden_size: 128\n" + TRAINING)
    assert load_schedule(path, 128).model.hidden_size == 128


@pytest.mark.parametrize("name, text, field", [
    ("nan.yaml", YAML_MODEL + "training: {steps: 40, lr: .nan}\n", "training.lr"),
    ("inf.yaml", YAML_MODEL + "training: {steps: 40, weight_decay: .inf}\n", "training.weight_decay"),
    ("growth.yaml", YAML_MODEL + TRAINING + "growths:\n  - {at_fraction: .nan, hidden_size: 96}\n",
     "growth 0.at_fraction"),
    ("model.yaml", YAML_MODEL.replace("}", ", rope_theta: -.inf}") + TRAINING, "model.rope_theta"),
    ("nan.json", json.dumps(dict(model=MODEL, training=dict(steps=40, lr=NAN))), "training.lr"),
    ("inf.json", json.dumps(dict(model=MODEL, growths=[dict(at_step=5, hidden_size=96, init_std=INF)])),
     "growth 0.init_std"),
])
def test_non_finite_numbers_in_files_are_refused(tmp_path, name, text, field):
    path = tmp_path / name
    path.write_text(text)
    message = refusal(load_schedule, path, 128)
    assert f"schedule {path}: {field}: " in message and "not finite" in message


def test_a_yaml_exponent_without_a_dot_gets_the_fix(tmp_path):
    path = tmp_path / "lr.yaml"
    path.write_text(YAML_MODEL + "training: {steps: 40, lr: 3e-3}\n")       # PyYAML reads 3e-3 as a string
    message = refusal(load_schedule, path, 128)           # the file is named: a run may have several schedules
    assert f"schedule {path}: training.lr: " in message and "write 3.0e-3" in message


def test_overrides_do_not_hide_a_training_section_of_the_wrong_shape(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(YAML_MODEL + "training: 5\n")
    assert f"schedule {path}: training: must be a mapping" in refusal(load_schedule, path, 128, {"steps": 10})


def test_well_typed_files_still_load(tmp_path):
    """ints are numbers (lr: 1) and `growths:` may be empty."""
    path = tmp_path / "ok.yaml"
    path.write_text(YAML_MODEL + "training: {steps: 40, lr: 1, weight_decay: 0, min_lr_ratio: 1}\ngrowths:\n")
    loaded = load_schedule(path, 128, {"steps": 30})
    assert (loaded.steps, loaded.lr, loaded.growths) == (30, 1, [])


def test_the_old_stages_key_still_works_but_is_deprecated(tmp_path):
    """`stages:` (the name of `growths:` before 0.2) loads the same schedule, with a FutureWarning (shown to users, as DeprecationWarning is not); both at once
    are refused. "stage" now means only a ZeRO stage or a vocabulary stage."""
    path = tmp_path / "old.yaml"
    path.write_text(YAML_MODEL + TRAINING + "stages:\n  - {at_step: 5, hidden_size: 96}\n")
    with pytest.warns(FutureWarning, match="schedule key `stages` is deprecated: rename it to `growths`"):
        old = load_schedule(path, 128)
    new = tmp_path / "new.yaml"
    new.write_text(YAML_MODEL + TRAINING + "growths:\n  - {at_step: 5, hidden_size: 96}\n")
    assert old.resolved() == load_schedule(new, 128).resolved() and len(old.growths) == 1
    with pytest.warns(FutureWarning, match="rename it to `growths`"):
        assert parse_schedule(dict(model=MODEL, training=dict(steps=40), stages=None), 128).growths == []
    assert "not both" in refusal(parse_schedule, dict(model=MODEL, stages=[], growths=[]), 128)


def test_presets_are_made_when_first_asked_for_not_at_import():
    """Importing the schedule format imports neither the planner nor the presets; importing the presets plans
    nothing; `in`, iteration and len() need no preset made; each access returns a copy."""
    import subprocess
    import sys
    check = ("import sys; import megababel.plan.schedule; "
             "assert 'megababel.plan.planner' not in sys.modules and 'megababel.plan.presets' not in sys.modules; "
             "from megababel.plan.presets import PRESETS, PRESET_NAMES, load_schedule; "
             "assert 'megababel.plan.planner' not in sys.modules; "
             "assert 'tiny' in PRESETS and 'nope' not in PRESETS and sorted(PRESETS) == sorted(PRESET_NAMES); "
             "assert len(PRESETS) == 5 and not PRESETS._made; "
             "PRESETS['seed_2x']; assert 'megababel.plan.planner' not in sys.modules; "
             "PRESETS['tiny']; assert 'megababel.plan.planner' in sys.modules and sorted(PRESETS._made) == "
             "['seed_2x', 'tiny']")
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    spec = PRESETS["seed_2x"]
    spec["training"]["steps"] = 1
    assert PRESETS["seed_2x"]["training"]["steps"] == 100_000          # the caller's copy, not the preset
    assert sorted(PRESETS) == ["seed", "seed_2x", "seed_2x_tp", "tiny", "tinystories"]
    with pytest.raises(KeyError):
        PRESETS["nope"]
    assert "not a preset" in refusal(load_schedule, "nope", 128)


def test_every_preset_parses():
    for name, spec in PRESETS.items():
        assert parse_schedule(spec, tokens_per_step=2048).steps > 0, name


def test_per_generation_curves_restart_at_birth_and_global_ignores_it():
    per_gen = schedule()
    one = schedule(dict(lr_schedule="global"))
    # a generation born at step 20 warms up from there under per_generation ...
    assert per_gen.group_lr(20, born=20, peak=1e-3, warmup=4) == pytest.approx(1e-3 / 4)
    # ... and follows the same curve as the generation born at 0 under global
    assert one.group_lr(20, born=20, peak=5e-3, warmup=4) == pytest.approx(one.group_lr(20, 0, 1e-3, 4))
    assert one.group_lr(20, 0, 1e-3, 4) == pytest.approx(per_gen.lr_at(20, 0, 1e-3, 4))
    # both decay to min_lr_ratio at the end
    assert per_gen.group_lr(39, 20, 1e-3, 4) == pytest.approx(1e-4, rel=0.1)


@pytest.mark.parametrize("lr_schedule", ["per_generation", "global"])
def test_wsd_holds_every_generation_at_its_peak_until_the_final_decay(lr_schedule):
    """40 steps, decay_fraction 0.25: the decay takes steps 30..39, linear to min_lr_ratio x peak at step 39. Each
    generation warms up from its birth (per_generation) and then holds its own peak; under global every parameter
    follows generation 0's curve."""
    growths = [dict(at_step=12, hidden_size=96)] + ([dict(at_step=33, hidden_size=128, lr=2e-3, warmup_steps=2)]
                                                    if lr_schedule == "per_generation" else [])
    wsd = schedule(dict(lr_decay="wsd", decay_fraction=0.25, min_lr_ratio=0.1, lr_schedule=lr_schedule), growths)
    assert wsd.decay_start == 30
    decay = [1 - 0.9 * min(1, max(0, step - 29) / 10) for step in range(40)]
    for step in range(40):
        assert wsd.group_lr(step, 0, 1e-3, 4) == pytest.approx(1e-3 * min(1, (step + 1) / 4) * decay[step]), step
    assert wsd.group_lr(39, 0, 1e-3, 4) == pytest.approx(1e-4) and wsd.group_lr(29, 0, 1e-3, 4) == 1e-3
    if lr_schedule == "per_generation":
        # generation 1 (born at 12): its own warm-up, its peak held to step 29, the same final decay
        assert [wsd.group_lr(s, 12, 1e-3, 4) for s in (12, 13, 15, 16, 29)] == pytest.approx(
            [2.5e-4, 5e-4, 1e-3, 1e-3, 1e-3])
        # generation 2, born inside the decay window: warm-up and decay together
        assert wsd.group_lr(33, 33, 2e-3, 2) == pytest.approx(2e-3 * 0.5 * decay[33])
        assert wsd.group_lr(39, 33, 2e-3, 2) == pytest.approx(2e-4)
    else:
        assert wsd.group_lr(20, 12, 5e-3, 1) == wsd.group_lr(20, 0, 1e-3, 4) == 1e-3
    assert wsd.resolved()["training"]["lr_decay"] == "wsd" and wsd.resolved()["training"]["decay_fraction"] == 0.25
    assert "lr_decay" not in schedule().resolved()["training"]         # older checkpoints' records still match


def test_rewarmup_ramps_the_older_generations_again_after_a_growth():
    grown = schedule(growths=[dict(at_step=20, hidden_size=128, rewarmup_steps=5)])
    plain = schedule(growths=[dict(at_step=20, hidden_size=128)])
    for step in range(19, 27):
        expected = plain.group_lr(step, 0, 1e-3, 4) * (min(1, (step - 19) / 5) if step >= 20 else 1)
        assert grown.group_lr(step, 0, 1e-3, 4) == pytest.approx(expected), step      # generation 0: re-warmed
        assert grown.group_lr(step, 20, 1e-3, 4) == plain.group_lr(step, 20, 1e-3, 4)   # the new one: its own
    assert "rewarmup_steps" in grown.resolved()["growths"][0]
    assert "rewarmup_steps" not in plain.resolved()["growths"][0]     # older checkpoints' records still match
    assert "rewarmup_steps: must be an integer >= 0" in refusal(
        schedule, None, [dict(at_step=20, hidden_size=128, rewarmup_steps=-1)])
    assert "rewarmup_steps needs training.lr_schedule: per_generation" in refusal(
        schedule, dict(lr_schedule="global"), [dict(at_step=20, hidden_size=128, rewarmup_steps=3)])


@pytest.mark.parametrize("reset", [False, True])
def test_growth_keeps_or_resets_the_adam_state(reset, monkeypatch):
    from megababel.engine.deepspeed_config import load_ds_config
    from megababel.engine.growing_engine import GrowingEngine
    from megababel.parallel import free_port
    from megababel.engine import init_distributed
    # set here, so that they are removed afterwards: subprocesses of later tests must not inherit this port
    for key, value in dict(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                           MASTER_PORT=str(free_port()), DS_ACCELERATOR="cpu").items():
        monkeypatch.setenv(key, value)
    init_distributed()
    sched = schedule(growths=[dict(at_step=3, hidden_size=96, optimizer_state="reset" if reset else "keep")])
    engine = GrowingEngine(sched.model, load_ds_config(0, 2, 1, 1, bf16=False), sched, seed=0)
    g = torch.Generator().manual_seed(0)
    batch = torch.randint(0, 96, (2, 17), generator=g)
    x, y = batch[:, :-1], batch[:, 1:]
    for step in range(3):
        engine.train_step(x, y, step)
    before = engine.evaluate([(x, y)])
    growth = sched.growths[0]
    engine.grow(growth, 3)          # a schedule Growth: its optimizer_state decides keep or reset
    assert engine.evaluate([(x, y)]) == pytest.approx(before, abs=1e-5)      # the function is kept either way
    state = engine.state()
    moments, steps = state.moments, state.group_steps
    old_steps = [s for (generation, _), s in steps.items() if generation == 0]
    new_steps = [s for (generation, _), s in steps.items() if generation == 1]
    assert new_steps == [0.0, 0.0]
    assert old_steps == ([0.0, 0.0] if reset else [3.0, 3.0])
    largest = max(m.abs().max().item() for pair in moments.values() for m in pair)
    assert (largest == 0.0) if reset else (largest > 0.0)
    engine.train_step(x, y, 3)        # and it trains on
    moments = engine.state().moments
    assert all(m.abs().max() > 0 for (path, _), (m, _) in moments.items() if "norm" not in path)


def test_at_tokens_counts_each_generation_at_its_own_batch():
    """64 tokens per step until step 4, then 256: 1000 tokens are reached at step 4 + ceil((1000 - 256) / 256)."""
    schedule = parse_schedule(dict(model=dict(hidden_size=64, head_dim=16, num_hidden_layers=2, vocab_size=96),
                                   training=dict(steps=40, global_batch_tokens=64),
                                   growths=[dict(at_step=4, num_hidden_layers=3, global_batch_tokens=256),
                                            dict(at_tokens=1000, num_hidden_layers=4)]), 32)
    assert [g.at_step for g in schedule.growths] == [4, 7]
    assert [schedule.batch_tokens(g) for g in range(3)] == [64, 256, 256]      # a growth without one keeps it
    assert schedule.resolved()["growths"][1]["global_batch_tokens"] == 256


@pytest.mark.parametrize("tp", [2, 4, 8])
def test_seed_2x_tp_preset_splits_over_2_4_and_8_ranks_and_ends_at_head_dim_128(tp):
    """16 heads in every generation, widened by head_dim growth 32 -> 64 -> 128: the seed's final shape (hidden
    1792, 24 layers, FFN 4864) at Llama 2's head_dim, with 16 heads instead of 14 so that 8 ranks divide them."""
    from megababel.model.counters import config_parameters
    from megababel.parallel import check_tensor_parallel
    seed, seed_tp = (load_schedule(name, 2048) for name in ("seed_2x", "seed_2x_tp"))
    configs = [seed_tp.model] + [g.config for g in seed_tp.growths]
    check_tensor_parallel(configs, tp, tp)          # every generation, every growth's added heads / units / rows
    sizes = [config_parameters(c) for c in configs]
    assert all(1.9 < b / a < 2.3 for a, b in zip(sizes, sizes[1:])), sizes          # about 2x per growth
    assert [c.vocab_size for c in configs] == [8000, 16000, 32000, 32000, 32000]
    assert [c.head_dim for c in configs] == [32, 64, 64, 128, 128]
    assert {c.num_attention_heads for c in configs} == {16}
    final, seed_final = seed_tp.final_config, seed.final_config
    assert [getattr(final, k) for k in ("hidden_size", "num_hidden_layers", "intermediate_size", "head_dim")] == \
        [getattr(seed_final, k) for k in ("hidden_size", "num_hidden_layers", "intermediate_size", "head_dim")]
    with pytest.raises(ConfigError, match="num_attention_heads=5 .* --tp 2"):
        check_tensor_parallel([seed.model] + [g.config for g in seed.growths], 2, 2)


EASY, BOTH = {"wiki[rarity:0-0.5]": 1.0}, {"wiki[rarity:0-0.5]": 0.5, "wiki[rarity:0.5-1]": 0.5}


def test_a_curriculum_changes_the_mixture_between_growths_and_a_growth_without_data_reads_on():
    """64 tokens per step until the growth at step 4, then 256: 1000 tokens are reached at step 7."""
    schedule = parse_schedule(dict(model=MODEL, training=dict(steps=40, global_batch_tokens=64, data=EASY),
                                   growths=[dict(at_step=4, num_hidden_layers=3, global_batch_tokens=256),
                                            dict(at_step=20, num_hidden_layers=4)],
                                   curriculum=[dict(at_tokens=1000, data=BOTH), dict(at_fraction=0.75, data=EASY)]),
                              32)
    assert [(c.at_step, c.data) for c in schedule.curriculum] == [(7, BOTH), (30, EASY)]
    assert schedule.generation_at(7) == 1 and schedule.generation_at(30) == 2
    # the growth at 20 gives no data: it reads on what the change at 7 switched to
    assert [schedule.generation_data(g) for g in range(3)] == [EASY, EASY, BOTH]
    assert [schedule.data_at(step, schedule.generation_at(step)) for step in (0, 4, 7, 8, 20, 30, 31)] == \
           [EASY, EASY, EASY, BOTH, BOTH, BOTH, EASY]      # at a change's own step: what was read before it
    assert schedule.data_sources() == ["wiki[rarity:0-0.5]", "wiki[rarity:0.5-1]"]
    resolved = schedule.resolved()
    assert resolved["curriculum"] == [dict(at_step=7, data=BOTH), dict(at_step=30, data=EASY)]
    assert resolved["growths"][1]["data"] == BOTH
    # a branch reads on what it read at its start
    assert schedule.branch(2, 25, 5).curriculum == schedule.curriculum[:1]


def test_a_curriculum_warms_up_the_sequence_length_and_a_growth_without_one_reads_on():
    schedule = parse_schedule(dict(model=MODEL, training=dict(steps=40, seq_len=16),
                                   growths=[dict(at_step=20, num_hidden_layers=3), dict(at_step=30, num_hidden_layers=4,
                                                                                        seq_len=64)],
                                   curriculum=[dict(at_step=10, seq_len=32)]), 32)
    assert [schedule.seq_len_at(step, schedule.generation_at(step)) for step in (0, 10, 11, 20, 21, 31)] == \
           [16, 16, 32, 32, 32, 64]
    assert [schedule.generation_seq_len(g) for g in range(3)] == [16, 32, 64]     # growth 0 reads on at 32
    assert schedule.data_at(11, 0) is None and schedule.data_sources() == []
    assert schedule.resolved()["curriculum"] == [dict(at_step=10, seq_len=32)]


def test_a_resume_with_another_curriculum_is_told_what_changed():
    from megababel.plan.schedule import schedule_differences
    spec = dict(model=MODEL, training=dict(steps=40, data=EASY), curriculum=[dict(at_step=10, data=BOTH)])
    saved = parse_schedule(spec, 32).resolved()
    moved = parse_schedule(dict(spec, curriculum=[dict(at_step=12, data=BOTH)]), 32).resolved()
    assert schedule_differences(saved, moved) == [
        f"curriculum: {saved['curriculum']!r} saved, {moved['curriculum']!r} now"]
    assert "curriculum" not in parse_schedule(dict(spec, curriculum=[]), 32).resolved()     # older records match


@pytest.mark.parametrize("training, curriculum, message", [
    (dict(), [dict(at_step=5, data=BOTH)], "schedule curriculum 0.data: changes the mixture that training.data "
                                           "sets: give training.data too"),
    (dict(data=EASY), dict(at_step=5, data=BOTH), "schedule curriculum: must be a list of changes"),
    (dict(), [dict(at_step=5, seq_len=8192)], "curriculum 0.seq_len: 8192 exceeds the model's "
                                              "max_position_embeddings 4096"),
    (dict(), [dict(at_step=5, seq_len=0)], "curriculum 0.seq_len: must be a positive integer"),
    (dict(data=EASY), [dict(at_step=5, data=BOTH, lr=1.0)], r"curriculum 0: unknown field\(s\) \['lr'\]"),
    (dict(data=EASY), [dict(at_step=5)], "curriculum 0: changes nothing: give data .* and/or seq_len"),
    (dict(data=EASY), [dict(data=BOTH)], "curriculum 0: give exactly one of at_step, at_tokens or at_fraction"),
    (dict(data=EASY), [dict(at_step=5, data={"wiki": 0.7})], "curriculum 0.data: the weights sum to 0.7, not 1"),
    (dict(data=EASY), [dict(at_step=10, data=BOTH), dict(at_step=8, data=EASY)],
     "curriculum 1.at_step: step 8 is not after the previous change's 10"),
    (dict(data=EASY), [dict(at_step=40, data=BOTH)], "curriculum 0.at_step: step 40 is at or after the end"),
    (dict(data=EASY), [dict(at_step=20, data=BOTH)], r"curriculum 0.at_step: step 20 is growth 0's: give the mixture "
                                                     r"there \(growth 0.data\)"),
])
def test_bad_curricula_name_the_field(training, curriculum, message):
    spec = dict(model=MODEL, training=dict(dict(steps=40), **training), curriculum=curriculum,
                growths=[dict(at_step=20, num_hidden_layers=3)])
    assert re.search(message, refusal(parse_schedule, spec, 32))

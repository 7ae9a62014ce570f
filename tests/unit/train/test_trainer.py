"""The Trainer in-process: a resume restores the RNG states (a sampled order continues identically) and trains
exactly like the uninterrupted run; RunConfig refuses bad values by flag name."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from helpers import TWO_GROWTHS
from megababel.config import ConfigError
from megababel.train.trainer import Callback, RunConfig, Trainer


class Draws(Callback):
    """What a user's sampler would draw from the global generators at every step, plus the losses."""

    def __init__(self):
        self.draws, self.losses = {}, {}

    def on_step_end(self, trainer, row):
        self.losses[row["step"]] = row["loss"]
        self.draws[row["step"]] = (torch.randint(0, 10**9, (3,)).tolist(), random.random(), float(np.random.rand()))

    def on_fit_end(self, trainer, result):
        self.history = trainer.history


def fit(out, **changes) -> Draws:
    draws = Draws()
    run = RunConfig(**dict(dict(schedule=TWO_GROWTHS, steps=24, seq_len=32, micro_batch_size=2, eval_every=0,
                                out=out), **changes))
    trainer = Trainer(run, callbacks=[draws])
    attributes = set(vars(trainer))
    trainer.setup().fit()
    # every attribute exists from __init__ (none appears in setup, a resume, a growth or the loop)
    assert set(vars(trainer)) == attributes, set(vars(trainer)) ^ attributes
    trainer.close()
    return draws


def test_resume_restores_rng_and_continues_exactly(distributed_env, tmp_path):
    torch.manual_seed(1234)
    whole = fit(tmp_path / "whole", save_every=8)            # two_growths.json: growths at steps 6 and 12
    torch.manual_seed(999)                                    # whatever the new process would start with
    random.seed(5)
    resumed = fit(tmp_path / "resumed", resume=tmp_path / "whole/checkpoints/step_00000008_gen1")
    assert sorted(resumed.losses) == list(range(8, 24))
    for step in range(8, 24):
        assert resumed.draws[step] == whole.draws[step], step              # sampled order identical
        assert resumed.losses[step] == whole.losses[step], step            # dropout-free training unchanged


@pytest.mark.parametrize("field, value, flag", [
    ("micro_batch_size", 0, "--micro-batch-size"), ("seq_len", True, "--seq-len"), ("keep_last", -1, "--keep-last"),
    ("zero_stage", 4, "--zero-stage"), ("gradient_clipping", float("nan"), "--gradient-clipping"),
    ("steps", 2.5, "--steps")])
def test_run_config_names_the_flag(field, value, flag):
    with pytest.raises(ConfigError, match=flag):
        RunConfig(**{field: value}).check()


@pytest.mark.parametrize("zero_stage", [0, 1, 3])
def test_bf16_growth_keeps_fp32_masters_and_adam_moments(distributed_env, zero_stage):
    """DeepSpeed's bf16 path keeps fp32 masters and the Adam state apart from the bf16 weights (at ZeRO-0 in
    fp32_groups, which DeepSpeed's safe_get_* accessors do not see). Growth must carry both: the old blocks' moments
    unchanged, the weights the fp32 masters (not their bf16 rounding), the groups' steps as counted by fp32 runs."""
    from megababel.engine.deepspeed_config import load_ds_config
    from megababel.engine.growing_engine import GrowingEngine
    from megababel.plan.schedule import parse_schedule
    schedule = parse_schedule(dict(model=dict(hidden_size=64, head_dim=16, num_hidden_layers=2, vocab_size=96,
                                              multiple_of=32), training=dict(steps=20),
                                   growths=[dict(at_step=3, hidden_size=96)]), 64)
    engine = GrowingEngine(schedule.model, load_ds_config(zero_stage, 2, 1, 1, bf16=True), schedule, seed=0)
    batch = torch.randint(0, 96, (2, 17), generator=torch.Generator().manual_seed(0))
    for step in range(3):
        engine.train_step(batch[:, :-1], batch[:, 1:], step)
    before = engine.state()
    engine.grow(schedule.growths[0], 3)
    after = engine.state()
    assert before.group_steps == {(0, True): 3.0, (0, False): 3.0}
    assert after.group_steps == {**before.group_steps, (1, True): 0.0, (1, False): 0.0}
    assert len(before.moments) == 21 and all(m.abs().sum() > 0 for m, _ in before.moments.values())
    for key, (m, v) in before.moments.items():
        assert torch.equal(after.moments[key][0], m) and torch.equal(after.moments[key][1], v), key
    for state in (before, after):        # real fp32 masters, not their bf16 copies
        q_proj = state.values["layers.0.self_attn.q_proj"]
        assert not torch.equal(q_proj, q_proj.bfloat16().float())
    engine.close()


def test_bf16_resume_is_exact(distributed_env, tmp_path):
    whole = fit(tmp_path / "whole", save_every=8, bf16=True)
    resumed = fit(tmp_path / "resumed", bf16=True, resume=tmp_path / "whole/checkpoints/step_00000008_gen1")
    assert all(resumed.losses[step] == whole.losses[step] for step in range(8, 24)), (whole.losses, resumed.losses)


BATCH_SCHEDULE = dict(       # seq_len 32, micro batch 2: 1, then 2, then 4 micro-batches per optimizer step
    model=dict(hidden_size=64, head_dim=16, num_hidden_layers=2, multiple_of=32, vocab_size=1000),
    training=dict(steps=16, lr=3e-3, warmup_steps=2, global_batch_tokens=64),
    growths=[dict(at_step=6, hidden_size=96, intermediate_size=256, vocab_size=2000, global_batch_tokens=128),
             dict(at_step=11, num_hidden_layers=4, layer_positions="interleave", global_batch_tokens=256)])


class Batches(Callback):
    def __init__(self):
        self.tokens, self.losses, self.accumulation = {}, {}, {}

    def on_step_end(self, trainer, row):
        self.tokens[row["step"]], self.losses[row["step"]] = row["tokens"], row["loss"]
        self.accumulation[row["step"]] = trainer.engine.gradient_accumulation_steps


def test_a_growing_global_batch_accumulates_and_resumes_exactly(distributed_env, tmp_path):
    def fit_batches(out, **changes):
        batches = Batches()
        Trainer(RunConfig(**dict(dict(schedule=BATCH_SCHEDULE, seq_len=32, micro_batch_size=2, eval_every=0, out=out),
                                 **changes)), callbacks=[batches]).setup().fit()
        return batches

    whole = fit_batches(tmp_path / "whole", save_every=4)
    assert [whole.accumulation[s] for s in (0, 5, 6, 10, 11, 15)] == [1, 1, 2, 2, 4, 4]
    assert whole.tokens[15] == 6 * 64 + 5 * 128 + 5 * 256
    for step in (4, 8, 12):            # before both changes, between them (vocabulary and batch), after both
        resumed = fit_batches(tmp_path / f"from{step}", resume=next((tmp_path / "whole/checkpoints").glob(
            f"step_{step:08d}_*")))
        assert sorted(resumed.losses) == list(range(step, 16))
        assert all(resumed.losses[s] == whole.losses[s] for s in range(step, 16)), (step, whole.losses,
                                                                                   resumed.losses)
        assert resumed.tokens[15] == whole.tokens[15]
    # the same global batch from smaller micro-batches (twice the accumulation): the same sequences, so the same run
    # up to summation order
    smaller = fit_batches(tmp_path / "micro1", micro_batch_size=1, resume=next(
        (tmp_path / "whole/checkpoints").glob("step_00000008_*")))
    assert [smaller.accumulation[s] for s in (8, 11)] == [4, 8]
    assert all(abs(smaller.losses[s] - whole.losses[s]) <= 1e-5 * whole.losses[s] for s in range(8, 16))


FILL_SCHEDULE = dict(       # seq_len 32, micro batch 2 (64 tokens): 4 micro-batches per step in every generation
    model=dict(hidden_size=64, head_dim=16, num_hidden_layers=2, multiple_of=32, vocab_size=1000),
    training=dict(steps=12, lr=3e-3, warmup_steps=2, global_batch_tokens=256),
    growths=[dict(at_step=4, hidden_size=128, intermediate_size=352, vocab_size=2000),
             dict(at_step=8, num_hidden_layers=8, layer_positions="interleave")])


def test_fill_micro_batch_runs_small_generations_in_fewer_larger_micro_steps(distributed_env, tmp_path):
    """--fill-micro-batch: the same tokens per step, in micro-batches as large as the final model's activations
    allow (the 2-layer generations take 2-4x the micro batch of the 8-layer final one); the same run up to summation
    order, and a resume continues it exactly."""
    def fit_batches(out, **changes):
        batches = Batches()
        Trainer(RunConfig(**dict(dict(schedule=FILL_SCHEDULE, seq_len=32, micro_batch_size=2, eval_every=0, out=out),
                                 **changes)), callbacks=[batches]).setup().fit()
        return batches

    plain = fit_batches(tmp_path / "plain")
    filled = fit_batches(tmp_path / "filled", fill_micro_batch=True, save_every=6)
    assert [plain.accumulation[s] for s in (0, 4, 8)] == [4, 4, 4]
    # 4x and 2x the micro batch for the 2-layer generations (the 128-wide one has twice the activations per token of
    # the 64-wide one); the 8-layer final one as given
    assert [filled.accumulation[s] for s in (0, 4, 8)] == [1, 2, 4]
    assert filled.tokens == plain.tokens
    # the same sequences summed in another order: rounding, which training carries along (1e-5 held alone, not
    # always inside the whole suite: cause not found yet); other data would differ by 1e-2
    assert all(abs(filled.losses[s] - plain.losses[s]) <= 1e-4 * plain.losses[s] for s in range(12))
    resumed = fit_batches(tmp_path / "resumed", fill_micro_batch=True,
                          resume=next((tmp_path / "filled/checkpoints").glob("step_00000006_*")))
    assert all(resumed.losses[s] == filled.losses[s] for s in range(6, 12))


def test_a_global_batch_that_is_not_whole_micro_batches_is_refused(distributed_env, tmp_path):
    schedule = dict(BATCH_SCHEDULE, growths=[dict(BATCH_SCHEDULE["growths"][0], global_batch_tokens=96)])
    with pytest.raises(ConfigError, match=r"growth 0.global_batch_tokens 96 .* use a multiple of 64 \(e.g. 128\)"):
        Trainer(RunConfig(schedule=schedule, seq_len=32, micro_batch_size=2, eval_every=0, out=tmp_path)).setup()
    with pytest.raises(ConfigError, match="--global-batch-tokens 100 "):
        Trainer(RunConfig(schedule=BATCH_SCHEDULE, global_batch_tokens=100, seq_len=32, micro_batch_size=2,
                          out=tmp_path)).setup()
    assert not (tmp_path / "checkpoints").exists()


class StopAt(Callback):
    """Sends this process SIGUSR1 after `step`: the trainer checkpoints and stops, as under a Slurm preemption."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, trainer, row):
        if row["step"] == self.step:
            import os
            import signal
            os.kill(os.getpid(), signal.SIGUSR1)


def test_keep_generations_keeps_one_checkpoint_per_generation_and_survives_resume(distributed_env, tmp_path):
    from megababel.checkpoint.io import list_checkpoints, load_checkpoint
    whole = dict(schedule=TWO_GROWTHS, steps=24, seq_len=32, micro_batch_size=2, eval_every=4, keep_generations=True)
    Trainer(RunConfig(**whole, save_every=6, out=tmp_path / "whole")).setup().fit()
    names = [p.name for p in list_checkpoints(tmp_path / "whole/generations")]
    assert names == ["step_00000006_gen0", "step_00000012_gen1", "step_00000024_gen2"]   # growths at 6 and 12
    for name in names:      # each generation as it ended: the same state the regular checkpoint of that step holds
        kept, regular = (load_checkpoint(tmp_path / "whole" / d / name) for d in ("generations", "checkpoints"))
        assert kept.state.generation == regular.state.generation
        assert all(torch.equal(v, regular.state.values[k]) for k, v in kept.state.values.items())
    assert load_checkpoint(tmp_path / "whole/generations" / names[0]).run["validation_loss"] is not None

    stopped = Trainer(RunConfig(**whole, out=tmp_path / "stopped", save_every=100), callbacks=[StopAt(13)])
    assert stopped.setup().fit()["preempted"]
    assert [p.name for p in list_checkpoints(tmp_path / "stopped/generations")] == names[:2]   # no final one
    Trainer(RunConfig(**whole, out=tmp_path / "stopped", save_every=100, resume="auto")).setup().fit()
    assert [p.name for p in list_checkpoints(tmp_path / "stopped/generations")] == names
    for name in names:     # the resumed run's family is the uninterrupted run's
        a, b = (load_checkpoint(tmp_path / d / "generations" / name) for d in ("whole", "stopped"))
        assert all(torch.equal(v, b.state.values[k]) for k, v in a.state.values.items()), name


class GroupLRs(Callback):
    def __init__(self):
        self.lrs = {}

    def on_step_end(self, trainer, row):
        self.lrs[row["step"]] = [(info.born, lr) for info, lr in trainer.engine.param_group_lrs()]


def test_wsd_sets_every_generations_learning_rate_in_the_engine(distributed_env, tmp_path):
    """The engine's param groups under training.lr_decay: wsd, through two growths: each generation warms up from
    its birth to its own peak, holds it, and all decay together over the last quarter (steps 12..15)."""
    spec = dict(BATCH_SCHEDULE, training=dict(BATCH_SCHEDULE["training"], lr_decay="wsd", decay_fraction=0.25,
                                              min_lr_ratio=0.0))
    spec["growths"] = [dict(spec["growths"][0], lr=1e-3, warmup_steps=3), spec["growths"][1]]
    seen = GroupLRs()
    Trainer(RunConfig(schedule=spec, seq_len=32, micro_batch_size=2, eval_every=0, out=tmp_path),
            callbacks=[seen]).setup().fit()
    decay = {step: 1 - max(0, step - 11) / 4 for step in range(16)}        # 1 until step 11; 0.75, 0.5, .. 0
    peaks = {0: (3e-3, 2), 6: (1e-3, 3), 11: (3e-3, 2)}                   # born: (peak, warm-up)
    for step, groups in seen.lrs.items():
        assert sorted({born for born, _ in groups}) == [born for born in peaks if born <= step]
        for born, lr in groups:
            peak, warmup = peaks[born]
            assert lr == pytest.approx(peak * min(1, (step - born + 1) / warmup) * decay[step]), (step, born)
    assert [lr for _, lr in seen.lrs[15]] == [0.0] * len(seen.lrs[15])


SEQ_SCHEDULE = dict(         # --seq-len 64, micro batch 2 (128 tokens): 8 x 16, then 4 x 32, then 2 x 64 per micro
    model=dict(hidden_size=64, head_dim=16, num_hidden_layers=2, multiple_of=32, vocab_size=1000),
    training=dict(steps=16, lr=3e-3, warmup_steps=2, global_batch_tokens=256, seq_len=16),
    growths=[dict(at_step=6, hidden_size=96, intermediate_size=256, seq_len=32),          # same stream, repacked
             dict(at_step=11, num_hidden_layers=4, layer_positions="interleave", vocab_size=2000, seq_len=64)])


class Rows(Callback):
    def __init__(self):
        self.rows = {}

    def on_step_end(self, trainer, row):
        self.rows[row["step"]] = dict(row, seq_len=trainer.data.loader.seq_len)


def test_a_sequence_length_per_generation_counts_flops_at_its_length_and_resumes_exactly(distributed_env, tmp_path):
    from megababel.model.counters import flops_per_token
    from megababel.plan.schedule import parse_schedule

    def fit_rows(out, **changes):
        rows = Rows()
        trainer = Trainer(RunConfig(**dict(dict(schedule=SEQ_SCHEDULE, seq_len=64, micro_batch_size=2, eval_every=0,
                                                out=out), **changes)), callbacks=[rows])
        trainer.setup().fit()
        assert trainer.seq_lens == [16, 32, 64] and trainer.batches == [(16, 2), (8, 2), (4, 2)]
        return rows.rows

    whole = fit_rows(tmp_path / "whole", save_every=4, save_after_growth=True)
    assert [whole[s]["seq_len"] for s in (0, 5, 6, 10, 11, 15)] == [16, 16, 32, 32, 64, 64]
    assert whole[15]["tokens"] == 16 * 256
    configs = [c for c in (lambda s: [s.model] + [g.config for g in s.growths])(parse_schedule(SEQ_SCHEDULE, 256))]
    expected = sum(flops_per_token(configs[g], seq) * 256 * n for g, seq, n in ((0, 16, 6), (1, 32, 5), (2, 64, 5)))
    assert whole[15]["flops"] == expected
    checkpoints = tmp_path / "whole/checkpoints"
    # before the first change, right after it (saved after the growth), after both
    for name in ("step_00000004_*", "step_00000006_gen1*", "step_00000012_*"):
        start = next(checkpoints.glob(name))
        resumed = fit_rows(tmp_path / f"from_{start.name}", resume=start)
        first = min(resumed)
        assert sorted(resumed) == list(range(first, 16))
        assert all(resumed[s]["loss"] == whole[s]["loss"] for s in range(first, 16)), (start.name, first)
        assert resumed[15]["flops"] == whole[15]["flops"]


def test_a_sequence_length_that_does_not_divide_the_micro_batch_is_refused_before_compute(distributed_env, tmp_path):
    spec = dict(SEQ_SCHEDULE, training=dict(SEQ_SCHEDULE["training"], seq_len=48))
    with pytest.raises(ConfigError, match="training.seq_len: 48 does not divide a micro-batch of --micro-batch-size "
                                          "2 x --seq-len 64 = 128 tokens"):
        Trainer(RunConfig(schedule=spec, seq_len=64, micro_batch_size=2, eval_every=0, out=tmp_path)).setup()
    assert not (tmp_path / "checkpoints").exists()


WARMUP_SCHEDULE = dict(      # sequence-length warm-up by the curriculum, between growths: 16, 32 from step 4, 64 from 9
    model=dict(hidden_size=64, head_dim=16, num_hidden_layers=2, multiple_of=32, vocab_size=1000),
    training=dict(steps=12, lr=3e-3, warmup_steps=2, global_batch_tokens=256, seq_len=16),
    growths=[dict(at_step=6, hidden_size=96, intermediate_size=256)],                    # reads on at 32
    curriculum=[dict(at_step=4, seq_len=32), dict(at_step=9, seq_len=64)])


def test_a_curriculum_warms_up_the_sequence_length_without_growing_and_resumes_exactly(distributed_env, tmp_path):
    from megababel.model.counters import flops_per_token
    from megababel.plan.schedule import parse_schedule

    def fit_rows(out, **changes):
        rows = Rows()
        trainer = Trainer(RunConfig(**dict(dict(schedule=WARMUP_SCHEDULE, seq_len=64, micro_batch_size=2,
                                                eval_every=0, out=out), **changes)), callbacks=[rows])
        trainer.setup().fit()
        trainer.close()
        return rows.rows, trainer

    whole, trainer = fit_rows(tmp_path / "whole", save_every=3, save_after_growth=True)
    assert [whole[s]["seq_len"] for s in range(12)] == [16] * 4 + [32] * 5 + [64] * 3
    assert trainer.engine.ds_config["train_micro_batch_size_per_gpu"] == 2       # 128 tokens per micro-step at 64
    configs = (lambda s: [s.model] + [g.config for g in s.growths])(parse_schedule(WARMUP_SCHEDULE, 256))
    assert whole[11]["flops"] == sum(flops_per_token(configs[s >= 6], whole[s]["seq_len"]) * 256 for s in range(12))
    assert whole[11]["tokens"] == 12 * 256
    checkpoints = tmp_path / "whole/checkpoints"
    for name in ("step_00000003_*", "step_00000006_gen0*", "step_00000006_gen1*", "step_00000009_*"):
        start = next(checkpoints.glob(name))
        resumed, _ = fit_rows(tmp_path / f"from_{start.name}", resume=start)
        first = min(resumed)
        assert [resumed[s]["loss"] for s in range(first, 12)] == [whole[s]["loss"] for s in range(first, 12)], \
            start.name
    bad = dict(WARMUP_SCHEDULE, curriculum=[dict(at_step=4, seq_len=48)])
    with pytest.raises(ConfigError, match=r"schedule curriculum 0.seq_len: 48 does not divide a micro-batch"):
        Trainer(RunConfig(schedule=bad, seq_len=64, micro_batch_size=2, eval_every=0, out=tmp_path / "bad")).setup()
    assert not (tmp_path / "bad" / "checkpoints").exists()

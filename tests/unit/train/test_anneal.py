"""A decay branch (--anneal-steps) off a family member: it trains a copy from the member's checkpoint, with no more
growth and every LR falling linearly to its minimum, resumes exactly, is refused where it cannot be what was asked,
and tools/export_family.py exports it as the member with its FLOPs counted."""
from __future__ import annotations

import json
import math
import shutil

import pytest

from helpers import TWO_GROWTHS
from megababel.checkpoint.io import list_checkpoints, load_checkpoint
from megababel.config import ConfigError
from megababel.plan.presets import load_schedule
from megababel.train.trainer import Callback, RunConfig, Trainer

COMMON = dict(schedule=TWO_GROWTHS, steps=24, seq_len=32, micro_batch_size=2, eval_every=0)


class Rows(Callback):
    def __init__(self):
        self.rows = {}

    def on_step_end(self, trainer, row):
        self.rows[row["step"]] = row


def fit(out, **changes) -> Rows:
    rows = Rows()
    trainer = Trainer(RunConfig(**dict(COMMON, out=out, **changes)), callbacks=[rows])
    trainer.setup().fit()
    trainer.close()
    return rows


@pytest.fixture
def family(distributed_env, tmp_path):
    """A --keep-generations run (two_growths.json at 24 steps: growths at steps 6 and 12)."""
    main = fit(tmp_path / "run", keep_generations=True)
    return tmp_path / "run", main


def test_a_branch_decays_every_lr_to_its_minimum_without_growing_and_resumes_exactly(family, tmp_path):
    run, main = family
    origin = run / "generations" / "step_00000006_gen0"
    before = {p: p.read_bytes() for p in origin.rglob("*") if p.is_file()}
    branch = fit(run / "anneal" / "gen0", resume=origin, anneal_steps=4, save_every=2)
    assert sorted(branch.rows) == [6, 7, 8, 9] and {r["generation"] for r in branch.rows.values()} == {0}
    # the main run's LR at step 5 (its last step as generation 0), then linearly to 0.1 x the 3e-3 peak
    schedule = load_schedule(TWO_GROWTHS, 1, dict(steps=24))
    start = schedule.group_lr(5, 0, 3e-3, 30)
    expected = [start + (0.1 * 3e-3 - start) * k / 4 for k in (1, 2, 3, 4)]
    assert [branch.rows[s]["lr"] for s in (6, 7, 8, 9)] == pytest.approx(expected)
    assert {p: p.read_bytes() for p in origin.rglob("*") if p.is_file()} == before       # the member untouched
    saved = load_checkpoint(list_checkpoints(run / "anneal" / "gen0" / "checkpoints")[-1])
    assert saved.run["step"] == 10 and saved.state.generation == 0
    assert saved.run["record"]["schedule"]["training"]["anneal"] == dict(from_step=6, steps=4)
    assert saved.run["record"]["schedule"]["growths"] == []
    # resuming the branch from its own checkpoint continues it exactly
    mid = run / "anneal" / "gen0" / "checkpoints" / "step_00000008_gen0"
    resumed = fit(tmp_path / "resumed", resume=mid, anneal_steps=4)
    assert sorted(resumed.rows) == [8, 9]
    assert [resumed.rows[s]["loss"] for s in (8, 9)] == [branch.rows[s]["loss"] for s in (8, 9)]


def test_a_branch_that_cannot_be_what_was_asked_is_refused_before_compute(family, tmp_path):
    run, _ = family
    with pytest.raises(ConfigError, match="give --resume with the checkpoint to branch from"):
        RunConfig(anneal_steps=3).check()
    with pytest.raises(ConfigError, match="--anneal-steps must be an integer >= 0"):
        RunConfig(anneal_steps=-1, resume="x").check()
    fit(run / "anneal" / "gen1", resume=run / "generations" / "step_00000012_gen1", anneal_steps=2)
    own = list_checkpoints(run / "anneal" / "gen1" / "checkpoints")[-1]
    with pytest.raises(ConfigError, match="is a checkpoint of a decay branch .* --anneal-steps 2"):
        Trainer(RunConfig(**dict(COMMON, out=tmp_path / "a", resume=own))).setup()
    with pytest.raises(ConfigError, match="training.anneal"):
        Trainer(RunConfig(**dict(COMMON, out=tmp_path / "b", resume=own, anneal_steps=3))).setup()
    with pytest.raises(ConfigError, match="seed"):             # the origin must match the run it branches off
        Trainer(RunConfig(**dict(COMMON, out=tmp_path / "c", resume=run / "generations" / "step_00000006_gen0",
                                 anneal_steps=2, seed=7))).setup()


def test_the_family_export_takes_an_annealed_member_and_counts_its_flops(family, tmp_path):
    from megababel.cli import export_family
    run, _ = family
    fit(run / "anneal" / "gen0", resume=run / "generations" / "step_00000006_gen0", anneal_steps=3)
    shutil.copytree(run / "anneal" / "gen0", run / "anneal" / "gen5")      # no such member: ignored
    rows = export_family.main([str(run), str(tmp_path / "family")])
    by = {r["generation"]: r for r in rows}
    origin = load_checkpoint(run / "generations" / "step_00000006_gen0").run
    assert by[0]["branch"]["steps"] == 3 and by[0]["step"] == 9 and by[1]["branch"] is None
    assert by[0]["branch"]["flops"] == pytest.approx(by[0]["flops"] - origin["flops"]) and by[0]["branch"]["flops"] > 0
    card = (tmp_path / "family" / "README.md").read_text()
    total = by[2]["flops"] + by[0]["branch"]["flops"]
    assert "| 3 steps (" in card and f"The family cost {total:.3g} training FLOPs" in card
    assert math.isclose(by[0]["run_flops"], origin["flops"])
    # the branch's record (with its `anneal`) still tells the length it trained on: the run's --seq-len
    assert [json.loads((tmp_path / "family" / f"gen{g}" / "megababel.json").read_text())["trained_seq_len"]
            for g in (0, 1, 2)] == [32, 32, 32]

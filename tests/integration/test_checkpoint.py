"""Checkpoints: exact resume (before and right after a growth), across rank counts and ZeRO stages, atomic saves."""
from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import TWO_GROWTHS
from megababel.parallel.local_ranks import run_local_ranks

from megababel.parallel import free_port

from helpers import ROOT
TRAIN = ROOT / "launch" / "train.py"
STEPS = 40          # tests/helpers/two_growths.json: growth at steps 10 and 20 (1/4 and 1/2)


def train(out: Path, *flags, world: int = 1, cache: Path) -> list[float]:
    run_local_ranks(world, [TRAIN, "--schedule", TWO_GROWTHS, "--steps", STEPS, "--seq-len", 64, "--out", out,
                            *flags],
                    env=dict(MEGABABEL_CACHE=str(cache)))
    return {int(r["step"]): float(r["loss"]) for r in csv.DictReader(open(out / "log.csv"))}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, cache):
    out = tmp_path_factory.mktemp("ref")
    losses = train(out, "--micro-batch-size", "4", "--save-every", "10", "--save-after-growth", cache=cache)
    return out, losses


def _same(a: dict, b: dict, steps):
    for step in steps:
        assert abs(a[step] - b[step]) <= 1e-4 * abs(a[step]), (step, a[step], b[step])


@pytest.mark.slow
@pytest.mark.parametrize("checkpoint", ["step_00000010_gen0", "step_00000010_gen1", "step_00000020_gen2"])
def test_resume_just_before_and_right_after_growth_is_exact(reference, tmp_path, cache, checkpoint):
    """_gen0 at step 10: saved after step 9, just before the growth at step 10; _gen1: right after it."""
    out, losses = reference
    ckpt = out / "checkpoints" / checkpoint
    assert ckpt.is_dir(), sorted(p.name for p in ckpt.parent.iterdir())
    resumed = train(tmp_path, "--micro-batch-size", "4", "--resume", str(ckpt), cache=cache)
    start = int(checkpoint.split("_")[1])
    assert min(resumed) == start
    _same(losses, resumed, range(start, STEPS))


@pytest.mark.slow
def test_two_rank_zero3_checkpoint_resumes_on_one_rank(tmp_path, cache):
    two = train(tmp_path / "two", "--stage", "3", "--micro-batch-size", "2", "--save-every", "15", world=2,
                cache=cache)
    one = train(tmp_path / "one", "--stage", "0", "--micro-batch-size", "4", "--resume",
                str(tmp_path / "two" / "checkpoints" / "step_00000015_gen1"), cache=cache)
    _same(two, one, range(15, STEPS))


@pytest.mark.slow
def test_a_crash_during_saving_leaves_the_previous_checkpoint_loadable(tmp_path, cache):
    env = dict(os.environ, DS_ACCELERATOR="cpu", MEGABABEL_CACHE=str(cache))
    process = subprocess.Popen([sys.executable, str(TRAIN), "--schedule", str(TWO_GROWTHS), "--steps", str(STEPS),
                                "--seq-len", "64",
                                "--micro-batch-size", "2", "--save-every", "1", "--out", str(tmp_path / "run")],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoints = tmp_path / "run" / "checkpoints"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(checkpoints.glob("step_*_gen[0-9]"))) < 4:
        time.sleep(0.005)
    time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert (checkpoints / "latest").is_file()
    from megababel.checkpoint.io import load_checkpoint
    saved = load_checkpoint(checkpoints)           # the newest complete one
    assert saved.run["step"] >= 4
    resumed = train(tmp_path / "run", "--micro-batch-size", "2", "--resume", str(checkpoints), cache=cache)
    # resumed into the same run: its log keeps the rows before the checkpoint and continues, without duplicates
    steps = [int(r["step"]) for r in csv.DictReader(open(tmp_path / "run" / "log.csv"))]
    assert steps == list(range(STEPS)) and len(resumed) == STEPS

"""The Trainer in-process: a resume restores the RNG states (a sampled order continues identically) and trains
exactly like the uninterrupted run; RunConfig refuses bad values by flag name."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from megababel.config import ConfigError
from megababel.trainer import Callback, RunConfig, Trainer


class Draws(Callback):
    """What a user's sampler would draw from the global generators at every step, plus the losses."""

    def __init__(self):
        self.draws, self.losses = {}, {}

    def on_step_end(self, trainer, row):
        self.losses[row["step"]] = row["loss"]
        self.draws[row["step"]] = (torch.randint(0, 10**9, (3,)).tolist(), random.random(), float(np.random.rand()))


@pytest.fixture
def distributed_env(monkeypatch, tmp_path):
    from megababel.parallel import free_port
    # set here, so that they are removed afterwards: subprocesses of later tests must not inherit this port
    for key, value in dict(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                           MASTER_PORT=str(free_port()), DS_ACCELERATOR="cpu").items():
        monkeypatch.setenv(key, value)


def fit(out, **changes) -> Draws:
    draws = Draws()
    run = RunConfig(**dict(dict(steps=24, seq_len=32, micro_batch_size=2, eval_every=0, out=out), **changes))
    Trainer(run, callbacks=[draws]).setup().fit()
    return draws


def test_resume_restores_rng_and_continues_exactly(distributed_env, tmp_path):
    torch.manual_seed(1234)
    whole = fit(tmp_path / "whole", save_every=8)            # tiny preset: growths at steps 6 and 12
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

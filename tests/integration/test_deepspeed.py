"""DeepSpeed: growth under ZeRO-0 and ZeRO-3, single process and 2 ranks (real engines, gloo, CPU)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from megababel.parallel.local_ranks import run_local_ranks

from helpers import HELPERS, ROOT

WORKER = HELPERS / "ds_worker.py"


def run_ranks(stage: int, world: int, out: Path, *batch) -> dict:
    run_local_ranks(world, [WORKER, stage, out, *batch])
    return torch.load(out, weights_only=False)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ds")
    return {(stage, world): run_ranks(stage, world, tmp / f"z{stage}_w{world}.pt")
            for stage, world in ((0, 1), (1, 1), (2, 2), (3, 1), (3, 2))}


@pytest.fixture(scope="module")
def accumulated(tmp_path_factory):
    """Global batch of 8 sequences: one micro-batch of 8 on 1 rank (the reference), and micro-batches of 2 with
    gradient accumulation (4 steps on 1 rank, 2 on each of 2 ranks)."""
    tmp = tmp_path_factory.mktemp("accumulation")
    return {(stage, world, micro): run_ranks(stage, world, tmp / f"z{stage}_w{world}_m{micro}.pt", micro, 8)
            for stage, world, micro in ((0, 1, 8), (0, 1, 2), (3, 1, 2), (0, 2, 2), (3, 2, 2))}


@pytest.mark.slow
@pytest.mark.parametrize("key", [(0, 1, 2), (3, 1, 2), (0, 2, 2), (3, 2, 2)])
def test_accumulated_micro_batches_train_like_one_big_batch(accumulated, runs, key):
    """Same sequences per optimizer step, so the same run up to summation order, through both growths."""
    reference, run = accumulated[(0, 1, 8)], accumulated[key]
    assert len(run["losses"]) == len(reference["losses"]) == 12
    for step, (a, b) in enumerate(zip(reference["losses"], run["losses"])):
        assert abs(a - b) <= 1e-4 * abs(a), (step, a, b)
    for event in run["growth"]:        # its fixed validation batch is one micro-batch: compare within the run
        assert abs(event["after"] - event["before"]) <= 1e-5 * abs(event["before"]), event
    # the tolerance separates batches: a global batch of 4 (no accumulation) ends elsewhere
    smaller = runs[(0, 1)]["losses"]
    assert max(abs(a - b) / abs(a) for a, b in zip(reference["losses"][1:], smaller[1:])) > 1e-2


@pytest.mark.slow
@pytest.mark.parametrize("key", [(0, 1), (1, 1), (2, 2), (3, 1), (3, 2)])
def test_loss_on_a_fixed_batch_is_unchanged_by_growth(runs, key):
    for event in runs[key]["growth"]:
        assert abs(event["after"] - event["before"]) <= 1e-5 * abs(event["before"]), event


@pytest.mark.slow
@pytest.mark.parametrize("key", [(1, 1), (2, 2), (3, 1)])
def test_every_zero_stage_reproduces_the_single_process_run(runs, key):
    for step, (a, b) in enumerate(zip(runs[(0, 1)]["losses"], runs[key]["losses"])):
        assert abs(a - b) <= 1e-4 * abs(a), (step, a, b)


@pytest.mark.slow
def test_two_rank_zero3_reproduces_the_single_process_run(runs):
    single, zero3 = runs[(0, 1)], runs[(3, 2)]
    assert len(single["losses"]) == len(zero3["losses"]) == 12
    for step, (a, b) in enumerate(zip(single["losses"], zero3["losses"])):
        assert abs(a - b) <= 1e-4 * abs(a), (step, a, b)
    for g_single, g_zero3 in zip(single["growth"], zero3["growth"]):
        assert g_single["steps"] == g_zero3["steps"]
    # Moments right after the first growth (4 steps in): the two runs differ only by summation order (one process
    # vs a 2-rank reduce-scatter). Later, random-data training amplifies those 1e-7 differences in small moments.
    for key, (m, v) in single["growth"][0]["moments_after"].items():
        torch.testing.assert_close(zero3["growth"][0]["moments_after"][key][0], m, rtol=1e-3, atol=1e-3 * m.abs().max())
        torch.testing.assert_close(zero3["growth"][0]["moments_after"][key][1], v, rtol=1e-3, atol=1e-3 * v.abs().max())


@pytest.mark.slow
@pytest.mark.parametrize("key", [(0, 1), (3, 2)])
def test_adam_state_of_old_blocks_survives_growth(runs, key):
    """Old blocks keep exp_avg / exp_avg_sq exactly and their groups keep their step; new groups start at 0.
    (Blocks are matched by (path, index); depth growth renumbers layers, so only the width growth is compared.)"""
    width = runs[key]["growth"][0]
    for (path, index), (m, v) in width["moments_before"].items():
        m_after, v_after = width["moments_after"][(path, index)]
        assert torch.equal(m_after, m) and torch.equal(v_after, v), (path, index)
        assert m.abs().sum() > 0
    steps = width["steps"]
    assert steps[(0, True)] == steps[(0, False)] == 4.0 and steps[(1, True)] == steps[(1, False)] == 0.0


@pytest.mark.slow
@pytest.mark.parametrize("stage", [0, 3])
def test_five_growth_events_do_not_leak_engines(stage, tmp_path):
    """After each of 5 growths exactly one engine and one model are alive, and resident memory grows by less than
    twice the model's own training state (fp32 weights + grads + 2 Adam moments = 16 bytes per parameter). RSS
    moves by +-60 MB between identical runs here (heap arenas), hence 2x; an engine leaked per growth would keep
    four old ones alive by the end, about 4x."""
    import json

    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT"):
        env.pop(key, None)
    out = subprocess.run([sys.executable, str(WORKER.with_name("ds_leak_worker.py")), str(stage), str(tmp_path)],
                         env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    record = json.loads(next(line for line in out.stdout.splitlines() if line.startswith("RESULT "))[7:])
    assert all(r["engines"] == 1 and r["models"] == 1 for r in record), record
    own_size = 16 * record[-1]["parameters"]
    assert record[-1]["rss"] - record[0]["rss"] < 2 * own_size, record


@pytest.mark.slow
def test_zero3_growth_spreads_its_memory_over_ranks():
    """A 1-rank growth must hold the whole fp32 model and Adam state (nowhere else to put them). With 2 ranks each
    rank keeps only its share of the Adam moments and gets the rest block by block, so its extra memory during the
    growth must be clearly below the 1-rank figure (measured peak RSS, VmHWM, reset before the growth)."""
    sys.path.insert(0, str(ROOT / "bench"))
    import growth_speed

    one = growth_speed.run(3, 1, "small", steps=1, micro=1, seq=64)
    two = growth_speed.run(3, 2, "small", steps=1, micro=1, seq=64)
    extra_one = one[0]["peak_rss_during_growth_mb"] - one[0]["steady_rss_mb"]
    adam_and_weights_mb = 12 * one[0]["params_before"] / 2**20
    for rank in two:
        extra = rank["peak_rss_during_growth_mb"] - rank["steady_rss_mb"]
        assert extra < extra_one - adam_and_weights_mb / 4, (extra, extra_one, adam_and_weights_mb)


SHM_PROBE = """
import os, torch
from megababel.parallel import all_reduce
from megababel.engine import init_distributed
os.environ["LOCAL_SIZE"] = os.environ["WORLD_SIZE"]     # as the deepspeed launcher sets it: all ranks on one host
init_distributed()
assert all_reduce(torch.ones(3)).tolist() == [2.0, 2.0, 2.0]
print("PORT", os.environ["MASTER_PORT"])
torch.distributed.destroy_process_group()
"""


def test_no_shared_memory_left_behind_by_a_run(tmp_path):
    """Under the deepspeed launcher, DeepSpeed's CPU backend leaves a 67 MB /dev/shm workspace per rank unless
    megababel unlinks it (RAM lost until reboot, run after run)."""
    script = tmp_path / "probe.py"
    script.write_text(SHM_PROBE)
    logs = run_local_ranks(2, [script])
    port = logs[0].split("PORT")[1].split()[0]
    left = [name for name in os.listdir("/dev/shm")
            if name.startswith("deepspeed_allreduce_buffer") and f"_{port}_" in name]
    assert not left, left

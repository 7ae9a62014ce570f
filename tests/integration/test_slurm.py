"""launch/slurm/train.sbatch on a real Slurm cluster (munged + slurmctld + two slurmd on this machine).

Skipped, with the reason, where Slurm cannot be installed (not root, no apt). CPU, gloo, ZeRO-3, 2 nodes x 1 rank,
the tiny schedule on the embedded corpus (growth in width + FFN + vocabulary, then depth + vocabulary)."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import TWO_GROWTHS
from megababel.parallel import free_port
from helpers.slurm_cluster import LocalSlurmCluster, ensure_installed

from helpers import ROOT
SCRIPT = ROOT / "launch" / "slurm" / "train.sbatch"
TRAIN = ["--schedule", str(TWO_GROWTHS), "--stage", "3", "--micro-batch-size", "4", "--seq-len", "64", "--eval-every", "10", "--save-every", "15"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    reason = ensure_installed()
    if reason:
        pytest.skip(reason)
    from megababel.data.embedded import build_embedded_dataset
    build_embedded_dataset()          # once, before two ranks would race to build it
    with LocalSlurmCluster(tmp_path_factory.mktemp("slurm")) as running:
        yield running


def _tails(folder: Path) -> str:
    return "\n".join(f"--- {f}\n{f.read_text()[-1500:]}" for f in sorted(folder.rglob("*.log")))


def losses(out: Path) -> list[tuple[int, float, str]]:
    return [(int(r["step"]), float(r["loss"]), r["generation"]) for r in csv.DictReader(open(out / "log.csv"))]


def local_two_rank_run(out: Path, steps: int) -> list:
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT"):
        env.pop(key, None)
    command = [str(Path(sys.executable).with_name("deepspeed")), "--num_gpus", "2", "--master_port", str(free_port()),
               str(ROOT / "launch/train.py"), *TRAIN, "--steps", str(steps), "--out", str(out)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return losses(out)


def submit(cluster, out: Path, steps: int) -> int:
    return cluster.sbatch(SCRIPT, ["--nodes=2", "--ntasks-per-node=1", f"--output={out.parent}/{out.name}-%j.out"],
                          [*TRAIN, "--steps", str(steps), "--out", str(out)], cwd=ROOT,
                          env=dict(PYTHON=sys.executable, MEGABABEL_ROOT=str(ROOT)))


@pytest.mark.slow
def test_two_node_job_trains_through_growth_like_a_local_two_rank_run(cluster, tmp_path):
    out = tmp_path / "job"
    job = submit(cluster, out, steps=30)
    state = cluster.wait_job(job, timeout=600)
    log = (out / "slurm" / str(job) / "attempt-0")
    assert state == "COMPLETED", (log / "batch.log").read_text()[-2000:] if log.exists() else cluster.logs()
    assert "2 node(s) [127.0.0.[1-2]], 2 rank(s)" in (log / "batch.log").read_text()
    assert (log / "rank-0.log").is_file() and (log / "rank-1.log").is_file()
    assert {p.name for p in (out / "checkpoints").iterdir()} == {"latest", "step_00000015_gen1", "step_00000030_gen2"}
    job_losses = losses(out)
    assert [g for _, _, g in job_losses].count("2") > 0
    assert job_losses == local_two_rank_run(tmp_path / "local", steps=30)


@pytest.mark.slow
def test_a_signalled_job_checkpoints_requeues_and_continues_with_the_same_losses(cluster, tmp_path):
    out = tmp_path / "job"
    job = submit(cluster, out, steps=45)
    deadline = time.time() + 600
    while not (out / "checkpoints" / "latest").is_file():        # let it train into the run, then "preempt" it
        assert time.time() < deadline and cluster.job_state(job) in ("PENDING", "RUNNING"), cluster.logs()
        time.sleep(0.5)
    subprocess.run(["scancel", "--signal=USR1", str(job)], env=cluster.env, check=True, timeout=30)
    # the job saves, requeues itself and waits for its begin time (Slurm delays requeued jobs ~2 min): release it
    while not (out / "slurm" / str(job) / "attempt-0" / "batch.log").is_file() or \
            "requeueing" not in (out / "slurm" / str(job) / "attempt-0" / "batch.log").read_text():
        assert time.time() < deadline, cluster.logs()
        time.sleep(0.5)
    while cluster.job_state(job) not in ("PENDING", "COMPLETED", "FAILED"):
        assert time.time() < deadline, cluster.logs()
        time.sleep(0.5)
    # slurmd revokes the first run's credentials with 1-second granularity: a restart in the same second is killed
    # ("Job credential revoked"), which is why Slurm itself waits. A few seconds are enough.
    time.sleep(5)
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], env=cluster.env, timeout=30)
    state = cluster.wait_job(job, timeout=600)
    attempts = out / "slurm" / str(job)
    assert state == "COMPLETED", (state, _tails(attempts), cluster.job_info(job))
    assert (attempts / "attempt-1" / "rank-0.log").is_file()
    assert "resumed from" in (attempts / "attempt-1" / "rank-0.log").read_text()
    assert not (out / "preempted").exists()
    saved = sorted(p.name for p in (out / "checkpoints").iterdir() if p.name.startswith("step_"))
    assert len(saved) in (3, 4) and saved[-1] == "step_00000045_gen2"   # 15, 30, 45 and the preemption's
    assert losses(out) == local_two_rank_run(tmp_path / "local", steps=45)

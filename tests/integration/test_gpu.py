"""The CUDA path (NCCL, GPU tensors): a progressive run on one GPU matches the same run on the CPU.

Skipped without CUDA. With a GPU, each ZeRO stage (0, 3) x precision (fp32, --bf16) runs tests/helpers/tp_worker.py's schedule
(width + FFN + vocabulary 1000 -> 2000 growth at step 4, depth at step 8; 12 steps) through the Trainer on the GPU
and, as the reference, on the CPU (CUDA hidden, gloo), then resumes the GPU run from its step-6 checkpoint. Checks:
step-0 loss equal to the CPU's; every step's loss and the fixed-batch loss around each growth close to the CPU's;
the depth growth keeps the fixed-batch loss (the first growth also changes the vocabulary stage, so the fixed batch
itself changes: there the GPU's jump must equal the CPU's); the resumed run gives the same losses.
GPU kernels sum in another order (and bf16 rounds), and 12 Adam steps amplify that, hence the tolerances."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA GPU here (torch.cuda.is_available() is False): the GPU path is "
                                          "checked only on a machine with one")]
from helpers import HELPERS

WORKER = HELPERS / "tp_worker.py"
SAME = {False: 1e-4, True: 2e-2}          # relative, fp32 / bf16: one forward of the same weights
TRAJECTORY = {False: 2e-3, True: 5e-2}    # relative: the loss after up to 12 optimizer steps on either device


def run_worker(device: str, stage: int, bf16: bool, out: Path, *extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_PORT")}
    env.update(DS_ACCELERATOR="cpu", CUDA_VISIBLE_DEVICES="") if device == "cpu" else env.update(DS_ACCELERATOR="cuda")
    command = [sys.executable, str(WORKER), str(stage), "1", str(out), *(["--bf16"] if bf16 else []), *map(str, extra)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return torch.load(out, weights_only=False)


def relative(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
@pytest.mark.parametrize("stage", [0, 3])
def test_a_gpu_run_matches_the_cpu_and_resumes(tmp_path, stage, bf16):
    cpu = run_worker("cpu", stage, bf16, tmp_path / "cpu.pt")
    gpu = run_worker("cuda", stage, bf16, tmp_path / "gpu.pt", "--save-every", 6, "--checkpoints", tmp_path / "run")
    resumed = run_worker("cuda", stage, bf16, tmp_path / "resumed.pt",
                         "--resume", tmp_path / "run" / "checkpoints" / "step_00000006_gen1")
    growth = [{k: e[k] for k in ("before", "after")} for e in gpu["growth"]]
    cpu_growth = [{k: e[k] for k in ("before", "after")} for e in cpu["growth"]]
    print(json.dumps(dict(stage=stage, bf16=bf16, gpu_losses=gpu["losses"], cpu_losses=cpu["losses"],
                          resumed=resumed["losses"], gpu_growth=growth, cpu_growth=cpu_growth)))
    assert relative(gpu["losses"][0], cpu["losses"][0]) <= SAME[bf16], (gpu["losses"], cpu["losses"])
    worst = max(relative(gpu["losses"][s], cpu["losses"][s]) for s in cpu["losses"])
    assert worst <= TRAJECTORY[bf16], (worst, gpu["losses"], cpu["losses"])
    assert len(growth) == len(cpu_growth) == 2
    for ours, reference in zip(growth, cpu_growth):
        for key in ("before", "after"):
            assert relative(ours[key], reference[key]) <= TRAJECTORY[bf16], (growth, cpu_growth)
    jump, cpu_jump = growth[0]["after"] - growth[0]["before"], cpu_growth[0]["after"] - cpu_growth[0]["before"]
    assert abs(jump - cpu_jump) <= TRAJECTORY[bf16] * abs(cpu_growth[0]["before"]), (growth, cpu_growth)
    assert relative(growth[1]["after"], growth[1]["before"]) <= SAME[bf16], growth      # depth: function kept
    assert sorted(resumed["losses"]) == list(range(6, 12))
    for step, loss in resumed["losses"].items():
        assert relative(loss, gpu["losses"][step]) <= SAME[bf16], (step, loss, gpu["losses"][step])

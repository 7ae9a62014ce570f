"""The CUDA path (NCCL, GPU tensors): a progressive run on one GPU matches the same run on the CPU.

Skipped without CUDA. With a GPU, each ZeRO stage (0, 3) x precision (fp32, --bf16) runs tests/tp_worker.py's schedule
(width + FFN + vocabulary 1000 -> 2000 growth at step 4, depth at step 8; 12 steps) through the Trainer on the GPU
and, as the reference, on the CPU (CUDA hidden, gloo), then resumes the GPU run from its step-6 checkpoint. Checks:
step-0 loss equal to the CPU's, growth keeps the loss on a fixed batch, and the resumed run gives the same losses.
GPU kernels may sum in another order (and bf16 rounds), hence the tolerances."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA GPU here (torch.cuda.is_available() is False): the GPU path is "
                                          "checked only on a machine with one")]
WORKER = Path(__file__).with_name("tp_worker.py")
TOLERANCE = {False: 1e-4, True: 2e-2}          # relative, fp32 / bf16


def run_worker(device: str, stage: int, bf16: bool, out: Path, *extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_PORT")}
    env.update(DS_ACCELERATOR="cpu", CUDA_VISIBLE_DEVICES="") if device == "cpu" else env.update(DS_ACCELERATOR="cuda")
    command = [sys.executable, str(WORKER), str(stage), "1", str(out), *(["--bf16"] if bf16 else []), *map(str, extra)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return torch.load(out, weights_only=False)


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
@pytest.mark.parametrize("stage", [0, 3])
def test_a_gpu_run_matches_the_cpu_and_resumes(tmp_path, stage, bf16):
    tolerance = TOLERANCE[bf16]
    cpu = run_worker("cpu", stage, bf16, tmp_path / "cpu.pt")
    gpu = run_worker("cuda", stage, bf16, tmp_path / "gpu.pt", "--save-every", 6, "--checkpoints", tmp_path / "run")
    assert abs(gpu["losses"][0] - cpu["losses"][0]) <= tolerance * abs(cpu["losses"][0]), (gpu["losses"], cpu["losses"])
    assert len(gpu["growth"]) == 2
    for event in gpu["growth"]:
        assert abs(event["after"] - event["before"]) <= tolerance * abs(event["before"]), event
    resumed = run_worker("cuda", stage, bf16, tmp_path / "resumed.pt",
                         "--resume", tmp_path / "run" / "checkpoints" / "step_00000006_gen1")
    assert sorted(resumed["losses"]) == list(range(6, 12))
    for step, loss in resumed["losses"].items():
        assert abs(loss - gpu["losses"][step]) <= tolerance * abs(loss), (step, loss, gpu["losses"][step])

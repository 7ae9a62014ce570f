"""Start N ranks of a script on this machine (gloo, CPU), as tests and benchmarks do: one process per rank with the
rank variables set, all waited for. A rank that fails raises RuntimeError with the end of its output."""
from __future__ import annotations

import os
import subprocess
import sys

from megababel.parallel import free_port


def run_local_ranks(world: int, argv: list, threads: int = 1, timeout: float = 600) -> list[str]:
    """Run `python argv...` as ranks 0..world-1; return each rank's combined stdout/stderr."""
    port, procs = str(free_port()), []
    for rank in range(world):
        env = dict(os.environ, DS_ACCELERATOR="cpu", RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=port, OMP_NUM_THREADS=str(threads))
        procs.append(subprocess.Popen([sys.executable, *map(str, argv)], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    logs = [p.communicate(timeout=timeout)[0] for p in procs]
    for rank, (p, log) in enumerate(zip(procs, logs)):
        if p.returncode != 0:
            raise RuntimeError(f"rank {rank} of {world} exited with {p.returncode}:\n{log[-3000:]}")
    return logs

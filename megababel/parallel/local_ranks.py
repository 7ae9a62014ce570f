"""Start N ranks of a script on this machine (gloo, CPU), as tests and benchmarks do: one process per rank with the
rank variables set, all waited for. A rank that fails raises RuntimeError with the end of its output.

Each rank writes to its own file, not a pipe: a pipe that is read only after another rank exits fills up (64 KiB)
and blocks its writer in the middle of a collective, which then hangs every rank."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

from megababel.parallel.distributed import free_port


def run_local_ranks(world: int, argv: list, threads: int = 1, timeout: float = 600,
                    env: dict | None = None) -> list[str]:
    """Run `python argv...` as ranks 0..world-1 (`env`: extra environment variables); return each rank's combined
    stdout/stderr."""
    port, procs = str(free_port()), []
    with tempfile.TemporaryDirectory() as tmp:
        outputs = [open(os.path.join(tmp, f"rank{rank}.log"), "w+") for rank in range(world)]
        for rank in range(world):
            variables = dict(os.environ, DS_ACCELERATOR=os.environ.get("DS_ACCELERATOR", "cpu"), RANK=str(rank), LOCAL_RANK=str(rank),
                             WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=port,
                             OMP_NUM_THREADS=str(threads), **(env or {}))
            procs.append(subprocess.Popen([sys.executable, *map(str, argv)], env=variables, stdout=outputs[rank],
                                          stderr=subprocess.STDOUT, text=True))
        try:       # wait for all; a rank that fails stops the others (they would wait for it in a collective)
            deadline = time.time() + timeout
            while any(p.poll() is None for p in procs):
                if any(p.poll() not in (None, 0) for p in procs):
                    break
                if time.time() > deadline:
                    raise subprocess.TimeoutExpired(argv, timeout)
                time.sleep(0.2)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        logs = []
        for f in outputs:
            f.seek(0)
            logs.append(f.read())
            f.close()
    for rank, (p, log) in sorted(enumerate(zip(procs, logs)), key=lambda r: r[1][0].returncode == -9):
        if p.returncode != 0:        # the rank that failed first, not one this function stopped
            raise RuntimeError(f"rank {rank} of {world} exited with {p.returncode}:\n{log[-3000:]}")
    return logs

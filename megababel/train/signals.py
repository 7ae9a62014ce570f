"""Stop on a signal: Slurm's --signal before the time limit, or preemption, asks for a checkpoint and a clean stop."""
from __future__ import annotations

import signal

import torch
import torch.distributed as dist

from megababel.parallel import all_reduce


class StopRequest:
    """SIGUSR1 / SIGTERM ask for a checkpoint and a clean stop. Ranks may get the signal at different moments, so
    they agree (an all-reduce of a flag) at every step boundary and all stop after the same step."""

    def __init__(self):
        self.signal_name = None
        self.previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGUSR1, signal.SIGTERM)}

    def close(self):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame):
        self.signal_name = signal.Signals(signum).name

    def agreed(self) -> bool:
        flag = torch.tensor([1.0 if self.signal_name else 0.0])
        if dist.is_initialized() and dist.get_world_size() > 1:
            flag = all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item() and self.signal_name is None:
            self.signal_name = "on another rank"
        return bool(flag.item())

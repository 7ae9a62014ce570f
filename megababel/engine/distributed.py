"""Start torch.distributed through DeepSpeed (its CPU and GPU backends), from any launcher's environment."""
from __future__ import annotations

import os
import time
from pathlib import Path

import torch
import torch.distributed as dist

from megababel.parallel import free_port


def init_distributed():
    """torch.distributed on gloo (CPU) or nccl, from the launcher's environment (deepspeed / torchrun variables, or
    Slurm's when srun started one task per rank); a plain `python` run is rank 0 of 1."""
    os.environ.setdefault("DS_ACCELERATOR", "cpu" if not torch.cuda.is_available() else "cuda")
    if "RANK" not in os.environ and "SLURM_PROCID" in os.environ and "SLURM_NTASKS" in os.environ:
        os.environ.update(RANK=os.environ["SLURM_PROCID"], WORLD_SIZE=os.environ["SLURM_NTASKS"],
                          LOCAL_RANK=os.environ.get("SLURM_LOCALID", "0"))
    for key, value in dict(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1").items():
        os.environ.setdefault(key, value)
    if "MASTER_PORT" not in os.environ:
        os.environ["MASTER_PORT"] = str(free_port())
    import deepspeed
    if not dist.is_initialized():
        if os.environ["DS_ACCELERATOR"] == "cpu":
            remove_stale_build_lock()
        deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
        _unlink_shm_workspace()
    return dist.get_rank(), dist.get_world_size()


STALE_LOCK_SECONDS = 600     # the op builds in ~30 s; a lock this old has no live builder


def remove_stale_build_lock(op: str = "deepspeed_shm_comm") -> list[str]:
    """Remove a stale lock of DeepSpeed's CPU communication op: its backend JIT-loads the op at init, and torch's
    FileBaton takes a lock file even when the op is already built. A process killed in that moment (Ctrl-C or a
    timeout at start-up) leaves the lock, and every later start waits on it forever, silently. The removed paths."""
    from torch.utils.cpp_extension import get_default_build_root
    root = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root())
    removed = []
    for lock in [root / op / "lock", *root.glob(f"*/{op}/lock")]:
        try:
            if time.time() - lock.stat().st_mtime > STALE_LOCK_SECONDS:
                lock.unlink()
                removed.append(str(lock))
                print(f"removed {lock}: a lock older than {STALE_LOCK_SECONDS} s, left by a process killed while it "
                      f"loaded DeepSpeed's {op} op (later starts would have waited on it forever)", flush=True)
        except FileNotFoundError:      # absent, or another rank removed it first
            pass
    return removed


def slow_bf16_here() -> bool:
    """Whether bf16 compute would crawl on this machine: no GPU and a CPU without native bf16 (neither AVX512-BF16
    nor AMX). There PyTorch emulates bf16 matmuls: measured 1 GFLOP/s against 48 for fp32 on one core of an
    AVX2-only EPYC, where CPUs with AMX run bf16 several times faster than fp32."""
    return not torch.cuda.is_available() and not (torch.cpu._is_avx512_bf16_supported()
                                                  or torch.cpu._is_amx_tile_supported())


def _unlink_shm_workspace():
    """DeepSpeed's CPU backend maps a 67 MB shared-memory all-reduce workspace per rank, named after MASTER_ADDR and
    MASTER_PORT, and never unlinks it: every run left ~67 MB per rank in /dev/shm (RAM) until reboot. Once every
    rank has mapped every workspace (the barrier), the names can go; the mappings live until the processes exit."""
    path = (f"/dev/shm/deepspeed_allreduce_buffer_{os.getuid()}_{os.environ['MASTER_ADDR']}_"
            f"{os.environ['MASTER_PORT']}_{dist.get_rank()}")
    if dist.get_backend() != "gloo":
        return
    if dist.get_world_size() > 1:
        dist.barrier()            # on every rank, file or not: a barrier some ranks skip would hang
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass

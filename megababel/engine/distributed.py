"""Start torch.distributed through DeepSpeed (its CPU and GPU backends), from any launcher's environment."""
from __future__ import annotations

import os

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
        deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
        _unlink_shm_workspace()
    return dist.get_rank(), dist.get_world_size()


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

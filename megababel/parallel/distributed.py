"""Process groups: start torch.distributed from any launcher's environment, and where collectives' tensors live.

The collectives of the state paths (growth, checkpoints, loss and flags) go through all_reduce / broadcast /
all_gather below: they move tensors to comm_device() and back to where they were, so the same code runs on gloo
(CPU tensors only) and NCCL (GPU tensors only). Only the tensor-parallel layers call torch.distributed directly, on
activations, which live on the compute device and so on the communication device of either backend."""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


def free_port() -> int:
    """A TCP port on localhost that nothing listens on right now (for MASTER_PORT)."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


def comm_device() -> torch.device:
    """Where tensors for collectives must live: NCCL only moves GPU tensors, gloo CPU ones."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce(tensor: torch.Tensor, op=dist.ReduceOp.SUM, group=None) -> torch.Tensor:
    """The reduced tensor (a new one, on `tensor`'s device)."""
    moved = tensor.detach().to(comm_device(), copy=True)
    dist.all_reduce(moved, op=op, group=group)
    return moved.to(tensor.device)


def broadcast(tensor: torch.Tensor, src: int, group=None) -> torch.Tensor:
    """`src`'s tensor on every rank (a new one, on `tensor`'s device; `tensor` gives the shape elsewhere)."""
    moved = tensor.detach().to(comm_device(), copy=True)
    dist.broadcast(moved, src=src, group=group)
    return moved.to(tensor.device)


def all_gather(tensor: torch.Tensor, group=None) -> list[torch.Tensor]:
    """Every rank's `tensor` (same shape on all), in rank order, on `tensor`'s device."""
    moved = tensor.detach().to(comm_device())
    gathered = [torch.empty_like(moved) for _ in range(dist.get_world_size(group))]
    dist.all_gather(gathered, moved, group=group)
    return [t.to(tensor.device) for t in gathered]


def all_gather_flat(tensor: torch.Tensor, group=None) -> torch.Tensor:
    """Every rank's 1-D `tensor` (same size on all), concatenated in rank order into one new tensor on `tensor`'s
    device (no intermediate list: one buffer the size of the result)."""
    moved = tensor.detach().to(comm_device()).contiguous()
    out = torch.empty(moved.numel() * dist.get_world_size(group), dtype=moved.dtype, device=moved.device)
    dist.all_gather_into_tensor(out, moved, group=group)
    return out.to(tensor.device)

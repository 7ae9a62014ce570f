"""Collectives and where their tensors live (process groups are started by megababel.engine.init_distributed,
through DeepSpeed).

The collectives of the state paths (growth, checkpoints, loss and flags) go through all_reduce / broadcast /
all_gather below: they move tensors to comm_device() and back to where they were, so the same code runs on gloo
(CPU tensors only) and NCCL (GPU tensors only). Only the tensor-parallel layers call torch.distributed directly, on
activations, which live on the compute device and so on the communication device of either backend."""
from __future__ import annotations

import torch
import torch.distributed as dist


def free_port() -> int:
    """A TCP port on localhost that nothing listens on right now (for MASTER_PORT)."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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

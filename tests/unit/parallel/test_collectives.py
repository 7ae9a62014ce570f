"""Collectives run on the device their backend moves (NCCL: GPU tensors only; gloo: CPU ones), by construction:
the state paths (growth, checkpoints, losses, stop flags) call parallel.distributed's all_reduce / broadcast /
all_gather, which move tensors to comm_device() and back; only the tensor-parallel autograd functions and the
vocabulary-parallel loss call torch.distributed directly, on activations (which live on the compute device, the
communication device of either backend)."""
from __future__ import annotations

import ast
from pathlib import Path

import torch

from helpers import ROOT

COLLECTIVES = {"all_reduce", "broadcast", "all_gather", "all_gather_into_tensor", "reduce_scatter",
               "reduce_scatter_tensor", "gather", "scatter", "reduce", "all_to_all", "send", "recv"}
ALLOWED = {  # file: functions allowed to call torch.distributed collectives directly
    "megababel/parallel/distributed.py": {"all_reduce", "broadcast", "all_gather", "all_gather_flat"},
    "megababel/parallel/tensor_parallel.py": {"forward", "backward"},     # _CopyToTP, _ReduceFromTP
    "megababel/model/loss.py": {"_target_log_probs"},     # the vocabulary-parallel loss's per-token statistics
}


def direct_collective_calls(path: Path) -> list[tuple[str, int]]:
    """(enclosing function, line) of every `dist.<collective>(...)` / `torch.distributed.<collective>(...)` call."""
    found = []

    def visit(node, function):
        for child in ast.iter_child_nodes(node):
            name = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else function
            if isinstance(child, ast.Call) and isinstance(child.func, ast.Attribute) and child.func.attr in COLLECTIVES:
                owner = ast.unparse(child.func.value)
                if owner in ("dist", "torch.distributed"):
                    found.append((function, child.lineno))
            visit(child, name)

    visit(ast.parse(path.read_text()), "<module>")
    return found


def test_only_the_device_safe_helpers_call_collectives():
    files = sorted((ROOT / "megababel").rglob("*.py")) + sorted((ROOT / "launch").rglob("*.py")) + \
        sorted((ROOT / "tools").rglob("*.py"))
    offenders, seen = [], set()
    for path in files:
        relative = path.relative_to(ROOT).as_posix()
        for function, line in direct_collective_calls(path):
            seen.add(relative)
            if function not in ALLOWED.get(relative, set()):
                offenders.append(f"{relative}:{line} in {function}()")
    assert not offenders, "call megababel.parallel's all_reduce / broadcast / all_gather instead: " + ", ".join(offenders)
    assert seen == set(ALLOWED)          # the scan finds the calls it allows (it would find others)


def test_the_helpers_return_on_the_input_device(monkeypatch):
    import torch.distributed as dist

    from megababel.parallel import all_gather, all_reduce, broadcast, free_port
    for key, value in dict(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port())).items():
        monkeypatch.setenv(key, value)
    if not dist.is_initialized():
        dist.init_process_group("gloo", rank=0, world_size=1)
    x = torch.arange(4.0)
    reduced = all_reduce(x)
    assert torch.equal(reduced, x) and reduced is not x and reduced.device == x.device
    assert torch.equal(broadcast(x, src=0), x)
    assert [t.tolist() for t in all_gather(x)] == [x.tolist()]

"""torch.compile for a growing model (--compile): each decoder layer, compiled anew for every generation.

Granularity: torchtitan's, one graph per decoder layer. RMSNorm, RoPE, SwiGLU and the residual adds fuse, every
layer of one shape shares the graph, and nothing outside the layers is traced. The embedding, the final norm and
the loss stay eager; the loss is chunked by hand already (megababel.model.loss). The layers compile without graph
breaks under ZeRO-0, also for a grown model's multi-block weights and under bf16 autocast. Under ZeRO-3
DeepSpeed's parameter-gathering hooks, which run at every submodule, are excluded from compilation by DeepSpeed
itself, so each layer's graph breaks at them (bench/compile_speed.py lists the breaks; there compiling gains
nothing). Under tensor parallelism the layers compile and train like eager ones; their breaks are not counted yet.

A growth builds a new model, whose layers have new shapes and new weight blocks. Before compiling them the
compiler's caches are reset: the old generation's graphs can never run again, and each would count against the
recompile limit of the layer's code (8 by default; past it torch falls back to eager without failing). A resumed
run compiles its model like a grown one.

Compilation happens at the first forward and backward of a shape (the first training step of a generation, its
first validation). `seconds_compiling()` is the time this process has spent in it, from torch's compile-start and
compile-end callbacks, so the Trainer can report it per generation.
"""
from __future__ import annotations

import threading
import time

import torch


class _CompileClock:
    """Seconds spent compiling in this process (nested compilations counted once by torch's callback handler)."""

    def __init__(self):
        self.total, self.started, self.lock = 0.0, None, threading.Lock()
        self.installed = False

    def install(self):
        """Register with torch's callbacks (again after torch.compiler.reset(), which clears them)."""
        try:
            from torch._dynamo.callback import callback_handler
        except ImportError:        # a torch without compile callbacks: compile still works, untimed
            return
        if self._start not in callback_handler.start_callbacks:
            callback_handler.register_start_callback(self._start)
            callback_handler.register_end_callback(self._end)
        self.installed = True

    def _start(self, *args):
        with self.lock:
            self.started = time.perf_counter()

    def _end(self, *args):
        with self.lock:
            if self.started is not None:
                self.total += time.perf_counter() - self.started
                self.started = None


_CLOCK = _CompileClock()


def compile_layers(model) -> None:
    """torch.compile every decoder layer of `model` (a megababel Llama), in place."""
    torch.compiler.reset()
    _CLOCK.install()
    for layer in model.layers:
        layer.compile()


def seconds_compiling() -> float | None:
    """Seconds this process has spent compiling so far; None where torch has no compile callbacks."""
    return _CLOCK.total if _CLOCK.installed else None

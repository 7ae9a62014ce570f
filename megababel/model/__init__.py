"""The plain Llama-2 decoder: growable layers (each weight a set of generation blocks with their metadata), the
model, and its parameter and FLOP counters. Imports only megababel.config."""
import importlib

__all__ = ["Llama", "ParameterCounts", "config_parameters", "count_parameters", "flops_per_token"]


def __getattr__(name: str):
    """Loaded on first use (PEP 562): the counters need no torch, and megababel-model-size answers without it."""
    if name in __all__:
        module = "megababel.model.llama" if name == "Llama" else "megababel.model.counters"
        return getattr(importlib.import_module(module), name)
    raise AttributeError(f"module 'megababel.model' has no attribute {name!r}")

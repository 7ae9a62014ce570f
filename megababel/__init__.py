"""megababel: train Llama-2 models progressively, growing them while they train."""
import importlib

__all__ = ["ConfigError", "GrowthEvent", "Llama", "LlamaConfig", "grow"]
_WHERE = {"ConfigError": "megababel.config", "LlamaConfig": "megababel.config", "Llama": "megababel.model.llama",
          "GrowthEvent": "megababel.growth.events", "grow": "megababel.growth.operators"}


def __getattr__(name: str):
    """The public names load on first use (PEP 562): importing a light module (the counters, a tool's --help) must
    not import torch through this package."""
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'megababel' has no attribute {name!r}")

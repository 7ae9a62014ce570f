"""Growth operators: what a growth event is and its checks (events.py, no torch), and the exact, function-preserving
map from one generation to the next, tensor by tensor (operators.py; the engine applies it shard by shard). Imports
config and model."""
import importlib

__all__ = ["GrowthEvent", "GrowthTransform", "check_growth", "grow"]


def __getattr__(name: str):
    """Loaded on first use (PEP 562): schedules import growth.events without paying for torch."""
    if name in __all__:
        module = "megababel.growth.events" if name in ("GrowthEvent", "check_growth") else "megababel.growth.operators"
        return getattr(importlib.import_module(module), name)
    raise AttributeError(f"module 'megababel.growth' has no attribute {name!r}")

"""The training run: the Trainer (the one loop), its run config, run record, resume checks, vocabulary data,
signals, callbacks and loggers, and the command line (`megababel-train`, `python -m megababel.train`)."""
import importlib

_HOMES = {"Callback": "megababel.train.callbacks", "RunConfig": "megababel.train.run_config",
          "Trainer": "megababel.train.trainer", "TrainingDiverged": "megababel.train.trainer"}
__all__ = list(_HOMES)


def __getattr__(name: str):
    """Loaded on first use (PEP 562): `megababel-train --help` answers without paying for torch."""
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'megababel.train' has no attribute {name!r}")

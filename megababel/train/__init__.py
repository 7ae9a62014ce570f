"""The training run: the Trainer (the one loop), its run config, run record, resume checks, vocabulary data,
signals, callbacks and loggers, and the command line (`megababel-train`, `python -m megababel.train`)."""
from megababel.train.callbacks import Callback
from megababel.train.run_config import RunConfig
from megababel.train.trainer import Trainer, TrainingDiverged

__all__ = ["Callback", "RunConfig", "Trainer", "TrainingDiverged"]

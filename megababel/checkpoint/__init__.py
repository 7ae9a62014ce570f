"""The state contract (EngineState: the unsharded model and Adam state) and the checkpoint files that hold it.
Independent of DeepSpeed; imports config."""
from megababel.checkpoint.io import (CheckpointError, list_checkpoints, load_checkpoint, resolve_checkpoint,
                                     save_checkpoint, write_state)
from megababel.checkpoint.state import EngineState, GroupInfo

__all__ = ["CheckpointError", "EngineState", "GroupInfo", "list_checkpoints", "load_checkpoint", "resolve_checkpoint",
           "save_checkpoint", "write_state"]

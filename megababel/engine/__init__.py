"""The only package that imports DeepSpeed: a growing model inside a DeepSpeed engine (ZeRO 0-3, tensor parallel),
its shard-local growth, the DeepSpeed config and the internals it relies on (deepspeed_compat lists them)."""
from megababel.engine.distributed import init_distributed
from megababel.engine.growing_engine import GrowingEngine

__all__ = ["GrowingEngine", "init_distributed"]

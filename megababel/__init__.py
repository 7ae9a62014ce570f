"""megababel: train Llama-2 models progressively, growing them while they train."""
from megababel.config import ConfigError, LlamaConfig
from megababel.growth.operators import GrowthEvent, grow
from megababel.model.llama import Llama

__all__ = ["ConfigError", "GrowthEvent", "Llama", "LlamaConfig", "grow"]

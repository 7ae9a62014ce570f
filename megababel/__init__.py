"""megababel: train Llama-2 models progressively, growing them while they train."""
from .config import ConfigError, LlamaConfig
from .growth import GrowthEvent, grow
from .model import Llama

__all__ = ["ConfigError", "GrowthEvent", "Llama", "LlamaConfig", "grow"]

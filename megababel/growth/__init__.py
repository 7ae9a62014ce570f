"""Growth operators: what a growth event is, its checks, and the exact, function-preserving map from one generation
to the next, tensor by tensor (the engine applies it shard by shard). Imports config and model."""
from megababel.growth.operators import GrowthEvent, GrowthTransform, check_growth, grow

__all__ = ["GrowthEvent", "GrowthTransform", "check_growth", "grow"]

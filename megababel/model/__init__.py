"""The plain Llama-2 decoder: growable layers (each weight a set of generation blocks with their metadata), the
model, and its parameter and FLOP counters. Imports only megababel.config."""
from megababel.model.counters import ParameterCounts, config_parameters, count_parameters, flops_per_token
from megababel.model.llama import Llama

__all__ = ["Llama", "ParameterCounts", "config_parameters", "count_parameters", "flops_per_token"]

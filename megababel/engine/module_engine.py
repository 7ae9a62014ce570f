"""Any torch module in a DeepSpeed engine, behind the same narrow interface as GrowingEngine (call, backward_step,
close): for benchmarks that compare megababel's model with another one (transformers' LlamaForCausalLM) in the same
engine, without importing DeepSpeed themselves."""
from __future__ import annotations

import torch

from megababel.engine.deepspeed_compat import check_deepspeed
from megababel.engine.growing_engine import release_deepspeed_engine


class ModuleEngine:
    def __init__(self, module: torch.nn.Module, ds_config: dict):
        import deepspeed
        check_deepspeed()
        self._ds, *_ = deepspeed.initialize(model=module, model_parameters=module.parameters(), config=ds_config)

    @property
    def device(self) -> torch.device:
        return self._ds.device

    def __call__(self, *args, **kwargs):
        return self._ds(*args, **kwargs)

    def backward_step(self, loss: torch.Tensor):
        """Backward of `loss` and an optimizer step (DeepSpeed steps at the last micro-batch of an accumulation)."""
        self._ds.backward(loss)
        self._ds.step()

    def close(self):
        if self._ds is not None:
            release_deepspeed_engine(self._ds)
            self._ds = None

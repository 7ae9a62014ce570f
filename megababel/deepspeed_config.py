"""DeepSpeed configs: the JSON templates in ds_configs/ with the batch sizes and precision derived in one place.

The templates live in the repository's top-level ds_configs/; setup.cfg installs them as package data in
megababel/ds_configs/, so an installed package finds them without a checkout."""
from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

CHECKOUT_DS_CONFIGS = Path(__file__).resolve().parents[1] / "ds_configs"   # running from a checkout, editable install


def ds_config_path(stage: int):
    """The template for ZeRO `stage` (a path or importlib.resources Traversable): the installed package data
    first, else the checkout's ds_configs/."""
    name = f"zero{stage}.json"
    installed = resources.files("megababel") / "ds_configs" / name
    if installed.is_file():
        return installed
    if (CHECKOUT_DS_CONFIGS / name).is_file():
        return CHECKOUT_DS_CONFIGS / name
    raise FileNotFoundError(
        f"no DeepSpeed config template {name}: looked for it as package data of megababel ({installed}) and in the "
        f"checkout ({CHECKOUT_DS_CONFIGS / name}). Reinstall megababel (pip install .) or pass --ds-config PATH "
        f"(load_ds_config(..., path=PATH)).")


def load_ds_config(stage: int, micro_batch: int, grad_accum: int, world_size: int, bf16: bool,
                   offload_optimizer: bool = False, gradient_clipping: float | None = None,
                   path: str | None = None) -> dict:
    """ds_configs/zero<stage>.json with the batch sizes derived here, in one place."""
    if stage not in (0, 1, 2, 3):
        raise ValueError(f"--stage must be 0, 1, 2 or 3, got {stage}")
    template = Path(path) if path else ds_config_path(stage)
    config = json.loads(template.read_text())
    config["train_micro_batch_size_per_gpu"] = micro_batch
    config["gradient_accumulation_steps"] = grad_accum
    config["train_batch_size"] = micro_batch * grad_accum * world_size
    config.setdefault("bf16", {})["enabled"] = bf16
    if gradient_clipping is not None:
        config["gradient_clipping"] = gradient_clipping
    if "gradient_clipping" not in config:
        raise ValueError("the DeepSpeed config must set gradient_clipping explicitly (DeepSpeed defaults to 1.0)")
    if offload_optimizer:
        if stage == 0:
            raise ValueError("--offload-optimizer needs ZeRO stage 1, 2 or 3")
        config["zero_optimization"]["offload_optimizer"] = {"device": "cpu"}
        config["optimizer"]["params"].pop("torch_adam", None)  # DeepSpeedCPUAdam
    return config

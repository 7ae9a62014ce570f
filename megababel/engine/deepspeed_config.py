"""DeepSpeed configs: the JSON templates in ds_configs/ with the batch sizes and precision derived in one place, and
the ZeRO buffer sizes derived from the model (`model_sized`, again at every growth).

The templates live in the repository's top-level ds_configs/; setup.cfg installs them as package data in
megababel/ds_configs/, so an installed package finds them without a checkout."""
from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

CHECKOUT_DS_CONFIGS = Path(__file__).resolve().parents[2] / "ds_configs"   # running from a checkout, editable install


def ds_config_path(zero_stage: int):
    """The template for ZeRO stage `zero_stage` (a path or importlib.resources Traversable): the installed package data
    first, else the checkout's ds_configs/."""
    name = f"zero{zero_stage}.json"
    installed = resources.files("megababel") / "ds_configs" / name
    if installed.is_file():
        return installed
    if (CHECKOUT_DS_CONFIGS / name).is_file():
        return CHECKOUT_DS_CONFIGS / name
    raise FileNotFoundError(
        f"no DeepSpeed config template {name}: looked for it as package data of megababel ({installed}) and in the "
        f"checkout ({CHECKOUT_DS_CONFIGS / name}). Reinstall megababel (pip install .) or pass --ds-config PATH "
        f"(load_ds_config(..., path=PATH)).")


def load_ds_config(zero_stage: int, micro_batch: int, grad_accum: int, world_size: int, bf16: bool,
                   offload_optimizer: bool = False, gradient_clipping: float | None = None,
                   path: str | None = None) -> dict:
    """ds_configs/zero<zero_stage>.json with the batch sizes derived here, in one place."""
    if zero_stage not in (0, 1, 2, 3):
        raise ValueError(f"--zero-stage must be 0, 1, 2 or 3, got {zero_stage}")
    template = Path(path) if path else ds_config_path(zero_stage)
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
        if zero_stage == 0:
            raise ValueError("--offload-optimizer needs ZeRO stage 1, 2 or 3")
        config["zero_optimization"]["offload_optimizer"] = {"device": "cpu"}
        config["optimizer"]["params"].pop("torch_adam", None)  # DeepSpeedCPUAdam
        config["optimizer"]["params"].pop("fused", None)       # a torch.optim.AdamW option it does not take
    return config


AUTO = "auto"
REDUCE_BUCKET_FLOOR = 10_000_000


def zero_sizes(zero_stage: int, hidden_size: int, layer_parameters: int) -> dict:
    """ZeRO buffer sizes (in elements) for a model: the rules of Hugging Face's DeepSpeed integration for its "auto"
    values (reduce buckets of hidden^2, here at least REDUCE_BUCKET_FLOOR, prefetch 0.9 hidden^2, parameters under
    10 x hidden stay whole on every rank), and at most two decoder layers' parameters gathered at once under ZeRO-3.
    DeepSpeed's own defaults (5e8-element buckets, 1e9 live parameters) are sized for billions of parameters: at 120M
    they are most of a rank's memory. ZeRO-3's optimizer sub-groups are one decoder layer's parameters (at least
    1e7): DeepSpeed takes the gradient norm of each sub-group through an fp64 copy of it, so its default (1e9
    elements, the whole param group here) made a step's transient 8 bytes per parameter of the rank's largest group
    (+1.9 GB per rank at 488M on 2 ranks, measured; bench/README.md, "Memory planner")."""
    if zero_stage == 0:
        return {}
    # the reduce bucket has a floor: 2-rank ZeRO-3 on gloo (CPU) hung with buckets of 4096-16384 elements (tiny test
    # models, DeepSpeed 0.19.8) and ran with 40000; 1e7 fp32 elements are 40 MB
    sizes = dict(reduce_bucket_size=max(hidden_size * hidden_size, REDUCE_BUCKET_FLOOR))
    if zero_stage == 3:
        sizes.update(stage3_prefetch_bucket_size=int(0.9 * hidden_size * hidden_size),
                     stage3_param_persistence_threshold=10 * hidden_size,
                     stage3_max_live_parameters=2 * layer_parameters,
                     stage3_max_reuse_distance=2 * layer_parameters,
                     sub_group_size=max(layer_parameters, REDUCE_BUCKET_FLOOR))
    return sizes


def model_sized(ds_config: dict, config) -> dict:
    """A copy of `ds_config` whose ZeRO sizes (zero_sizes) that are absent or "auto" are derived from `config` (a
    LlamaConfig). An explicit number in the user's config wins. The engine calls this at every build, so the sizes
    follow the model as it grows."""
    zero = dict(ds_config.get("zero_optimization", {}))
    h, f = config.hidden_size, config.intermediate_size
    attention = 2 * h * config.head_dim * (config.num_attention_heads + config.num_key_value_heads)   # q, o; k, v
    derived = zero_sizes(zero.get("stage", 0), h, attention + 3 * h * f + 2 * h)
    for key, value in derived.items():
        if zero.get(key, AUTO) == AUTO:
            zero[key] = value
    leftover = [key for key, value in zero.items() if value == AUTO]
    if leftover:
        raise ValueError(f"DeepSpeed config zero_optimization: {leftover} cannot be 'auto' (megababel derives only "
                         f"{sorted(derived) or 'none at this ZeRO stage'}); give numbers")
    return dict(ds_config, zero_optimization=zero)

"""The DeepSpeed internals the engine package relies on, checked before any engine is built.

Only megababel/engine/ imports DeepSpeed (tests/unit/test_architecture.py enforces it). Beyond the public API
(deepspeed.initialize, deepspeed.zero.Init, deepspeed.init_distributed, the engine's backward/step/destroy, the
safe_get/set_full_* accessors, and the engine attributes `optimizer` (its param groups, and the inner torch optimizer
as `optimizer.optimizer`), `dp_world_size`, `mpu`, `global_steps` and `global_samples`), it relies on these
internals, each checked below (CHECKS):
- the dispatch of the safe accessors on the parameter attributes `ds_id` (ZeRO-3, assigned by zero.Init together
  with `ds_process_group`) and `_hp_mapping` (ZeRO-1/2 and bf16; with `_dp_group`), which growing_engine.py mirrors;
- ZeRO-3's optimizer: `fp32_partitioned_groups_flat` and `sub_group_to_group_id` (the tensors its Adam state is keyed
  by, per param group);
- ZeRO-1/2 and BF16_Optimizer: `_lazy_init_hp_params_optimizer_state` and its flag `_hp_optimizer_states_linked`
  (relinked once every param group has its Adam state);
- FP16_UnfusedOptimizer (bf16/fp16 at ZeRO-0): `fp16_groups` and `fp32_groups`, the working weights and their fp32
  masters, parallel lists;
- releasing an engine: `parameter_offload.FWD_MODULE_STACK` and the `__params_to_release` lru_cache of ZeRO-3's
  parameter coordinator, which keep released models alive;
- sharded growth (sharded_growth.py): `safe_get_local_fp32_param` / `safe_get_local_optimizer_state`, the
  tensor_fragment fields `lp_fragment_address` and `optim_fragment` and its `get_hp_fragment`, and zero.Init's
  `shutdown_init_context` / `restore_init_context`.

The engine mostly tells the ZeRO stages apart with hasattr, so a renamed attribute would not fail: it would quietly
take another path (e.g. restore no Adam state after a growth). check_deepspeed() turns that into one error at
start-up naming what is missing. Instance attributes cannot be looked up without building an optimizer, so they are
checked in the source of the class (or module) that assigns them; where DeepSpeed is installed without its .py
sources those checks are skipped with a warning.
"""
from __future__ import annotations

import functools
import inspect
import os
import re
import warnings

# keep equal to setup.cfg's install_requires (tests/integration/test_packaging.py compares them)
TESTED_DEEPSPEED = ">=0.19.8,<0.20"
ALLOW_UNTESTED_ENV = "MEGABABEL_ALLOW_UNTESTED_DEEPSPEED"

SAFE_ACCESSORS = ("safe_get_full_fp32_param", "safe_get_full_optimizer_state",
                  "safe_set_full_fp32_param", "safe_set_full_optimizer_state")


class DeepSpeedCompatibilityError(RuntimeError):
    """The installed DeepSpeed lacks an internal that megababel.engine uses, or is outside the tested range."""


class _SourceUnavailable(Exception):
    pass


def _source(obj) -> str:
    try:
        return inspect.getsource(obj)
    except (OSError, TypeError) as error:
        raise _SourceUnavailable(f"{getattr(obj, '__qualname__', obj)}: {error}") from None


def _class_assigns(cls, attribute: str) -> bool:
    """Whether `self.<attribute> = ...` appears in the source of cls or a DeepSpeed base class of it (__init__ and
    the set-up helpers it calls)."""
    pattern = re.compile(rf"\bself\.{re.escape(attribute)}\s*(:[^=\n]*)?=(?!=)")
    return any(pattern.search(_source(klass)) for klass in cls.__mro__ if klass.__module__.startswith("deepspeed"))


def _find_lru_cache(function, depth: int = 4):
    """The functools.lru_cache under `function`'s decorators: through __wrapped__, or through the closure of a
    decorator that does not use functools.wraps (DeepSpeed's instrument_w_nvtx)."""
    if hasattr(function, "cache_clear"):
        return function
    if depth == 0:
        return None
    for candidate in [getattr(function, "__wrapped__", None), *_closure_contents(function)]:
        if callable(candidate) and (found := _find_lru_cache(candidate, depth - 1)) is not None:
            return found
    return None


def _closure_contents(function) -> list:
    contents = []
    for cell in getattr(function, "__closure__", None) or ():
        try:
            contents.append(cell.cell_contents)
        except ValueError:      # a cell whose variable is not assigned yet
            pass
    return contents


def params_to_release_cache():
    """ZeRO-3's PartitionedParameterCoordinator.__params_to_release lru_cache (keyed by coordinator and module, so
    it keeps released models alive), or None. Its `cache_clear` is not on the class attribute itself in the tested
    DeepSpeed: instrument_w_nvtx wraps the lru_cache without functools.wraps."""
    from deepspeed.runtime.zero.partitioned_param_coordinator import PartitionedParameterCoordinator
    method = PartitionedParameterCoordinator.__dict__.get("_PartitionedParameterCoordinator__params_to_release")
    return None if method is None else _find_lru_cache(method)


def clear_params_to_release_cache() -> None:
    """Empty ZeRO-3's __params_to_release cache (see params_to_release_cache); check_deepspeed() verifies it exists."""
    cache = params_to_release_cache()
    if cache is not None:
        cache.cache_clear()


def _check_safe_accessors(missing: list[str]):
    import deepspeed.utils
    for name in SAFE_ACCESSORS:
        accessor = getattr(deepspeed.utils, name, None)
        if not callable(accessor):
            missing.append(f"deepspeed.utils.{name}")
            continue
        # growing_engine.py mirrors their dispatch (hasattr(p, "ds_id") or hasattr(p, "_hp_mapping")) to choose between
        # them and the plain optimizer state
        source = _source(accessor)
        for marker in ("ds_id", "_hp_mapping"):
            if f"'{marker}'" not in source and f'"{marker}"' not in source:
                missing.append(f"deepspeed.utils.{name} dispatching on parameter attribute {marker}")


def _check_parameter_attributes(missing: list[str]):
    from deepspeed.runtime.zero import partition_parameters
    from deepspeed.utils import mixed_precision_linkage
    if not re.search(r"\bparam\.ds_id\s*=", _source(partition_parameters)):
        missing.append("parameter attribute ds_id (assigned in deepspeed.runtime.zero.partition_parameters)")
    if not re.search(r"\._hp_mapping\s*=", _source(mixed_precision_linkage)):
        missing.append("parameter attribute _hp_mapping (assigned in deepspeed.utils.mixed_precision_linkage)")
    if not re.search(r"\bparam\.ds_process_group\s*=", _source(partition_parameters)):
        missing.append("parameter attribute ds_process_group (assigned in deepspeed.runtime.zero.partition_parameters)")


def _check_zero3_optimizer(missing: list[str]):
    from deepspeed.runtime.zero.stage3 import DeepSpeedZeroOptimizer_Stage3
    for attribute in ("fp32_partitioned_groups_flat", "sub_group_to_group_id"):
        if not _class_assigns(DeepSpeedZeroOptimizer_Stage3, attribute):
            missing.append(f"DeepSpeedZeroOptimizer_Stage3.{attribute}")


def _check_hp_linking_optimizers(missing: list[str]):
    from deepspeed.runtime.bf16_optimizer import BF16_Optimizer
    from deepspeed.runtime.zero.stage_1_and_2 import DeepSpeedZeroOptimizer
    for cls in (DeepSpeedZeroOptimizer, BF16_Optimizer):
        method = getattr(cls, "_lazy_init_hp_params_optimizer_state", None)
        if not callable(method):
            missing.append(f"{cls.__name__}._lazy_init_hp_params_optimizer_state")
            continue
        # growing_engine.py forces a relink by resetting this flag, which the method must consult
        flag = "_hp_optimizer_states_linked"
        if not _class_assigns(cls, flag) or flag not in _source(method):
            missing.append(f"{cls.__name__}._hp_optimizer_states_linked (read by _lazy_init_hp_params_optimizer_state)")


def _check_zero0_masters(missing: list[str]):
    from deepspeed.runtime.fp16.unfused_optimizer import FP16_UnfusedOptimizer
    for attribute in ("fp16_groups", "fp32_groups"):
        if not _class_assigns(FP16_UnfusedOptimizer, attribute):
            missing.append(f"FP16_UnfusedOptimizer.{attribute}")


def _check_zero3_release(missing: list[str]):
    from deepspeed.runtime.zero import parameter_offload
    if not callable(getattr(getattr(parameter_offload, "FWD_MODULE_STACK", None), "clear", None)):
        missing.append("deepspeed.runtime.zero.parameter_offload.FWD_MODULE_STACK (a list)")
    if params_to_release_cache() is None:
        missing.append("PartitionedParameterCoordinator.__params_to_release (an lru_cache)")


def _check_local_state_access(missing: list[str]):
    """What sharded_growth.py reads to copy out each rank's own pieces of the state, and how it steps out of
    zero.Init's tensor-constructor patches while it grows a tensor."""
    import deepspeed.utils
    from deepspeed.runtime.zero import partition_parameters
    from deepspeed.utils import mixed_precision_linkage
    from deepspeed.utils.tensor_fragment import tensor_fragment
    for name in ("safe_get_local_fp32_param", "safe_get_local_optimizer_state"):
        if not callable(getattr(deepspeed.utils, name, None)):
            missing.append(f"deepspeed.utils.{name}")
    for name in ("shutdown_init_context", "restore_init_context"):
        if not callable(getattr(partition_parameters, name, None)):
            missing.append(f"deepspeed.runtime.zero.partition_parameters.{name}")
    if not re.search(r"\._dp_group\s*=", _source(mixed_precision_linkage)):
        missing.append("parameter attribute _dp_group (assigned in deepspeed.utils.mixed_precision_linkage)")
    fields = getattr(tensor_fragment, "__dataclass_fields__", {})
    for name in ("lp_fragment_address", "optim_fragment"):
        if name not in fields:
            missing.append(f"deepspeed.utils.tensor_fragment.tensor_fragment.{name}")
    if not callable(getattr(tensor_fragment, "get_hp_fragment", None)):
        missing.append("deepspeed.utils.tensor_fragment.tensor_fragment.get_hp_fragment")


CHECKS = (_check_safe_accessors, _check_parameter_attributes, _check_zero3_optimizer, _check_hp_linking_optimizers,
          _check_zero0_masters, _check_zero3_release, _check_local_state_access)


def missing_deepspeed_internals() -> tuple[list[str], list[str]]:
    """(what megababel.engine needs and the installed DeepSpeed lacks, checks skipped for lack of source)."""
    missing, unverified = [], []
    for check in CHECKS:
        try:
            check(missing)
        except ImportError as error:
            missing.append(f"an importable {error.name or 'module'} ({error})")
        except _SourceUnavailable as error:
            unverified.append(str(error))
    return missing, unverified


def check_deepspeed_version(version: str) -> None:
    """Raise DeepSpeedCompatibilityError if `version` is outside TESTED_DEEPSPEED (a warning if ALLOW_UNTESTED_ENV
    is set, to try a newer DeepSpeed: the internals check still runs)."""
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version
    if SpecifierSet(TESTED_DEEPSPEED).contains(Version(version), prereleases=True):
        return
    message = (f"deepspeed {version} is installed; megababel is tested with deepspeed{TESTED_DEEPSPEED} "
               f"(pip install 'deepspeed{TESTED_DEEPSPEED}'), and megababel.engine relies on DeepSpeed internals")
    if os.environ.get(ALLOW_UNTESTED_ENV):
        warnings.warn(message, stacklevel=3)
    else:
        raise DeepSpeedCompatibilityError(f"{message}. Set {ALLOW_UNTESTED_ENV}=1 to try it anyway.")


@functools.cache
def check_deepspeed() -> str:
    """Check once per process that the installed DeepSpeed is in the tested range and has every internal
    megababel.engine uses; return its version. Raises DeepSpeedCompatibilityError naming what is missing."""
    import deepspeed
    version = deepspeed.__version__
    check_deepspeed_version(version)
    missing, unverified = missing_deepspeed_internals()
    if missing:
        raise DeepSpeedCompatibilityError(
            f"deepspeed {version} ({os.path.dirname(deepspeed.__file__)}) lacks what megababel.engine relies on: "
            + "; ".join(missing) + f". megababel is tested with deepspeed{TESTED_DEEPSPEED}: "
            f"pip install 'deepspeed{TESTED_DEEPSPEED}'.")
    if unverified:
        warnings.warn(f"deepspeed {version}: could not check these internals (no source): " + "; ".join(unverified),
                      stacklevel=2)
    return version

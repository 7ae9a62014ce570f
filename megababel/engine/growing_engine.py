"""DeepSpeed engines for a growing model: ZeRO 0-3, per-generation param groups, growth with Adam state carried.

A growth event cannot reshape partitioned parameters in place (DeepSpeed's safe_set_full_fp32_param asserts the old
numel), so it rebuilds (sharded_growth.py):
  1. each rank copies out its own pieces of every block's fp32 master weight and Adam moments (its ZeRO partition
     or fragment of its tensor-parallel shard), and each param group's step;
  2. release the old engine (engine.destroy() leaks the model through hooks and caches: removed here);
  3. build the grown model under zero.Init with its weights set inside each layer's __init__ (writing only the fp32
     masters after initialize would leave the working copy stale: a silent loss jump), one tensor at a time: the
     ranks assemble the old tensor from their pieces, grow it (growth.GrowthTransform) and keep their part; then
     deepspeed.initialize with one decayed and one undecayed param group per generation;
  4. create the optimizer state (DeepSpeed creates it lazily, at the first step), write the fp32 masters, the old
     blocks' moments (old blocks keep their index) and the groups' steps (a new generation's groups start at
     step 0, so Adam's bias correction treats them as fresh).
DeepSpeed's default gradient_clipping is 1.0, so the configs set it explicitly (deepspeed_config.py).
Engine counters (global_steps, global_samples) carry over.
"""
from __future__ import annotations

import gc

import torch
import torch.distributed as dist

from megababel.config import LlamaConfig
from megababel.engine.compiling import compile_layers, seconds_compiling
from megababel.engine.deepspeed_compat import check_deepspeed, clear_params_to_release_cache
from megababel.engine.deepspeed_config import model_sized
from megababel.growth.operators import GrowthEvent, GrowthTransform
from megababel.model.llama import Llama
from megababel.engine.sharded_growth import GrownState, LocalPieces
from megababel.checkpoint.state import EngineState, GroupInfo
from megababel.parallel import all_reduce, block_shard, merge_layer_state, shard_of, unflagged_shards

def _inner(optimizer):
    return getattr(optimizer, "optimizer", optimizer)


def _flats_per_group(optimizer) -> list[list[torch.Tensor]]:
    """The tensors the inner torch optimizer keeps state for, per param group. ZeRO-3 keeps its fp32 partitions
    per sub-group outside param_groups (it swaps them in during step)."""
    inner = _inner(optimizer)
    if hasattr(optimizer, "fp32_partitioned_groups_flat"):
        flats = [[] for _ in inner.param_groups]
        for sub_group, flat in enumerate(optimizer.fp32_partitioned_groups_flat):
            flats[optimizer.sub_group_to_group_id[sub_group]].append(flat)
        return flats
    return [group["params"] for group in inner.param_groups]


def _fp32_masters(optimizer) -> dict:
    """{id(low-precision parameter): its fp32 master} under DeepSpeed's mixed-precision optimizer without ZeRO (bf16
    or fp16 at ZeRO-0: FP16_UnfusedOptimizer). It keeps the masters in fp32_groups, parallel to fp16_groups, and its
    inner optimizer's state is keyed by them, while safe_get/set_full_* know nothing of them: without this map a
    growth or a checkpoint would take the bf16-rounded working weights and lose the Adam moments, silently."""
    masters = getattr(optimizer, "fp32_groups", None)
    if not isinstance(masters, list) or not hasattr(optimizer, "fp16_groups"):
        return {}
    return {id(lp): hp for lp_group, hp_group in zip(optimizer.fp16_groups, masters)
            for lp, hp in zip(lp_group, hp_group)}


def _return_freed_memory():
    """Hand freed heap pages back to the OS (glibc keeps them otherwise, and RSS would grow with each growth)."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def release_deepspeed_engine(engine):
    """engine.destroy() plus what it leaves behind (hooks, ZeRO-3's module stack and an lru_cache holding the
    parameter coordinator), so that growth after growth does not keep old models alive."""
    module = engine.module
    engine.destroy()
    for m in module.modules():
        m._forward_pre_hooks.clear()
        m._forward_hooks.clear()
        m._backward_hooks.clear()
        if hasattr(m, "_backward_pre_hooks"):
            m._backward_pre_hooks.clear()
    # both internals are checked to exist by check_deepspeed() (deepspeed_compat.py): no silent skip here
    from deepspeed.runtime.zero import parameter_offload
    parameter_offload.FWD_MODULE_STACK.clear()
    clear_params_to_release_cache()
    gc.collect()


class GrowingEngine:
    """A Llama in a DeepSpeed engine that can grow. `schedule` supplies the learning-rate curves (Schedule.group_lr)
    and the defaults of a growth's learning rate.

    `GrowingEngine(config, ...)` builds a fresh model; `GrowingEngine.from_state(state, ...)` a saved or imported one
    (state.EngineState). `tp` (parallel.TensorParallel): shard the model over its TP groups, ZeRO over its DP groups.
    States, values and moments given and returned are always those of the unsharded model.
    `activation_checkpointing`: recompute each decoder layer in backward (less memory, ~1/3 more compute).
    `compile`: torch.compile each decoder layer, anew for every generation (compiling.py).
    `growth_spill_dir`: during a growth, keep this rank's pieces of the old state in a memory-mapped file there
    instead of host memory (sharded_growth.py).

    The interface the rest of megababel uses (the DeepSpeed engine itself is private): train_step, evaluate, grow,
    iter_state / state / state_meta, param_group_lrs / set_param_group_lrs / set_lr, device,
    gradient_accumulation_steps, compile_seconds, counters and close; `model` (the Llama, whose blocks carry their
    metadata) and `groups` (GroupInfo per param group) are read-only views."""

    def __init__(self, config: LlamaConfig, ds_config: dict, schedule, seed: int = 0, tp=None,
                 activation_checkpointing: bool = False, growth_spill_dir=None, compile: bool = False,
                 _state: EngineState | None = None):
        self._ds = self.model = None          # the DeepSpeed engine and its module, set by _build
        self._masters: dict = {}
        self.ds_config, self.schedule, self.seed, self.tp = ds_config, schedule, seed, tp
        self.activation_checkpointing, self.growth_spill_dir = activation_checkpointing, growth_spill_dir
        self.compile = compile
        self.zero_stage = ds_config["zero_optimization"]["stage"]
        if _state is None:
            self.groups = []
            self._build(config, None, None, 0, {}, {}, None)
        else:
            self.groups = list(_state.groups)
            self._build(_state.config, _state.layout, _state.values, _state.generation, _state.moments,
                        _state.group_steps, _state.counters)

    @classmethod
    def from_state(cls, state: EngineState, ds_config: dict, schedule, seed: int = 0, tp=None,
                   activation_checkpointing: bool = False, growth_spill_dir=None,
                   compile: bool = False) -> "GrowingEngine":
        return cls(state.config, ds_config, schedule, seed=seed, tp=tp,
                   activation_checkpointing=activation_checkpointing, growth_spill_dir=growth_spill_dir,
                   compile=compile, _state=state)

    # --- building -----------------------------------------------------------------------------------------------
    def _build(self, config, layout, values, generation, moments: dict, steps: dict, counters=None):
        import deepspeed
        check_deepspeed()      # every DeepSpeed internal this file touches, once per process (cached)
        # under TP both zero.Init and initialize need the layout (mpu): without it they partition and reduce
        # over the wrong ranks, silently
        parallel = dict(data_parallel_group=self.tp.dp_group, mpu=self.tp) if self.tp else {}
        ds_config = model_sized(self.ds_config, config)     # ZeRO buffer sizes for this size of model
        with deepspeed.zero.Init(config_dict_or_path=ds_config, enabled=self.zero_stage == 3, **parallel):
            model = Llama(config, seed=self.seed, layout=layout, generation=generation, values=values, tp=self.tp)
        model.activation_checkpointing = self.activation_checkpointing
        if self.compile:
            compile_layers(model)
        known = {(g.generation, g.decay) for g in self.groups}
        for gen in sorted({p.block_meta.generation for p in model.parameters()}):
            for decay in (True, False):
                if (gen, decay) not in known:
                    self.groups.append(GroupInfo(gen, decay, born=counters["global_steps"] if counters else 0,
                                                 lr=self.schedule.lr, warmup=self.schedule.warmup_steps))
        param_groups = []
        for g in self.groups:
            params = [p for p in model.parameters()
                      if p.block_meta.generation == g.generation and (len(p.block_meta.shape) >= 2) == g.decay]
            param_groups.append(dict(params=params, weight_decay=self.schedule.weight_decay if g.decay else 0.0))
        keep = [i for i, group in enumerate(param_groups) if group["params"]]
        self.groups = [self.groups[i] for i in keep]
        engine, optimizer, _, _ = deepspeed.initialize(model=model, model_parameters=[param_groups[i] for i in keep],
                                                       config=ds_config, mpu=self.tp)
        self._ds, self.model = engine, model
        self._masters = _fp32_masters(optimizer)
        self._check_parallel_layout()
        if counters:
            engine.global_steps, engine.global_samples = counters["global_steps"], counters["global_samples"]
        if values is not None:
            self._restore(values, moments, steps)
        elif self._masters:
            self._undo_initial_step()

    def _restore(self, values, moments: dict, steps: dict):
        """Create the (lazy) Adam state, then write fp32 masters, moments of old blocks and group steps."""
        from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state
        inner = _inner(self._ds.optimizer)
        # parameters whose optimizer state is keyed by a tensor we hold (the parameter itself at ZeRO-0 fp32, its
        # fp32 master at ZeRO-0 bf16): their moments go straight into the new state, no zeros + copy
        direct = {}
        if self.zero_stage == 0 and not any(hasattr(p, "_hp_mapping") for p in self.model.parameters()):
            for path, tensor in self.model.growable_layers():
                for index, p in enumerate(tensor.blocks()):
                    saved = block_shard(tensor, index, moments.get((path, index)))
                    if saved is not None:
                        key = self._masters.get(id(p), p)
                        # on the parameter's device: Adam's state must live where the parameter does
                        direct[key] = tuple(m.reshape(p.shape).to(key.device, key.dtype) for m in saved)
        # torch's fused AdamW (one pass per tensor, the templates' choice) keeps each step count on its parameter's
        # device; the other implementations keep it on the CPU
        fused = bool(getattr(inner, "defaults", {}).get("fused"))
        for info, flats in zip(self.groups, _flats_per_group(self._ds.optimizer)):
            step = float(steps.get((info.generation, info.decay), 0))
            for flat in flats:
                exp_avg, exp_avg_sq = direct.get(flat) or (torch.zeros_like(flat), torch.zeros_like(flat))
                inner.state[flat] = dict(step=torch.tensor(step, device=flat.device if fused else "cpu"),
                                         exp_avg=exp_avg, exp_avg_sq=exp_avg_sq)
        self.link_optimizer_state()
        # ZeRO's fp32 masters were copied from the weights the model was built with: exact in fp32, rounded in
        # bf16/fp16, where they are written again (a growth then grows each tensor twice: sharded_growth.py)
        low_precision = any(self.ds_config.get(key, {}).get("enabled") for key in ("bf16", "fp16"))
        with torch.no_grad():
            for (path, tensor) in self.model.growable_layers():
                full = None
                for index, p in enumerate(tensor.blocks()):
                    master = self._masters.get(id(p))
                    if master is not None or (low_precision and (hasattr(p, "ds_id") or hasattr(p, "_hp_mapping"))):
                        if full is None:
                            full = shard_of(tensor, values[path])
                        value = full[p.block_meta.slices].contiguous()
                        if master is not None:        # the fp32 value, not the bf16 copy it was cloned from
                            master.copy_(value.reshape(master.shape))
                        else:
                            safe_set_full_fp32_param(p, value)
                    if self._masters.get(id(p), p) in direct:
                        continue
                    saved = block_shard(tensor, index, moments.get((path, index)))
                    if saved is None:
                        continue
                    for key, value in zip(("exp_avg", "exp_avg_sq"), saved):
                        if hasattr(p, "ds_id") or hasattr(p, "_hp_mapping"):
                            safe_set_full_optimizer_state(p, value, key)
                        else:
                            inner.state[self._masters.get(id(p), p)][key].copy_(value)

    @torch.no_grad()
    def _undo_initial_step(self):
        """DeepSpeed's ZeRO-0 mixed-precision optimizer creates its state with one optimizer step on zero gradients:
        Adam's step count starts at 1 and the masters get one weight decay. Undo both, so that a fresh bf16 run
        counts its steps (and bias-corrects) like an fp32 run and a resumed one."""
        inner = _inner(self._ds.optimizer)
        for p in self.model.parameters():
            master = self._masters.get(id(p))
            if master is not None:
                master.copy_(p.reshape(master.shape))
                if "step" in inner.state.get(master, {}):
                    inner.state[master]["step"].zero_()

    def _check_parallel_layout(self):
        """Refuse an engine whose DeepSpeed view of the ranks disagrees with the TP x DP layout (each mismatch
        would otherwise train silently wrong: gradients averaged over TP ranks, ZeRO partitions across them)."""
        world = dist.get_world_size() if dist.is_initialized() else 1
        dp = self.tp.dp_size if self.tp else world
        problems = []
        if self._ds.dp_world_size != dp:
            problems.append(f"DeepSpeed's data-parallel size is {self._ds.dp_world_size}, the layout's {dp}")
        if self.tp is not None and self._ds.mpu is not self.tp:
            problems.append("the engine was built without the layout as mpu")
        problems += [f"{name} is sharded but not flagged tensor_model_parallel"
                     for name in unflagged_shards(self.model)[:4]]
        for name, p in self.model.named_parameters():
            if hasattr(p, "ds_process_group") and dist.get_world_size(p.ds_process_group) != dp:
                problems.append(f"{name} is ZeRO-3-partitioned over {dist.get_world_size(p.ds_process_group)} "
                                f"ranks, not the {dp} data-parallel ranks")
            if len(problems) > 4:
                break
        if problems:
            raise RuntimeError("inconsistent parallel layout: " + "; ".join(problems))

    # --- the public interface: everything outside megababel.engine goes through these --------------------------
    @property
    def device(self) -> torch.device:
        return self._ds.device

    @property
    def gradient_accumulation_steps(self) -> int:
        return self._ds.gradient_accumulation_steps()

    def set_micro_batch(self, micro_batch: int):
        """Sequences per micro-batch from the next step on, gradient accumulation unchanged: a curriculum's change of
        the sequence length (the same tokens per micro-step, in sequences of another length), without rebuilding."""
        accumulation = self._ds.gradient_accumulation_steps()
        self._ds.set_train_micro_batch_size(micro_batch)
        self.ds_config = dict(self.ds_config, train_micro_batch_size_per_gpu=micro_batch,
                              train_batch_size=micro_batch * accumulation * self._ds.dp_world_size)

    @staticmethod
    def compile_seconds() -> float | None:
        """Seconds this process has spent in torch.compile so far (None: torch cannot time it)."""
        return seconds_compiling()

    def param_group_lrs(self) -> list[tuple[GroupInfo, float]]:
        """(group, current learning rate) of every AdamW param group, oldest generation first."""
        return [(info, group["lr"]) for info, group in zip(self.groups, self._ds.optimizer.param_groups)]

    def set_param_group_lrs(self, lrs: list[float]):
        """Set each param group's learning rate, in the order of param_group_lrs()."""
        if len(lrs) != len(self.groups):
            raise ValueError(f"{len(lrs)} learning rates for {len(self.groups)} param groups")
        for lr, group in zip(lrs, self._ds.optimizer.param_groups):
            group["lr"] = lr

    def set_lr(self, step: int):
        """Every group's learning rate at `step`, from the schedule's curve for its generation."""
        self.set_param_group_lrs([self.schedule.group_lr(step, info.born, info.lr, info.warmup)
                                  for info in self.groups])

    def close(self):
        """Release the DeepSpeed engine and everything it keeps alive (hooks, caches, ZeRO-3's module stack).
        Idempotent; the engine cannot be used afterwards."""
        if self._ds is not None:
            release_deepspeed_engine(self._ds)
            self._ds = self.model = None
            gc.collect()
            _return_freed_memory()

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor | None = None):
        """The engine's model on its device: (logits, None), or with targets (None, mean loss over targets !=
        -100)."""
        device = self._ds.device
        return self._ds(inputs.to(device), None if targets is None else targets.to(device))

    def train_step(self, inputs: torch.Tensor, targets: torch.Tensor, step: int) -> float:
        """One optimizer step on this rank's share of the global batch: its rows are cut into the DeepSpeed config's
        gradient_accumulation_steps micro-batches of train_micro_batch_size_per_gpu (DeepSpeed scales each loss by
        1/accumulation and steps the optimizer at the last one). Returns the loss averaged over micro-batches and
        ranks."""
        micro = self._ds.train_micro_batch_size_per_gpu()
        accumulation = self._ds.gradient_accumulation_steps()
        if inputs.shape[0] != micro * accumulation:
            raise ValueError(f"train_step got {inputs.shape[0]} sequences; the engine takes {accumulation} "
                             f"micro-batches of {micro}")
        self.set_lr(step)
        losses = []
        for first in range(0, inputs.shape[0], micro):
            _, loss = self.forward(inputs[first:first + micro], targets[first:first + micro])
            self._ds.backward(loss)
            self._ds.step()
            losses.append(loss.detach().float())
        loss = torch.stack(losses).mean()
        if dist.get_world_size() > 1:
            loss = all_reduce(loss) / dist.get_world_size()
        return loss.item()

    @torch.no_grad()
    def evaluate(self, batches) -> float:
        losses = torch.tensor([self.forward(x, y)[1].float().item() for x, y in batches]).mean()
        if dist.get_world_size() > 1:
            losses = all_reduce(losses) / dist.get_world_size()
        return losses.item()

    # --- state and growth ---------------------------------------------------------------------------------------
    def link_optimizer_state(self):
        """ZeRO-1/2 and bf16 link each parameter to its Adam state once, after the first group's first step, when
        the other param groups have no state yet (so with several groups their moments stay unreachable through
        safe_get/set_full_optimizer_state). Relink now that every group has its state."""
        optimizer = self._ds.optimizer
        if hasattr(optimizer, "_lazy_init_hp_params_optimizer_state"):
            optimizer._hp_optimizer_states_linked = False
            optimizer._lazy_init_hp_params_optimizer_state()

    def fp32_master(self, p: torch.nn.Parameter) -> torch.Tensor:
        """The tensor that holds p's fp32 value without ZeRO (its master under bf16 at ZeRO-0, else p itself); the
        inner optimizer's state is keyed by it."""
        return self._masters.get(id(p), p)

    def adam_state(self, key: torch.Tensor) -> dict:
        """The inner torch optimizer's state of `key` (a tensor from fp32_master), {} before the first step."""
        return _inner(self._ds.optimizer).state.get(key, {})

    def _full_param(self, p: torch.nn.Parameter) -> torch.Tensor:
        """The fp32 master of a parameter, whole (collective under ZeRO); callers copy it where it belongs."""
        from deepspeed.utils import safe_get_full_fp32_param
        if id(p) in self._masters:
            return self._masters[id(p)].detach().float().cpu()
        value = safe_get_full_fp32_param(p)
        return (value if value is not None else p.detach()).float().cpu()

    def _full_moment(self, p, key: str) -> torch.Tensor | None:
        from deepspeed.utils import safe_get_full_optimizer_state
        if hasattr(p, "ds_id") or hasattr(p, "_hp_mapping"):
            try:
                value = safe_get_full_optimizer_state(p, key)
            except KeyError:          # ZeRO-3 creates Adam's state at the first step: none yet
                value = None
        else:
            value = _inner(self._ds.optimizer).state.get(self._masters.get(id(p), p), {}).get(key)
            value = None if value is None else value.clone()       # a snapshot, not the live optimizer state
        return None if value is None else value.float().cpu()

    def iter_state(self):
        """Yield (path, full fp32 weight, {block index: (exp_avg, exp_avg_sq)}) tensor by tensor, merged from the
        blocks' metadata whatever the ZeRO partitioning. Collective: every rank iterates in the same order."""
        self.link_optimizer_state()
        for path, tensor in self.model.growable_layers():
            full, moments = torch.empty(tensor.full_shape), {}
            for index, p in enumerate(tensor.blocks()):
                full[p.block_meta.slices] = self._full_param(p).view(p.block_meta.shape)
                pair = tuple(self._full_moment(p, key) for key in ("exp_avg", "exp_avg_sq"))
                if pair[0] is not None:
                    moments[index] = tuple(m.view(p.block_meta.shape) for m in pair)
            full, moments = merge_layer_state(self.tp, tensor, full, moments)
            yield path, full, moments

    def group_steps(self) -> dict:
        """{(generation, decayed): Adam step} of every param group."""
        steps, inner = {}, _inner(self._ds.optimizer)
        for info, flats in zip(self.groups, _flats_per_group(self._ds.optimizer)):
            state = inner.state.get(flats[0], {})
            steps[(info.generation, info.decay)] = float(state["step"]) if "step" in state else 0.0
        return steps

    def counters(self) -> dict:
        return dict(global_steps=self._ds.global_steps, global_samples=self._ds.global_samples)

    def state(self) -> EngineState:
        """The whole unsharded state, in memory (tests, small models; checkpoints stream iter_state instead).
        Collective: call on every rank."""
        values, moments = {}, {}
        for path, full, pairs in self.iter_state():
            values[path] = full
            moments.update({(path, index): pair for index, pair in pairs.items()})
        return EngineState(self.model.config, self.model.generation, self.model.block_layout(), values, moments,
                           self.group_steps(), [GroupInfo(**vars(g)) for g in self.groups], self.counters())

    def state_meta(self) -> dict:
        """EngineState.meta() without gathering any tensor."""
        return EngineState(self.model.config, self.model.generation, self.model.block_layout(), {}, {},
                           self.group_steps(), self.groups, self.counters()).meta()

    def grow(self, growth, step: int, ds_config: dict | None = None) -> int:
        """Apply `growth` (a schedule.Growth: event + the new generation's lr, warm-up and optimizer_state; or a bare
        GrowthEvent with the schedule's defaults) at `step`; `ds_config`: the grown engine's, when it changes (e.g.
        the gradient accumulation of a new global batch). Collective. No rank holds the whole model or Adam state
        (sharded_growth.py): peak per rank is the grown engine plus this rank's pieces of the old state plus one
        full tensor. optimizer_state "reset": every parameter, old or new, starts from a fresh Adam state (zero
        moments, step 0)."""
        if isinstance(growth, GrowthEvent):
            event, lr, warmup, reset_optimizer = growth, self.schedule.lr, self.schedule.warmup_steps, False
        else:
            event, lr, warmup = growth.event, growth.lr, growth.warmup_steps
            reset_optimizer = growth.optimizer_state == "reset"
        transform = GrowthTransform(self.model.config, self.model.block_layout(), self.model.generation, event,
                                    seed=self.seed)
        old = LocalPieces(self, moments=not reset_optimizer, spill_dir=self.growth_spill_dir)
        steps = {} if reset_optimizer else self.group_steps()
        counters = self.counters()
        if ds_config is not None:
            self.ds_config = ds_config
        self.close()
        self.groups += [GroupInfo(transform.generation, decay, born=step, lr=lr, warmup=warmup)
                        for decay in (True, False)]
        grown = GrownState(old, transform)
        self._build(transform.new, transform.layout, grown, transform.generation, grown.moments, steps, counters)
        del grown, old
        gc.collect()
        _return_freed_memory()
        return transform.generation

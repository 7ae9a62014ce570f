"""The Trainer: the one training loop of megababel, used by the launcher, the benchmarks and the multi-rank tests.

    trainer = Trainer(RunConfig(schedule="tiny", zero_stage=3, out=Path("runs/a")), callbacks=[MyLogger()])
    trainer.setup()            # every check (flags, schedule, data of every vocabulary stage, resume) before compute
    result = trainer.fit()     # data, vocabulary switches, LR per generation, growth when due, eval, checkpoints

What it owns: the data of the current vocabulary stage (switched at a vocabulary growth, same documents, same
fraction of the epoch), the global batch of each stage (gradient accumulation derived from its global_batch_tokens,
the micro batch and the data-parallel size; the loader keeps its position when the batch changes), the learning rate of every generation (engine.set_lr, from the schedule), growth when due
(`at_step <= step`: a due growth is never skipped), validation, checkpoints (every N steps, after growth, on
SIGUSR1/SIGTERM), the NaN guard, and the run record a resume must match. What it leaves to callbacks: logging,
progress bars, plots, benchmark measurements (`Callback`).

Resume is exact or refused: the checkpoint records the resolved schedule (growth steps included, so a changed
--steps cannot move a growth silently), sequence length, global batch, seed, precision, gradient clipping and the
sha256 of the tokenizer and vocabulary ranking; any difference is an error that names the field and the fix.
"""
from __future__ import annotations

import math
import os
import random
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from megababel.checkpoint.io import NAME as CHECKPOINT_NAME
from megababel.checkpoint.io import CheckpointError, list_checkpoints, load_checkpoint, resolve_checkpoint, save_checkpoint
from megababel.config import ConfigError
from megababel.model.counters import count_parameters, flops_per_token
from megababel.data.loader import PackedLoader
from megababel.data.readers import DataError
from megababel.data.shards import TokenDataset
from megababel.engine.deepspeed_config import load_ds_config
from megababel.engine.growing_engine import GrowingEngine
from megababel.parallel import TensorParallel, all_reduce, check_tensor_parallel, init_distributed
from megababel.plan.schedule import Schedule, load_schedule, parse_schedule, schedule_differences

GENERATIONS = "generations"     # OUT/generations: one checkpoint per generation with keep_generations


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; nothing was saved after it."""


@dataclass
class RunConfig:
    """Everything a run is given. Field names are the launcher's flags (seq_len <-> --seq-len)."""
    schedule: str | Path | dict = "tiny"      # preset name, YAML/JSON file, a schedule dict, or "auto" (planner)
    final: str | Path | None = None           # --schedule auto: a preset/file whose final model to plan for
    tokens: float | None = None               # --schedule auto: the budget, as scratch's training tokens,
    tokens_per_parameter: float | None = None  # or tokens per parameter of the final model,
    flops: float | None = None                # or training FLOPs
    data: Path | None = None                  # tools/preprocess_data.py output; None: the embedded corpus
    steps: int | None = None                  # overrides the schedule's training.steps
    micro_batch_size: int = 8                 # sequences per data-parallel rank per forward/backward
    global_batch_tokens: int | None = None    # overrides training.global_batch_tokens (tokens per optimizer step)
    seq_len: int = 128
    zero_stage: int = 0
    tp: int = 1
    bf16: bool = False                        # DeepSpeed bf16: bf16 weights and compute, fp32 master weights
    offload_optimizer: bool = False
    activation_checkpointing: bool = False    # recompute each decoder layer's activations in backward
    growth_spill_dir: Path | None = None      # at a growth, this rank's old state pieces in a mapped file there
    gradient_clipping: float | None = None    # None: the DeepSpeed config's
    ds_config: str | None = None
    seed: int = 0                             # initial weights, growth's random values and data order
    eval_every: int = 50                      # 0: no validation by the trainer (a callback may do its own)
    eval_batches: int = 4
    save_every: int = 0
    save_after_growth: bool = False
    keep_last: int = 0                        # 0: keep every checkpoint
    keep_generations: bool = False            # also keep each generation's last state in OUT/generations: the
                                              # model just before each growth, and the final one (a model family)
    resume: Path | str | None = None          # a checkpoint, a checkpoints directory, or "auto"
    out: Path = Path("runs/demo")

    def check(self):
        for name in ("micro_batch_size", "seq_len", "eval_batches", "tp"):
            _require_int(name, getattr(self, name), minimum=1)
        for name in ("eval_every", "save_every", "keep_last", "seed"):
            _require_int(name, getattr(self, name), minimum=0)
        if not isinstance(self.keep_generations, bool):
            raise ConfigError(f"--keep-generations (keep_generations) must be true or false, got "
                              f"{self.keep_generations!r}")
        for name in ("steps", "global_batch_tokens"):
            if getattr(self, name) is not None:
                _require_int(name, getattr(self, name), minimum=1)
        if self.zero_stage not in (0, 1, 2, 3) or isinstance(self.zero_stage, bool):
            raise ConfigError(f"--zero-stage must be 0, 1, 2 or 3, got {self.zero_stage!r}")
        if self.offload_optimizer and self.zero_stage == 0:
            raise ConfigError("--offload-optimizer needs --zero-stage 1, 2 or 3")
        if self.gradient_clipping is not None and not (math.isfinite(self.gradient_clipping)
                                                       and self.gradient_clipping >= 0):
            raise ConfigError(f"--gradient-clipping must be a finite number >= 0, got {self.gradient_clipping}")
        if self.growth_spill_dir is not None and not (Path(self.growth_spill_dir).is_dir()
                                                      and os.access(self.growth_spill_dir, os.W_OK)):
            raise ConfigError(f"--growth-spill-dir {self.growth_spill_dir}: not a writable directory (create it, on "
                              f"a local disk with room for this rank's share of the model state)")
        budgets = [f for f in ("tokens", "tokens_per_parameter", "flops") if getattr(self, f) is not None]
        if self.schedule == "auto":
            if self.final is None or len(budgets) != 1:
                raise ConfigError("--schedule auto plans a growth schedule for a final model and a budget: give "
                                  "--final (a preset or schedule file whose final model to reach) and one of "
                                  "--tokens, --tokens-per-parameter, --flops")
            if self.steps is not None:
                raise ConfigError("--steps with --schedule auto: the planner sets the steps from the budget; give "
                                  "--tokens instead")
        elif self.final is not None or budgets:
            raise ConfigError(f"--final / --{(budgets or ['tokens'])[0].replace('_', '-')} are for --schedule auto "
                              f"(got --schedule {self.schedule})")
        if self.data is not None and not Path(self.data).is_dir():
            raise ConfigError(f"--data {self.data}: no such directory (make one with tools/preprocess_data.py)")


def _require_int(name: str, value, minimum: int):
    flag = "--" + name.replace("_", "-")
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{flag} must be an integer >= {minimum}, got {value!r}")


class Callback:
    """Hooks of the loop; override what you need. `trainer` exposes step, tokens, flops, train_seconds, engine,
    data, schedule, history."""

    def on_fit_start(self, trainer: "Trainer"): ...
    def on_step_end(self, trainer: "Trainer", row: dict): ...
    def on_before_growth(self, trainer: "Trainer", growth): ...
    def on_growth(self, trainer: "Trainer", record: dict): ...
    def on_validation(self, trainer: "Trainer", loss: float, bits_per_byte: float): ...
    def on_save(self, trainer: "Trainer", path: Path): ...
    def on_fit_end(self, trainer: "Trainer", result: dict): ...
    def abort(self): ...        # the run stops with an error (called by the launcher): close what was opened


class VocabData:
    """This rank's training loader and the (shared) validation batches of one vocabulary stage."""

    def __init__(self, data: Path, size: int, run: RunConfig, dp_rank: int, dp_world: int, rank_batch: int,
                 previous: "VocabData | None" = None):
        self.size = size
        train, valid = TokenDataset(data / f"vocab_{size}", "train"), TokenDataset(data / f"vocab_{size}", "valid")
        # a rank's share of the global batch, all micro-batches of an accumulated step together: the global batch
        # is the same consecutive sequences whatever the micro batch, accumulation and number of ranks
        self.loader = PackedLoader(train, run.seq_len, rank_batch, dp_rank=dp_rank, dp_world=dp_world,
                                   seed=run.seed)
        if previous is not None:
            self.loader.continue_from(previous.loader)
        # the same global batches whatever the layout: each data-parallel rank evaluates its slice, and
        # engine.evaluate averages over ranks
        val = PackedLoader(valid, run.seq_len, run.micro_batch_size, dp_rank=dp_rank, dp_world=dp_world, seed=12345)
        self.val_batches = [val.next_batch() for _ in range(min(run.eval_batches, val.sequences_per_epoch //
                                                                val.global_batch))]
        # every target in the packed stream is a document token, an EOS or a BOS
        self.valid_tokens_per_byte = (valid.n_tokens + 2 * valid.n_docs) / max(1, valid.n_bytes)
        self.train_tokens_per_byte = (train.n_tokens + 2 * train.n_docs) / max(1, train.n_bytes)

    def valid_bits_per_byte(self, loss: float) -> float:
        return loss * self.valid_tokens_per_byte / math.log(2)

    def train_bits_per_byte(self, loss: float) -> float:
        return loss * self.train_tokens_per_byte / math.log(2)


def check_data(data: Path, schedule: Schedule, run: RunConfig, dp_world: int, rank_batches: dict | None = None):
    """Every vocabulary stage the schedule uses: both splits readable, its largest global batch (`rank_batches`:
    {vocabulary size: sequences per rank per step}, default one micro batch) fits in the training split and one
    validation batch in the validation split. Before any compute."""
    available = sorted(int(d.name.split("_")[1]) for d in data.glob("vocab_*") if (d / "index.json").is_file())
    missing = [v for v in schedule.vocab_sizes() if v not in available]
    if missing:
        raise ConfigError(f"the schedule uses vocabulary stages {missing} that {data} does not have (available: "
                          f"{available}); preprocess them with tools/preprocess_data.py --stages ...")
    for size in schedule.vocab_sizes():
        for split in ("train", "valid"):
            batch = (rank_batches or {}).get(size, run.micro_batch_size) if split == "train" else run.micro_batch_size
            try:
                PackedLoader(TokenDataset(data / f"vocab_{size}", split), run.seq_len, batch, dp_world=dp_world)
            except DataError as e:
                raise ConfigError(f"--data {data}, vocabulary stage {size}, {split} split: {e}; use a smaller "
                                  f"--seq-len / --micro-batch-size or more data") from None
    for name in ("tokenizer.model", "ranking.json"):
        if not (data / name).is_file():
            raise ConfigError(f"--data {data} has no {name}: make it with tools/preprocess_data.py")


class StopRequest:
    """SIGUSR1 / SIGTERM ask for a checkpoint and a clean stop. Ranks may get the signal at different moments, so
    they agree (an all-reduce of a flag) at every step boundary and all stop after the same step."""

    def __init__(self):
        self.signal_name = None
        self.previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGUSR1, signal.SIGTERM)}

    def close(self):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame):
        self.signal_name = signal.Signals(signum).name

    def agreed(self) -> bool:
        flag = torch.tensor([1.0 if self.signal_name else 0.0])
        if dist.is_initialized() and dist.get_world_size() > 1:
            flag = all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item() and self.signal_name is None:
            self.signal_name = "on another rank"
        return bool(flag.item())


# --- RNG states: saved with every checkpoint, restored on resume --------------------------------------------------
def rng_states() -> dict:
    states = dict(torch=torch.get_rng_state().tolist(), python=_jsonable(random.getstate()),
                  numpy=_jsonable(np.random.get_state()))
    if torch.cuda.is_available():
        states["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return states


def restore_rng_states(states: dict):
    torch.set_rng_state(torch.tensor(states["torch"], dtype=torch.uint8))
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in states["cuda"]])


def _jsonable(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    return value.item() if isinstance(value, np.generic) else value


# --- the trainer --------------------------------------------------------------------------------------------------
class Trainer:
    def __init__(self, run: RunConfig, callbacks=()):
        self.run, self.callbacks = run, list(callbacks)
        self.step = self.tokens = 0
        self.flops = self.train_seconds = 0.0
        self.history, self.growths_done = [], []
        self.last_val_loss = None
        self.engine = self.data = None

    # --- setup: every check before the first step ----------------------------------------------------------------
    def setup(self) -> "Trainer":
        run = self.run
        run.check()
        self.rank, self.world = init_distributed()
        check_tensor_parallel([], run.tp, self.world)
        # ranks of one TP group (consecutive) share a data-parallel rank: same batches, one shard of the model each
        self.dp_rank, self.dp_world = self.rank // run.tp, self.world // run.tp
        default_batch_tokens = run.micro_batch_size * self.dp_world * run.seq_len   # no accumulation
        overrides = {key: getattr(run, key) for key in ("steps", "global_batch_tokens") if getattr(run, key)} or None
        self.data_dir = self._data_dir()
        self.plan = None
        if run.schedule == "auto":             # the planner's schedule for this batch and the data's stages
            from megababel.plan.planner import plan_for_run
            self.plan = plan_for_run(run, run.global_batch_tokens or default_batch_tokens, self.data_dir)
            self.schedule = parse_schedule(dict(self.plan.schedule, training=dict(
                self.plan.schedule["training"], **(overrides or {}))), default_batch_tokens, "auto")
        elif isinstance(run.schedule, dict):
            spec = dict(run.schedule, training=dict(run.schedule.get("training", {}), **(overrides or {})))
            self.schedule = parse_schedule(spec, default_batch_tokens)
        else:
            self.schedule = load_schedule(run.schedule, default_batch_tokens, overrides)
        check_tensor_parallel([self.schedule.model] + [g.config for g in self.schedule.growths], run.tp, self.world)
        if run.seq_len > self.schedule.model.max_position_embeddings:
            raise ConfigError(f"--seq-len {run.seq_len} exceeds the schedule's max_position_embeddings "
                              f"{self.schedule.model.max_position_embeddings}: lower --seq-len or raise it in `model`")
        generations = range(len(self.schedule.growths) + 1)
        self.batches = [self._batch_plan(g) for g in generations]       # (global sequences, accumulation)
        self.global_batch = self.batches[0][0]
        self.ds_config = self._ds_config(0)
        rank_batches = {}
        for g in generations:
            size = self.schedule.growths[g - 1].config.vocab_size if g else self.schedule.model.vocab_size
            rank_batches[size] = max(rank_batches.get(size, 0), self._rank_batch(g))
        check_data(self.data_dir, self.schedule, run, self.dp_world, rank_batches)
        self.record = dict(schedule=self.schedule.resolved(), seq_len=run.seq_len, global_batch=self.global_batch,
                           seed=run.seed, precision="bf16" if run.bf16 else "fp32",
                           gradient_clipping=self.ds_config["gradient_clipping"],
                           **vocabulary_fingerprints(self.data_dir))
        checkpoint = self._resume_checkpoint()
        tp = TensorParallel(run.tp) if run.tp > 1 else None
        if checkpoint is None:
            self.engine = GrowingEngine(self.schedule.model, self.ds_config, self.schedule, seed=run.seed, tp=tp,
                                        activation_checkpointing=run.activation_checkpointing,
                                        growth_spill_dir=run.growth_spill_dir)
            self.data = VocabData(self.data_dir, self.schedule.model.vocab_size, run, self.dp_rank, self.dp_world,
                                  self._rank_batch(0))
        else:
            self._restore(checkpoint, tp)
        self.parameters = count_parameters(self.engine.model).total   # changes only at growth
        self.tokens_per_step = self.batches[self.engine.model.generation][0] * run.seq_len
        if not self.history:           # a fresh run, or one from an imported model
            self.history = [self._history_entry(None, None)]
        self.pending = list(self.schedule.growths[self.engine.model.generation:])
        return self

    def _batch_plan(self, generation: int) -> tuple[int, int]:
        """(global batch in sequences, gradient accumulation steps) while `generation` trains; ConfigError when its
        global_batch_tokens cannot be made of whole micro-batches on every data-parallel rank."""
        run, tokens = self.run, self.schedule.batch_tokens(generation)
        if tokens is None:
            return run.micro_batch_size * self.dp_world, 1
        unit = run.micro_batch_size * self.dp_world * run.seq_len
        if tokens % unit:
            where = ("--global-batch-tokens" if run.global_batch_tokens else "training.global_batch_tokens") \
                if generation == 0 else f"growth {generation - 1}.global_batch_tokens"
            nearest = max(unit, round(tokens / unit) * unit)
            raise ConfigError(f"{where} {tokens} is not a whole number of micro-batches: --micro-batch-size "
                              f"{run.micro_batch_size} x {self.dp_world} data-parallel rank(s) x --seq-len "
                              f"{run.seq_len} = {unit} tokens per micro-step; use a multiple of {unit} (e.g. "
                              f"{nearest}) or change --micro-batch-size / --seq-len")
        return tokens // run.seq_len, tokens // unit

    def _rank_batch(self, generation: int) -> int:
        """Sequences each data-parallel rank takes per optimizer step (all its micro-batches)."""
        return self.run.micro_batch_size * self.batches[generation][1]

    def _ds_config(self, generation: int) -> dict:
        run = self.run
        return load_ds_config(run.zero_stage, run.micro_batch_size, self.batches[generation][1], self.dp_world,
                              run.bf16, run.offload_optimizer, run.gradient_clipping, run.ds_config)

    def _data_dir(self) -> Path:
        if self.run.data is not None:
            return Path(self.run.data)
        from megababel.data.embedded import build_embedded_dataset
        if self.rank == 0:
            build_embedded_dataset(progress=True)
        if dist.is_initialized():
            dist.barrier()
        return build_embedded_dataset()

    def _resume_checkpoint(self):
        """The checkpoint to resume from (or None), after every check that it continues this run exactly, and that
        saving into --out cannot overwrite checkpoints of another run."""
        run, checkpoints = self.run, Path(self.run.out) / "checkpoints"
        existing = list_checkpoints(checkpoints)
        resume = run.resume
        if str(resume) == "auto":
            resume = checkpoints if existing else None
        if resume is None:
            if existing:
                raise ConfigError(f"{checkpoints} already holds checkpoints (newest {existing[-1].name}): continue "
                                  f"that run with --resume auto, or choose another --out")
            return None
        try:
            checkpoint = load_checkpoint(resolve_checkpoint(resume))
        except CheckpointError as e:
            raise ConfigError(f"--resume: {e}") from None
        resumed_at = (checkpoint.run.get("step", 0), checkpoint.state.generation)
        newer = [p for p in existing if _checkpoint_order(p) > resumed_at]
        if newer:
            raise ConfigError(f"--resume {checkpoint.path}: {checkpoints} holds newer checkpoints ({newer[-1].name}) "
                              f"that this run would overwrite; resume from the newest (--resume auto), move them "
                              f"away, or choose another --out")
        problems = self._resume_problems(checkpoint)
        if problems:
            raise ConfigError(f"--resume {checkpoint.path} cannot continue exactly: " + "; ".join(problems))
        return checkpoint

    def _resume_problems(self, checkpoint) -> list[str]:
        saved, mine = checkpoint.run.get("record") or {}, self.record
        problems = []
        fixes = dict(tokenizer_sha256=("tokenizer.model", "--data made with the checkpoint's tokenizer"),
                     ranking_sha256=("ranking.json", "--data preprocessed with the checkpoint's ranking (an imported "
                                                     "model: tools/convert_from_hf.py --ranking DATA/ranking.json)"))
        theirs = vocabulary_fingerprints(checkpoint.path)
        for key, (name, fix) in fixes.items():
            if theirs[key] != mine[key]:
                problems.append(f"{checkpoint.path / name} differs from {self.data_dir / name}: use {fix}")
        if checkpoint.run.get("imported_from"):     # tools/convert_from_hf.py: weights only, the run starts at step 0
            a, b = checkpoint.state.config.to_dict(), self.schedule.model.to_dict()
            differ = [f"{k}: {a[k]} imported vs {b.get(k)} in the schedule" for k in a if a[k] != b.get(k)]
            if differ:
                problems.append(f"the imported model differs from the schedule's `model` ({', '.join(differ)}): "
                                f"set these in the schedule")
            return problems
        flags = dict(seq_len="--seq-len", seed="--seed", precision="--bf16 (or its absence)",
                     gradient_clipping="--gradient-clipping")
        for key, flag in flags.items():
            if saved.get(key) != mine[key]:
                problems.append(f"{key} is {saved.get(key)!r} in the checkpoint, {mine[key]!r} now: resume with the "
                                f"same {flag}")
        if saved.get("global_batch") != mine["global_batch"]:
            batch = saved.get("global_batch")
            problems.append(f"the global batch is {batch} sequences in the checkpoint, {mine['global_batch']} now: use "
                            f"--global-batch-tokens {batch * self.run.seq_len} (or --micro-batch-size "
                            f"{batch / self.dp_world:g} with {self.dp_world} data-parallel rank(s))")
        differences = schedule_differences(saved.get("schedule", {}), mine["schedule"])
        if differences:
            problems.append(f"the schedule differs ({'; '.join(differences[:6])}): resume with the schedule and "
                            f"--steps it was saved with")
        return problems

    def _restore(self, checkpoint, tp):
        run, saved = self.run, checkpoint.run
        generation = checkpoint.state.generation
        self.engine = GrowingEngine.from_state(checkpoint.state, self._ds_config(generation), self.schedule,
                                               seed=run.seed, tp=tp,
                                               activation_checkpointing=run.activation_checkpointing,
                                               growth_spill_dir=run.growth_spill_dir)
        imported = bool(saved.get("imported_from"))
        self.data = VocabData(self.data_dir, self.engine.model.config.vocab_size, run, self.dp_rank, self.dp_world,
                              self._rank_batch(generation))
        if not imported:
            self.data.loader.load_state_dict(saved["loader"])
            self.step, self.tokens, self.flops = saved["step"], saved["tokens"], saved["flops"]
            self.train_seconds, self.history = saved.get("train_seconds", 0.0), saved["history"]
            restore_rng_states(saved["rng"])
        self.resumed_from = checkpoint.path

    # --- the loop ------------------------------------------------------------------------------------------------
    def fit(self) -> dict:
        run, schedule = self.run, self.schedule
        for callback in self.callbacks:
            callback.on_fit_start(self)
        if run.eval_every:
            self.validate()
        stop, preempted = StopRequest(), False
        try:
            for step in range(self.step, schedule.steps):
                self.step = step
                while self.pending and self.pending[0].at_step <= step:
                    self._grow(self.pending.pop(0), step)
                self._train_step(step)
                if run.eval_every and (self.step % run.eval_every == 0 or self.step == schedule.steps):
                    self.validate()
                saved_now = run.save_every and (self.step % run.save_every == 0 or self.step == schedule.steps)
                if saved_now:
                    self.save()
                if self.step < schedule.steps and stop.agreed():
                    if not saved_now:
                        self.save()
                    self.stop_signal, preempted = stop.signal_name, True
                    break
        finally:
            stop.close()
        if run.keep_generations and not preempted:
            self.save(GENERATIONS, validation_loss=self.last_val_loss)
        result = dict(preempted=preempted, step=self.step, tokens=self.tokens, flops=self.flops,
                      train_seconds=self.train_seconds, generation=self.engine.model.generation,
                      vocab_size=self.engine.model.config.vocab_size, parameters=self.parameters,
                      growth=self.growths_done, validation_loss=self.last_val_loss,
                      validation_bpb=None if self.last_val_loss is None else
                      self.data.valid_bits_per_byte(self.last_val_loss))
        for callback in self.callbacks:
            callback.on_fit_end(self, result)
        return result

    def _train_step(self, step: int):
        x, y = self.data.loader.next_batch()
        started = time.perf_counter()
        loss = self.engine.train_step(x, y, step)
        seconds = time.perf_counter() - started
        self.train_seconds += seconds
        if not math.isfinite(loss):
            raise TrainingDiverged(
                f"the training loss is {loss} at step {step} (generation {self.engine.model.generation}); nothing "
                f"was saved after it. Resume from the last checkpoint in {Path(self.run.out) / 'checkpoints'} "
                f"with a lower learning rate or gradient clipping (--gradient-clipping)")
        self.step = step + 1                       # steps done; what a checkpoint saved now resumes from
        self.tokens += self.tokens_per_step
        self.flops += flops_per_token(self.engine.model.config, self.run.seq_len) * self.tokens_per_step
        row = dict(step=step, tokens=self.tokens, flops=self.flops, loss=loss,
                   train_bpb=self.data.train_bits_per_byte(loss), generation=self.engine.model.generation,
                   vocab=self.data.size, parameters=self.parameters, tokens_per_s=self.tokens_per_step / seconds,
                   lr=self.engine.engine.optimizer.param_groups[-1]["lr"])
        for callback in self.callbacks:
            callback.on_step_end(self, row)

    def _grow(self, growth, step: int):
        for callback in self.callbacks:
            callback.on_before_growth(self, growth)
        started = time.perf_counter()
        before = self.validate(notify=False) if self.run.eval_every else None
        if self.run.keep_generations:           # the generation as it ends: a member of the model family
            self.save(GENERATIONS, validation_loss=before)
        grow_started = time.perf_counter()
        generation = self.engine.grow(growth, step, ds_config=self._ds_config(self.engine.model.generation + 1))
        config = self.engine.model.config
        if config.vocab_size != self.data.size:
            self.data = VocabData(self.data_dir, config.vocab_size, self.run, self.dp_rank, self.dp_world,
                                  self._rank_batch(generation), previous=self.data)
        else:
            self.data.loader.set_batch_size(self._rank_batch(generation))     # same position, new batch
        self.tokens_per_step = self.batches[generation][0] * self.run.seq_len
        self.train_seconds += time.perf_counter() - grow_started
        after = self.validate(notify=False) if self.run.eval_every else None
        self.parameters = count_parameters(self.engine.model).total
        self.history.append(self._history_entry(before, after))
        record = dict(step=step, generation=generation, loss_before=before, loss_after=after,
                      seconds=time.perf_counter() - started, vocab_changed=growth.event.vocab_size is not None,
                      config=config, parameters=self.parameters)
        self.growths_done.append(record)
        for callback in self.callbacks:
            callback.on_growth(self, record)
        if self.run.save_after_growth:
            self.save()

    def _history_entry(self, before, after) -> dict:
        return dict(generation=self.engine.model.generation, step=self.step, tokens=self.tokens,
                    config=self.engine.model.config.to_dict(), parameters=self.parameters,
                    loss_before=before, loss_after=after)

    @torch.no_grad()
    def validate(self, notify: bool = True) -> float:
        loss = self.engine.evaluate(self.data.val_batches)
        if notify:
            self.last_val_loss = loss
            for callback in self.callbacks:
                callback.on_validation(self, loss, self.data.valid_bits_per_byte(loss))
        return loss

    def save(self, folder: str = "checkpoints", validation_loss: float | None = None) -> Path:
        """A checkpoint in OUT/`folder`: "checkpoints" (pruned by keep_last), or GENERATIONS (one per generation:
        an older one of the same generation, from before a resume or a longer --steps, is replaced)."""
        loss = self.last_val_loss if folder == "checkpoints" else validation_loss
        run = dict(step=self.step, tokens=self.tokens, flops=self.flops, train_seconds=self.train_seconds,
                   vocab=self.data.size, loader=self.data.loader.state_dict(), record=self.record,
                   history=self.history, data=str(self.data_dir), schedule_source=str(self.run.schedule)
                   if not isinstance(self.run.schedule, dict) else "<dict>", rng=rng_states(),
                   validation_loss=loss, validation_bpb=None if loss is None else self.data.valid_bits_per_byte(loss))
        directory = Path(self.run.out) / folder
        path = save_checkpoint(directory, self.engine, run,
                               files={name: self.data_dir / name for name in ("tokenizer.model", "ranking.json")},
                               keep_last=self.run.keep_last if folder == "checkpoints" else 0)
        if folder == GENERATIONS and self.rank == 0:
            for other in list_checkpoints(directory):
                if other != path and _checkpoint_order(other)[1] == self.engine.model.generation:
                    shutil.rmtree(other, ignore_errors=True)
        for callback in self.callbacks:
            callback.on_save(self, path)
        return path


def _checkpoint_order(path: Path) -> tuple[int, int]:
    step, generation = CHECKPOINT_NAME.match(path.name).groups()
    return int(step), int(generation)


def vocabulary_fingerprints(folder: Path) -> dict:
    """sha256 of a folder's tokenizer.model and fingerprint of its ranking.json (a dataset or a checkpoint)."""
    from megababel.data.tokenizer import Tokenizer, TokenizerError, VocabRanking
    try:
        tokenizer = Tokenizer.load(folder / "tokenizer.model")
        ranking = VocabRanking.load(folder / "ranking.json")
    except TokenizerError as e:
        raise ConfigError(f"{folder}: {e}") from None
    return dict(tokenizer_sha256=tokenizer.sha256, ranking_sha256=ranking.fingerprint)

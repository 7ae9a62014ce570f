"""The Trainer: the one training loop of megababel, used by the launcher, the benchmarks and the multi-rank tests.

    trainer = Trainer(RunConfig(schedule="tiny", zero_stage=3, out=Path("runs/a")), callbacks=[MyLogger()])
    trainer.setup()            # every check (flags, schedule, data of every vocabulary stage, resume) before compute
    result = trainer.fit()     # data, vocabulary switches, LR per generation, growth when due, eval, checkpoints
    trainer.close()            # release the engine (a process that trains again, e.g. a benchmark)

The Trainer owns the loop: the global batch of each generation (gradient accumulation derived from its
global_batch_tokens, the micro batch and the data-parallel size; the loader keeps its position when the batch
changes), the learning rate of every generation (engine.set_lr, from the schedule), growth when due (`at_step <=
step`: a due growth is never skipped), validation, checkpoints (every N steps, after growth, on SIGUSR1/SIGTERM) and
the NaN guard. What it is given or keeps lives beside it: the run config (run_config.py), the run record a
checkpoint holds (record.py), the resume checks (resume.py), the data of a vocabulary stage (vocab_data.py) and the
stop signals (signals.py). Logging, progress bars, plots and benchmark measurements are callbacks (callbacks.py).
The model and its optimizer belong to the engine (megababel.engine), reached only through its public methods.
"""
from __future__ import annotations

import math
import shutil
import time
from pathlib import Path

import torch
import torch.distributed as dist

from megababel.checkpoint.io import list_checkpoints, save_checkpoint
from megababel.config import ConfigError
from megababel.engine import GrowingEngine, init_distributed
from megababel.engine.deepspeed_config import load_ds_config
from megababel.model.counters import count_parameters, flops_per_token
from megababel.parallel import TensorParallel, check_tensor_parallel
from megababel.plan.presets import load_schedule
from megababel.plan.schedule import parse_schedule
from megababel.train.callbacks import Callback
from megababel.train.record import RunIdentity, RunRecord, restore_rng_states, rng_states, vocabulary_fingerprints
from megababel.train.resume import checkpoint_order, resume_checkpoint
from megababel.train.run_config import RunConfig
from megababel.train.signals import StopRequest
from megababel.train.vocab_data import VocabData, check_data, dataset_names

__all__ = ["Callback", "RunConfig", "Trainer", "TrainingDiverged"]

GENERATIONS = "generations"     # OUT/generations: one checkpoint per generation with keep_generations


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; nothing was saved after it."""


class Trainer:
    def __init__(self, run: RunConfig, callbacks=()):
        self.run, self.callbacks = run, list(callbacks)
        # where the run stands (a checkpoint saves it as a RunRecord)
        self.step = self.tokens = 0
        self.flops = self.train_seconds = 0.0
        self.history: list[dict] = []        # one entry per generation
        self.last_val_loss: float | None = None
        self.growths_done: list[dict] = []
        # set by setup()
        self.rank, self.world, self.dp_rank, self.dp_world = 0, 1, 0, 1
        self.datasets: dict[str, Path] = {}   # --data: name -> dataset directory (mixture sources)
        self.data_dir: Path | None = None     # the first dataset: validation, tokenizer and ranking
        self.plan = None                     # --schedule auto: the planner's Plan
        self.schedule = None                 # plan.schedule.Schedule
        self.seq_lens: list[int] = []        # per generation: its training sequence length
        self.batches: list[tuple[int, int]] = []    # per generation: (global batch in sequences, accumulation)
        self.micro_scale: list[int] = []     # per generation: its micro batch / the run's (--fill-micro-batch)
        self.global_batch = 0
        self.ds_config: dict | None = None
        self.identity: RunIdentity | None = None    # what a resume must match
        self.engine: GrowingEngine | None = None
        self.data: VocabData | None = None
        self.parameters = 0                  # changes only at growth
        self.tokens_per_step = 0
        self.pending: list = []              # the growths still to come
        self.pending_data: list = []         # the curriculum's changes still to come
        self.resumed_from: Path | None = None
        self.stop_signal: str | None = None  # the signal that stopped a preempted run

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
        self.datasets = self._datasets()
        self.data_dir = next(iter(self.datasets.values()))
        if run.schedule == "auto":             # the planner's schedule for this batch and the data's vocabulary stages
            from megababel.plan.presets import plan_for_run     # the planner only when asked for
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
        self.seq_lens = [self.schedule.generation_seq_len(g) or run.seq_len for g in generations]
        for i, change in enumerate(self.schedule.curriculum):     # named where set, before a growth reads on
            if change.seq_len is not None:
                self._base_micro_batch(0, change.seq_len, f"curriculum {i}.seq_len")
        self.batches = [self._batch_plan(g) for g in generations]       # (global sequences, accumulation)
        # --schedule auto fills too: the planner keeps each generation's measured global batch (a smaller one early,
        # its +halfbatch lever, did not pay) and chooses the micro batches that keep the small generations busy
        fill = run.fill_micro_batch or run.schedule == "auto"
        self.micro_scale = [self._fill_factor(g) if fill else 1 for g in generations]
        self.batches = [(sequences, accumulation // k)
                        for (sequences, accumulation), k in zip(self.batches, self.micro_scale)]
        self.global_batch = self.batches[0][0]
        self.ds_config = self._ds_config(0)
        reads = [(self._vocab_size(g), self.seq_lens[g], self._rank_batch(g), self.schedule.generation_data(g))
                 for g in generations]
        for i, change in enumerate(self.schedule.curriculum):       # what is read after each change
            g, after = self.schedule.generation_at(change.at_step), change.at_step + 1
            seq_len = self._seq_len_at(after, g)
            reads.append((self._vocab_size(g), seq_len, self._rank_batch(g, seq_len, f"curriculum {i}.seq_len"),
                          self.schedule.data_at(after, g)))
        check_data(self.datasets, self.schedule, run, self.dp_world, reads)
        self.identity = RunIdentity(schedule=self.schedule.resolved(), seq_len=run.seq_len,
                                    global_batch=self.global_batch, seed=run.seed,
                                    precision="bf16" if run.bf16 else "fp32",
                                    gradient_clipping=self.ds_config["gradient_clipping"],
                                    **vocabulary_fingerprints(self.data_dir))
        checkpoint, self.schedule, self.identity = resume_checkpoint(
            run.resume, Path(run.out) / "checkpoints", self.identity, self.schedule, self.data_dir, self.dp_world,
            run.anneal_steps)
        tp = TensorParallel(run.tp) if run.tp > 1 else None
        if checkpoint is None:
            self.engine = GrowingEngine(self.schedule.model, self.ds_config, self.schedule, seed=run.seed, tp=tp,
                                        activation_checkpointing=run.activation_checkpointing, compile=run.compile,
                                        growth_spill_dir=run.growth_spill_dir)
            self.data = self._vocab_data(0)
        else:
            self._restore(checkpoint, tp)
        self.parameters = count_parameters(self.engine.model).total   # changes only at growth
        self.tokens_per_step = self.batches[self.engine.model.generation][0] * self.seq_lens[
            self.engine.model.generation]
        if not self.history:           # a fresh run, or one from an imported model
            self.history = [self._history_entry(None, None)]
        self.pending = list(self.schedule.growths[self.engine.model.generation:])
        self.pending_data = [c for c in self.schedule.curriculum if c.at_step >= self.step]
        return self

    def _vocab_size(self, generation: int) -> int:
        return (self.schedule.growths[generation - 1].config if generation else self.schedule.model).vocab_size

    def _micro_batch(self, generation: int, seq_len: int | None = None, where: str | None = None) -> int:
        """Sequences per micro-batch while `generation` trains (at `seq_len`, default its own): the run's
        (_base_micro_batch), times its --fill-micro-batch factor."""
        return self._base_micro_batch(generation, seq_len, where) * self.micro_scale[generation]

    def _fill_factor(self, generation: int) -> int:
        """--fill-micro-batch: the largest power of two k by which `generation`'s micro batch can grow so that its
        activations (plan/memory.py's estimate) stay within the final generation's at the run's micro batch and k
        divides its gradient accumulation (its tokens per step stay the same). Small early models then run fewer,
        larger micro-steps, which keeps a GPU busier."""
        from megababel.plan.memory import activation_bytes
        run = self.run
        tokens = run.micro_batch_size * run.seq_len
        configs = [self.schedule.model] + [g.config for g in self.schedule.growths]
        budget = activation_bytes(configs[-1], tokens, run.bf16, run.tp, run.activation_checkpointing)
        accumulation, k = self.batches[generation][1], 1
        while accumulation % (2 * k) == 0 and activation_bytes(configs[generation], 2 * k * tokens, run.bf16, run.tp,
                                                               run.activation_checkpointing) <= budget:
            k *= 2
        return k

    def _base_micro_batch(self, generation: int, seq_len: int | None = None, where: str | None = None) -> int:
        """Sequences per micro-batch of `generation` before --fill-micro-batch: --micro-batch-size sequences of
        --seq-len tokens, as that many tokens of the generation's own sequence length (or `seq_len`, a curriculum's;
        short sequences, more of them: the same work per micro-step, so tokens per step and gradient accumulation
        do not depend on it). `where`: the schedule field that set seq_len, for the error."""
        run, seq_len = self.run, seq_len or self.seq_lens[generation]
        tokens = run.micro_batch_size * run.seq_len
        if tokens % seq_len:
            where = where or ("training.seq_len" if generation == 0 else f"growth {generation - 1}.seq_len")
            raise ConfigError(f"schedule {where}: {seq_len} does not divide a micro-batch of --micro-batch-size "
                              f"{run.micro_batch_size} x --seq-len {run.seq_len} = {tokens} tokens; use a divisor "
                              f"of {tokens} (e.g. {run.seq_len // 2 or 1}) or change --micro-batch-size / --seq-len")
        return tokens // seq_len

    def _batch_plan(self, generation: int) -> tuple[int, int]:
        """(global batch in sequences, gradient accumulation steps) while `generation` trains; ConfigError when its
        global_batch_tokens cannot be made of whole micro-batches on every data-parallel rank."""
        run, tokens, seq_len = self.run, self.schedule.batch_tokens(generation), self.seq_lens[generation]
        micro = self._base_micro_batch(generation)
        if tokens is None:
            return micro * self.dp_world, 1
        unit = micro * self.dp_world * seq_len            # = --micro-batch-size x DP x --seq-len
        if tokens % unit:
            where = ("--global-batch-tokens" if run.global_batch_tokens else "training.global_batch_tokens") \
                if generation == 0 else f"growth {generation - 1}.global_batch_tokens"
            nearest = max(unit, round(tokens / unit) * unit)
            raise ConfigError(f"{where} {tokens} is not a whole number of micro-batches: --micro-batch-size "
                              f"{run.micro_batch_size} x {self.dp_world} data-parallel rank(s) x --seq-len "
                              f"{run.seq_len} = {unit} tokens per micro-step; use a multiple of {unit} (e.g. "
                              f"{nearest}) or change --micro-batch-size / --seq-len")
        return tokens // seq_len, tokens // unit

    def _rank_batch(self, generation: int, seq_len: int | None = None, where: str | None = None) -> int:
        """Sequences each data-parallel rank takes per optimizer step (all its micro-batches)."""
        return self._micro_batch(generation, seq_len, where) * self.batches[generation][1]

    def _seq_len_at(self, step: int, generation: int) -> int:
        """The training sequence length at the start of `step` (growths and the curriculum; else --seq-len)."""
        return self.schedule.seq_len_at(step, generation) or self.run.seq_len

    def _ds_config(self, generation: int, seq_len: int | None = None) -> dict:
        run = self.run
        return load_ds_config(run.zero_stage, self._micro_batch(generation, seq_len), self.batches[generation][1],
                              self.dp_world, run.bf16, run.offload_optimizer, run.gradient_clipping, run.ds_config)

    def _datasets(self) -> dict[str, Path]:
        if self.run.data is not None:
            return dataset_names(self.run.data)
        from megababel.data.embedded import build_embedded_dataset
        if self.rank == 0:
            build_embedded_dataset(progress=True)
        if dist.is_initialized():
            dist.barrier()
        return {"embedded": build_embedded_dataset()}

    def _vocab_data(self, generation: int, previous: VocabData | None = None, step: int | None = None) -> VocabData:
        """The data `generation` reads: its vocabulary stage, sequence length, batch and mixture (at its birth, or
        at `step`, after the curriculum's changes before it)."""
        if step is None:
            mixture, seq_len = self.schedule.generation_data(generation), self.seq_lens[generation]
        else:
            mixture, seq_len = self.schedule.data_at(step, generation), self._seq_len_at(step, generation)
        return VocabData(self.datasets, self._vocab_size(generation), self.run, self.dp_rank, self.dp_world,
                         self._rank_batch(generation, seq_len), seq_len, mixture, self.schedule.data_sources(),
                         previous)

    def _restore(self, checkpoint, tp):
        run, saved = self.run, RunRecord.from_dict(checkpoint.run)
        generation, step = checkpoint.state.generation, 0 if saved.imported_from else saved.step
        self.engine = GrowingEngine.from_state(checkpoint.state,
                                               self._ds_config(generation, self._seq_len_at(step, generation)),
                                               self.schedule,
                                               seed=run.seed, tp=tp,
                                               activation_checkpointing=run.activation_checkpointing,
                                               compile=run.compile, growth_spill_dir=run.growth_spill_dir)
        self.data = self._vocab_data(generation, step=step)
        if not saved.imported_from:
            self.data.loader.load_state_dict(saved.loader)
            self.step, self.tokens, self.flops = saved.step, saved.tokens, saved.flops
            self.train_seconds, self.history = saved.train_seconds, saved.history
            restore_rng_states(saved.rng)
        self.resumed_from = checkpoint.path

    def close(self):
        """Release the engine and what DeepSpeed keeps alive with it, so that a process can train again."""
        if self.engine is not None:
            self.engine.close()

    # --- the loop ------------------------------------------------------------------------------------------------
    def fit(self) -> dict:
        run, schedule = self.run, self.schedule
        for callback in self.callbacks:
            callback.on_fit_start(self)
        if run.eval_every:
            self.validate()
        stop, preempted = StopRequest(), False
        try:
            for step in range(self.step, schedule.end_step):
                self.step = step
                while self.pending and self.pending[0].at_step <= step:
                    self._grow(self.pending.pop(0), step)
                while self.pending_data and self.pending_data[0].at_step <= step:
                    self._change_reading(self.pending_data.pop(0))
                self._train_step(step)
                if run.eval_every and (self.step % run.eval_every == 0 or self.step == schedule.end_step):
                    self.validate()
                saved_now = (run.save_every and (self.step % run.save_every == 0 or self.step == schedule.end_step)
                             or schedule.anneal and self.step == schedule.end_step)   # a branch's end: its product
                if saved_now:
                    self.save()
                if self.step < schedule.end_step and stop.agreed():
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
        started, compiling = time.perf_counter(), self.engine.compile_seconds()
        loss = self.engine.train_step(x, y, step)
        seconds = time.perf_counter() - started
        self._count_compile(compiling)
        self.train_seconds += seconds
        if not math.isfinite(loss):
            raise TrainingDiverged(
                f"the training loss is {loss} at step {step} (generation {self.engine.model.generation}); nothing "
                f"was saved after it. Resume from the last checkpoint in {Path(self.run.out) / 'checkpoints'} "
                f"with a lower learning rate or gradient clipping (--gradient-clipping)")
        self.step = step + 1                       # steps done; what a checkpoint saved now resumes from
        self.tokens += self.tokens_per_step
        self.flops += flops_per_token(self.engine.model.config, self.data.loader.seq_len) * self.tokens_per_step
        row = dict(step=step, tokens=self.tokens, flops=self.flops, loss=loss,
                   train_bpb=self.data.train_bits_per_byte(loss), generation=self.engine.model.generation,
                   vocab=self.data.size, parameters=self.parameters, tokens_per_s=self.tokens_per_step / seconds,
                   lr=self.engine.param_group_lrs()[-1][1])
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
            self.data = self._vocab_data(generation, previous=self.data)
        else:       # the same stream from the same position, in the new batch and sequence length
            self.data.loader.set_seq_len(self.seq_lens[generation], self._rank_batch(generation))
        if growth.data != self.schedule.data_at(step, generation - 1):    # a new mixture: each source keeps
            self.data.set_mixture(growth.data)                             # its position
        self.tokens_per_step = self.batches[generation][0] * self.seq_lens[generation]
        self.train_seconds += time.perf_counter() - grow_started
        self.parameters = count_parameters(self.engine.model).total
        self.history.append(self._history_entry(before, None))
        after = self.history[-1]["loss_after"] = self.validate(notify=False) if self.run.eval_every else None
        record = dict(step=step, generation=generation, loss_before=before, loss_after=after,
                      seconds=time.perf_counter() - started, vocab_changed=growth.event.vocab_size is not None,
                      config=config, parameters=self.parameters)
        self.growths_done.append(record)
        for callback in self.callbacks:
            callback.on_growth(self, record)
        if self.run.save_after_growth:
            self.save()

    def _change_reading(self, change):
        """A curriculum change from this step on: a new mixture (each source keeps its position) and/or sequence
        length (the same stream repacked, the same tokens per micro-step); the model and tokens per step stay."""
        if change.data is not None:
            self.data.set_mixture(change.data)
        if change.seq_len is not None:
            generation = self.engine.model.generation
            self.data.loader.set_seq_len(change.seq_len, self._rank_batch(generation, change.seq_len))
            self.engine.set_micro_batch(self._micro_batch(generation, change.seq_len))
        for callback in self.callbacks:
            callback.on_curriculum_change(self, change)

    def _history_entry(self, before, after) -> dict:
        return dict(generation=self.engine.model.generation, step=self.step, tokens=self.tokens,
                    config=self.engine.model.config.to_dict(), parameters=self.parameters,
                    loss_before=before, loss_after=after)

    def _count_compile(self, before: float | None):
        """Add the torch.compile seconds since `before` to the current generation's history entry."""
        if self.run.compile and before is not None:
            entry = self.history[-1]
            entry["compile_seconds"] = entry.get("compile_seconds", 0.0) + self.engine.compile_seconds() - before

    @torch.no_grad()
    def validate(self, notify: bool = True) -> float:
        compiling = self.engine.compile_seconds()
        loss = self.engine.evaluate(self.data.val_batches)
        self._count_compile(compiling)
        if notify:
            self.last_val_loss = loss
            for callback in self.callbacks:
                callback.on_validation(self, loss, self.data.valid_bits_per_byte(loss))
        return loss

    def save(self, folder: str = "checkpoints", validation_loss: float | None = None) -> Path:
        """A checkpoint in OUT/`folder`: "checkpoints" (pruned by keep_last), or GENERATIONS (one per generation:
        an older one of the same generation, from before a resume or a longer --steps, is replaced)."""
        loss = self.last_val_loss if folder == "checkpoints" else validation_loss
        record = RunRecord(step=self.step, tokens=self.tokens, flops=self.flops, train_seconds=self.train_seconds,
                           vocab=self.data.size, loader=self.data.loader.state_dict(), record=self.identity,
                           history=self.history, data=str(self.data_dir),
                           datasets={k: str(v) for k, v in self.datasets.items()},
                           schedule_source=str(self.run.schedule) if not isinstance(self.run.schedule, dict)
                           else "<dict>", rng=rng_states(), validation_loss=loss,
                           validation_bpb=None if loss is None else self.data.valid_bits_per_byte(loss),
                           trained_seq_len=self._seq_len_at(self.step, self.engine.model.generation))
        directory = Path(self.run.out) / folder
        path = save_checkpoint(directory, self.engine, record.to_dict(),
                               files={name: self.data_dir / name for name in ("tokenizer.model", "ranking.json")},
                               keep_last=self.run.keep_last if folder == "checkpoints" else 0)
        if folder == GENERATIONS and self.rank == 0:
            for other in list_checkpoints(directory):
                if other != path and checkpoint_order(other)[1] == self.engine.model.generation:
                    shutil.rmtree(other, ignore_errors=True)
        for callback in self.callbacks:
            callback.on_save(self, path)
        return path

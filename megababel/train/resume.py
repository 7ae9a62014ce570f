"""Resume is exact or refused: which checkpoint a run continues from, and every check that it continues this run.

A checkpoint records the run's identity (record.RunIdentity); any difference from this run's is an error that names
the field and the fix. A decay branch (--anneal-steps, Schedule.branch) starts from a checkpoint of the run it
branches off, which must match that run's identity; the branch's own checkpoints then record the branch. A fresh
run never writes into an OUT/checkpoints that holds another run's checkpoints, and a resume never overwrites
checkpoints newer than the one it starts from.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from megababel.checkpoint.io import NAME as CHECKPOINT_NAME
from megababel.checkpoint.io import Checkpoint, CheckpointError, list_checkpoints, load_checkpoint, resolve_checkpoint
from megababel.config import ConfigError
from megababel.plan.schedule import Schedule, schedule_differences
from megababel.train.record import RunIdentity, RunRecord, vocabulary_fingerprints


def checkpoint_order(path: Path) -> tuple[int, int]:
    """(step, generation) of a checkpoint directory, from its name."""
    step, generation = CHECKPOINT_NAME.match(path.name).groups()
    return int(step), int(generation)


def resume_checkpoint(resume, checkpoints: Path, identity: RunIdentity, schedule: Schedule, data_dir: Path,
                      dp_world: int, anneal_steps: int = 0) -> tuple[Checkpoint | None, Schedule, RunIdentity]:
    """The checkpoint to resume from (`resume`: a checkpoint, a checkpoints directory, "auto" or None), after every
    check that it continues this run exactly and that saving into `checkpoints` cannot overwrite another run's; and
    the schedule and identity the run continues with: `schedule` and `identity`, or with `anneal_steps` a decay
    branch of them from the checkpoint (or the branch the checkpoint is already part of)."""
    existing = list_checkpoints(checkpoints)
    if str(resume) == "auto":
        resume = checkpoints if existing else None
    if resume is None and anneal_steps:
        raise ConfigError(f"--anneal-steps with --resume auto: {checkpoints} holds no checkpoint of a branch to "
                          f"continue; give --resume the checkpoint to branch from (e.g. RUN/generations/"
                          f"step_..._genG)")
    if resume is None:
        if existing:
            raise ConfigError(f"{checkpoints} already holds checkpoints (newest {existing[-1].name}): continue "
                              f"that run with --resume auto, or choose another --out")
        return None, schedule, identity
    try:
        checkpoint = load_checkpoint(resolve_checkpoint(resume))
    except CheckpointError as e:
        raise ConfigError(f"--resume: {e}") from None
    resumed_at = (checkpoint.run.get("step", 0), checkpoint.state.generation)
    newer = [p for p in existing if checkpoint_order(p) > resumed_at]
    if newer:
        raise ConfigError(f"--resume {checkpoint.path}: {checkpoints} holds newer checkpoints ({newer[-1].name}) "
                          f"that this run would overwrite; resume from the newest (--resume auto), move them "
                          f"away, or choose another --out")
    branched = RunRecord.from_dict(checkpoint.run).record.schedule or {}
    anneal = branched.get("training", {}).get("anneal")
    if anneal and not anneal_steps:
        raise ConfigError(f"--resume {checkpoint.path} is a checkpoint of a decay branch "
                          f"({anneal['steps']} steps from step {anneal['from_step']}): continue it with "
                          f"--anneal-steps {anneal['steps']}, or resume the run it branched off")
    if anneal_steps:
        start = anneal["from_step"] if anneal else checkpoint.run.get("step", 0)
        branch = schedule.branch(checkpoint.state.generation, start, anneal_steps)
        branch_identity = replace(identity, schedule=branch.resolved())
        if anneal:                    # a checkpoint of the branch itself: it must be this branch
            identity = branch_identity
    problems = resume_problems(checkpoint, identity, schedule, data_dir, dp_world)
    if problems:
        raise ConfigError(f"--resume {checkpoint.path} cannot continue exactly: " + "; ".join(problems))
    if anneal_steps:
        return checkpoint, branch, branch_identity
    return checkpoint, schedule, identity


def resume_problems(checkpoint: Checkpoint, identity: RunIdentity, schedule: Schedule, data_dir: Path,
                    dp_world: int) -> list[str]:
    """What differs between the checkpoint's run and this one, each with its fix ([] when the resume is exact)."""
    saved_run = RunRecord.from_dict(checkpoint.run)
    saved, mine = saved_run.record, identity
    problems = []
    fixes = dict(tokenizer_sha256=("tokenizer.model", "--data made with the checkpoint's tokenizer"),
                 ranking_sha256=("ranking.json", "--data preprocessed with the checkpoint's ranking (an imported "
                                                 "model: tools/convert_from_hf.py --ranking DATA/ranking.json)"))
    theirs = vocabulary_fingerprints(checkpoint.path)
    for key, (name, fix) in fixes.items():
        if theirs[key] != getattr(mine, key):
            problems.append(f"{checkpoint.path / name} differs from {data_dir / name}: use {fix}")
    if saved_run.imported_from:     # tools/convert_from_hf.py: weights only, the run starts at step 0
        a, b = checkpoint.state.config.to_dict(), schedule.model.to_dict()
        differ = [f"{k}: {a[k]} imported vs {b.get(k)} in the schedule" for k in a if a[k] != b.get(k)]
        if differ:
            problems.append(f"the imported model differs from the schedule's `model` ({', '.join(differ)}): "
                            f"set these in the schedule")
        return problems
    flags = dict(seq_len="--seq-len", seed="--seed", precision="--bf16 (or its absence)",
                 gradient_clipping="--gradient-clipping")
    for key, flag in flags.items():
        if getattr(saved, key) != getattr(mine, key):
            problems.append(f"{key} is {getattr(saved, key)!r} in the checkpoint, {getattr(mine, key)!r} now: resume "
                            f"with the same {flag}")
    if saved.global_batch != mine.global_batch:
        batch = saved.global_batch
        problems.append(f"the global batch is {batch} sequences in the checkpoint, {mine.global_batch} now: use "
                        f"--global-batch-tokens {batch * mine.seq_len} (or --micro-batch-size "
                        f"{batch / dp_world:g} with {dp_world} data-parallel rank(s))")
    differences = schedule_differences(saved.schedule or {}, mine.schedule)
    if differences:
        problems.append(f"the schedule differs ({'; '.join(differences[:6])}): resume with the schedule and "
                        f"--steps it was saved with")
    return problems

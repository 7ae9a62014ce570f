"""Bad input of every class through the real command line: exit non-zero, one line naming the field and the fix,
no traceback, nothing trained, nothing overwritten. Then the checkpoint rules that keep a run from going silently
wrong: resume with a changed --steps, a vocabulary ranking that is not the data's, a NaN loss, --keep-last,
--resume auto without `latest`, leftover .tmp folders."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import TWO_GROWTHS
from megababel.parallel import free_port

from helpers import ROOT
TRAIN = ROOT / "launch" / "train.py"
SMALL = ["--seq-len", "64", "--micro-batch-size", "4", "--eval-every", "10"]


def run(script: Path, *args, cache: Path) -> subprocess.CompletedProcess:
    if script == TRAIN and "--schedule" not in args:
        args = ("--schedule", TWO_GROWTHS, *args)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", MEGABABEL_CACHE=str(cache), MASTER_PORT=str(free_port()))
    return subprocess.run([sys.executable, str(script), *map(str, args)], env=env, capture_output=True, text=True,
                          timeout=600, cwd=ROOT)


def snapshot(folder: Path) -> dict:
    """Every file under `folder` with its size and modification time."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()} if folder.exists() else {}


def assert_refused(done: subprocess.CompletedProcess, *needles: str):
    output = done.stdout + done.stderr
    assert done.returncode != 0, output[-2000:]
    assert "Traceback" not in output, output[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert "error:" in last and all(n in last for n in needles), last


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, cache):
    """A finished two-growth run (growths at steps 10 and 20 of 40) with checkpoints every 10 steps."""
    out = tmp_path_factory.mktemp("trained")
    done = run(TRAIN, "--steps", 40, *SMALL, "--save-every", 10, "--out", out, cache=cache)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return out


def bad_file(tmp: Path, name: str, text: str) -> Path:
    path = tmp / name
    path.write_text(text)
    return path


SCHEDULE = "model: {hidden_size: 64, head_dim: 16, num_hidden_layers: 2, vocab_size: 1000}\n"


@pytest.mark.slow
@pytest.mark.parametrize("case", [
    "flag", "flag-choice", "seq-len", "spill-dir", "schedule-duplicate-key", "schedule-bool", "schedule-nan",
    "schedule-growth-at-end", "data-missing-stage", "data-too-short", "data-no-ranking", "checkpoint-damaged",
    "checkpoint-missing", "resume-changed-steps", "resume-changed-seq-len", "fresh-over-a-run", "resume-older"])
def test_bad_input_is_refused_in_one_line_before_any_compute(case, tmp_path, cache, trained):
    checkpoints = trained / "checkpoints"
    before = snapshot(trained)
    out = tmp_path / "out"
    data = None
    if case.startswith("data"):        # a copy of the embedded dataset, damaged in one way
        from megababel.data.embedded import build_embedded_dataset
        os.environ["MEGABABEL_CACHE"] = str(cache)
        data = tmp_path / "data"
        shutil.copytree(build_embedded_dataset(), data)
    args, needles = {
        "flag": (["--steps", "0"], ["--steps", ">= 1"]),
        "flag-choice": (["--zero-stage", "5"], ["--zero-stage", "invalid choice"]),
        "seq-len": (["--seq-len", "5000"], ["--seq-len 5000", "max_position_embeddings"]),
        "spill-dir": (["--growth-spill-dir", tmp_path / "no-such-dir"], ["--growth-spill-dir", "writable directory"]),
        "schedule-duplicate-key": (["--schedule", bad_file(tmp_path, "d.yaml", SCHEDULE + "training: {steps: 10}\n"
                                                           "training: {steps: 20}\n")], ["training", "appears twice"]),
        "schedule-bool": (["--schedule", bad_file(tmp_path, "b.yaml", SCHEDULE + "training: {steps: true}\n")],
                          ["training.steps"]),
        "schedule-nan": (["--schedule", bad_file(tmp_path, "n.yaml", SCHEDULE + "training: {steps: 10, lr: .nan}\n")],
                         ["training.lr"]),
        "schedule-growth-at-end": (["--schedule", bad_file(tmp_path, "e.yaml", SCHEDULE + "training: {steps: 10}\n"
                                                           "growths: [{at_step: 10, hidden_size: 128}]\n")],
                                   ["growth 0.at_step", "end of training"]),
        "data-missing-stage": (["--data", data], ["vocabulary stages [4000]"]),
        "data-too-short": (["--data", data, "--seq-len", "1000", "--micro-batch-size", "4096"],
                           ["vocabulary stage", "--micro-batch-size"]),
        "data-no-ranking": (["--data", data], ["ranking.json", "tools/preprocess_data.py"]),
        "checkpoint-damaged": (["--resume", tmp_path / "damaged"], ["sha256", "use an earlier one"]),
        "checkpoint-missing": (["--resume", tmp_path / "nowhere"], ["--resume", "no such checkpoint"]),
        "resume-changed-steps": (["--resume", checkpoints / "step_00000010_gen0", "--steps", "60"],
                                 ["training.steps: 40 saved, 60 now", "growth 0.at_step", "--steps"]),
        "resume-changed-seq-len": (["--resume", checkpoints / "step_00000010_gen0", "--steps", "40",
                                    "--seq-len", "32"], ["seq_len is 64", "--seq-len"]),
        "fresh-over-a-run": (["--steps", "40"], ["already holds checkpoints", "--resume auto"]),
        "resume-older": (["--resume", checkpoints / "step_00000010_gen0", "--steps", "40"],
                         ["newer checkpoints", "--resume auto"]),
    }[case]
    if case == "data-missing-stage":
        shutil.rmtree(data / "vocab_4000")
    if case == "data-no-ranking":
        (data / "ranking.json").unlink()
    if case == "checkpoint-damaged":
        shutil.copytree(checkpoints / "step_00000020_gen1", tmp_path / "damaged")
        victim = sorted((tmp_path / "damaged" / "tensors").iterdir())[3]
        victim.write_bytes(victim.read_bytes()[:-10] + b"0123456789")
    if case in ("fresh-over-a-run", "resume-older"):
        out = trained
    flags = SMALL + ["--out", out] + [str(a) for a in args]
    if case == "seq-len" or case.startswith("resume-changed"):
        flags = ["--out", out] + [str(a) for a in args] + ["--micro-batch-size", "4", "--eval-every", "10"]
        if case == "resume-changed-steps":
            flags += ["--seq-len", "64"]
    done = run(TRAIN, *flags, cache=cache)
    assert_refused(done, *needles)
    assert not (out / "log.csv").exists() or out == trained          # nothing trained
    assert snapshot(trained) == before                                  # nothing overwritten


@pytest.mark.slow
def test_an_import_whose_rows_are_not_in_the_datas_ranking_is_refused(tmp_path, cache):
    """tools/convert_from_hf.py without --ranking keeps the tokenizer's row order; training it on a dataset whose
    ids are frequency-ranked would silently mislabel every row. Refused, naming both ranking files."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from megababel.data.embedded import build_embedded_dataset
    os.environ["MEGABABEL_CACHE"] = str(cache)
    data = build_embedded_dataset()
    config = LlamaConfig(hidden_size=64, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=4, head_dim=16, vocab_size=4000, tie_word_embeddings=False)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(tmp_path / "hf")
    (tmp_path / "hf/tokenizer.model").write_bytes((data / "tokenizer.model").read_bytes())
    schedule = bad_file(tmp_path, "s.yaml", "model: {hidden_size: 64, head_dim: 16, num_hidden_layers: 2, "
                                            "intermediate_size: 192, vocab_size: 4000, rms_norm_eps: 1.0e-6, "
                                            "max_position_embeddings: 2048}\ntraining: {steps: 4}\n")
    for ranking, ok in ((None, False), (data / "ranking.json", True)):
        ckpt = tmp_path / f"ckpt-{ok}"
        extra = ["--ranking", ranking] if ranking else []
        assert run(Path(sys.executable).with_name("megababel-import"), tmp_path / "hf", ckpt, *extra,
                   cache=cache).returncode == 0
        done = run(TRAIN, "--resume", ckpt, "--schedule", schedule, "--data", data, *SMALL,
                   "--out", tmp_path / f"run-{ok}", cache=cache)
        if ok:
            assert done.returncode == 0, done.stderr[-2000:]
        else:
            assert_refused(done, str(ckpt / "ranking.json"), str(data / "ranking.json"), "--ranking")


@pytest.mark.slow
def test_export_refuses_a_tokenizer_that_is_not_the_checkpoints(tmp_path, cache, trained):
    from megababel.data.embedded import build_embedded_dataset
    from megababel.data.tokenizer import Tokenizer, VocabRanking
    os.environ["MEGABABEL_CACHE"] = str(cache)
    data = build_embedded_dataset()
    other = tmp_path / "other"
    other.mkdir()
    shutil.copyfile(data / "tokenizer.model", other / "tokenizer.model")
    ranking = VocabRanking.load(data / "ranking.json", Tokenizer.load(data / "tokenizer.model"))
    ranking.order[[300, 301]] = ranking.order[[301, 300]]        # two rows swapped: same tokenizer, other rows
    ranking.save(other / "ranking.json")
    done = run(Path(sys.executable).with_name("megababel-export"), trained / "checkpoints", tmp_path / "hf",
               "--tokenizer", other, cache=cache)
    assert_refused(done, "differ from the ones the checkpoint")
    assert not (tmp_path / "hf").exists()


@pytest.mark.slow
def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, cache):
    schedule = bad_file(tmp_path, "hot.yaml", SCHEDULE + "training: {steps: 20, lr: 1.0e+30, warmup_steps: 0}\n")
    done = run(TRAIN, "--schedule", schedule, *SMALL, "--save-every", 1, "--gradient-clipping", 0,
               "--out", tmp_path / "run", cache=cache)
    assert done.returncode == 3 and "Traceback" not in done.stderr, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert "training loss is" in last and "nothing was saved after it" in last, last
    step = int(last.split(" at step ")[1].split()[0])
    saved = sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("step_*"))
    assert saved[-1] == f"step_{step:08d}_gen0"       # the state before the diverged step, nothing after it


@pytest.mark.slow
def test_keep_last_resume_auto_without_latest_and_leftover_tmp(tmp_path, cache):
    out = tmp_path / "run"
    done = run(TRAIN, "--steps", 40, *SMALL, "--save-every", 5, "--keep-last", 2, "--out", out, cache=cache)
    assert done.returncode == 0, done.stderr[-2000:]
    checkpoints = out / "checkpoints"
    assert sorted(p.name for p in checkpoints.glob("step_*")) == ["step_00000035_gen2", "step_00000040_gen2"]
    # a crashed save leaves a .tmp folder; `latest` lost: --resume auto still finds the newest complete checkpoint
    (checkpoints / "latest").unlink()
    shutil.rmtree(checkpoints / "step_00000040_gen2")
    (checkpoints / "step_00000040_gen2.tmp" / "tensors").mkdir(parents=True)
    done = run(TRAIN, "--steps", 40, *SMALL, "--save-every", 5, "--keep-last", 2, "--resume", "auto", "--out", out,
               cache=cache)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resumed from" in done.stdout + done.stderr and "step_00000035_gen2" in done.stdout + done.stderr
    assert not list(checkpoints.glob("*.tmp"))
    assert (checkpoints / "latest").read_text().strip() == "step_00000040_gen2"
    meta = json.loads((checkpoints / "step_00000040_gen2" / "megababel.json").read_text())
    assert meta["run"]["step"] == 40 and meta["checksums"]

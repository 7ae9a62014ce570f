"""The main job runs end to end on the embedded corpus: growth in width+FFN, depth and vocabulary."""
from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load_train():
    spec = importlib.util.spec_from_file_location("launch_train", ROOT / "launch" / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_demo_grows_and_learns_on_the_embedded_corpus(tmp_path, monkeypatch):
    monkeypatch.setenv("MEGABABEL_CACHE", str(tmp_path / "cache"))     # builds the embedded dataset from scratch
    train = _load_train()
    result = train.main(["--steps", "60", "--batch-size", "4", "--seq-len", "64", "--eval-every", "20",
                         "--vocab-stages", "1000", "1000", "4000", "--out", str(tmp_path / "run")])
    assert result["generation"] == 2 and result["vocab_size"] == 4000
    width, depth_and_vocab = result["growth"]
    assert not width["vocab_changed"] and abs(width["loss_before"] - width["loss_after"]) < 1e-5
    assert depth_and_vocab["vocab_changed"] and depth_and_vocab["loss_after"] < depth_and_vocab["loss_before"] + 1
    assert result["final_validation_bpb"] < result["initial_validation_bpb"] - 0.5
    rows = list(csv.DictReader(open(tmp_path / "run" / "log.csv")))
    assert len(rows) == 60 and {r["generation"] for r in rows} == {"0", "1", "2"}
    assert {r["vocab"] for r in rows} == {"1000", "4000"}
    assert (tmp_path / "run" / "loss.png").stat().st_size > 0 and (tmp_path / "run" / "summary.txt").exists()


@pytest.mark.parametrize("flags,message", [
    (["--steps", "0"], "--steps must be positive"),
    (["--seq-len", "5000"], "max_position_embeddings"),
    (["--vocab-stages", "1000", "3000", "4000"], "stage 3000 is not in"),
    (["--vocab-stages", "2000", "1000", "4000"], "may only grow"),
    (["--data", "/nonexistent/dir"], "no such directory"),
])
def test_demo_rejects_bad_flags(flags, message, capsys):
    train = _load_train()
    with pytest.raises(SystemExit):
        train.main(flags)
    assert message in capsys.readouterr().err

"""The main job (single-process progressive demo) runs end to end on the embedded corpus."""
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


def test_demo_grows_twice_exactly_and_learns(tmp_path):
    train = _load_train()
    result = train.main(["--steps", "60", "--batch-size", "4", "--seq-len", "64", "--eval-every", "20",
                         "--out", str(tmp_path)])
    assert result["generation"] == 2
    for before, after in result["growth_losses"]:
        assert abs(before - after) < 1e-5
    assert result["final_validation_loss"] < result["initial_validation_loss"] - 1.0
    rows = list(csv.DictReader(open(tmp_path / "log.csv")))
    assert len(rows) == 60 and {r["generation"] for r in rows} == {"0", "1", "2"}
    assert (tmp_path / "loss.png").stat().st_size > 0 and (tmp_path / "summary.txt").exists()


@pytest.mark.parametrize("flags,message", [(["--steps", "0"], "--steps must be positive"),
                                           (["--seq-len", "5000"], "max_position_embeddings")])
def test_demo_rejects_bad_flags(flags, message, capsys):
    train = _load_train()
    with pytest.raises(SystemExit):
        train.main(flags)
    assert message in capsys.readouterr().err

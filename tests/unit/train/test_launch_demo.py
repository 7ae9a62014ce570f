"""The main job runs end to end on the embedded corpus: growth in width+FFN, depth and vocabulary."""
from __future__ import annotations

import csv

import pytest



def _load_train():
    import megababel.train.cli
    return megababel.train.cli


def test_demo_grows_and_learns_on_the_embedded_corpus(tmp_path, monkeypatch):
    monkeypatch.setenv("MEGABABEL_CACHE", str(tmp_path / "cache"))     # builds the embedded dataset from scratch
    train = _load_train()
    result = train.main(["--steps", "60", "--micro-batch-size", "4", "--seq-len", "64", "--eval-every", "20",
                         "--out", str(tmp_path / "run")])
    assert result["generation"] == 3 and result["vocab_size"] == 4000         # the tiny preset: g3@10-vocab
    first, *others = result["growth"]
    assert first["vocab_changed"] and abs(first["loss_after"] - first["loss_before"]) < 1.0   # new tokens join
    for growth in others:             # width, then depth: the function is kept
        assert not growth["vocab_changed"] and growth["loss_after"] == pytest.approx(growth["loss_before"], rel=1e-4)
    assert result["final_validation_bpb"] < result["initial_validation_bpb"] - 0.5
    rows = list(csv.DictReader(open(tmp_path / "run" / "log.csv")))
    assert len(rows) == 60 and {r["generation"] for r in rows} == {"0", "1", "2", "3"}
    assert {r["vocab"] for r in rows} == {"2000", "4000"}
    assert (tmp_path / "run" / "loss.png").stat().st_size > 0 and (tmp_path / "run" / "summary.txt").exists()
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))


@pytest.mark.parametrize("flags,message", [
    (["--steps", "0"], "--steps must be an integer >= 1"),
    (["--seq-len", "5000"], "max_position_embeddings"),
    (["--data", "/nonexistent/dir"], "no such directory"),
    (["--schedule", "nonexistent"], "not a preset"),
    (["--steps", "2"], "is not after the previous growth"),
    (["--offload-optimizer"], "needs --zero-stage 1, 2 or 3"),
    (["--tp", "0"], "--tp must be an integer >= 1"),
    (["--tp", "2"], "world size 1 is not divisible by --tp 2"),
    (["--schedule", "auto", "--tokens", "1e6"], "give --final"),
    (["--schedule", "auto", "--final", "tiny"], "one of --tokens, --tokens-per-parameter, --flops"),
    (["--schedule", "auto", "--final", "tiny", "--tokens", "1e6", "--steps", "9"], "--steps with --schedule auto"),
    (["--final", "tiny"], "are for --schedule auto"),
    (["--schedule", "auto", "--final", "tiny", "--tokens", "3000"], "raise the budget"),
    (["--schedule", "auto", "--final", "nonexistent", "--tokens", "1e6"], "not a preset"),
])
def test_demo_rejects_bad_flags(flags, message, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("MEGABABEL_CACHE", str(tmp_path / "cache"))
    train = _load_train()
    with pytest.raises(SystemExit):
        train.main(flags)
    assert message in capsys.readouterr().err


def test_schedule_whose_vocabulary_the_data_lacks_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MEGABABEL_CACHE", str(tmp_path / "cache"))
    schedule = tmp_path / "s.yaml"
    schedule.write_text("model: {hidden_size: 64, head_dim: 16, num_hidden_layers: 2, vocab_size: 1000}\n"
                        "training: {steps: 10}\ngrowths:\n  - {at_step: 5, vocab_size: 3000}\n")
    with pytest.raises(SystemExit):
        _load_train().main(["--schedule", str(schedule), "--out", str(tmp_path / "run")])
    assert "vocabulary stages [3000]" in capsys.readouterr().err


def test_schedule_auto_trains_the_planners_schedule(tmp_path, monkeypatch, capsys):
    """--schedule auto --final tiny: the planner's plan for tiny's final model at this budget, batch and data (the
    embedded corpus' stages 1000/2000/4000), trained to that final model, with the choice explained."""
    monkeypatch.setenv("MEGABABEL_CACHE", str(tmp_path / "cache"))
    from megababel.plan.planner import plan_growth
    from megababel.plan.presets import final_model
    expected = plan_growth(final_model("tiny"), tokens=20_000, seq_len=64, tokens_per_step=256,
                           vocab_stages=[1000, 2000, 4000])
    result = _load_train().main(["--schedule", "auto", "--final", "tiny", "--tokens", "20000", "--micro-batch-size",
                                 "4", "--seq-len", "64", "--eval-every", "0", "--out", str(tmp_path / "run")])
    assert f"plan {expected.name}" in capsys.readouterr().out
    assert result["step"] == expected.schedule["training"]["steps"]
    assert result["generation"] == len(expected.schedule["growths"]) and result["vocab_size"] == 4000
    from megababel.model.counters import config_parameters
    assert result["parameters"] == config_parameters(final_model("tiny"))

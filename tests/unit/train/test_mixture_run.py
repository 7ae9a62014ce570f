"""A data curriculum through the Trainer: two datasets (one sliced by difficulty) mixed by weights that change at
growths and between them (the schedule's curriculum), resumed exactly before, at and after each change; bad mixtures
refused before any compute."""
from __future__ import annotations

import pytest

from megababel.config import ConfigError
from megababel.train.trainer import Callback, RunConfig, Trainer


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """main: the embedded dataset; docs: its last 600 documents again, preprocessed with main's ranking (so they
    share model rows), with difficulty scores."""
    from megababel.data.embedded import build_embedded_dataset, embedded_corpus
    from megababel.data.preprocess import preprocess
    from megababel.data.tokenizer import Tokenizer
    main = build_embedded_dataset()
    root = tmp_path_factory.mktemp("mixture")
    text = root / "docs.txt"
    text.write_text("\n\n".join("\n".join(l for l in d.split("\n") if l.strip()) for d in embedded_corpus()[-600:]))
    preprocess([str(text)], root / "docs", Tokenizer.load(main / "tokenizer.model"), [1000, 2000], valid_every=20,
               ranking=main / "ranking.json", progress=False)
    return dict(main=main, docs=root / "docs")


SCHEDULE = dict(             # micro batch 2 x 32 tokens, 4 micro-batches per step
    model=dict(hidden_size=64, head_dim=16, num_hidden_layers=2, multiple_of=32, vocab_size=1000),
    training=dict(steps=16, lr=3e-3, warmup_steps=2, global_batch_tokens=256,
                  data={"main": 0.5, "docs[rarity:0-0.5]": 0.5}),                       # easy documents first
    growths=[dict(at_step=6, hidden_size=96, intermediate_size=256,
                  data={"main": 0.5, "docs[rarity:0-0.5]": 0.25, "docs[rarity:0.5-1]": 0.25}),
             dict(at_step=11, num_hidden_layers=4, layer_positions="interleave", vocab_size=2000,
                  data={"main": 0.75, "docs[rarity:0.5-1]": 0.25})])


class Losses(Callback):
    def __init__(self):
        self.losses = {}

    def on_step_end(self, trainer, row):
        self.losses[row["step"]] = row["loss"]


def fit(datasets, out, schedule=SCHEDULE, **changes):
    losses = Losses()
    trainer = Trainer(RunConfig(**dict(dict(schedule=schedule, data=datasets, seq_len=32, micro_batch_size=2,
                                            eval_every=0, out=out), **changes)), callbacks=[losses])
    trainer.setup().fit()
    trainer.close()
    return losses.losses, trainer


def test_a_changing_mixture_resumes_exactly_before_at_and_after_each_change(distributed_env, datasets, tmp_path):
    whole, trainer = fit(datasets, tmp_path / "whole", save_every=4, save_after_growth=True)
    assert trainer.data.loader.weights == {"main": 0.75, "docs[rarity:0-0.5]": 0.0, "docs[rarity:0.5-1]": 0.25}
    checkpoints = tmp_path / "whole" / "checkpoints"
    for name in ("step_00000004_*", "step_00000006_gen1*", "step_00000011_gen2*"):
        start = next(checkpoints.glob(name))
        resumed, _ = fit(datasets, tmp_path / f"from_{start.name}", resume=start)
        first = min(resumed)
        assert all(resumed[s] == whole[s] for s in range(first, 16)), start.name
    from megababel.checkpoint.io import load_checkpoint
    run = load_checkpoint(next(checkpoints.glob("step_00000016_*"))).run
    assert run["datasets"] == {k: str(v) for k, v in datasets.items()}
    assert run["record"]["schedule"]["growths"][1]["data"] == SCHEDULE["growths"][1]["data"]


# a scratch-like run's curriculum: easy documents first, then everything; a growth between changes reads on
CURRICULUM = dict(model=SCHEDULE["model"], training=dict(steps=12, lr=3e-3, warmup_steps=2, global_batch_tokens=256,
                                                          data={"docs[rarity:0-0.5]": 1.0}),
                  growths=[dict(at_step=6, hidden_size=96, intermediate_size=256)],
                  curriculum=[dict(at_step=3, data={"main": 0.5, "docs": 0.5}),
                              dict(at_step=9, data={"main": 1.0})])


def test_a_curriculum_between_growths_resumes_exactly_before_at_and_after_each_change(distributed_env, datasets,
                                                                                       tmp_path):
    whole, trainer = fit(datasets, tmp_path / "whole", schedule=CURRICULUM, save_every=3, save_after_growth=True)
    assert trainer.data.loader.weights == {"docs[rarity:0-0.5]": 0.0, "main": 1.0, "docs": 0.0}
    plain, _ = fit(datasets, tmp_path / "plain", schedule=dict(CURRICULUM, curriculum=[], growths=[]), steps=5)
    assert plain[2] == whole[2] and plain[3] != whole[3]            # the change at 3 is read from step 3 on
    checkpoints = tmp_path / "whole" / "checkpoints"
    for name in ("step_00000003_*", "step_00000006_gen0*", "step_00000006_gen1*", "step_00000009_*"):
        start = next(checkpoints.glob(name))
        resumed, _ = fit(datasets, tmp_path / f"from_{start.name}", schedule=CURRICULUM, resume=start)
        assert resumed == {s: whole[s] for s in range(min(resumed), 12)}, start.name
    moved = dict(CURRICULUM, curriculum=[CURRICULUM["curriculum"][0], dict(at_step=10, data={"main": 1.0})])
    with pytest.raises(ConfigError, match="curriculum: .* saved, .* now"):
        fit(datasets, tmp_path / "moved", schedule=moved, resume=next(checkpoints.glob("step_00000009_*")))


@pytest.mark.parametrize("change, message", [
    (dict(schedule=dict(model=SCHEDULE["model"], training=dict(steps=16))), "no mixture: set training.data"),
    (dict(schedule=dict(SCHEDULE, training=dict(SCHEDULE["training"], data={"main": 0.5, "other": 0.5}))),
     "data source 'other' names no dataset: give --data other=DIR"),
    (dict(schedule=dict(SCHEDULE, training=dict(SCHEDULE["training"], data={"main": 0.5, "docs[refloss:0-1]": 0.5}))),
     "no 'refloss' difficulty scores"),
    (dict(schedule=dict(SCHEDULE, growths=SCHEDULE["growths"][:1] + [dict(SCHEDULE["growths"][1], vocab_size=4000,
                                                                             data={"docs": 1.0})])),
     r"vocabulary stages \[4000\] that .*docs does not have"),
    (dict(schedule=dict(CURRICULUM, curriculum=[dict(at_step=3, data={"other": 1.0})])),
     "data source 'other' names no dataset"),
])
def test_bad_mixtures_are_refused_before_any_compute(distributed_env, datasets, tmp_path, change, message):
    with pytest.raises(ConfigError, match=message):
        Trainer(RunConfig(**dict(dict(schedule=SCHEDULE, data=datasets, seq_len=32, micro_batch_size=2, eval_every=0,
                                      out=tmp_path), **change))).setup()
    assert not (tmp_path / "checkpoints").exists()


def test_datasets_with_another_vocabulary_ranking_cannot_be_mixed(distributed_env, datasets, tmp_path):
    import shutil
    other = tmp_path / "other"
    shutil.copytree(datasets["docs"], other)
    ranking = (other / "ranking.json").read_text()
    (other / "ranking.json").write_text(ranking.replace('"order": [0, 1, 2', '"order": [0, 2, 1', 1))
    with pytest.raises(ConfigError, match="another tokenizer or vocabulary ranking .* --ranking"):
        Trainer(RunConfig(schedule=SCHEDULE, data=dict(main=datasets["main"], docs=other), seq_len=32,
                          micro_batch_size=2, eval_every=0, out=tmp_path / "run")).setup()


def test_the_model_card_lists_each_generations_mixture_and_sequence_length(distributed_env, datasets, tmp_path,
                                                                          capsys):
    """...and the export's context is the length its generation trained on (64, not the schedule's 4096): config.json
    says so for lm-eval and llama.cpp, megababel.json keeps both, and megababel-eval notes a longer --seq-len."""
    import json

    from megababel.cli.evaluate import main as eval_main
    from megababel.hf.export import export_checkpoint
    schedule = dict(SCHEDULE, growths=[dict(SCHEDULE["growths"][0], seq_len=64)])
    _, trainer = fit(datasets, tmp_path / "run", schedule=dict(schedule, training=dict(schedule["training"],
                                                                                       steps=8)), save_every=8)
    out = export_checkpoint(next((tmp_path / "run" / "checkpoints").glob("step_00000008_*")), tmp_path / "hf")
    card = (out / "README.md").read_text()
    assert "## Training data" in card and f"`docs`: {datasets['docs']}" in card
    assert "| 0 | 0 | main 0.5, docs[rarity:0-0.5] 0.5 | 32 |" in card
    assert "| 1 | 6 | main 0.5, docs[rarity:0-0.5] 0.25, docs[rarity:0.5-1] 0.25 | 64 |" in card
    assert "trained on sequences of up to 64 tokens (the schedule allows 4096)" in card
    info = json.loads((out / "megababel.json").read_text())
    assert (info["trained_seq_len"], info["schedule_max_position_embeddings"]) == (64, 4096)
    assert json.loads((out / "config.json").read_text())["max_position_embeddings"] == 64
    assert json.loads((out / "tokenizer_config.json").read_text())["model_max_length"] == 64
    text = tmp_path / "text.txt"
    text.write_text("One small paragraph to score.\n\nAnd another one.\n")
    eval_main([str(out), str(text), "--seq-len", "128"])
    assert "--seq-len 128 is longer than the 64 tokens" in capsys.readouterr().err
    eval_main([str(out), str(text), "--seq-len", "64"])
    assert "longer than" not in capsys.readouterr().err
    _, trainer = fit(datasets, tmp_path / "curriculum", schedule=CURRICULUM, save_every=12)
    out = export_checkpoint(next((tmp_path / "curriculum" / "checkpoints").glob("step_00000012_*")), tmp_path / "c")
    section = (out / "README.md").read_text().split("| generation | from step | data mixture |")[1]
    rows = section.split("\n\n")[0].splitlines()[2:]
    assert rows == ["| 0 | 0 | docs[rarity:0-0.5] 1 | 32 |", "| 0 | 3 | main 0.5, docs 0.5 | 32 |",
                    "| 1 | 6 | main 0.5, docs 0.5 | 32 |", "| 1 | 9 | main 1 | 32 |"]
    assert json.loads((out / "megababel.json").read_text())["trained_seq_len"] == 32     # the run's --seq-len


def test_the_log_says_when_validation_reads_positions_a_shorter_generation_has_not_trained(distributed_env, datasets,
                                                                                           tmp_path, capsys):
    short = dict(model=SCHEDULE["model"], training=dict(steps=2, lr=3e-3, warmup_steps=1, global_batch_tokens=256,
                                                        seq_len=16, data={"main": 1.0}), growths=[])
    from megababel.train.run_logger import RunLogger

    def logged(out, schedule):
        trainer = Trainer(RunConfig(schedule=schedule, data=datasets, seq_len=32, micro_batch_size=2, eval_every=2,
                                    out=out), callbacks=[RunLogger(out, is_main=True)])
        trainer.setup().fit()
        trainer.close()
        return capsys.readouterr().out
    assert "validation runs at --seq-len 32, and some generations train shorter (16)" in logged(tmp_path / "a", short)
    assert "validation runs at" not in logged(tmp_path / "b", dict(short, training=dict(short["training"], seq_len=32)))


def test_the_launcher_reads_one_dataset_or_several_named_ones(capsys):
    import argparse
    from pathlib import Path
    from megababel.train.cli import data_argument
    p = argparse.ArgumentParser(prog="megababel-train")
    assert data_argument(p, ["data/wiki"]) == Path("data/wiki")
    assert data_argument(p, ["wiki=data/wiki", "simple=data/ts"]) == {"wiki": Path("data/wiki"),
                                                                       "simple": Path("data/ts")}
    assert data_argument(p, None) is None
    for bad in (["data/wiki", "data/ts"], ["wiki=a", "wiki=b"], ["=a"]):
        with pytest.raises(SystemExit):
            data_argument(p, bad)
        assert "give one DIR, or several NAME=DIR with distinct names" in capsys.readouterr().err

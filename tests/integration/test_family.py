"""A model family from one run: launch/train.py --keep-generations, then tools/export_family.py. Every member
exports, loads in transformers, and evaluates to the same bits/byte as tools/eval.py on its checkpoint; the card
names each member's vocabulary stage."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from helpers import ROOT, TWO_GROWTHS
from megababel.cli import export_family
from megababel.parallel import free_port


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("family") / "run"
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", MASTER_PORT=str(free_port()))
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(key, None)
    done = subprocess.run([sys.executable, str(ROOT / "launch/train.py"), "--schedule", str(TWO_GROWTHS), "--steps",
                           "24", "--seq-len", "64", "--micro-batch-size", "4", "--eval-every", "6",
                           "--keep-generations", "--out", str(out)], env=env, capture_output=True, text=True,
                          timeout=900, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


def _text(tmp_path) -> str:
    import collections
    import json as json_module
    path = tmp_path / "text.txt"
    path.write_text("\n\n".join(m.__doc__ for m in (collections, json_module, subprocess) if m.__doc__))
    return str(path)


@pytest.mark.slow
def test_every_member_exports_loads_and_evaluates_like_its_checkpoint(run, tmp_path):
    from transformers import AutoModelForCausalLM
    text = _text(tmp_path)
    rows = export_family.main([str(run), str(tmp_path / "family"), "--eval-text", text, "--seq-len", "64"])
    assert [r["generation"] for r in rows] == [0, 1, 2]
    assert [r["vocab_size"] for r in rows] == [1000, 2000, 4000]        # two_growths.json's vocabulary stages
    assert all(a["parameters"] < b["parameters"] and a["tokens"] < b["tokens"] and a["flops"] < b["flops"]
               for a, b in zip(rows, rows[1:]))
    from megababel.cli.evaluate import main as evaluate
    for row in rows:
        export = tmp_path / "family" / row["export"]
        model = AutoModelForCausalLM.from_pretrained(export, dtype=torch.float32)
        assert model.config.hidden_size == row["hidden_size"] and model.config.num_hidden_layers == row["layers"]
        ours = evaluate([row["checkpoint"], text, "--seq-len", "64"])["bits_per_byte"]
        theirs = evaluate([str(export), text, "--seq-len", "64"])["bits_per_byte"]
        assert abs(ours - theirs) <= 1e-5 * ours and abs(row["eval_bpb"] - theirs) <= 1e-5 * ours
        assert (export / "vocab_stage.model").exists() == (row["vocab_size"] < 4000)
    card = (tmp_path / "family" / "README.md").read_text()
    assert "**1000 of 4000**" in card and "**2000 of 4000**" in card and "| full |" in card
    saved = json.loads((tmp_path / "family" / "family.json").read_text())
    assert [m["export"] for m in saved["members"]] == ["gen0", "gen1", "gen2"]


def test_a_run_without_generations_is_refused_naming_the_flag(tmp_path, capsys):
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    with pytest.raises(SystemExit):
        export_family.main([str(tmp_path / "run"), str(tmp_path / "family")])
    assert "--keep-generations" in capsys.readouterr().err
    assert not (tmp_path / "family").exists()

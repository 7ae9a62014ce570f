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

from helpers import ROOT, SHARED_DATA as SHARED, TWO_GROWTHS
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
    """Each member: the export's AutoTokenizer ids are its vocabulary stage's on TinyStories, Wikipedia and
    Shakespeare paragraphs (zero mismatches); megababel-eval, AutoTokenizer + transformers and lm-eval give its
    checkpoint's bits/byte (each within the 64 tokens it trained on, though asked for 128); the push dry run lists
    every member."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from megababel.data.readers import read_documents
    from megababel.hf.evaluate import Evaluated, evaluate
    text = _text(tmp_path)
    rows = export_family.main([str(run), str(tmp_path / "family"), "--eval-text", text, "--seq-len", "128",
                               "--push", "me/babel", "--dry-run"])
    assert [r["generation"] for r in rows] == [0, 1, 2]
    assert [r["vocab_size"] for r in rows] == [1000, 2000, 4000]        # two_growths.json's vocabulary stages
    assert [r["context"] for r in rows] == [64, 64, 64]     # scored within the run's --seq-len 64, not at 128
    assert all(a["parameters"] < b["parameters"] and a["tokens"] < b["tokens"] and a["flops"] < b["flops"]
               for a, b in zip(rows, rows[1:]))
    corpora = [SHARED / name for name in ("tinystories/valid.txt", "wikipedia/valid.txt", "shakespeare/input.txt")]
    paragraphs = [p for path in corpora if path.exists() for _, p in zip(range(300), read_documents(str(path)))]
    paragraphs += [p for p in open(text).read().split("\n\n")]
    documents = list(read_documents(text))
    for row in rows:
        export = tmp_path / "family" / row["export"]
        model = AutoModelForCausalLM.from_pretrained(export, dtype=torch.float32)
        assert model.config.hidden_size == row["hidden_size"] and model.config.num_hidden_layers == row["layers"]
        checkpoint = Evaluated.load(row["checkpoint"])
        stage, tokenizer = checkpoint.stage, AutoTokenizer.from_pretrained(export)
        if row["vocab_size"] < 4000:        # a stage export's ids are the model's rows
            expected = [[stage.bos_id] + ids.tolist() for ids in stage.encode_batch(paragraphs)]
        else:                                # the full export's are the tokenizer's
            expected = [[stage.tokenizer.bos_id] + ids for ids in stage.tokenizer.encode_batch(paragraphs)]
        assert sum(a != b for a, b in zip(tokenizer(paragraphs)["input_ids"], expected)) == 0
        ours = evaluate(checkpoint, documents, 64, 4, progress=False, per_document=True)["bits_per_byte"]
        for key in ("eval_bpb", "autotokenizer_bpb", "lm_eval_bpb"):
            assert abs(row[key] - ours) <= 1e-5 * ours, (row["generation"], key, row[key], ours)
    card = (tmp_path / "family" / "README.md").read_text()
    assert "| 1000 of 4000 (its own tokenizer) |" in card and "| full |" in card and "lm-eval bits/byte" in card
    saved = json.loads((tmp_path / "family" / "family.json").read_text())
    assert [m["export"] for m in saved["members"]] == ["gen0", "gen1", "gen2"]
    upload = json.loads((tmp_path / "family" / "upload.json").read_text())
    assert [m["repo_id"] for m in upload["members"]] == ["me/babel-gen0", "me/babel-gen1", "me/babel-gen2"]
    assert upload["collection"] == dict(title="babel", namespace="me")
    assert all("model.safetensors" in {f["path"] for f in m["files"]} for m in upload["members"])


def test_a_run_without_generations_is_refused_naming_the_flag(tmp_path, capsys):
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    with pytest.raises(SystemExit):
        export_family.main([str(tmp_path / "run"), str(tmp_path / "family")])
    assert "--keep-generations" in capsys.readouterr().err
    assert not (tmp_path / "family").exists()

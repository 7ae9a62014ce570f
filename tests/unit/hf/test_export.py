"""Export to Hugging Face and back, evaluation parity, Hub dry run, and bad inputs (real transformers models)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import SHARED_DATA, TWO_GROWTHS
from megababel.checkpoint.io import load_checkpoint
from megababel.cli import export_hf, import_hf
from megababel.cli.evaluate import main as eval_main
from megababel.parallel import free_port
from megababel.model.llama import Llama
from megababel.data.tokenizer import Tokenizer, VocabRanking

from helpers import ROOT


def _text() -> str:
    """TinyStories validation text when ../shared/data is there, else English docstrings from the standard library."""
    stories = SHARED_DATA / "tinystories" / "valid.txt"
    if stories.exists():
        return stories.read_text()[:6000]
    import collections
    import json as json_module
    return "\n\n".join(m.__doc__ for m in (collections, json_module, os, subprocess) if m.__doc__)[:6000]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 2-rank TP=2 ZeRO-3 run of the tiny schedule (two growths: width + FFN + vocabulary, depth + vocabulary) on
    the embedded corpus, checkpointed after the first growth (vocabulary 2000 of 4000) and at the end (4000)."""
    out = tmp_path_factory.mktemp("export") / "run"
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", MASTER_PORT=str(free_port()))
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(key, None)
    command = [str(Path(sys.executable).with_name("deepspeed")), "--num_gpus", "2", "--master_port",
               str(free_port()), str(ROOT / "launch/train.py"), "--schedule", str(TWO_GROWTHS), "--stage", "3", "--tp", "2", "--steps", "30",
               "--micro-batch-size", "4", "--seq-len", "64", "--eval-every", "10", "--save-every", "15",
               "--out", str(out)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out / "checkpoints"


def _megababel(checkpoint: Path):
    saved = load_checkpoint(checkpoint)
    state = saved.state
    model = Llama(state.config, layout=state.layout, generation=state.generation, values=state.values)
    tokenizer = Tokenizer.load(saved.path / "tokenizer.model")
    stage = VocabRanking.load(saved.path / "ranking.json", tokenizer).stage(tokenizer, state.config.vocab_size)
    return saved, model.eval(), stage


def _export(checkpoint, out, *flags):
    return export_hf.main([str(checkpoint), str(out), *flags])


@pytest.mark.slow
def test_tp2_zero3_checkpoint_exports_to_a_plain_llama(run, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    saved, model, stage = _megababel(run)
    assert saved.state.generation == 2 and saved.meta["tensor_parallel"] == 2 and saved.state.config.vocab_size == 4000
    out = _export(run, tmp_path / "hf")
    assert not list(tmp_path.glob("hf.tmp-*"))
    hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert json.loads((out / "config.json").read_text())["head_dim"] == saved.state.config.head_dim
    text = _text()
    rows = torch.from_numpy(stage.encode(text))[None, :256]
    ids = torch.from_numpy(stage.to_tokenizer_ids(rows[0]))[None]
    # the saved tokenizer gives megababel's ids (in the tokenizer's order)
    hf_tokenizer = AutoTokenizer.from_pretrained(out)
    assert hf_tokenizer(text, add_special_tokens=False)["input_ids"][:256] == ids[0].tolist()
    odd = "    leading spaces\n\ttabs  and  runs,  \u00e9\u4e2d\U0001F600 1234"
    assert hf_tokenizer(odd)["input_ids"] == [stage.tokenizer.bos_id] + stage.tokenizer.encode(odd)
    assert hf_tokenizer.decode(hf_tokenizer(odd, add_special_tokens=False)["input_ids"]) == odd
    with torch.no_grad():
        ours, theirs = model(rows)[0], hf(ids).logits
    order = torch.from_numpy(stage.ranking.order[:4000].copy())
    assert (theirs[0][:, order] - ours[0]).abs().max().item() <= 1e-4
    generated = hf.generate(ids[:, :16], max_new_tokens=8, do_sample=False)
    assert generated.shape == (1, 24)
    card = (out / "README.md").read_text()
    assert "| 2 | 15 |" in card and "Growth history" in card          # generation 2 born at step 15 (1/2 of 30)
    # trained at --seq-len 64 of the schedule's 1024: config.json says 64, and import restores the schedule's
    assert json.loads((out / "config.json").read_text())["max_position_embeddings"] == 64
    assert "trained on sequences of up to 64 tokens (the schedule allows 1024)" in card
    import_hf.main([str(out), str(tmp_path / "back")])
    assert load_checkpoint(tmp_path / "back").state.config.max_position_embeddings == 1024


@pytest.mark.slow
def test_an_intermediate_stage_exports_as_the_stage_with_the_checkpoints_logits(run, tmp_path, capsys):
    """Before the last vocabulary stage the export is the stage: vocab_size 2000, the model's own rows, the
    checkpoint's logits; generation can only emit in-stage ids and decodes to text."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    checkpoint = run / "step_00000015_gen1"
    saved, model, stage = _megababel(checkpoint)
    assert saved.state.config.vocab_size == 2000
    out = _export(checkpoint, tmp_path / "hf")
    hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert hf.config.vocab_size == 2000 and hf.config.bos_token_id == stage.bos_id
    assert not (out / "tokenizer.json").exists() and not (out / "vocab_stage.model").exists()
    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = tokenizer(_text())["input_ids"][:128]
    assert ids == [stage.bos_id] + stage.encode(_text()).tolist()[:127]
    with torch.no_grad():
        assert (hf(torch.tensor([ids])).logits - model(torch.tensor([ids]))[0]).abs().max().item() <= 1e-4
    torch.manual_seed(0)
    generated = hf.generate(torch.tensor([ids[:16]]), max_new_tokens=32, do_sample=True, top_k=0, temperature=3.0)
    assert generated.shape[1] > 16 and int(generated.max()) < 2000
    exact = AutoTokenizer.from_pretrained(out, trust_remote_code=True)      # SentencePiece's own decoder
    assert exact(_text())["input_ids"] == tokenizer(_text())["input_ids"]
    assert exact.decode(generated[0, 16:], skip_special_tokens=True) == stage.decode(
        [i for i in generated[0, 16:].tolist() if i not in (stage.bos_id, stage.eos_id)])
    assert exact.decode(exact(_text(), add_special_tokens=False)["input_ids"]) == _text()
    with pytest.raises(SystemExit):                # its ids are the stage's: importing it back is refused, named
        import_hf.main([str(out), str(tmp_path / "back")])
    assert "megababel export of vocabulary stage 2000" in capsys.readouterr().err
    assert not (tmp_path / "back").exists()


@pytest.mark.slow
@pytest.mark.parametrize("which", ["step_00000030_gen2", "step_00000015_gen1"])
def test_eval_bits_per_byte_of_the_export_equals_the_checkpoints(run, tmp_path, which):
    evaluate = eval_main
    out = _export(run / which, tmp_path / "hf")
    data = tmp_path / "text.txt"
    data.write_text(_text())
    ours = evaluate([str(run / which), str(data), "--seq-len", "64"])
    theirs = evaluate([str(out), str(data), "--seq-len", "64"])
    assert ours["tokens"] == theirs["tokens"] and ours["bytes"] == theirs["bytes"]
    assert abs(ours["bits_per_byte"] - theirs["bits_per_byte"]) <= 1e-5 * ours["bits_per_byte"]
    assert 0 < ours["bits_per_byte"] < 10


def test_hugging_face_to_megababel_to_hugging_face_is_bit_exact(tmp_path):
    from safetensors.torch import load_file
    from transformers import LlamaConfig, LlamaForCausalLM

    from megababel.data.embedded import build_embedded_dataset
    data = build_embedded_dataset()
    config = LlamaConfig(hidden_size=64, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, head_dim=16, vocab_size=4000, tie_word_embeddings=False)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(tmp_path / "hf")
    (tmp_path / "hf/tokenizer.model").write_bytes((data / "tokenizer.model").read_bytes())
    # rows permuted into a dataset's ranking order on the way in, back to tokenizer order on the way out
    import_hf.main([str(tmp_path / "hf"), str(tmp_path / "ckpt"), "--ranking", str(data / "ranking.json")])
    saved = load_checkpoint(tmp_path / "ckpt")
    assert not torch.equal(saved.state.values["embed_tokens"], load_file(tmp_path / "hf/model.safetensors")[
        "model.embed_tokens.weight"])
    _export(tmp_path / "ckpt", tmp_path / "hf2")
    before, after = load_file(tmp_path / "hf/model.safetensors"), load_file(tmp_path / "hf2/model.safetensors")
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    config_before = json.loads((tmp_path / "hf/config.json").read_text())
    config_after = json.loads((tmp_path / "hf2/config.json").read_text())
    assert {k for k in config_before.keys() | config_after.keys()
            if config_before.get(k) != config_after.get(k)} <= {"transformers_version"}


@pytest.fixture()
def small_checkpoint(tmp_path):
    """A tiny imported checkpoint (no training needed) to exercise errors."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from megababel.data.embedded import build_embedded_dataset
    data = build_embedded_dataset()
    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=2, head_dim=16, vocab_size=4000, tie_word_embeddings=False)
    LlamaForCausalLM(config).save_pretrained(tmp_path / "hf")
    (tmp_path / "hf/tokenizer.model").write_bytes((data / "tokenizer.model").read_bytes())
    import_hf.main([str(tmp_path / "hf"), str(tmp_path / "ckpt")])
    return tmp_path / "ckpt"


def _export_error(capsys, *args) -> str:
    with pytest.raises(SystemExit):
        _export(*args)
    return capsys.readouterr().err


def test_bad_inputs_give_clear_errors_and_no_output(small_checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    # incomplete checkpoint: a tensor file is missing
    broken = tmp_path / "broken"
    import shutil
    shutil.copytree(small_checkpoint, broken)
    next((broken / "tensors").iterdir()).unlink()
    assert "is missing: the checkpoint is incomplete" in _export_error(capsys, broken, out)
    # a truncated tensor file (caught by its checksum), a damaged megababel.json
    victim = next((small_checkpoint / "tensors").iterdir())
    shutil.copytree(small_checkpoint, tmp_path / "truncated")
    data = (tmp_path / "truncated" / "tensors" / victim.name).read_bytes()
    (tmp_path / "truncated" / "tensors" / victim.name).write_bytes(data[: len(data) // 2])
    assert "does not match its recorded sha256" in _export_error(capsys, tmp_path / "truncated", out)
    shutil.copytree(small_checkpoint, tmp_path / "garbled")
    (tmp_path / "garbled" / "megababel.json").write_text("{not json")
    assert "megababel.json is unreadable" in _export_error(capsys, tmp_path / "garbled", out)
    # not a checkpoint at all
    assert "not a complete megababel checkpoint" in _export_error(capsys, tmp_path, out)
    # missing tokenizer (its checksum is recorded: the checkpoint is incomplete)
    shutil.copytree(small_checkpoint, tmp_path / "no_tokenizer")
    (tmp_path / "no_tokenizer" / "tokenizer.model").unlink()
    assert "tokenizer.model is missing" in _export_error(capsys, tmp_path / "no_tokenizer", out)
    # unwritable output: a path under a regular file
    (tmp_path / "file").write_text("x")
    assert "cannot write to" in _export_error(capsys, small_checkpoint, tmp_path / "file" / "out")
    # an existing export is not overwritten silently
    out.mkdir()
    (out / "keep").write_text("x")
    assert "exists and is not empty" in _export_error(capsys, small_checkpoint, out)
    assert (out / "keep").read_text() == "x"
    assert not list(tmp_path.glob("*.tmp-*"))


def test_a_failure_mid_export_leaves_no_directory_that_looks_complete(small_checkpoint, tmp_path, monkeypatch):
    import megababel.hf.export as export

    def fail(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(export, "save_tokenizer", fail)
    with pytest.raises(OSError):
        export.export_checkpoint(small_checkpoint, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob("out.tmp-*"))


def test_hub_dry_run_lists_every_file_and_a_missing_token_keeps_the_export(small_checkpoint, tmp_path, capsys,
                                                                           monkeypatch):
    out = _export(small_checkpoint, tmp_path / "hf_out", "--push-to-hub", "me/babel", "--dry-run")
    plan = json.loads((tmp_path / "hf_out.upload.json").read_text())
    assert plan["repo_id"] == "me/babel" and plan["revision"] == "gen0"
    assert {f["path"] for f in plan["files"]} == {p.name for p in out.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "README.md"} <= {f["path"] for f in plan["files"]}
    monkeypatch.setenv("HF_HOME", str(tmp_path / "no_hf_home"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SystemExit):
        _export(small_checkpoint, tmp_path / "hf_push", "--push-to-hub", "me/babel")
    err = capsys.readouterr().err
    assert "no Hugging Face token" in err and "complete and untouched" in err
    assert (tmp_path / "hf_push" / "model.safetensors").is_file()


def test_an_imported_hugging_face_llama_trains_and_grows(tmp_path, capsys):
    """convert_from_hf -> launch/train.py --resume with a schedule whose model is the imported one: it grows."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from megababel.data.embedded import build_embedded_dataset
    data = build_embedded_dataset()
    config = LlamaConfig(hidden_size=64, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, head_dim=16, vocab_size=4000, tie_word_embeddings=False,
                         rms_norm_eps=1e-6, max_position_embeddings=2048)
    LlamaForCausalLM(config).save_pretrained(tmp_path / "hf")
    (tmp_path / "hf/tokenizer.model").write_bytes((data / "tokenizer.model").read_bytes())
    import_hf.main([str(tmp_path / "hf"), str(tmp_path / "ckpt"), "--ranking", str(data / "ranking.json")])
    schedule = tmp_path / "grow.yaml"
    schedule.write_text("model: {hidden_size: 64, head_dim: 16, num_hidden_layers: 2, intermediate_size: 192,\n"
                        "        num_key_value_heads: 2, vocab_size: 4000, rms_norm_eps: 1.0e-6}\n"
                        "training: {steps: 12, lr: 0.003, warmup_steps: 2}\n"
                        "stages: [{at_step: 6, hidden_size: 128, intermediate_size: 384}]\n")
    from megababel.train.cli import main as train
    common = ["--resume", str(tmp_path / "ckpt"), "--data", str(data), "--micro-batch-size", "4", "--seq-len", "64",
              "--out", str(tmp_path / "run")]
    with pytest.raises(SystemExit):      # max_position_embeddings differs: named in the error
        train(common + ["--schedule", str(schedule)])
    assert "max_position_embeddings: 2048 imported vs 4096 in the schedule" in capsys.readouterr().err
    schedule.write_text(schedule.read_text().replace("rms_norm_eps: 1.0e-6", "rms_norm_eps: 1.0e-6, "
                                                     "max_position_embeddings: 2048"))
    result = train(common + ["--schedule", str(schedule)])
    assert result["generation"] == 1 and len(result["losses"]) == 12
    assert result["growth"][0]["loss_before"] == pytest.approx(result["growth"][0]["loss_after"], rel=1e-5)


def test_large_exports_are_sharded_and_load(small_checkpoint, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from megababel.hf.export import export_checkpoint
    whole = export_checkpoint(small_checkpoint, tmp_path / "whole")
    sharded = export_checkpoint(small_checkpoint, tmp_path / "sharded", shard_bytes=200_000)
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 2 and not (sharded / "model.safetensors").exists()
    a = AutoModelForCausalLM.from_pretrained(whole).state_dict()
    b = AutoModelForCausalLM.from_pretrained(sharded).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert set(index["weight_map"]) == set(load_file(whole / "model.safetensors"))


@pytest.mark.slow
def test_autotokenizer_encodes_an_intermediate_stage_export_exactly(run, tmp_path, capsys):
    """The stage export's tokenizer (SentencePiece backend, model-row ids) gives the stage's ids on every probe
    text, which megababel.json and the card report; tools/eval.py needs no special path for it; export says what
    changed (ids are the model's rows), and the final stage's export is the plain full tokenizer."""
    from transformers import AutoTokenizer

    from megababel.hf.export import _probe_texts
    checkpoint = run / "step_00000015_gen1"
    _, _, stage = _megababel(checkpoint)
    out = _export(checkpoint, tmp_path / "hf")
    assert "note: vocabulary stage: the model knows 2000 of the tokenizer's 4000" in capsys.readouterr().err
    probes = _probe_texts() + ["<s> a literal </s>", "", "   "]
    encoded = AutoTokenizer.from_pretrained(out)(probes)["input_ids"]
    assert encoded == [[stage.bos_id] + stage.encode(t).tolist() for t in probes]
    info = json.loads((out / "megababel.json").read_text())
    assert info["tokenizer_agreement"]["identical"] == info["tokenizer_agreement"]["probes"] == len(probes) - 3
    card = (out / "README.md").read_text()
    assert card.index("Note: vocabulary stage") < card.index("## ") and "llama.cpp" in card
    data = tmp_path / "text.txt"
    data.write_text(_text())
    ours = eval_main([str(checkpoint), str(data), "--seq-len", "64"])["bits_per_byte"]
    theirs = eval_main([str(out), str(data), "--seq-len", "64"])["bits_per_byte"]
    assert abs(ours - theirs) <= 1e-5 * ours and "note" not in capsys.readouterr().err
    final = _export(run, tmp_path / "final")                      # the last stage: the full tokenizer, no note
    assert "note" not in capsys.readouterr().err and (final / "tokenizer.json").exists()
    assert "Note" not in (final / "README.md").read_text()

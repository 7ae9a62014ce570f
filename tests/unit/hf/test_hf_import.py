"""Importing a Hugging Face model refuses, with one line naming the config field, whatever megababel's Llama cannot
represent exactly (real transformers models saved to disk, imported through the real CLI in a subprocess)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from megababel.hf.adapter import UnsupportedHFConfigError, from_hf_config

from helpers import ROOT
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=4, head_dim=16)


@pytest.fixture(scope="module")
def tokenizer_model() -> bytes:
    """The embedded corpus' SentencePiece model (built once and cached by megababel, no download)."""
    from megababel.data.embedded import build_embedded_dataset
    return (build_embedded_dataset() / "tokenizer.model").read_bytes()


def _vocab_size(tokenizer_model: bytes) -> int:
    import sentencepiece as spm
    return spm.SentencePieceProcessor(model_proto=tokenizer_model).get_piece_size()


def _save_llama(directory: Path, tokenizer_model: bytes, **overrides) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**{**TINY, "vocab_size": _vocab_size(tokenizer_model), "tie_word_embeddings": False,
                            **overrides})
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(directory)
    (directory / "tokenizer.model").write_bytes(tokenizer_model)
    return directory


def _save_mistral(directory: Path, tokenizer_model: bytes) -> Path:
    """Mistral shares Llama's field names and weight names, so only model_type tells them apart."""
    from transformers import MistralConfig, MistralForCausalLM

    config = MistralConfig(**TINY, vocab_size=_vocab_size(tokenizer_model), tie_word_embeddings=False)
    torch.manual_seed(0)
    MistralForCausalLM(config).save_pretrained(directory)
    (directory / "tokenizer.model").write_bytes(tokenizer_model)
    return directory


def _save_legacy_rope_scaling(directory: Path, tokenizer_model: bytes) -> Path:
    """A config.json written before transformers 5: `rope_scaling` with the old "type" key, `rope_theta` on top."""
    _save_llama(directory, tokenizer_model)
    config = json.loads((directory / "config.json").read_text())
    config["rope_theta"] = config.pop("rope_parameters")["rope_theta"]
    config["rope_scaling"] = {"type": "linear", "factor": 4.0}
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    return directory


def _convert(hf_dir: Path, out: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "megababel.cli.import_hf", str(hf_dir), str(out)],
                          env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)


REFUSALS = {
    "rope scaling": (lambda d, t: _save_llama(d, t, rope_parameters={"rope_type": "linear", "factor": 2.0,
                                                                      "rope_theta": 10000.0}),
                     "rope_parameters['rope_type'] = 'linear'"),
    "legacy rope_scaling": (_save_legacy_rope_scaling, "rope_parameters['rope_type'] = 'linear'"),
    "attention bias": (lambda d, t: _save_llama(d, t, attention_bias=True), "attention_bias = True"),
    "mlp bias": (lambda d, t: _save_llama(d, t, mlp_bias=True), "mlp_bias = True"),
    "tied embeddings": (lambda d, t: _save_llama(d, t, tie_word_embeddings=True), "tie_word_embeddings = True"),
    "mistral": (_save_mistral, "model_type = 'mistral'"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_the_cli_refuses_what_megababel_cannot_represent(case, tmp_path, tokenizer_model):
    save, field_and_value = REFUSALS[case]
    hf_dir = save(tmp_path / "hf", tokenizer_model)
    out = tmp_path / "ckpt"
    done = _convert(hf_dir, out)
    assert done.returncode != 0
    assert "Traceback" not in done.stdout + done.stderr, done.stderr
    last_line = done.stderr.strip().splitlines()[-1]
    assert field_and_value in last_line, last_line
    assert not out.exists() and not list(tmp_path.glob("ckpt*"))


def test_the_cli_imports_a_plain_llama(tmp_path, tokenizer_model):
    """The refusals leave a plain Llama alone (its weights' round trip is tests/unit/hf/test_export.py's)."""
    hf_dir = _save_llama(tmp_path / "hf", tokenizer_model, rope_parameters={"rope_type": "default",
                                                                             "rope_theta": 500000.0})
    done = _convert(hf_dir, tmp_path / "ckpt")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "imported" in done.stdout and (tmp_path / "ckpt" / "tokenizer.model").is_file()


@pytest.mark.parametrize("field, value", [
    ("hidden_act", "gelu"), ("pretraining_tp", 2), ("attention_dropout", 0.1),
    ("rope_parameters", {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}),
    ("rope_parameters", {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0}),
])
def test_other_unrepresentable_fields_are_named(field, value):
    """The remaining refusals, checked on the transformers config itself (the CLI path is the one above)."""
    from transformers import LlamaConfig

    config = LlamaConfig(**TINY, vocab_size=256, **{field: value})
    with pytest.raises(UnsupportedHFConfigError, match=rf"^{field}\b") as refused:
        from_hf_config(config)
    assert "\n" not in str(refused.value)


def test_an_attention_wider_than_hidden_size_imports_exactly():
    """HF lets attention project to heads * head_dim != hidden_size (what a head_dim growth makes): it imports with
    the same logits."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from megababel.hf.adapter import from_hf_state_dict

    torch.manual_seed(0)
    hf = LlamaForCausalLM(LlamaConfig(**{**TINY, "head_dim": 32}, vocab_size=256, tie_word_embeddings=False)).eval()
    config = from_hf_config(hf.config)
    assert (config.head_dim, config.num_attention_heads, config.attention_width) == (32, 4, 128)
    ours = from_hf_state_dict(hf.state_dict(), config)
    ids = torch.randint(0, 256, (2, 12))
    with torch.no_grad():
        assert torch.allclose(ours(ids)[0], hf(ids).logits, atol=1e-5)


def test_a_plain_config_converts_with_swish_as_silu():
    from transformers import LlamaConfig

    config = from_hf_config(LlamaConfig(**TINY, vocab_size=256, hidden_act="swish", rms_norm_eps=1e-6,
                                        rope_parameters={"rope_type": "default", "rope_theta": 500000.0}))
    assert (config.hidden_size, config.head_dim, config.num_attention_heads, config.rms_norm_eps,
            config.rope_theta) == (64, 16, 4, 1e-6, 500000.0)

"""tools/eval.py's evaluator: windows cover every next-token once, fp32 results equal the plain per-window
computation bit for bit (the numbers reported before the evaluator was made fast), and --dtype bf16 runs in bf16."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from megababel.cli.evaluate import main as eval_main
from megababel.hf import evaluate as EVAL


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A small random LlamaForCausalLM with the embedded corpus's SentencePiece model, as a Hugging Face directory."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from megababel.data.embedded import build_embedded_dataset
    out = tmp_path_factory.mktemp("eval") / "hf"
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, head_dim=16, vocab_size=4000, tie_word_embeddings=False)
    LlamaForCausalLM(config).save_pretrained(out)
    (out / "tokenizer.model").write_bytes((build_embedded_dataset() / "tokenizer.model").read_bytes())
    return out


def documents() -> list[str]:
    import collections
    import json
    import subprocess
    return [p for m in (collections, json, subprocess) for p in m.__doc__.split("\n\n") if p.strip()]


@pytest.mark.parametrize("length", [2, 3, 17, 64, 65, 66, 129, 200])
@pytest.mark.parametrize("seq_len,batch_size", [(1, 1), (16, 3), (64, 4)])
def test_windows_predict_every_next_token_once(length, seq_len, batch_size):
    stream = torch.arange(length) * 7
    batches = EVAL.windows(stream, seq_len, batch_size)
    inputs = torch.cat([b[:, :-1].flatten() for b in batches])
    targets = torch.cat([b[:, 1:].flatten() for b in batches])
    assert torch.equal(inputs, stream[:-1]) and torch.equal(targets, stream[1:])
    assert all(b.shape[1] == seq_len + 1 and len(b) <= batch_size for b in batches[:-1])


@pytest.mark.parametrize("length", [0, 1, 5, 16, 17, 40])
@pytest.mark.parametrize("seq_len", [1, 8, 16])
def test_document_windows_are_lm_evals_rolling_windows(length, seq_len):
    """The per-document protocol scores what lm-evaluation-harness' loglikelihood_rolling scores: the same inputs,
    and the same tokens predicted (each once)."""
    lm_eval_utils = pytest.importorskip("lm_eval.utils")
    tokens = [100 + 3 * i for i in range(length)]
    ours = EVAL.document_windows(tokens, 1, seq_len)
    theirs = [lm_eval_utils.make_disjoint_window(w) for w in
              lm_eval_utils.get_rolling_token_windows(tokens, prefix_token=1, max_seq_len=seq_len, context_len=1)]
    assert len(ours) == len(theirs)
    for (inputs, targets), (context, continuation) in zip(ours, theirs):
        assert inputs == (context + continuation)[:-1][-seq_len:]          # what lm-eval feeds the model
        assert [t for t in targets if t != -100] == continuation and len(targets) == len(inputs)
        assert targets[len(targets) - len(continuation):] == continuation
    assert [t for _, targets in ours for t in targets if t != -100] == tokens


def test_per_document_scores_each_document_alone(hf_dir):
    """Per document = the sum of each document evaluated alone; the stream protocol differs (EOS, shared context)."""
    model = EVAL.Evaluated.load(hf_dir)
    docs = documents()[:4]
    together = EVAL.evaluate(model, docs, 16, 3, progress=False, per_document=True)
    alone = [EVAL.evaluate(model, [d], 16, 1, progress=False, per_document=True) for d in docs]
    assert together["tokens"] == sum(a["tokens"] for a in alone) == sum(len(model.encode(d)) for d in docs)
    assert together["nll_per_token"] * together["tokens"] == pytest.approx(
        sum(a["nll_per_token"] * a["tokens"] for a in alone), rel=1e-6)
    assert together["bits_per_byte"] != EVAL.evaluate(model, docs, 16, 3, progress=False)["bits_per_byte"]


def reference_nll(model, seq_len: int, batch_size: int) -> tuple[float, int]:
    """The evaluator as it was first written: Python lists of windows, full windows batched, the rest one by one."""
    stream = []
    for doc in documents():
        stream += [model.bos] + list(model.encode(doc)) + [model.eos]
    windows = [stream[i:i + seq_len + 1] for i in range(0, len(stream) - 1, seq_len)]
    full = [w for w in windows if len(w) == seq_len + 1]
    batches = [full[i:i + batch_size] for i in range(0, len(full), batch_size)]
    batches += [[w] for w in windows if len(w) != seq_len + 1 and len(w) >= 2]
    total, targets = 0.0, 0
    with torch.no_grad():
        for batch in batches:
            ids = torch.tensor(batch, dtype=torch.long)
            logits = model.model(ids[:, :-1]).logits.float()
            total += F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten(), reduction="sum").item()
            targets += ids[:, 1:].numel()
    return total, targets


@pytest.mark.parametrize("seq_len,batch_size", [(32, 3), (128, 2)])
def test_fp32_equals_the_plain_computation_bit_for_bit(hf_dir, seq_len, batch_size):
    model = EVAL.Evaluated.load(hf_dir)
    result = EVAL.evaluate(model, documents(), seq_len, batch_size, progress=False)
    total, targets = reference_nll(model, seq_len, batch_size)
    assert result["tokens"] == targets
    assert result["nll_per_token"] == total / targets
    assert result["bits_per_byte"] == total / math.log(2) / sum(len(d.encode()) for d in documents())


def test_bf16_runs_in_bf16_and_stays_close(hf_dir, tmp_path):
    fp32 = eval_main([str(hf_dir), _write(tmp_path), "--seq-len", "64"])
    model = EVAL.Evaluated.load(hf_dir, torch.bfloat16)
    assert {p.dtype for p in model.model.parameters()} == {torch.bfloat16}
    bf16 = eval_main([str(hf_dir), _write(tmp_path), "--seq-len", "64", "--dtype", "bf16"])
    assert bf16["tokens"] == fp32["tokens"]
    assert bf16["nll_per_token"] != fp32["nll_per_token"]
    assert abs(bf16["nll_per_token"] - fp32["nll_per_token"]) < 0.01 * fp32["nll_per_token"]


def _write(tmp_path) -> str:
    path = tmp_path / "docs.txt"
    path.write_text("\n\n".join(documents()))
    return str(path)

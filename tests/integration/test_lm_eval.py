"""tools/eval.py --tasks on a megababel export: lm-evaluation-harness runs a local multiple-choice task (a task YAML
and a JSONL file written here, no network) and its log-likelihoods and accuracy equal a hand computation with
transformers on the same export."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from megababel.cli import export_hf, import_hf

pytest.importorskip("lm_eval")
DOCS = [dict(context="Return the value of the key", choices=[" if it exists.", " never.", " in a list."], label=0),
        dict(context="The socket is", choices=[" closed", " open", " a file"], label=1),
        dict(context="A list of strings", choices=[" is returned.", " was given.", " follows."], label=2),
        dict(context="Parse the arguments", choices=[" from the command line.", " later."], label=0)]
TASK = """task: megababel_local
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
target_delimiter: ""
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{label}}}}"
metric_list:
  - metric: acc
"""


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """A small random megababel checkpoint (imported, no training), exported as a Hugging Face directory."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from megababel.data.embedded import build_embedded_dataset
    tmp = tmp_path_factory.mktemp("lm_eval")
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=2, head_dim=16, vocab_size=4000, tie_word_embeddings=False)
    LlamaForCausalLM(config).save_pretrained(tmp / "hf")
    (tmp / "hf" / "tokenizer.model").write_bytes((build_embedded_dataset() / "tokenizer.model").read_bytes())
    import_hf.main([str(tmp / "hf"), str(tmp / "ckpt")])
    export_hf.main([str(tmp / "ckpt"), str(tmp / "export")])
    return tmp / "export"


def hand_loglikelihoods(export) -> list[list[float]]:
    """log P(choice | context) summed over the choice's tokens, as lm-eval's Hugging Face model computes it: the
    tokenizer's default encoding (BOS first) of context + choice, the choice's tokens being those after the
    context's."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(export)
    model = AutoModelForCausalLM.from_pretrained(export, dtype=torch.float32).eval()
    out = []
    with torch.no_grad():
        for doc in DOCS:
            context = tokenizer(doc["context"])["input_ids"]
            row = []
            for choice in doc["choices"]:
                whole = tokenizer(doc["context"] + choice)["input_ids"]
                assert whole[:len(context)] == context
                logp = model(torch.tensor([whole])).logits.float().log_softmax(-1)[0]
                row.append(sum(logp[i - 1, whole[i]].item() for i in range(len(context), len(whole))))
            out.append(row)
    return out


@pytest.mark.slow
def test_lm_eval_on_a_local_task_equals_a_hand_computation(export, tmp_path):
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "local.yaml").write_text(TASK.format(data=tmp_path / "data.jsonl"))
    env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)    # left by an in-process run of an earlier test: accelerate would join its dead group
    done = subprocess.run([sys.executable, "-m", "megababel.cli.evaluate", str(export), "-", "--tasks",
                           "megababel_local", "--include-path", str(tmp_path / "tasks"), "--log-samples", "--json",
                           str(tmp_path / "result.json")], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    result = json.loads((tmp_path / "result.json").read_text())["lm_eval"]
    samples = sorted(result["samples"]["megababel_local"], key=lambda s: s["doc_id"])
    hand = hand_loglikelihoods(export)
    for sample, expected in zip(samples, hand):
        assert sample["loglikelihoods"] == pytest.approx(expected, rel=1e-5, abs=1e-4)
    accuracy = sum(max(range(len(row)), key=row.__getitem__) == doc["label"] for row, doc in zip(hand, DOCS)) / len(DOCS)
    assert result["results"]["megababel_local"]["acc,none"] == pytest.approx(accuracy)

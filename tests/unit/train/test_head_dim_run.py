"""A run that grows head_dim, through the Trainer: a resume right after the growth continues exactly, and the final
checkpoint exports to a transformers LlamaForCausalLM (config.head_dim, attention wider than hidden_size) with the
checkpoint's logits."""
from __future__ import annotations

import json

import pytest
import torch

from megababel.checkpoint.io import list_checkpoints, load_checkpoint
from megababel.model.llama import Llama
from megababel.train.trainer import Callback, RunConfig, Trainer

# 4 heads of 16 on 2 kv heads; at step 6 head_dim 32 with the width (4 heads of 32, hidden 128) and vocabulary 2000;
# at step 10 head_dim 64 alone (attention width 256 on hidden 128)
SCHEDULE = dict(model=dict(hidden_size=64, head_dim=16, num_hidden_layers=2, multiple_of=32, vocab_size=1000,
                           num_key_value_heads=2),
                training=dict(steps=14, lr=3e-3, warmup_steps=2),
                growths=[dict(at_step=6, head_dim=32, hidden_size=128, vocab_size=2000),
                         dict(at_step=10, head_dim=64)])


class Losses(Callback):
    def __init__(self):
        self.losses = {}

    def on_step_end(self, trainer, row):
        self.losses[row["step"]] = row["loss"]


def fit(out, zero_stage=0, **changes) -> Losses:
    losses = Losses()
    run = RunConfig(**dict(dict(schedule=SCHEDULE, seq_len=32, micro_batch_size=2, eval_every=0, out=out,
                                zero_stage=zero_stage), **changes))
    trainer = Trainer(run, callbacks=[losses])
    trainer.setup().fit()
    trainer.close()
    return losses


@pytest.mark.parametrize("zero_stage", [0, 3])
def test_a_resume_right_after_the_head_dim_growth_is_exact(distributed_env, tmp_path, zero_stage):
    whole = fit(tmp_path / "whole", zero_stage, save_after_growth=True)
    saved = [p.name for p in list_checkpoints(tmp_path / "whole" / "checkpoints")]
    assert saved == ["step_00000006_gen1", "step_00000010_gen2"]
    resumed = fit(tmp_path / "resumed", zero_stage,
                  resume=tmp_path / "whole" / "checkpoints" / "step_00000006_gen1")
    assert sorted(resumed.losses) == list(range(6, 14))
    assert all(resumed.losses[s] == whole.losses[s] for s in range(6, 14)), (resumed.losses, whole.losses)
    state = load_checkpoint(tmp_path / "whole" / "checkpoints" / "step_00000010_gen2").state
    assert (state.config.head_dim, state.config.attention_width, state.config.hidden_size) == (64, 256, 128)
    assert state.layout["layers.0.self_attn.q_proj"][0][3] == (4, 1)         # generation 0's rows: every 4th


def test_the_export_of_a_head_dim_grown_checkpoint_has_its_logits(distributed_env, tmp_path):
    from transformers import AutoModelForCausalLM

    from megababel.cli import export_hf
    from megababel.data.tokenizer import Tokenizer, VocabRanking
    fit(tmp_path / "run", save_every=14)
    checkpoint = tmp_path / "run" / "checkpoints"
    out = export_hf.main([str(checkpoint), str(tmp_path / "hf")])
    saved = load_checkpoint(checkpoint)
    state = saved.state
    model = Llama(state.config, layout=state.layout, generation=state.generation, values=state.values).eval()
    config = json.loads((out / "config.json").read_text())
    assert (config["head_dim"], config["num_attention_heads"], config["hidden_size"]) == (64, 4, 128)
    hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    tokenizer = Tokenizer.load(saved.path / "tokenizer.model")
    stage = VocabRanking.load(saved.path / "ranking.json", tokenizer).stage(tokenizer, state.config.vocab_size)
    rows = torch.from_numpy(stage.encode("Growing every head wider keeps what the model computes.\n" * 4))[None]
    assert state.config.vocab_size < tokenizer.vocab_size        # a stage export: its ids are the model's rows
    with torch.no_grad():
        ours, theirs = model(rows)[0], hf(rows).logits
    assert (theirs - ours).abs().max().item() <= 1e-4

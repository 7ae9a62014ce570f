"""Export a megababel checkpoint to a Hugging Face `LlamaForCausalLM` directory, and import one back.

A checkpoint already holds every weight unsharded and merged over generations (megababel/checkpoint/io.py merges ZeRO
partitions, TP shards and generation blocks from parameter metadata when it saves), so export is a rename
(adapter.hf_key) plus, after the last vocabulary stage, one permutation: model rows are in the vocabulary ranking's
order (a vocabulary stage is a prefix of it), Hugging Face rows in the tokenizer's id order. Row `order[i]` of the
export = model row i.

A checkpoint from before its last vocabulary stage exports as that stage: vocab_size = the stage's size, rows in the
model's own order, and a SentencePiece tokenizer.model whose ids are those rows (VocabStage.model_row_proto), loaded
by AutoTokenizer through transformers' SentencePiece backend. SentencePiece re-segments the out-of-stage pieces after
BPE, which no tokenizer.json can express (bench/stage_tokenizer.py measured 0-96% agreement), so such an export ships
no tokenizer.json: AutoTokenizer, lm-eval and anything built on them then encode exactly as the model was trained.
llama.cpp cannot (its SentencePiece tokenizer ignores UNUSED pieces); the card says by how much.

config.json's max_position_embeddings is the sequence length the exported generation trains at (its growth's or
curriculum's seq_len, else the run's --seq-len; the Trainer records it in every checkpoint), when that is shorter
than the schedule's: RoPE positions beyond it were never trained, and lm-eval, llama.cpp and vLLM read the field as
the model's context. (In bench/clock.py's 256-token validation, a generation trained on 64-token sequences stalled
until its growth to 128, then fell 0.22 bits/byte in 32 steps.) megababel.json keeps the schedule's value, and
import restores it.

The output is written into OUT.tmp-<pid>/ and renamed to OUT when complete: a failure never leaves a directory that
looks like a finished export.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch

from megababel.checkpoint.io import CheckpointError, load_checkpoint, write_state
from megababel.config import LlamaConfig
from megababel.model.counters import config_parameters
from megababel.hf.adapter import from_hf_config, hf_key, to_hf_config
from megababel.checkpoint.state import EngineState
from megababel.data.tokenizer import Tokenizer, TokenizerError, VocabRanking

VOCAB_PATHS = ("embed_tokens", "lm_head")       # weights whose dim 0 is the vocabulary (model-row order)
SHARD_BYTES = 2 * 2**30                          # safetensors shard size


class ExportError(ValueError):
    """An export or import that cannot proceed; the message names the input and the fix."""


# --- tokenizer ----------------------------------------------------------------------------------------------------

def find_tokenizer(checkpoint: Path, run: dict, tokenizer_dir: str | os.PathLike | None = None):
    """(Tokenizer, VocabRanking) of a checkpoint: from `tokenizer_dir`, else the checkpoint itself, else its dataset.
    A tokenizer or ranking that differs from the checkpoint's own copy is refused: its rows would be mislabelled."""
    if tokenizer_dir:
        candidates = [Path(tokenizer_dir)]
    else:
        candidates = [checkpoint] + ([Path(run["data"])] if run.get("data") else [])
    for folder in candidates:
        if (folder / "tokenizer.model").is_file() and (folder / "ranking.json").is_file():
            try:
                tokenizer = Tokenizer.load(folder / "tokenizer.model")
                ranking = VocabRanking.load(folder / "ranking.json", tokenizer)
                if folder != checkpoint and (checkpoint / "ranking.json").is_file():
                    own_tokenizer = Tokenizer.load(checkpoint / "tokenizer.model")
                    own = VocabRanking.load(checkpoint / "ranking.json", own_tokenizer)
                    if (own_tokenizer.sha256, own.fingerprint) != (tokenizer.sha256, ranking.fingerprint):
                        raise ExportError(f"{folder}: its tokenizer.model / ranking.json differ from the ones the "
                                          f"checkpoint {checkpoint} was trained with; omit --tokenizer to use the "
                                          f"checkpoint's own")
                return tokenizer, ranking
            except TokenizerError as e:
                raise ExportError(str(e)) from None
    raise ExportError(f"no tokenizer for {checkpoint}: looked for tokenizer.model + ranking.json in "
                      f"{', '.join(str(c) for c in candidates)}; pass --tokenizer DIR (a dataset directory from "
                      f"tools/preprocess_data.py)")


# --- writing ------------------------------------------------------------------------------------------------------

def _prepare_output(out: Path, overwrite: bool) -> Path:
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ExportError(f"{out} exists and is not empty; choose another directory or pass --overwrite")
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    except OSError as e:
        raise ExportError(f"cannot write to {out.parent}: {e.strerror}; choose a writable output directory") from None
    return tmp


def _finish_output(tmp: Path, out: Path):
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)


def save_safetensors(tensors: dict[str, torch.Tensor], folder: Path, shard_bytes: int = SHARD_BYTES):
    """model.safetensors, or model-0000K-of-0000N.safetensors + model.safetensors.index.json when larger."""
    from safetensors.torch import save_file

    shards, current, size = [], {}, 0
    for key, value in tensors.items():
        nbytes = value.numel() * value.element_size()
        if current and size + nbytes > shard_bytes:
            shards.append(current)
            current, size = {}, 0
        current[key], size = value.contiguous(), size + nbytes
    shards.append(current)
    if len(shards) == 1:
        save_file(shards[0], str(folder / "model.safetensors"), metadata={"format": "pt"})
        return
    weight_map, total = {}, 0
    for i, shard in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(folder / name), metadata={"format": "pt"})
        weight_map.update({key: name for key in shard})
        total += sum(v.numel() * v.element_size() for v in shard.values())
    index = dict(metadata=dict(total_size=total), weight_map=weight_map)
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def load_safetensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    index = folder / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (folder / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        raise ExportError(f"{folder}: no model.safetensors (or index); pytorch_model.bin is not supported, re-save "
                          f"the model with safe_serialization=True")
    tensors = {}
    for name in files:
        tensors.update(load_file(str(folder / name)))
    return tensors


def _probe_texts() -> list[str]:
    """Texts with the whitespace patterns where converted tokenizers tend to differ from SentencePiece: docstrings
    of standard-library modules (indented code, runs of spaces), plus a few synthetic lines."""
    import collections
    import json as json_module
    import subprocess
    docs = [m.__doc__ for m in (collections, json_module, os, subprocess, shutil) if m.__doc__]
    lines = [" = Heading = \n", "And  \nTwice", "    >>> import json\n  x  y\tz  \u00e9\u4e2d \U0001F600",
             "trailing   ", "Once upon a time, 1234 tokens.", "a\n\n  b"]
    return [p for d in docs for p in d.split("\n\n") if p.strip()] + lines


# SentencePiece's pipeline: prepend "▁", spaces -> "▁"; candidates for the pre-tokenizer (see save_tokenizer)
_NORMALIZER = {"type": "Sequence", "normalizers": [
    {"type": "Prepend", "prepend": "\u2581"}, {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]}
# (the run is split off only before a word: before a newline or tab SentencePiece keeps "▁▁" whole, as in WikiText's
# " \n = Heading =" lines, which a plain "[^▁]" got wrong on 10% of WikiText paragraphs)
_PRE_TOKENIZERS = [None, {"type": "Split", "pattern": {"Regex": "\u2581+(?=\u2581[^\u2581\\s])"},
                          "behavior": "Isolated", "invert": False}]


def save_tokenizer(tokenizer: Tokenizer, folder: Path) -> dict:
    """tokenizer.json + tokenizer_config.json made to encode like the SentencePiece model, plus the model itself.
    Returns how many probe texts encode identically.

    transformers' LlamaTokenizer builds its own Metaspace pre-tokenizer, which skips SentencePiece's dummy-prefix
    space when a text already starts with a space: such texts get other ids. So the vocabulary and merges converted
    by transformers are kept with SentencePiece's normalisation (prepend "▁", spaces -> "▁"; BOS added by the
    post-processor), loaded as a plain PreTrainedTokenizerFast. BPE by merge rank can still differ from SentencePiece's
    BPE by piece score on runs of spaces before a word, and which pre-tokenizer fixes that depends on the model (Llama
    2 needs the run split off, tokenizers trained by this sentencepiece do not): both are tried on probe texts and
    the better one is kept. tools/eval.py encodes with tokenizer.model itself, so its figures are exact anyway."""
    from transformers import AutoTokenizer, LlamaTokenizer

    source = folder / "_tokenizer_source"
    source.mkdir()
    (source / "tokenizer.model").write_bytes(tokenizer.proto_bytes)
    LlamaTokenizer.from_pretrained(str(source)).save_pretrained(str(folder))
    shutil.rmtree(source)
    spec = json.loads((folder / "tokenizer.json").read_text())
    bos = tokenizer.sp.id_to_piece(tokenizer.bos_id)
    spec["normalizer"] = _NORMALIZER
    spec["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                 {"SpecialToken": {"id": bos, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {bos: {"id": bos, "ids": [tokenizer.bos_id], "tokens": [bos]}}}
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.update(tokenizer_class="PreTrainedTokenizerFast", add_bos_token=True, add_eos_token=False)
    config.pop("backend", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False))
    (folder / "tokenizer.model").write_bytes(tokenizer.proto_bytes)
    probes = _probe_texts()
    expected = [[tokenizer.bos_id] + ids for ids in tokenizer.encode_batch(probes)]
    best = None
    for pre_tokenizer in _PRE_TOKENIZERS:
        spec["pre_tokenizer"] = pre_tokenizer
        (folder / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False))
        encoded = AutoTokenizer.from_pretrained(str(folder))(probes)["input_ids"]
        same = sum(a == b for a, b in zip(encoded, expected))
        if best is None or same > best[0]:
            best = (same, pre_tokenizer)
        if same == len(probes):
            break
    spec["pre_tokenizer"] = best[1]
    (folder / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False))
    return dict(identical=best[0], probes=len(probes), split_space_runs=best[1] is not None)


def save_stage_tokenizer(stage, folder: Path, max_length: int) -> dict:
    """A vocabulary stage's tokenizer for AutoTokenizer: tokenizer.model = the stage with model-row ids, loaded by
    transformers' SentencePiece backend (encoding is SentencePiece's own), BOS before each text like Llama's, and
    special-token text such as a literal "<s>" encoded as text, as megababel's data pipeline does. That backend's
    decode is not SentencePiece's (byte pieces print as "<0x0A>"), so the export also carries an opt-in class for
    trust_remote_code=True that decodes exactly (tokenization_megababel.py). Returns how many probe texts
    AutoTokenizer encodes exactly like the stage, and how many of them decode back, with and without the class
    (checked here, so a transformers release that changes this shows in the card and megababel.json)."""
    from transformers import AutoTokenizer
    (folder / "tokenizer.model").write_bytes(stage.model_row_proto())
    sp = stage.tokenizer.sp
    config = dict(tokenizer_class="SentencePieceBackend", bos_token=sp.id_to_piece(stage.tokenizer.bos_id),
                  eos_token=sp.id_to_piece(stage.tokenizer.eos_id), unk_token=sp.id_to_piece(sp.unk_id()),
                  special_tokens_pattern="bos", split_special_tokens=True, legacy=True, add_bos_token=True,
                  add_eos_token=False, model_max_length=max_length, clean_up_tokenization_spaces=False)
    config["auto_map"] = {"AutoTokenizer": ["tokenization_megababel.MegababelStageTokenizer", None]}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False))
    shutil.copyfile(Path(__file__).with_name("tokenization_megababel.py"), folder / "tokenization_megababel.py")
    probes = _probe_texts()
    plain = AutoTokenizer.from_pretrained(str(folder))
    remote = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=True)
    encoded = plain(probes)["input_ids"]
    same = sum(ids == [stage.bos_id] + stage.encode(text).tolist() for ids, text in zip(encoded, probes))
    return dict(identical=same, probes=len(probes), backend="sentencepiece",
                decoded=sum(plain.decode(ids, skip_special_tokens=True) == t for ids, t in zip(encoded, probes)),
                decoded_remote_code=sum(remote.decode(ids, skip_special_tokens=True) == t
                                        for ids, t in zip(encoded, probes)))


def export_stage_warning(folder: str | os.PathLike) -> str | None:
    """For an intermediate-stage export made before exports carried the stage's own tokenizer (it has a
    vocab_stage.model next to the full tokenizer.json), what a user must know; None for any other directory."""
    folder = Path(folder)
    if not (folder / "vocab_stage.model").is_file():
        return None
    return (f"{folder} was exported at an intermediate vocabulary stage by an older megababel: its tokenizer.json is "
            f"the full tokenizer, which does not encode text as the model was trained, so AutoTokenizer and lm-eval "
            f"measure another number. Export the checkpoint again (megababel-export): the export then carries the "
            f"stage's own tokenizer, exact under AutoTokenizer.")


def stage_note(active: int, tokenizer_size: int) -> str:
    """What an intermediate-stage export's card and megababel-export say about its tokenizer."""
    return (f"vocabulary stage: the model knows {active} of the tokenizer's {tokenizer_size} pieces, and its ids are "
            f"the model's rows, not the original tokenizer's. tokenizer.model is the stage itself; AutoTokenizer "
            f"loads it (SentencePiece backend: pip install sentencepiece) and encodes exactly as the model was "
            f"trained, and so does lm-evaluation-harness; to decode exactly too, load it with trust_remote_code=True "
            f"(tokenization_megababel.py). llama.cpp does not: its converter keeps only the stage's "
            f"pieces and its tokenizer never merges through the others, so a GGUF conversion encodes text "
            f"differently (+0.15 to +0.40 bits/byte measured at stages 1000-4000; see the card).")


def training_data_lines(meta: dict) -> list[str]:
    """The card's "Training data" section: the datasets, and per generation and curriculum change what was read
    (mixture, sequence length), from the checkpoint's run record; nothing for a run that read one dataset at one
    length."""
    schedule = (meta.get("record") or {}).get("schedule") or {}
    training, growths = schedule.get("training", {}), schedule.get("growths", [])
    # (step, generation, data, sequence length): generation 0 at step 0, each growth, each curriculum change
    rows = [(0, 0, training.get("data"), training.get("seq_len"))]
    rows += [(g.get("at_step"), i + 1, g.get("data"), g.get("seq_len")) for i, g in enumerate(growths)]
    for change in schedule.get("curriculum", []):      # what it leaves unchanged: as the row before it
        generation = sum(g.get("at_step") <= change["at_step"] for g in growths)
        before = max((row for row in rows if row[0] < change["at_step"]), key=lambda row: row[0])
        rows.append((change["at_step"], generation, change.get("data", before[2]), change.get("seq_len", before[3])))
    if all(data is None and seq is None for _, _, data, seq in rows):
        return []
    seq_len = (meta.get("record") or {}).get("seq_len")
    lines = ["## Training data", ""]
    for name, path in (meta.get("datasets") or {}).items():
        lines.append(f"- `{name}`: {path}")
    lines += ["", "| generation | from step | data mixture | sequence length |", "|---|---|---|---|"]
    for step, generation, data, seq in sorted(rows, key=lambda row: row[0]):
        mixture = "one dataset" if data is None else ", ".join(f"{k} {w:g}" for k, w in data.items() if w > 0)
        lines.append(f"| {generation} | {step} | {mixture} | {seq or seq_len} |")
    return lines + [""]


def trained_seq_len(run: dict) -> int | None:
    """The sequence length a checkpoint's generation trains at (its growth's or curriculum's seq_len, else the run's
    --seq-len), as the Trainer recorded it; None for a checkpoint without it (an import, or an older megababel)."""
    return run.get("trained_seq_len")


def context_note(trained: int, schedule_max: int) -> str:
    return (f"trained on sequences of up to {trained} tokens (the schedule allows {schedule_max}): config.json's "
            f"max_position_embeddings is {trained}, so lm-eval, llama.cpp and vLLM stay within the positions it "
            f"learned. Evaluate it in windows of at most {trained} tokens (megababel-eval --seq-len {trained}).")


def model_card(meta: dict, config: LlamaConfig, active: int, tokenizer_size: int, agreement: dict,
               trained: int | None = None) -> str:
    lines = ["---", "library_name: transformers", "tags: [llama, megababel, progressive-training]", "---", "",
             f"# megababel Llama: {config_parameters(config) / 1e6:.1f}M parameters, generation "
             f"{meta['generation']}", "",
             "Trained with [megababel](https://github.com/) by progressive growth: the model grew while it trained. "
             "Exported with `tools/convert_to_hf.py`; a plain `LlamaForCausalLM`, no custom code.", ""]
    if active < tokenizer_size:         # first thing a reader sees: these ids are not the original tokenizer's
        lines += [f"> **Note: {stage_note(active, tokenizer_size)}**", ""]
    lines += [f"- checkpoint step {meta['step']}, {meta.get('tokens', 0):,} training tokens, "
              f"{meta.get('flops', 0):.3g} training FLOPs",
              f"- hidden {config.hidden_size}, {config.num_hidden_layers} layers, {config.num_attention_heads} heads "
              f"(head_dim {config.head_dim}, {config.num_key_value_heads} key/value heads), FFN "
              f"{config.intermediate_size}, vocabulary {active} of the tokenizer's {tokenizer_size}"]
    if trained is not None and trained < config.max_position_embeddings:
        lines.append(f"- {context_note(trained, config.max_position_embeddings)}")
    elif trained is not None:
        lines.append(f"- trained on sequences of {trained} tokens")
    lines.append("")
    history = meta.get("history") or []
    if history:
        lines += ["## Growth history", "",
                  "| generation | from step | tokens at start | hidden | layers | FFN | vocabulary | parameters | "
                  "validation loss before / after growth |", "|---|---|---|---|---|---|---|---|---|"]
        for h in history:
            c = h["config"]
            loss = "" if h.get("loss_before") is None else f"{h['loss_before']:.4f} / {h['loss_after']:.4f}"
            lines.append(f"| {h['generation']} | {h['step']} | {h['tokens']:,} | {c['hidden_size']} | "
                         f"{c['num_hidden_layers']} | {c['intermediate_size']} | {c['vocab_size']} | "
                         f"{h['parameters']:,} | {loss} |")
        lines.append("")
        tokens_per_stage = [b["tokens"] - a["tokens"] for a, b in zip(history, history[1:])]
        tokens_per_stage.append(meta.get("tokens", 0) - history[-1]["tokens"])
        lines.append("Tokens per generation: " + ", ".join(f"{t:,}" for t in tokens_per_stage) + ".")
        if meta.get("validation_loss") is not None:
            lines.append(f"Last validation loss: {meta['validation_loss']:.4f} nats/token "
                         f"({meta.get('validation_bpb', float('nan')):.4f} bits/byte).")
        lines.append("")
    else:
        born = sorted({(g["generation"], g["born"]) for g in meta.get("groups", [])})
        lines += ["## Generations", "", "Born at steps: " + ", ".join(f"generation {g}: {s}" for g, s in born), ""]
    lines += training_data_lines(meta)
    if active == tokenizer_size:
        lines += ["## Tokenizer", "", f"`tokenizer.json` (for `AutoTokenizer`) encodes {agreement['identical']} of "
                  f"{agreement['probes']} probe texts exactly like the SentencePiece model `tokenizer.model` it was "
                  f"converted from; where they differ (runs of spaces), `tokenizer.model` is the reference.", ""]
    else:
        lines += ["## Vocabulary stage", "",
                  f"Trained on the first {active} pieces of a frequency ranking of the tokenizer's {tokenizer_size}. "
                  f"`tokenizer.model` is that stage as a SentencePiece model whose ids are this model's rows: the "
                  f"other pieces are marked unused, and SentencePiece splits any they would form back into in-stage "
                  f"pieces or bytes. `AutoTokenizer` loads it with transformers' SentencePiece backend and encodes "
                  f"{agreement['identical']} of {agreement['probes']} probe texts exactly as SentencePiece does. "
                  f"There is no tokenizer.json: no Hugging Face BPE file can express that re-segmentation.", "",
                  f"Decoding: that backend prints byte pieces as `<0x0A>` and strips outer spaces (here "
                  f"{agreement.get('decoded', '?')} of {agreement['probes']} probe texts decode back). With "
                  f"`trust_remote_code=True` AutoTokenizer loads `tokenization_megababel.py` (a dozen lines: "
                  f"SentencePiece's own decoder), and {agreement.get('decoded_remote_code', '?')} of "
                  f"{agreement['probes']} decode back. Encoding is the same either way.", "",
                  "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer",
                  "tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=True)   # needs sentencepiece",
                  "model = AutoModelForCausalLM.from_pretrained(path)",
                  "```", "",
                  "lm-evaluation-harness: perplexity tasks score each document after lm-eval's own BOS; pass "
                  "`add_bos_token=False` in `--model_args` or it scores a second BOS from the tokenizer too "
                  "(as on any Llama tokenizer).", "",
                  "llama.cpp: `convert_hf_to_gguf.py` converts this directory, and llama.cpp computes what "
                  "transformers does, but its converter keeps only the stage's pieces and its SentencePiece "
                  "tokenizer never merges through the others, so it cuts text into more, shorter tokens than the "
                  "model was trained on. Measured on a 1.8M family (stages 1000-4000 of Llama 2's 32000, "
                  "bench/llama_cpp_stage.py): 0-33% of paragraphs encode the same, and with llama.cpp's tokens "
                  "the model measures +0.15 to +0.40 bits/byte worse. Its per-token perplexity looks better for "
                  "the same reason; compare bits per byte.", ""]
    return "\n".join(lines)


def export_checkpoint(checkpoint, out, tokenizer_dir=None, dtype: torch.dtype = torch.float32,
                      overwrite: bool = False, shard_bytes: int = SHARD_BYTES) -> Path:
    """Write a Hugging Face directory for `checkpoint` (a step_N dir or a checkpoints dir). Returns OUT."""
    try:
        saved = load_checkpoint(checkpoint)
    except CheckpointError as e:
        raise ExportError(str(e)) from None
    path, state = saved.path, saved.state
    tokenizer, ranking = find_tokenizer(path, saved.run, tokenizer_dir)
    config, active = state.config, state.config.vocab_size
    meta = dict(saved.run, step=saved.run.get("step", 0), generation=state.generation,
                groups=saved.meta["engine"]["groups"])       # what the card shows
    if active > tokenizer.vocab_size:
        raise ExportError(f"{path}: the model has {active} vocabulary rows but the tokenizer only "
                          f"{tokenizer.vocab_size} pieces: wrong --tokenizer")
    out = Path(out)
    tmp = _prepare_output(out, overwrite)
    try:
        stage = ranking.stage(tokenizer, active) if active < tokenizer.vocab_size else None
        order = torch.from_numpy(ranking.order[:active].copy())
        tensors = {}
        for module_path, value in state.values.items():
            value = value.to(dtype)
            if module_path in VOCAB_PATHS and stage is None:     # model rows -> tokenizer ids
                full = value.new_zeros((tokenizer.vocab_size,) + tuple(value.shape[1:]))
                full[order] = value
                value = full
            tensors[hf_key(module_path)] = value
        save_safetensors(tensors, tmp, shard_bytes)
        trained = trained_seq_len(saved.run)
        context = min(trained or config.max_position_embeddings, config.max_position_embeddings)
        hf_config = to_hf_config((config if stage else config.replace(vocab_size=tokenizer.vocab_size)).replace(
            max_position_embeddings=context))
        bos, eos = (stage.bos_id, stage.eos_id) if stage else (tokenizer.bos_id, tokenizer.eos_id)
        hf_config.bos_token_id, hf_config.eos_token_id = bos, eos
        hf_config.dtype, hf_config.architectures = dtype, ["LlamaForCausalLM"]
        hf_config.save_pretrained(str(tmp))
        from transformers import GenerationConfig
        GenerationConfig(bos_token_id=bos, eos_token_id=eos).save_pretrained(str(tmp))
        if stage is None:
            agreement = save_tokenizer(tokenizer, tmp)
        else:
            agreement = save_stage_tokenizer(stage, tmp, context)
        info = dict(source=str(path), step=meta["step"], generation=meta["generation"], active_vocab_size=active,
                    row_order="tokenizer ids" if stage is None else "model rows (vocabulary stage)",
                    tokenizer_sha256=tokenizer.sha256, ranking_fingerprint=ranking.fingerprint,
                    tokenizer_agreement=agreement, history=meta.get("history"), trained_seq_len=trained,
                    schedule_max_position_embeddings=config.max_position_embeddings)
        (tmp / "megababel.json").write_text(json.dumps(info, indent=1))
        (tmp / "README.md").write_text(model_card(meta, config, active, tokenizer.vocab_size, agreement, trained))
        _finish_output(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


# --- import -------------------------------------------------------------------------------------------------------

def import_hf(hf_dir, out, ranking_path=None, overwrite: bool = False) -> Path:
    """A megababel checkpoint (generation 0, step 0, no optimizer state) from a Hugging Face Llama directory, with
    its tokenizer. `ranking_path`: a dataset's ranking.json (same tokenizer) to put the rows in that order, so the
    run can train on that dataset; default: the tokenizer's own order (identity ranking)."""
    from transformers import AutoConfig

    hf_dir = Path(hf_dir)
    try:
        hf_config = AutoConfig.from_pretrained(str(hf_dir))
    except (OSError, ValueError) as e:
        raise ExportError(f"{hf_dir}: not a Hugging Face model directory ({e})") from None
    config = from_hf_config(hf_config)    # UnsupportedHFConfigError for anything it cannot represent exactly
    if not (hf_dir / "tokenizer.model").is_file():
        raise ExportError(f"{hf_dir}: no tokenizer.model (SentencePiece); megababel needs it for its data pipeline")
    tokenizer = Tokenizer.load(hf_dir / "tokenizer.model")
    info = json.loads((hf_dir / "megababel.json").read_text()) if (hf_dir / "megababel.json").is_file() else {}
    if info.get("row_order", "tokenizer ids") != "tokenizer ids":
        raise ExportError(f"{hf_dir} is a megababel export of vocabulary stage {info.get('active_vocab_size')}: its "
                          f"ids are the stage's, not the tokenizer's. Continue from the checkpoint it was exported "
                          f"from ({info.get('source')}) with launch/train.py --resume, or export one from after the "
                          f"last vocabulary stage")
    if tokenizer.vocab_size != config.vocab_size:
        raise ExportError(f"{hf_dir}: vocab_size {config.vocab_size} != the tokenizer's {tokenizer.vocab_size} pieces")
    if info.get("schedule_max_position_embeddings"):    # export wrote the trained length; the model's is this
        config = config.replace(max_position_embeddings=info["schedule_max_position_embeddings"])
    if ranking_path:
        ranking = VocabRanking.load(ranking_path, tokenizer)
    else:
        ranking = VocabRanking(np.arange(tokenizer.vocab_size), len(tokenizer.required_ids),
                               np.zeros(tokenizer.vocab_size, dtype=np.int64), tokenizer.sha256)
    weights = load_safetensors(hf_dir)
    expected = _expected_shapes(config)
    missing = sorted(hf_key(p) for p in expected if hf_key(p) not in weights)
    if missing:
        raise ExportError(f"{hf_dir}: weights missing: {missing[:4]}{' ...' if len(missing) > 4 else ''}")
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ExportError(f"{out} exists and is not empty; choose another directory or pass --overwrite")
    order = torch.from_numpy(ranking.order.copy())
    values = {}
    for path, shape in expected.items():
        value = weights[hf_key(path)]
        if tuple(value.shape) != shape:
            raise ExportError(f"{hf_dir}: {hf_key(path)} has shape {tuple(value.shape)}, the config says {shape}")
        values[path] = (value[order] if path in VOCAB_PATHS else value).float().contiguous()   # ids -> model rows
    state = EngineState(config, generation=0, layout={p: [((0,) * len(s), s, 0)] for p, s in expected.items()},
                        values=values)
    scratch = _prepare_output(out.with_name(out.name + ".sources"), overwrite=True)
    try:
        (scratch / "tokenizer.model").write_bytes(tokenizer.proto_bytes)
        ranking.save(scratch / "ranking.json")
        # a run starting from this checkpoint begins at step 0 with a fresh optimizer; the trainer checks that its
        # data has this tokenizer and ranking, and that the schedule's `model` is this config
        write_state(out, state, run=dict(step=0, tokens=0, flops=0, imported_from=str(hf_dir)),
                    files={name: scratch / name for name in ("tokenizer.model", "ranking.json")})
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return out


def _expected_shapes(config: LlamaConfig) -> dict[str, tuple]:
    """{module path: full shape} of every weight, in model order (built without allocating weights)."""
    from megababel.model.llama import UNINITIALISED, Llama
    with torch.device("meta"):
        model = Llama(config, values=UNINITIALISED)
    return {path: tensor.full_shape for path, tensor in model.growable_layers()}

"""Export a megababel checkpoint to a Hugging Face `LlamaForCausalLM` directory, and import one back.

A checkpoint already holds every weight unsharded and merged over generations (megababel/checkpoint/io.py merges ZeRO
partitions, TP shards and generation blocks from parameter metadata when it saves), so export is a rename
(adapter.hf_key) plus one permutation: model rows are in the vocabulary ranking's order (a vocabulary stage is a
prefix of it), Hugging Face rows in the tokenizer's id order. Row `order[i]` of the export = model row i.

Tokens not in the checkpoint's vocabulary stage (only before the last stage) get zero embedding and lm_head rows and
are listed in generation_config.json's `suppress_tokens`, which generate() sets to -inf, so generation never emits
them. The exported tokenizer is the full one: Hugging Face's fast tokenizer cannot honour a stage (SentencePiece
re-segments out-of-stage pieces after BPE; `tokenizers` has no step for that), so at an intermediate stage it may
produce ids the model never saw. Such exports also carry `vocab_stage.model` (the SentencePiece model restricted to
the stage) and tools/eval.py uses it, which makes its figures equal megababel's own; the model card says so.

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


def _stage_agreement(folder: Path, stage) -> int:
    """How many probe texts AutoTokenizer (the export's full tokenizer.json) encodes exactly like the vocabulary
    stage the model was trained on. No tokenizer.json reproduces a stage: SentencePiece merges through the
    out-of-stage pieces and splits them back at the end, which Hugging Face BPE cannot express (measured in
    bench/stage_tokenizer.py), so an intermediate-stage export says so loudly instead."""
    from transformers import AutoTokenizer
    probes = _probe_texts()
    encoded = AutoTokenizer.from_pretrained(str(folder))(probes, add_special_tokens=False)["input_ids"]
    return sum(ids == stage.to_tokenizer_ids(stage.encode(text)).tolist() for ids, text in zip(encoded, probes))


def stage_warning(active: int, tokenizer_size: int, agreement: dict | None = None) -> str:
    """The warning an intermediate-stage export carries (card, convert_to_hf, tools/eval.py)."""
    measured = "" if not agreement or "stage_identical" not in agreement else (
        f" (here {agreement['stage_identical']} of {agreement['probes']} probe texts encode the same)")
    return (f"intermediate vocabulary stage: the model knows only {active} of the tokenizer's {tokenizer_size} pieces. "
            f"AutoTokenizer (tokenizer.json) and anything built on it, lm-evaluation-harness included, encode text "
            f"with the full tokenizer, not the way this model was trained{measured}, and measure another number than "
            f"megababel does (lower or higher). Encode with vocab_stage.model (SentencePiece) or evaluate with "
            f"megababel's tools/eval.py, which does; or export a checkpoint from after the last vocabulary stage.")


def export_stage_warning(folder: str | os.PathLike) -> str | None:
    """stage_warning() for a Hugging Face directory exported at an intermediate vocabulary stage, else None."""
    folder = Path(folder)
    if not (folder / "vocab_stage.model").is_file():
        return None
    try:
        info = json.loads((folder / "megababel.json").read_text())
        size = json.loads((folder / "config.json").read_text())["vocab_size"]
        return stage_warning(info["active_vocab_size"], size, info.get("tokenizer_agreement"))
    except (OSError, ValueError, KeyError):
        return (f"{folder} has a vocab_stage.model: it was exported at an intermediate vocabulary stage, and "
                f"AutoTokenizer does not encode text the way it was trained; evaluate it with tools/eval.py")


def training_data_lines(meta: dict) -> list[str]:
    """The card's "Training data" section: the datasets, and per generation what it read (mixture, sequence length),
    from the checkpoint's run record; nothing for a run that read one dataset at one length."""
    schedule = (meta.get("record") or {}).get("schedule") or {}
    training, growths = schedule.get("training", {}), schedule.get("growths", [])
    per_generation = [(training.get("data"), training.get("seq_len"))] + [(g.get("data"), g.get("seq_len"))
                                                                          for g in growths]
    if all(data is None and seq is None for data, seq in per_generation):
        return []
    seq_len = (meta.get("record") or {}).get("seq_len")
    lines = ["## Training data", ""]
    for name, path in (meta.get("datasets") or {}).items():
        lines.append(f"- `{name}`: {path}")
    lines += ["", "| generation | from step | data mixture | sequence length |", "|---|---|---|---|"]
    steps = [0] + [g.get("at_step") for g in growths]
    for generation, ((data, seq), step) in enumerate(zip(per_generation, steps)):
        mixture = "one dataset" if data is None else ", ".join(f"{k} {w:g}" for k, w in data.items() if w > 0)
        lines.append(f"| {generation} | {step} | {mixture} | {seq or seq_len} |")
    return lines + [""]


def model_card(meta: dict, config: LlamaConfig, active: int, tokenizer_size: int, agreement: dict) -> str:
    lines = ["---", "library_name: transformers", "tags: [llama, megababel, progressive-training]", "---", "",
             f"# megababel Llama: {config_parameters(config) / 1e6:.1f}M parameters, generation "
             f"{meta['generation']}", "",
             "Trained with [megababel](https://github.com/) by progressive growth: the model grew while it trained. "
             "Exported with `tools/convert_to_hf.py`; a plain `LlamaForCausalLM`, no custom code.", ""]
    if active < tokenizer_size:         # first thing a reader sees: evaluating it the usual way gives other numbers
        lines += [f"> **Warning: {stage_warning(active, tokenizer_size, agreement)}**", ""]
    lines += [f"- checkpoint step {meta['step']}, {meta.get('tokens', 0):,} training tokens, "
              f"{meta.get('flops', 0):.3g} training FLOPs",
              f"- hidden {config.hidden_size}, {config.num_hidden_layers} layers, {config.num_attention_heads} heads "
              f"(head_dim {config.head_dim}, {config.num_key_value_heads} key/value heads), FFN "
              f"{config.intermediate_size}, vocabulary {active} of the tokenizer's {tokenizer_size}", ""]
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
    lines += ["## Tokenizer", "", f"`tokenizer.json` (for `AutoTokenizer`) encodes {agreement['identical']} of "
              f"{agreement['probes']} probe texts exactly like the SentencePiece model `tokenizer.model` it was "
              f"converted from; where they differ (runs of spaces), `tokenizer.model` is the reference.", ""]
    if active < tokenizer_size:
        lines += ["## Vocabulary stage", "",
                  f"Trained on the first {active} pieces of a frequency ranking. The other {tokenizer_size - active} "
                  f"ids have zero rows and are in generation_config's `suppress_tokens`, so `generate()` never emits "
                  f"them. The saved tokenizer is the full one and may produce such ids; `vocab_stage.model` is the "
                  f"SentencePiece model restricted to the stage, which `tools/eval.py` uses. No tokenizer.json can "
                  f"encode like it (SentencePiece merges through the left-out pieces and splits them back at the "
                  f"end; Hugging Face BPE cannot): `AutoTokenizer` encodes {agreement.get('stage_identical', '?')} of "
                  f"{agreement['probes']} probe texts the way the model was trained.", "",
                  "```python", "import sentencepiece, torch", "from transformers import AutoModelForCausalLM",
                  "sp = sentencepiece.SentencePieceProcessor(model_file=f\"{path}/vocab_stage.model\")",
                  "model = AutoModelForCausalLM.from_pretrained(path)",
                  "ids = torch.tensor([[sp.bos_id()] + sp.encode(text)])     # ids are the model's, no remapping",
                  "```", ""]
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
        order = torch.from_numpy(ranking.order[:active].copy())
        tensors = {}
        for module_path, value in state.values.items():
            value = value.to(dtype)
            if module_path in VOCAB_PATHS:               # model rows -> tokenizer ids; rows out of stage stay zero
                full = value.new_zeros((tokenizer.vocab_size,) + tuple(value.shape[1:]))
                full[order] = value
                value = full
            tensors[hf_key(module_path)] = value
        save_safetensors(tensors, tmp, shard_bytes)
        hf_config = to_hf_config(config.replace(vocab_size=tokenizer.vocab_size))
        hf_config.bos_token_id, hf_config.eos_token_id = tokenizer.bos_id, tokenizer.eos_id
        hf_config.dtype, hf_config.architectures = dtype, ["LlamaForCausalLM"]
        hf_config.save_pretrained(str(tmp))
        from transformers import GenerationConfig
        inactive = sorted(ranking.order[active:].tolist())
        GenerationConfig(bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id,
                         suppress_tokens=inactive or None).save_pretrained(str(tmp))
        agreement = save_tokenizer(tokenizer, tmp)
        if inactive:
            stage = ranking.stage(tokenizer, active)
            (tmp / "vocab_stage.model").write_bytes(stage.sp.serialized_model_proto())
            agreement["stage_identical"] = _stage_agreement(tmp, stage)
        info = dict(source=str(path), step=meta["step"], generation=meta["generation"], active_vocab_size=active,
                    tokenizer_sha256=tokenizer.sha256, tokenizer_agreement=agreement, history=meta.get("history"))
        (tmp / "megababel.json").write_text(json.dumps(info, indent=1))
        (tmp / "README.md").write_text(model_card(meta, config, active, tokenizer.vocab_size, agreement))
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
    if tokenizer.vocab_size != config.vocab_size:
        raise ExportError(f"{hf_dir}: vocab_size {config.vocab_size} != the tokenizer's {tokenizer.vocab_size} pieces")
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

"""The evaluator: perplexity and bits per byte of a Hugging Face directory or a megababel checkpoint on documents,
and lm-evaluation-harness on a Hugging Face directory. Its command line is megababel-eval (megababel/cli/evaluate.py,
tools/eval.py); megababel-export-family evaluates every member of a family with it.

    from megababel.hf.evaluate import Evaluated, evaluate
    model = Evaluated.load(Path("hf/a"))                  # or a checkpoint: runs/a/checkpoints[/step_...]
    result = evaluate(model, read_documents("valid.txt"), seq_len=1024, batch_size=4)   # result["bits_per_byte"]

Both kinds of model are evaluated the same way: each document becomes BOS + tokens + EOS, the documents are
concatenated and cut into windows of seq_len + 1 tokens (no overlap), and every next-token loss counts; full windows
go batch_size at a time. Bits per byte = total loss / ln 2 / UTF-8 bytes of the documents, comparable across
tokenizers and vocabulary stages; perplexity is per token. A Hugging Face directory with a `tokenizer.model` is
encoded by that SentencePiece model (else by AutoTokenizer); a megababel export of a vocabulary stage carries the
stage itself there. An intermediate-stage export made by an older megababel (a full tokenizer plus
`vocab_stage.model`) is encoded with its `vocab_stage.model` and the out-of-stage logits masked, exactly as megababel
evaluates the checkpoint itself (`model.note` then says so, for the command line to print).

Imports checkpoint, data, model and hf.export; never the engine, the trainer or the command line.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from megababel.checkpoint.io import load_checkpoint
from megababel.data.readers import DataError
from megababel.model.loss import linear_cross_entropy

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


class EvaluationError(RuntimeError):
    """An evaluation that cannot run as asked (lm-eval missing, --tasks on a checkpoint)."""


class Evaluated:
    """A model behind one interface: `encode(text) -> ids`, `bos`, `eos`, `nll(inputs [B, T], targets [B, T]) ->
    summed loss` (targets -100 do not count), `name`, and `note` (None, or what a user should know about how it is
    encoded), and `context`: the longest sequence it trained on (positions beyond it are untrained)."""

    note: str | None = None
    context: int

    @classmethod
    def load(cls, path: Path, dtype: torch.dtype = torch.float32, auto_tokenizer: bool = False) -> "Evaluated":
        """`auto_tokenizer`: a Hugging Face directory encoded by AutoTokenizer even where it has a tokenizer.model
        (what a user without megababel gets; the family card reports both)."""
        path = Path(path)
        if (path / "config.json").is_file():
            return HFModel(path, dtype, auto_tokenizer)
        if auto_tokenizer:
            raise EvaluationError(f"{path}: AutoTokenizer needs a Hugging Face directory; export the checkpoint")
        return MegababelModel(path, dtype)


class MegababelModel(Evaluated):
    def __init__(self, path: Path, dtype: torch.dtype = torch.float32):
        from megababel.hf.export import find_tokenizer, trained_seq_len
        from megababel.model.llama import Llama
        saved = load_checkpoint(path)
        path, state = saved.path, saved.state
        self.context = min(trained_seq_len(saved.run) or state.config.max_position_embeddings,
                           state.config.max_position_embeddings)
        tokenizer, ranking = find_tokenizer(path, saved.run)
        self.stage = ranking.stage(tokenizer, state.config.vocab_size)
        self.bos, self.eos = self.stage.bos_id, self.stage.eos_id
        self.model = Llama(state.config, layout=state.layout, generation=state.generation,
                           values=state.values).eval().to(dtype)
        self.name = f"megababel checkpoint {path}"

    def encode(self, text: str) -> np.ndarray:
        return self.stage.encode(text)

    def nll(self, inputs: torch.Tensor, targets: torch.Tensor) -> float:
        return self.model(inputs, targets, reduction="sum")[1].item()


class HFModel(Evaluated):
    def __init__(self, path: Path, dtype: torch.dtype = torch.float32, auto_tokenizer: bool = False):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from megababel.hf.export import export_stage_warning
        self.model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype).eval()
        self.context = self.model.config.max_position_embeddings    # a megababel export's: the trained length
        self.mask = None
        stage, sentencepiece = path / "vocab_stage.model", path / "tokenizer.model"
        if not auto_tokenizer and (stage.is_file() or sentencepiece.is_file()):
            # the SentencePiece model itself (exact; the converted tokenizer.json may differ on runs of spaces);
            # an older megababel's intermediate-stage export: the stage's model, and out-of-stage logits masked
            import sentencepiece as spm
            self.sp = spm.SentencePieceProcessor(model_file=str(stage if stage.is_file() else sentencepiece))
            self.encode = self.sp.encode
            self.bos, self.eos = self.sp.bos_id(), self.sp.eos_id()
            if stage.is_file():
                self.note = (f"megababel's evaluator (megababel-eval, tools/eval.py) encodes this export with its "
                             f"vocab_stage.model, as the model was trained; other tools may not. "
                             f"{export_stage_warning(path)}")
                suppressed = self.model.generation_config.suppress_tokens or []
                self.mask = torch.zeros(self.model.config.vocab_size, dtype=torch.bool)
                self.mask[torch.tensor(suppressed, dtype=torch.long)] = True
        else:
            tokenizer = AutoTokenizer.from_pretrained(str(path))
            self.encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]
            self.bos, self.eos = tokenizer.bos_token_id, tokenizer.eos_token_id
        self.name = f"Hugging Face model {path}" + (" (AutoTokenizer)" if auto_tokenizer else "")

    def nll(self, inputs: torch.Tensor, targets: torch.Tensor) -> float:
        if self.model.config.model_type == "llama":
            # a bias-free output layer on the decoder's last hidden states: the fused loss, no full logits
            hidden = self.model.model(input_ids=inputs).last_hidden_state
            return linear_cross_entropy(hidden, self.model.lm_head.weight, targets, reduction="sum",
                                        mask=self.mask).item()
        return summed_nll(self.model(inputs).logits, targets, self.mask)


def summed_nll(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """Summed next-token loss in fp32 (out-of-stage logits masked, targets -100 ignored), bit for bit what
    F.cross_entropy(logits.float(), reduction="sum") gives, about 4x faster at a 32000 vocabulary: log-softmax is
    row-wise, so chunks of rows give the same bits without the whole [tokens, vocabulary] fp32 tensor ever being
    written, and nll_loss's summation order depends only on the row count, so the gathered [rows, 1] column sums
    the same."""
    logits, targets = logits.flatten(0, 1), targets.flatten()
    rows = max(1, 2**21 // logits.shape[-1])                  # ~8 MB of fp32 per chunk: stays in cache
    picked = []
    for chunk, chunk_targets in zip(logits.split(rows), targets.split(rows)):
        chunk = chunk.float()
        if mask is not None:
            chunk = chunk.masked_fill(mask, float("-inf"))
        picked.append(torch.log_softmax(chunk, dim=-1).gather(1, chunk_targets.clamp(min=0)[:, None]))
    return F.nll_loss(torch.cat(picked), torch.where(targets != -100, 0, -100), ignore_index=-100,
                      reduction="sum").item()


def token_stream(model: Evaluated, documents) -> tuple[torch.Tensor, int, int]:
    """BOS + ids + EOS of every document, concatenated; and the documents' UTF-8 bytes and count."""
    pieces, n_bytes = [], 0
    for doc in documents:
        pieces.append(np.asarray(model.encode(doc), dtype=np.int64))
        n_bytes += len(doc.encode("utf-8"))
    if not pieces:
        raise DataError("no documents to evaluate")
    bos, eos = np.array([model.bos], dtype=np.int64), np.array([model.eos], dtype=np.int64)
    stream = np.concatenate([part for ids in pieces for part in (bos, ids, eos)])
    return torch.from_numpy(stream), n_bytes, len(pieces)


def windows(stream: torch.Tensor, seq_len: int, batch_size: int) -> list[torch.Tensor]:
    """[B, seq_len + 1] batches of non-overlapping windows (each window's last token starts the next), then the
    shorter last window alone. Changing the grouping changes the fp32 sums' rounding: keep it."""
    if seq_len < 1 or batch_size < 1:
        raise ValueError(f"seq_len and batch_size must be positive, got {seq_len} and {batch_size}")
    full = stream[:len(stream) - 1 - (len(stream) - 1) % seq_len]     # whole windows' inputs
    batches = []
    if len(full):
        inputs = full.view(-1, seq_len)
        targets = stream[seq_len::seq_len][:len(inputs)]
        rows = torch.cat([inputs, targets[:, None]], dim=1)
        batches = list(rows.split(batch_size))
    if len(stream) - 1 - len(full) >= 1:
        batches.append(stream[len(full):][None])
    return batches


def document_windows(ids, bos: int, seq_len: int) -> list[tuple[list[int], list[int]]]:
    """One document alone, as lm-evaluation-harness' loglikelihood_rolling scores it: BOS then the tokens, no EOS;
    every token predicted once, seq_len at a time, each window's input the seq_len tokens before its last target
    (so later windows see full context). (inputs, targets) pairs, targets -100 where already predicted."""
    sequence, n, out, start = [bos] + list(ids), len(ids), [], 0
    while start < n:
        end = min(start + seq_len, n)
        begin = max(0, end - seq_len)
        targets = sequence[begin + 1:end + 1]
        out.append((sequence[begin:end], [-100] * (start - begin) + targets[start - begin:]))
        start = end
    return out


def per_document_batches(model: Evaluated, documents, seq_len: int, batch_size: int):
    """document_windows of every document, windows of one length batched together in their order; and the
    documents' UTF-8 bytes and count."""
    by_length, n_bytes, n_docs = {}, 0, 0
    for doc in documents:
        for inputs, targets in document_windows(np.asarray(model.encode(doc)).tolist(), model.bos, seq_len):
            by_length.setdefault(len(inputs), []).append((inputs, targets))
        n_bytes, n_docs = n_bytes + len(doc.encode("utf-8")), n_docs + 1
    if not n_docs:
        raise DataError("no documents to evaluate")
    batches = [tuple(torch.tensor([window[part] for window in group[k:k + batch_size]]) for part in (0, 1))
               for group in by_length.values() for k in range(0, len(group), batch_size)]
    return batches, n_bytes, n_docs


@torch.inference_mode()
def evaluate(model: Evaluated, documents, seq_len: int, batch_size: int, progress: bool = True,
             per_document: bool = False) -> dict:
    """{model, documents, bytes, tokens, nll_per_token, perplexity, bits_per_byte, seconds} of `model` on the
    documents (an iterable of strings); `progress`: a tqdm bar on stderr. `per_document`: each document alone
    (document_windows), lm-evaluation-harness' protocol for perplexity tasks, so that its bits_per_byte on the same
    documents is this figure."""
    if per_document:
        batches, n_bytes, n_docs = per_document_batches(model, documents, seq_len, batch_size)
    else:
        stream, n_bytes, n_docs = token_stream(model, documents)
        if len(stream) < 2:
            raise DataError("no documents to evaluate")
        batches = [(ids[:, :-1], ids[:, 1:]) for ids in windows(stream, seq_len, batch_size)]
    total, targets, start = 0.0, 0, time.perf_counter()
    bar = tqdm(total=sum(int((t != -100).sum()) for _, t in batches), unit="tok", desc="evaluating",
               disable=not progress, dynamic_ncols=True)
    for inputs, batch_targets in batches:
        total += model.nll(inputs, batch_targets)
        counted = int((batch_targets != -100).sum())
        targets += counted
        bar.update(counted)
        bar.set_postfix(nll=f"{total / targets:.4f}", tok_s=f"{targets / (time.perf_counter() - start):.0f}")
    bar.close()
    return dict(model=model.name, documents=n_docs, bytes=n_bytes, tokens=targets, nll_per_token=total / targets,
                perplexity=math.exp(total / targets), bits_per_byte=total / math.log(2) / n_bytes,
                seconds=time.perf_counter() - start)


def lm_eval_warning(path: Path) -> str | None:
    """What lm-eval's numbers on this Hugging Face directory miss: lm-eval encodes with AutoTokenizer, which does not
    encode an older megababel's intermediate-stage export as it was trained (None when nothing)."""
    from megababel.hf.export import export_stage_warning
    return export_stage_warning(path) if (Path(path) / "config.json").is_file() else None


def run_lm_eval(path: Path, tasks: str, include_path: Path | None = None, limit: int | None = None,
                log_samples: bool = False, model_args: str = "") -> dict:
    """lm-evaluation-harness on a Hugging Face directory: {"results": per-task metrics}, {"warning": ...} where
    lm_eval_warning has one and, with `log_samples`, {"samples": per task, each document's log-likelihood of every
    choice}. Raises EvaluationError when lm-eval is not installed or `path` is not a Hugging Face directory."""
    path = Path(path)
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise EvaluationError("--tasks needs lm-evaluation-harness: pip install 'megababel[eval]' (or lm-eval), and "
                              "the task data available locally (e.g. HF_DATASETS_OFFLINE=1 with a populated cache, or "
                              "--include-path with local task YAMLs)") from None
    if not (path / "config.json").is_file():
        raise EvaluationError("--tasks runs on a Hugging Face directory: export the checkpoint first "
                              "(megababel-export, tools/convert_to_hf.py)")
    warning = lm_eval_warning(path)        # lm-eval encodes with AutoTokenizer: not the stage's encoding
    device = "cuda" if torch.cuda.is_available() else "cpu"
    out = lm_eval.simple_evaluate(model="hf", model_args=",".join(filter(None, [f"pretrained={path}", model_args])),
                                  tasks=tasks.split(","), device=device,
                                  task_manager=TaskManager(include_path=None if include_path is None
                                                           else str(include_path)),
                                  limit=limit, log_samples=log_samples)
    result = dict(results=out["results"])
    if warning:
        result["warning"] = warning
    if log_samples:      # resps: per choice [(log-likelihood, is_greedy)]
        result["samples"] = {task: [dict(doc_id=s["doc_id"], target=s["target"],
                                         loglikelihoods=[float(r[0][0] if isinstance(r[0], (list, tuple)) else r[0])
                                                         for r in s["resps"]]) for s in samples]
                             for task, samples in out["samples"].items()}
    return result


PERPLEXITY_TASK = """task: megababel_perplexity
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: word_perplexity
  - metric: byte_perplexity
  - metric: bits_per_byte
"""


def lm_eval_bits_per_byte(path: Path, documents, seq_len: int) -> float:
    """lm-evaluation-harness' bits_per_byte of a Hugging Face directory on `documents`, through a local perplexity
    task (loglikelihood_rolling, as its wikitext task) with max_length `seq_len`: equal to evaluate(...,
    per_document=True) with the same seq_len when AutoTokenizer encodes as the model was trained. With add_bos_token
    False: by default lm-eval lets the tokenizer put BOS into each document, after its own BOS prefix, and scores
    that second BOS too (about one token's loss more per document on any Llama tokenizer)."""
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        with open(tmp / "documents.jsonl", "w") as f:
            for doc in documents:
                f.write(json.dumps(dict(text=doc)) + "\n")
        (tmp / "tasks").mkdir()
        (tmp / "tasks" / "perplexity.yaml").write_text(PERPLEXITY_TASK.format(data=tmp / "documents.jsonl"))
        out = run_lm_eval(path, "megababel_perplexity", tmp / "tasks",
                          model_args=f"max_length={seq_len},add_bos_token=False")
    return float(out["results"]["megababel_perplexity"]["bits_per_byte,none"])

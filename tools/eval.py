"""Perplexity and bits per byte of a Hugging Face directory or a megababel checkpoint on a text file.

    python tools/eval.py hf/a ../shared/data/tinystories/valid.txt             # an export (or any HF Llama)
    python tools/eval.py runs/a/checkpoints ../shared/data/tinystories/valid.txt --seq-len 256
    python tools/eval.py hf/a data.jsonl --text-key text --max-docs 500 --json result.json
    python tools/eval.py hf/a - --tasks hellaswag,arc_easy    # lm-evaluation-harness (pip install 'megababel[eval]')
    python tools/eval.py hf/a - --tasks my_task --include-path my_tasks/ --json r.json --log-samples   # local tasks

Both kinds of model are evaluated the same way: each document becomes BOS + tokens + EOS, the documents are
concatenated and cut into windows of --seq-len + 1 tokens (no overlap), and every next-token loss counts; full
windows go --batch-size at a time. --dtype bf16 runs the weights in bf16 (the loss in fp32); fp32 is the default. Bits per
byte = total loss / ln 2 / UTF-8 bytes of the documents, comparable across tokenizers and vocabulary stages;
perplexity is per token. A Hugging Face directory with a `tokenizer.model` is encoded by that SentencePiece model
(else by AutoTokenizer); a megababel export made at an intermediate vocabulary stage with its `vocab_stage.model`
and the out-of-stage logits masked, exactly as megababel evaluates the checkpoint itself.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from megababel.checkpoint.io import CheckpointError, load_checkpoint  # noqa: E402
from megababel.data.readers import DataError, read_documents  # noqa: E402


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


class Evaluated:
    """A model behind one interface: `encode(text) -> ids`, `bos`, `eos`, `nll(ids [B, T+1]) -> summed loss`."""

    @classmethod
    def load(cls, path: Path, dtype: torch.dtype = torch.float32) -> "Evaluated":
        if (path / "config.json").is_file():
            return HFModel(path, dtype)
        return MegababelModel(path, dtype)


class MegababelModel(Evaluated):
    def __init__(self, path: Path, dtype: torch.dtype = torch.float32):
        from megababel.hf.export import find_tokenizer
        from megababel.model.llama import Llama
        saved = load_checkpoint(path)
        path, state = saved.path, saved.state
        tokenizer, ranking = find_tokenizer(path, saved.run)
        self.stage = ranking.stage(tokenizer, state.config.vocab_size)
        self.bos, self.eos = self.stage.bos_id, self.stage.eos_id
        self.model = Llama(state.config, layout=state.layout, generation=state.generation,
                           values=state.values).eval().to(dtype)
        self.name = f"megababel checkpoint {path}"

    def encode(self, text: str) -> np.ndarray:
        return self.stage.encode(text)

    def nll(self, ids: torch.Tensor) -> float:
        logits, _ = self.model(ids[:, :-1])
        return summed_nll(logits, ids[:, 1:])


class HFModel(Evaluated):
    def __init__(self, path: Path, dtype: torch.dtype = torch.float32):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from megababel.hf.export import export_stage_warning
        self.model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype).eval()
        self.mask = None
        stage, sentencepiece = path / "vocab_stage.model", path / "tokenizer.model"
        if stage.is_file() or sentencepiece.is_file():
            # the SentencePiece model itself (exact; the converted tokenizer.json may differ on runs of spaces);
            # an intermediate-stage megababel export: the stage's model, and out-of-stage logits masked
            import sentencepiece as spm
            self.sp = spm.SentencePieceProcessor(model_file=str(stage if stage.is_file() else sentencepiece))
            self.encode = self.sp.encode
            self.bos, self.eos = self.sp.bos_id(), self.sp.eos_id()
            if stage.is_file():
                print(f"note: tools/eval.py encodes this export with its vocab_stage.model, as the model was "
                      f"trained; other tools may not. {export_stage_warning(path)}", file=sys.stderr)
                suppressed = self.model.generation_config.suppress_tokens or []
                self.mask = torch.zeros(self.model.config.vocab_size, dtype=torch.bool)
                self.mask[torch.tensor(suppressed, dtype=torch.long)] = True
        else:
            tokenizer = AutoTokenizer.from_pretrained(str(path))
            self.encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]
            self.bos, self.eos = tokenizer.bos_token_id, tokenizer.eos_token_id
        self.name = f"Hugging Face model {path}"

    def nll(self, ids: torch.Tensor) -> float:
        return summed_nll(self.model(ids[:, :-1]).logits, ids[:, 1:], self.mask)


def summed_nll(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """Summed next-token loss in fp32 (out-of-stage logits masked), bit for bit what
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
        picked.append(torch.log_softmax(chunk, dim=-1).gather(1, chunk_targets[:, None]))
    return F.nll_loss(torch.cat(picked), torch.zeros_like(targets), reduction="sum").item()


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


@torch.inference_mode()
def evaluate(model: Evaluated, documents, seq_len: int, batch_size: int, progress: bool = True) -> dict:
    stream, n_bytes, n_docs = token_stream(model, documents)
    if len(stream) < 2:
        raise DataError("no documents to evaluate")
    total, targets, start = 0.0, 0, time.perf_counter()
    bar = tqdm(total=len(stream) - 1, unit="tok", desc="evaluating", disable=not progress, dynamic_ncols=True)
    for ids in windows(stream, seq_len, batch_size):
        total += model.nll(ids)
        targets += ids[:, 1:].numel()
        bar.update(ids[:, 1:].numel())
        bar.set_postfix(nll=f"{total / targets:.4f}", tok_s=f"{targets / (time.perf_counter() - start):.0f}")
    bar.close()
    return dict(model=model.name, documents=n_docs, bytes=n_bytes, tokens=targets, nll_per_token=total / targets,
                perplexity=math.exp(total / targets), bits_per_byte=total / math.log(2) / n_bytes,
                seconds=time.perf_counter() - start)


def run_lm_eval(path: Path, tasks: str, include_path: Path | None = None, limit: int | None = None,
                log_samples: bool = False) -> dict:
    """lm-evaluation-harness on a Hugging Face directory: {"results": per-task metrics} and, with `log_samples`,
    {"samples": per task, each document's log-likelihood of every choice}."""
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise SystemExit("--tasks needs lm-evaluation-harness: pip install 'megababel[eval]' (or lm-eval), and the "
                         "task data available locally (e.g. HF_DATASETS_OFFLINE=1 with a populated cache, or "
                         "--include-path with local task YAMLs)") from None
    if not (path / "config.json").is_file():
        raise SystemExit("--tasks runs on a Hugging Face directory: export the checkpoint first "
                         "(tools/convert_to_hf.py)")
    from megababel.hf.export import export_stage_warning
    warning = export_stage_warning(path)        # lm-eval encodes with AutoTokenizer: not the stage's encoding
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    out = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={path}", tasks=tasks.split(","), device=device,
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


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("model", type=Path, help="Hugging Face directory, or megababel checkpoint (step dir or checkpoints dir)")
    p.add_argument("data", help="txt / jsonl / parquet file ('-' with --tasks only)")
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="weights' precision (loss in fp32)")
    p.add_argument("--text-key", default="text", help="jsonl field / parquet column (default: text)")
    p.add_argument("--txt-mode", default="paragraph", help="txt documents: paragraph | line | file")
    p.add_argument("--max-docs", type=int, default=None)
    p.add_argument("--tasks", default=None, help="comma-separated lm-evaluation-harness tasks")
    p.add_argument("--include-path", type=Path, default=None, help="a folder of lm-eval task YAMLs (local tasks)")
    p.add_argument("--limit", type=int, default=None, help="lm-eval: at most this many documents per task")
    p.add_argument("--log-samples", action="store_true", help="lm-eval: also keep every document's log-likelihoods "
                                                              "(in --json)")
    p.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = p.parse_args(argv)
    if args.seq_len < 1 or args.batch_size < 1:
        p.error("--seq-len and --batch-size must be positive")
    if not args.model.exists():
        p.error(f"{args.model}: no such model directory")
    if args.include_path is not None and not args.include_path.is_dir():       # before any evaluation is spent
        p.error(f"--include-path {args.include_path}: no such directory")
    if args.limit is not None and args.limit < 1:
        p.error(f"--limit must be positive, got {args.limit}")
    result = {}
    if args.data != "-":
        try:
            model = Evaluated.load(args.model, DTYPES[args.dtype])
            documents = read_documents(args.data, text_key=args.text_key, txt_mode=args.txt_mode)
            if args.max_docs:
                documents = (d for _, d in zip(range(args.max_docs), documents))
            result = evaluate(model, documents, args.seq_len, args.batch_size)
        except (CheckpointError, DataError, OSError, ValueError) as e:
            p.error(str(e))
        print(f"{result['model']}: {result['documents']} documents, {result['tokens']:,} tokens, "
              f"{result['bytes']:,} bytes: {result['nll_per_token']:.4f} nats/token, perplexity "
              f"{result['perplexity']:.2f}, {result['bits_per_byte']:.4f} bits/byte")
    if args.tasks:
        result["lm_eval"] = run_lm_eval(args.model, args.tasks, args.include_path, args.limit, args.log_samples)
        print(json.dumps(result["lm_eval"]["results"], indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()

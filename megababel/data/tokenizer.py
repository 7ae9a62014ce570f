"""SentencePiece tokenizer and vocabulary stages (the seed's vocabulary curriculum).

The tokenizer (e.g. Llama 2's) never changes; what grows is the *active* vocabulary. A `VocabRanking` orders the
tokenizer's pieces for the model: first the pieces every text needs, then the rest by frequency on the training
corpus. A stage of size V allows the first V pieces of that order, so the model's embedding row i is always the
i-th ranked piece, and growing the vocabulary appends rows. `ranking.order[i]` is the tokenizer id of model row i
(kept for export to Hugging Face, which wants tokenizer order).

Pieces every text needs: the specials (<unk>, <s>, </s>), the 256 byte-fallback pieces and the meta-space piece
'▁'. Any other character round-trips through byte fallback, so other single-character pieces are not forced in
(Llama 2 has 2,129 of them: forcing them would make a 500-piece stage 2,600 pieces); frequent ones rank high anyway.
'▁' cannot be replaced by bytes: its bytes decode to the literal character '▁', not to a space.

Encoding under a stage uses SentencePiece itself: the pieces outside the stage are marked UNUSED in the model proto,
and SentencePiece then segments text with allowed pieces and byte fallback only.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as sp_pb2

META_SPACE = "\u2581"
_NORMAL, _UNUSED, _BYTE = (sp_pb2.ModelProto.SentencePiece.Type.Value(n) for n in ("NORMAL", "UNUSED", "BYTE"))


class TokenizerError(ValueError):
    pass


class Tokenizer:
    """A SentencePiece model. `Tokenizer.load(path_or_repo)`."""

    def __init__(self, proto_bytes: bytes, source: str = "<bytes>"):
        self.proto_bytes, self.source = proto_bytes, source
        self.proto = sp_pb2.ModelProto()
        try:
            self.proto.ParseFromString(proto_bytes)
            self.sp = spm.SentencePieceProcessor(model_proto=proto_bytes)
        except Exception as e:  # noqa: BLE001 - protobuf/sentencepiece raise various types
            raise TokenizerError(f"{source} is not a SentencePiece model: {e}") from None
        self.sha256 = hashlib.sha256(proto_bytes).hexdigest()

    @classmethod
    def load(cls, name_or_path: str | os.PathLike) -> "Tokenizer":
        """A path to a .model file (or a directory holding tokenizer.model), or a Hugging Face repo id."""
        path = Path(name_or_path)
        if path.is_dir():
            path = path / "tokenizer.model"
        if path.is_file():
            return cls(path.read_bytes(), str(path))
        if path.suffix == ".model" or str(name_or_path).startswith((".", "/")) or str(name_or_path).count("/") != 1:
            raise TokenizerError(f"tokenizer {name_or_path}: no such file (give a SentencePiece .model file, a "
                                 f"directory with tokenizer.model, or a Hugging Face repo id like owner/name)")
        try:
            from huggingface_hub import hf_hub_download
            downloaded = hf_hub_download(str(name_or_path), "tokenizer.model")
        except Exception as e:  # noqa: BLE001
            raise TokenizerError(f"tokenizer {name_or_path}: not a local file, and downloading tokenizer.model from "
                                 f"the Hugging Face Hub failed ({type(e).__name__}: {e}); pass a local path") from None
        return cls(Path(downloaded).read_bytes(), f"hf:{name_or_path}")

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    @property
    def bos_id(self) -> int:
        return self.sp.bos_id()

    @property
    def eos_id(self) -> int:
        return self.sp.eos_id()

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text)

    def encode_batch(self, texts: list[str], num_threads: int = 1) -> list[list[int]]:
        return self.sp.encode(texts, num_threads=num_threads)

    def decode(self, ids) -> str:
        return self.sp.decode([int(i) for i in ids])

    @cached_property
    def required_ids(self) -> list[int]:
        """Pieces every text needs: all non-NORMAL pieces (specials, bytes) and the meta-space piece."""
        return [i for i, p in enumerate(self.proto.pieces) if p.type != _NORMAL or p.piece == META_SPACE]

    def count(self, token_ids: np.ndarray) -> np.ndarray:
        """Occurrences of every tokenizer id in `token_ids`."""
        return np.bincount(np.asarray(token_ids, dtype=np.int64), minlength=self.vocab_size)


@dataclass
class VocabRanking:
    """order[i] = tokenizer id of model row i: required pieces first (in tokenizer order), then by frequency."""
    order: np.ndarray
    n_required: int
    counts: np.ndarray
    tokenizer_sha256: str

    @classmethod
    def from_counts(cls, tokenizer: Tokenizer, counts: np.ndarray) -> "VocabRanking":
        counts = np.asarray(counts, dtype=np.int64)
        if counts.shape != (tokenizer.vocab_size,):
            raise TokenizerError(f"counts has shape {counts.shape}, the tokenizer has {tokenizer.vocab_size} pieces")
        required = np.array(tokenizer.required_ids, dtype=np.int64)
        is_required = np.zeros(tokenizer.vocab_size, dtype=bool)
        is_required[required] = True
        others = np.flatnonzero(~is_required)
        others = others[np.lexsort((others, -counts[others]))]   # most frequent first, ties by tokenizer id
        return cls(np.concatenate([required, others]), len(required), counts, tokenizer.sha256)

    @cached_property
    def position(self) -> np.ndarray:
        """position[tokenizer id] = model row."""
        position = np.empty_like(self.order)
        position[self.order] = np.arange(len(self.order))
        return position

    def stage(self, tokenizer: Tokenizer, size: int) -> "VocabStage":
        return VocabStage(tokenizer, self, size)

    @property
    def fingerprint(self) -> str:
        """sha256 of what decides the model's rows (the tokenizer and the order), not of the counts: two rankings
        with the same fingerprint map token ids to the same rows."""
        return hashlib.sha256(self.tokenizer_sha256.encode() + self.order.astype(np.int64).tobytes()).hexdigest()

    def save(self, path: str | os.PathLike):
        data = dict(tokenizer_sha256=self.tokenizer_sha256, n_required=self.n_required,
                    order=self.order.tolist(), counts=self.counts.tolist())
        tmp = Path(f"{path}.tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike, tokenizer: Tokenizer | None = None) -> "VocabRanking":
        try:
            data = json.loads(Path(path).read_text())
            ranking = cls(np.array(data["order"], dtype=np.int64), int(data["n_required"]),
                          np.array(data["counts"], dtype=np.int64), data["tokenizer_sha256"])
        except (OSError, ValueError, KeyError) as e:
            raise TokenizerError(f"cannot read vocabulary ranking {path}: {e}") from None
        if sorted(ranking.order.tolist()) != list(range(len(ranking.order))):
            raise TokenizerError(f"vocabulary ranking {path} is corrupt: order is not a permutation")
        if tokenizer is not None and tokenizer.sha256 != ranking.tokenizer_sha256:
            raise TokenizerError(f"vocabulary ranking {path} was made with another tokenizer "
                                 f"(sha256 {ranking.tokenizer_sha256[:12]}..., this one {tokenizer.sha256[:12]}...)")
        return ranking


def require_stage_support():
    """Vocabulary stages need SentencePiece >= 0.2.3: before it, BPE still emits pieces marked UNUSED, so a stage
    would emit ids outside itself (0.2.0-0.2.2: ~100 of the first 1000 pieces' segmentations leave the stage)."""
    version = tuple(int(part) for part in spm.__version__.split(".")[:3] if part.isdigit())
    if version < (0, 2, 3):
        raise TokenizerError(f"sentencepiece {spm.__version__} cannot encode a vocabulary stage (its BPE emits the "
                             f"pieces a stage leaves out); pip install 'sentencepiece>=0.2.3'")


class VocabStage:
    """Encode and decode with only the first `size` ranked pieces; ids are model rows (0 .. size-1)."""

    def __init__(self, tokenizer: Tokenizer, ranking: VocabRanking, size: int):
        if tokenizer.sha256 != ranking.tokenizer_sha256:
            raise TokenizerError("the vocabulary ranking was made with another tokenizer")
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
            raise TokenizerError(f"vocabulary stage size must be an integer, got {size!r}")
        if size > tokenizer.vocab_size:
            raise TokenizerError(f"vocabulary stage {size} is larger than the tokenizer's {tokenizer.vocab_size} "
                                 f"pieces; use at most {tokenizer.vocab_size}")
        if size < ranking.n_required:
            raise TokenizerError(f"vocabulary stage {size} is smaller than the {ranking.n_required} pieces every text "
                                 f"needs (specials, 256 byte pieces, '{META_SPACE}'); use at least {ranking.n_required}")
        require_stage_support()
        self.tokenizer, self.ranking, self.size = tokenizer, ranking, int(size)
        proto = sp_pb2.ModelProto()
        proto.CopyFrom(tokenizer.proto)
        for token_id in ranking.order[self.size:]:
            if proto.pieces[token_id].type == _NORMAL:
                proto.pieces[token_id].type = _UNUSED
        self.sp = spm.SentencePieceProcessor(model_proto=proto.SerializeToString())
        self.bos_id = int(ranking.position[tokenizer.bos_id])
        self.eos_id = int(ranking.position[tokenizer.eos_id])

    def encode(self, text: str) -> np.ndarray:
        return self.ranking.position[np.asarray(self.sp.encode(text), dtype=np.int64)]

    def encode_batch(self, texts: list[str], num_threads: int = 1) -> list[np.ndarray]:
        return [self.ranking.position[np.asarray(ids, dtype=np.int64)]
                for ids in self.sp.encode(texts, num_threads=num_threads)]

    def decode(self, ids) -> str:
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= self.size):
            raise TokenizerError(f"id {int(ids.max())} is outside vocabulary stage {self.size}")
        return self.sp.decode(self.ranking.order[ids].tolist())

    def model_row_proto(self) -> bytes:
        """This stage as a SentencePiece model whose ids are the model's rows: the pieces reordered by the ranking
        (model row i = piece i), the out-of-stage ones after them and UNUSED. BPE picks merges by piece score,
        never by id, so it segments exactly as `encode` does; Hugging Face loads it as a SentencePiece tokenizer
        (megababel/hf/export.py), so a model exported at this stage needs no id remapping and no extra rows."""
        proto = sp_pb2.ModelProto()
        proto.ParseFromString(self.sp.serialized_model_proto())
        pieces = [proto.pieces[int(i)] for i in self.ranking.order]
        reordered = sp_pb2.ModelProto()
        reordered.CopyFrom(proto)
        del reordered.pieces[:]
        reordered.pieces.extend(pieces)
        spec = reordered.trainer_spec
        for field in ("unk_id", "bos_id", "eos_id", "pad_id"):
            if getattr(spec, field) >= 0:
                setattr(spec, field, int(self.ranking.position[getattr(spec, field)]))
        return reordered.SerializeToString()

    def to_tokenizer_ids(self, ids) -> np.ndarray:
        return self.ranking.order[np.asarray(ids, dtype=np.int64)]

    @cached_property
    def _decomposition(self) -> tuple[np.ndarray, np.ndarray]:
        """Every tokenizer id's pieces under this stage (model rows), as CSR arrays (starts, flat)."""
        proto = sp_pb2.ModelProto()
        proto.ParseFromString(self.sp.serialized_model_proto())
        proto.normalizer_spec.add_dummy_prefix = False      # segment the piece's own text, nothing added
        piece_sp = spm.SentencePieceProcessor(model_proto=proto.SerializeToString())
        decomposed = []
        for token_id, piece in enumerate(proto.pieces):
            if piece.type == _UNUSED:
                ids = piece_sp.encode(piece.piece.replace(META_SPACE, " "))
                decomposed.append(self.ranking.position[np.asarray(ids, dtype=np.int64)])
            else:
                decomposed.append(self.ranking.position[[token_id]])
        starts = np.zeros(len(decomposed) + 1, dtype=np.int64)
        np.cumsum([len(d) for d in decomposed], out=starts[1:])
        return starts, np.concatenate(decomposed)

    def remap(self, tokenizer_ids) -> np.ndarray:
        """Full-vocabulary tokenizer ids -> this stage's ids, each out-of-stage token replaced by its segmentation
        under the stage. Equals `encode(text)` of the same text (SentencePiece itself re-segments UNUSED pieces the
        same way; tests and bench/data_speed.py check it on real corpora) at a fraction of the cost."""
        ids = np.asarray(tokenizer_ids, dtype=np.int64)
        starts, flat = self._decomposition
        begin, length = starts[ids], starts[ids + 1] - starts[ids]
        out_starts = np.zeros(len(ids) + 1, dtype=np.int64)
        np.cumsum(length, out=out_starts[1:])
        return flat[np.arange(out_starts[-1]) - np.repeat(out_starts[:-1] - begin, length)]


# Llama 2's SentencePiece trainer settings (read from its tokenizer.model's trainer_spec / normalizer_spec)
LLAMA2_RECIPE = dict(
    model_type="bpe", byte_fallback=True, split_digits=True, allow_whitespace_only_pieces=True,
    remove_extra_whitespaces=False, normalization_rule_name="identity", add_dummy_prefix=True,
    character_coverage=0.99995, max_sentencepiece_length=16, split_by_unicode_script=True,
    split_by_whitespace=True, split_by_number=True, treat_whitespace_as_suffix=False,
    unk_id=0, bos_id=1, eos_id=2, pad_id=-1, max_sentence_length=4192,
)


def train_sentencepiece(documents, vocab_size: int, model_path: str | os.PathLike, num_threads: int = 2,
                        **overrides) -> Tokenizer:
    """Train a SentencePiece BPE with the Llama 2 recipe on an iterable of documents; write `model_path`.

    Documents are fed line by line (SentencePiece skips "sentences" longer than max_sentence_length bytes)."""
    model_path = Path(model_path)
    limit = overrides.get("max_sentence_length", LLAMA2_RECIPE["max_sentence_length"])

    def lines():
        for doc in documents:
            for line in doc.split("\n"):
                if line.strip() and len(line.encode("utf-8")) <= limit:
                    yield line

    model = io.BytesIO()
    options = dict(LLAMA2_RECIPE, vocab_size=vocab_size, num_threads=num_threads, minloglevel=2, **overrides)
    try:
        spm.SentencePieceTrainer.train(sentence_iterator=lines(), model_writer=model, **options)
    except RuntimeError as e:
        raise TokenizerError(f"training a {vocab_size}-piece tokenizer failed: {e}") from None
    model_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = model_path.with_name(model_path.name + ".tmp")
    tmp.write_bytes(model.getvalue())
    os.replace(tmp, model_path)
    return Tokenizer(model.getvalue(), str(model_path))

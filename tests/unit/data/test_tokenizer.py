"""Tokenizer and vocabulary stages."""
from __future__ import annotations

import numpy as np
import pytest

from helpers import SHARED_DATA
from megababel.data.embedded import embedded_corpus
from megababel.data.tokenizer import Tokenizer, TokenizerError, VocabRanking, train_sentencepiece

LLAMA2 = SHARED_DATA / "tokenizers" / "llama2" / "tokenizer.model"
CORPORA = {"tinystories": SHARED_DATA / "tinystories" / "valid.txt",
           "wikitext": SHARED_DATA / "wikitext" / "wiki.valid.raw",
           "shakespeare": SHARED_DATA / "shakespeare" / "input.txt"}
needs_shared = pytest.mark.skipif(not LLAMA2.exists(), reason=f"{SHARED_DATA} (Llama 2 tokenizer, corpora) is absent")


@pytest.fixture(scope="module")
def llama2():
    tokenizer = Tokenizer.load(LLAMA2)
    train = (SHARED_DATA / "tinystories" / "train.txt").read_text()
    return tokenizer, VocabRanking.from_counts(tokenizer, tokenizer.count(tokenizer.encode(train)))


@pytest.fixture(scope="module")
def embedded_tokenizer(tmp_path_factory):
    docs = embedded_corpus()
    tokenizer = train_sentencepiece(docs, 2000, tmp_path_factory.mktemp("tok") / "embedded.model")
    counts = tokenizer.count(np.concatenate([np.array(ids) for ids in tokenizer.encode_batch(docs)]))
    return tokenizer, VocabRanking.from_counts(tokenizer, counts), docs


@needs_shared
@pytest.mark.parametrize("corpus", sorted(CORPORA))
@pytest.mark.parametrize("size", [500, 2000, 8000])
def test_stage_round_trip_and_ids_inside_stage(llama2, corpus, size):
    tokenizer, ranking = llama2
    text = CORPORA[corpus].read_text(encoding="utf-8")
    stage = ranking.stage(tokenizer, size)
    ids = stage.encode(text)
    assert ids.min() >= 0 and ids.max() < size
    assert stage.decode(ids) == text
    if size == 8000:  # a larger stage needs fewer tokens than a smaller one
        assert len(ids) < len(ranking.stage(tokenizer, 2000).encode(text))


@needs_shared
def test_ranking_order_requirements_and_persistence(llama2, tmp_path):
    tokenizer, ranking = llama2
    required = tokenizer.required_ids
    assert len(required) == 3 + 256 + 1 and 29871 in required            # specials, bytes, '▁'
    assert ranking.order[: len(required)].tolist() == required
    ranked_counts = ranking.counts[ranking.order[len(required):]]
    assert np.all(np.diff(ranked_counts) <= 0)                           # most frequent first
    assert np.array_equal(ranking.position[ranking.order], np.arange(tokenizer.vocab_size))
    # the full stage is the full tokenizer, renumbered
    full = ranking.stage(tokenizer, tokenizer.vocab_size)
    text = "Once upon a time, there was a little robot."
    assert full.to_tokenizer_ids(full.encode(text)).tolist() == tokenizer.encode(text)
    ranking.save(tmp_path / "ranking.json")
    loaded = VocabRanking.load(tmp_path / "ranking.json", tokenizer)
    assert np.array_equal(loaded.order, ranking.order)


def test_trained_tokenizer_follows_the_llama2_recipe_and_round_trips(embedded_tokenizer):
    tokenizer, ranking, docs = embedded_tokenizer
    spec = tokenizer.proto.trainer_spec
    assert spec.model_type == spec.BPE and spec.byte_fallback and spec.split_digits
    assert (tokenizer.proto.pieces[tokenizer.bos_id].piece, tokenizer.proto.pieces[tokenizer.eos_id].piece) == \
        ("<s>", "</s>")
    text = "\n\n".join(docs[:300]) + "\n  odd   spacing\t tabs, digits 12345 and ünïcödé ✓ 漢字"
    for size in (300, 1000, 2000):
        ids = ranking.stage(tokenizer, size).encode(text)
        assert ids.max() < size and ranking.stage(tokenizer, size).decode(ids) == text


def test_stage_size_errors(embedded_tokenizer):
    tokenizer, ranking, _ = embedded_tokenizer
    with pytest.raises(TokenizerError, match="larger than the tokenizer's 2000 pieces"):
        ranking.stage(tokenizer, 2001)
    with pytest.raises(TokenizerError, match="smaller than the 260 pieces every text needs"):
        ranking.stage(tokenizer, 100)
    with pytest.raises(TokenizerError, match="outside vocabulary stage 300"):
        ranking.stage(tokenizer, 300).decode([5, 1500])


def test_tokenizer_load_errors(tmp_path, monkeypatch, embedded_tokenizer):
    with pytest.raises(TokenizerError, match="no such file"):
        Tokenizer.load(tmp_path / "missing.model")
    (tmp_path / "junk.model").write_bytes(b"not a sentencepiece model at all")
    with pytest.raises(TokenizerError, match="is not a SentencePiece model"):
        Tokenizer.load(tmp_path / "junk.model")
    import huggingface_hub.constants
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)    # no network here: fail fast
    with pytest.raises(TokenizerError, match="downloading tokenizer.model from the Hugging Face Hub failed"):
        Tokenizer.load("nobody/no-such-repo")
    tokenizer, ranking, _ = embedded_tokenizer
    ranking.save(tmp_path / "ranking.json")
    if LLAMA2.exists():
        with pytest.raises(TokenizerError, match="made with another tokenizer"):
            VocabRanking.load(tmp_path / "ranking.json", Tokenizer.load(LLAMA2))


@needs_shared
@pytest.mark.parametrize("corpus", sorted(CORPORA))
def test_remapping_full_tokens_equals_encoding_under_the_stage(llama2, corpus):
    """What preprocessing relies on: every document, three stages."""
    from megababel.data.readers import read_documents

    tokenizer, ranking = llama2
    texts = list(read_documents(str(CORPORA[corpus])))
    full = tokenizer.encode_batch(texts, num_threads=2)
    for size in (500, 2000, 8000):
        stage = ranking.stage(tokenizer, size)
        for text, exact, ids in zip(texts, stage.encode_batch(texts, num_threads=2), full):
            assert np.array_equal(stage.remap(ids), exact)


@needs_shared
def test_the_model_row_proto_encodes_the_stage_with_model_row_ids(llama2):
    """What a stage export ships: SentencePiece on the reordered proto gives the stage's ids (model rows) on real
    corpora, never an id outside the stage, and decodes back."""
    import sentencepiece as spm

    from megababel.data.readers import read_documents
    tokenizer, ranking = llama2
    texts = [d for path in CORPORA.values() for _, d in zip(range(400), read_documents(str(path)))]
    for size in (300, 2000, 32000):
        stage = ranking.stage(tokenizer, size)
        sp = spm.SentencePieceProcessor(model_proto=stage.model_row_proto())
        encoded = sp.encode(texts)
        assert encoded == [ids.tolist() for ids in stage.encode_batch(texts)]
        assert max(max(ids) for ids in encoded if ids) < size and (sp.bos_id(), sp.eos_id()) == (stage.bos_id,
                                                                                                 stage.eos_id)
        assert sp.decode(encoded[:50]) == texts[:50]


def test_remapping_equals_encoding_on_the_embedded_corpus(embedded_tokenizer):
    tokenizer, ranking, docs = embedded_tokenizer
    for size in (300, 1000):
        stage = ranking.stage(tokenizer, size)
        for doc in docs[:500]:
            assert np.array_equal(stage.remap(tokenizer.encode(doc)), stage.encode(doc))


def test_train_tokenizer_tool(tmp_path, capsys):
    from megababel.cli import train_tokenizer as tool
    (tmp_path / "a.txt").write_text("The cat sat on the mat.\n\nThe dog sat on the log, 42 times.\n" * 50)
    tokenizer = tool.main([str(tmp_path / "a.txt"), "--embedded", "--vocab-size", "600",
                           "--out", str(tmp_path / "t.model")])
    assert Tokenizer.load(tmp_path / "t.model").vocab_size == 600 == tokenizer.vocab_size
    assert tokenizer.decode(tokenizer.encode("The dog sat, 42 times.")) == "The dog sat, 42 times."
    with pytest.raises(SystemExit):
        tool.main(["--embedded", "--vocab-size", "100", "--out", str(tmp_path / "u.model")])
    assert "at least 260 pieces" in capsys.readouterr().err


def test_a_sentencepiece_that_cannot_encode_stages_is_refused(monkeypatch):
    """Before 0.2.3, SentencePiece's BPE emits pieces marked UNUSED: stages would leak ids (found on a GPU image with
    0.2.2). The refusal names the fix."""
    import sentencepiece as spm
    from megababel.data.tokenizer import TokenizerError, require_stage_support
    require_stage_support()                         # the installed one (setup.cfg asks for >= 0.2.3)
    monkeypatch.setattr(spm, "__version__", "0.2.2")
    with pytest.raises(TokenizerError, match=r"sentencepiece>=0\.2\.3"):
        require_stage_support()

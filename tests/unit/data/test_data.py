"""Preprocessing (readers, shards, index) and the packing loader."""
from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from megababel.data.embedded import embedded_corpus
from megababel.data.loader import PackedLoader
from megababel.data.preprocess import preprocess, stage_dir
from megababel.data.readers import DataError, read_documents
from megababel.data.shards import TokenDataset
from megababel.data.tokenizer import TokenizerError, VocabRanking, train_sentencepiece

STAGES = [300, 1000]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A tokenizer trained on the embedded corpus and 400 of its documents written as txt, jsonl and parquet."""
    root = tmp_path_factory.mktemp("corpus")
    docs = embedded_corpus()
    tokenizer = train_sentencepiece(docs, 1000, root / "tok.model")
    # txt documents are separated by blank lines, so the sample has none inside a document
    sample = ["\n".join(line for line in d.split("\n") if line.strip()) for d in docs[:400]]
    (root / "docs.txt").write_text("\n\n".join(sample) + "\n")
    (root / "docs.jsonl").write_text("".join(json.dumps({"id": i, "text": d}) + "\n" for i, d in enumerate(sample)))
    pq.write_table(pa.table({"text": sample, "id": list(range(len(sample)))}), root / "docs.parquet")
    return tokenizer, root, sample


def _preprocess(corpus, source, out, **kw):
    tokenizer, root, _ = corpus
    kw.setdefault("progress", False)
    return preprocess([str(root / source)], out, tokenizer, kw.pop("stages", STAGES + [1000]), valid_every=10, **kw)


def test_txt_jsonl_parquet_give_identical_shards(corpus, tmp_path):
    for fmt in ("txt", "jsonl", "parquet"):
        _preprocess(corpus, f"docs.{fmt}", tmp_path / fmt)
    for size in STAGES:
        files = sorted(p.name for p in stage_dir(tmp_path / "txt", size).iterdir())
        assert "index.json" in files and "train_00000.tokens" in files
        for fmt in ("jsonl", "parquet"):
            for name in files:
                assert (stage_dir(tmp_path / fmt, size) / name).read_bytes() == \
                       (stage_dir(tmp_path / "txt", size) / name).read_bytes(), (fmt, size, name)
    assert (tmp_path / "txt" / "ranking.json").read_bytes() == (tmp_path / "parquet" / "ranking.json").read_bytes()


def test_local_hugging_face_datasets_give_the_readers_shards(corpus, tmp_path):
    """The same documents as a save_to_disk Dataset, a DatasetDict (DIR:split), and a directory of parquet shards
    (a Hub download's layout, streamed by `datasets`): the same documents in order and the same token shards as the
    jsonl reader."""
    datasets = pytest.importorskip("datasets")
    _, root, sample = corpus
    table = datasets.Dataset.from_dict({"id": list(range(len(sample))), "text": sample})
    table.save_to_disk(str(root / "saved"))
    datasets.DatasetDict(validation=table.select(range(5)), train=table).save_to_disk(str(root / "dict"))
    (root / "shards" / "data").mkdir(parents=True)
    for k, start in enumerate(range(0, len(sample), 150)):     # 3 shards: read in name order
        pq.write_table(pa.table({"text": sample[start:start + 150]}),
                       root / "shards" / "data" / f"train-{k:05d}-of-00003.parquet")
    for source in ("saved", "dict", "shards", "dict:validation"):
        expected = sample[:5] if source.endswith("validation") else sample
        assert list(read_documents(str(root / source))) == expected, source
    _preprocess(corpus, "docs.jsonl", tmp_path / "jsonl")
    _preprocess(corpus, "saved", tmp_path / "saved")
    for size in STAGES:
        for name in sorted(p.name for p in stage_dir(tmp_path / "jsonl", size).iterdir()):
            assert (stage_dir(tmp_path / "saved", size) / name).read_bytes() == \
                   (stage_dir(tmp_path / "jsonl", size) / name).read_bytes(), (size, name)
    with pytest.raises(DataError, match="no split 'test'"):
        list(read_documents(str(root / "dict") + ":test"))
    with pytest.raises(DataError, match="no column 'body'"):
        list(read_documents(str(root / "saved"), text_key="body"))
    (root / "mixed").mkdir()
    (root / "mixed" / "a.jsonl").write_text('{"text": "x"}\n')
    pq.write_table(pa.table({"text": ["y"]}), root / "mixed" / "b.parquet")
    with pytest.raises(DataError, match="one kind"):
        list(read_documents(str(root / "mixed")))


def test_shards_decode_back_to_the_documents(corpus, tmp_path):
    tokenizer, _, sample = corpus
    _preprocess(corpus, "docs.jsonl", tmp_path / "d")
    ranking = VocabRanking.load(tmp_path / "d" / "ranking.json", tokenizer)
    for size in STAGES:
        stage = ranking.stage(tokenizer, size)
        train, valid = TokenDataset(stage_dir(tmp_path / "d", size), "train"), \
            TokenDataset(stage_dir(tmp_path / "d", size), "valid")
        assert train.n_docs + valid.n_docs == len(sample) and valid.n_docs == len(sample) // 10
        assert stage.decode(train.doc(0)) == sample[0] and stage.decode(valid.doc(0)) == sample[9]
        assert train.doc(5).dtype == np.uint16 and int(train.doc(5).max()) < size


@pytest.mark.parametrize("make,message", [
    (lambda root: None, "no such file"),
    (lambda root: (root / "bad.txt").write_bytes(b""), "the file is empty"),
    (lambda root: (root / "bad.txt").write_bytes(b"good text\n\xff\xfe broken"), "not valid UTF-8 at byte 10"),
    (lambda root: (root / "bad.jsonl").write_text('{"text": "a"}\n{"text": oops}\n'), "bad.jsonl:2: not valid JSON"),
    (lambda root: (root / "bad.jsonl").write_text('{"body": "a"}\n'), "no field 'text'"),
    (lambda root: pq.write_table(pa.table({"content": ["a"]}), root / "bad.parquet"), "no column 'text'"),
    (lambda root: (root / "bad.csv").write_text("a,b\n"), "unknown format"),
])
def test_bad_inputs_fail_with_clear_errors(corpus, tmp_path, make, message):
    tokenizer, _, _ = corpus
    make(tmp_path)
    source = next((str(p) for p in tmp_path.glob("bad.*")), str(tmp_path / "missing.txt"))
    with pytest.raises(DataError, match=message):
        preprocess([source], tmp_path / "out", tokenizer, STAGES, progress=False)


def test_bad_stage_and_existing_output(corpus, tmp_path):
    tokenizer, root, _ = corpus
    with pytest.raises(TokenizerError, match="between 260 .* and the tokenizer's 1000 pieces"):
        preprocess([str(root / "docs.txt")], tmp_path / "o", tokenizer, [5000], progress=False)
    assert not (tmp_path / "o").exists()                       # refused before any work
    _preprocess(corpus, "docs.txt", tmp_path / "o")
    with pytest.raises(DataError, match="pass --overwrite"):
        _preprocess(corpus, "docs.txt", tmp_path / "o")


def test_interrupted_preprocessing_leaves_nothing_that_looks_complete(corpus, tmp_path):
    tokenizer, root, sample = corpus
    broken = tmp_path / "broken.jsonl"
    broken.write_text("".join(json.dumps({"text": d}) + "\n" for d in sample * 3) + "{not json\n")
    with pytest.raises(DataError, match="not valid JSON"):
        preprocess([str(broken)], tmp_path / "out", tokenizer, STAGES, shard_tokens=2000, progress=False)
    assert list((tmp_path / "out").rglob("*.tokens"))         # shards were being written ...
    assert not list((tmp_path / "out").rglob("index.json"))   # ... but nothing claims to be complete
    with pytest.raises(DataError, match="preprocessing did not finish"):
        TokenDataset(tmp_path / "out" / "_pass1_tokenizer_ids")


def test_killed_preprocessing_leaves_nothing_that_looks_complete(corpus, tmp_path):
    """SIGKILL the real tool while it writes shards: no index.json may exist afterwards."""
    tokenizer, root, sample = corpus
    big = tmp_path / "big.jsonl"
    big.write_text("".join(json.dumps({"text": d}) + "\n" for d in sample * 60))
    out = tmp_path / "out"
    process = subprocess.Popen([sys.executable, "-m", "megababel.cli.preprocess", str(big), "--out", str(out),
                                "--tokenizer", str(root / "tok.model"), "--stages", "300", "1000",
                                "--shard-tokens", "5000", "--workers", "1"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and len(list(out.rglob("*.tokens"))) < 3:
        time.sleep(0.01)
    process.kill()
    process.wait()
    assert list(out.rglob("*.tokens")), "the tool wrote no shard before it was killed"
    assert not list(out.rglob("index.json"))
    for directory in [p for p in out.iterdir() if p.is_dir()]:
        with pytest.raises(DataError, match="preprocessing did not finish"):
            TokenDataset(directory)


def test_corrupt_shards_are_detected(corpus, tmp_path):
    _preprocess(corpus, "docs.txt", tmp_path / "d")
    directory = stage_dir(tmp_path / "d", 300)
    tokens = directory / "train_00000.tokens"
    tokens.write_bytes(tokens.read_bytes()[:-2])
    with pytest.raises(DataError, match="corrupt shard or index"):
        TokenDataset(directory)
    (directory / "index.json").write_text("{ truncated")
    with pytest.raises(DataError, match="corrupt index"):
        TokenDataset(directory)


@pytest.fixture(scope="module")
def dataset(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("ds")
    _preprocess(corpus, "docs.txt", out)
    return TokenDataset(stage_dir(out, 1000), "train")


def _batches(loader, n):
    return [loader.next_batch() for _ in range(n)]


def test_loader_packs_documents_with_bos_eos(dataset):
    loader = PackedLoader(dataset, seq_len=64, batch_size=2, shuffle=False)
    stream = np.concatenate([np.concatenate([[dataset.bos_id], dataset.doc(i), [dataset.eos_id]])
                             for i in range(dataset.n_docs)])
    x, y = loader.next_batch()
    assert np.array_equal(x[0].numpy(), stream[:64]) and np.array_equal(y[0].numpy(), stream[1:65])
    assert np.array_equal(x[1].numpy(), stream[64:128])


def test_loader_is_deterministic_and_resumes_exactly(dataset):
    per_epoch = PackedLoader(dataset, 64, 16).sequences_per_epoch // 16
    total, cut = per_epoch + 10, per_epoch - 5
    reference = _batches(PackedLoader(dataset, 64, 16, seed=3), total)
    other_seed = _batches(PackedLoader(dataset, 64, 16, seed=4), 5)
    assert not all(np.array_equal(a[0], b[0]) for a, b in zip(reference, other_seed))
    first = PackedLoader(dataset, 64, 16, seed=3)
    _batches(first, cut)
    state = json.loads(json.dumps(first.state_dict()))          # survives a checkpoint round trip
    resumed = PackedLoader(dataset, 64, 16, seed=3)
    resumed.load_state_dict(state)
    for (x, y), (rx, ry) in zip(reference[cut:], _batches(resumed, total - cut)):   # crosses an epoch boundary
        assert np.array_equal(x, rx) and np.array_equal(y, ry)
    assert resumed.epoch == 1
    with pytest.raises(DataError, match="seq_len 64 vs 32"):
        PackedLoader(dataset, 32, 16, seed=3).load_state_dict(state)


def test_data_parallel_ranks_are_disjoint_and_cover_the_epoch(dataset):
    world, batch, seq = 3, 2, 64
    loaders = [PackedLoader(dataset, seq, batch, dp_rank=r, dp_world=world, seed=1) for r in range(world)]
    steps = loaders[0].sequences_per_epoch // (world * batch)
    seen = {r: [loaders[r].next_batch()[0] for _ in range(steps)] for r in range(world)}
    single = PackedLoader(dataset, seq, batch * world, seed=1)
    for step in range(steps):
        together = single.next_batch()[0]
        ranks = np.concatenate([seen[r][step] for r in range(world)])
        assert np.array_equal(ranks, together)                   # rank slices tile the global batch, in order
    all_rows = {tuple(row.tolist()) for r in range(world) for b in seen[r] for row in b}
    assert len(all_rows) == steps * world * batch                # no sequence served twice


def test_resume_on_a_different_number_of_ranks(dataset):
    two = [PackedLoader(dataset, 64, 2, dp_rank=r, dp_world=2, seed=5) for r in range(2)]
    for _ in range(4):
        for loader in two:
            loader.next_batch()
    one = PackedLoader(dataset, 64, 4, seed=5)
    one.load_state_dict(two[0].state_dict())
    reference = PackedLoader(dataset, 64, 4, seed=5)
    _batches(reference, 4)
    assert np.array_equal(one.next_batch()[0], reference.next_batch()[0])


def test_processes_building_the_embedded_dataset_at_once_all_get_it(tmp_path):
    """pytest -n and multi-rank runs build the cache concurrently: each builds in its own folder, and a build that
    lands second uses the first one's (once, all of them shared one work folder and broke each other's tokenizer)."""
    import subprocess
    import sys
    code = ("import sys; from megababel.data.embedded import build_embedded_dataset; "
            "from megababel.data.shards import TokenDataset; out = build_embedded_dataset(sys.argv[1]); "
            "print(out, TokenDataset(out / 'vocab_1000', 'train').n_bytes)")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]
    results = [p.communicate(timeout=300) + (p.returncode,) for p in procs]
    assert all(rc == 0 for _, _, rc in results), [err[-2000:] for _, err, _ in results]
    assert len({out for out, _, _ in results}) == 1
    assert [p.name for p in tmp_path.iterdir()] == [results[0][0].split()[0].rsplit("/", 1)[1]]   # no work folders


def test_a_new_sequence_length_repacks_the_same_stream_from_the_same_position(dataset):
    """16-token sequences, then 48-token ones (a growth's seq_len), on 2 data-parallel ranks: the ranks' rows, in
    order, tile one contiguous stream (nothing skipped or read twice); a resume after the change continues it."""
    world = 2
    ranks = [PackedLoader(dataset, 16, 3, dp_rank=r, dp_world=world, seed=7) for r in range(world)]
    rows = []
    for steps, change in ((2, None), (3, (48, 1))):
        if change:
            for loader in ranks:
                loader.set_seq_len(*change)
        for _ in range(steps):
            rows += [row for loader in ranks for row in loader.next_batch()[0].numpy()]
    assert [len(r) for r in rows] == [16] * 12 + [48] * 6
    stream = PackedLoader(dataset, 12 * 16 + 6 * 48, 1, seed=7).next_batch()[0][0].numpy()
    assert np.array_equal(np.concatenate(rows), stream)
    state = json.loads(json.dumps(ranks[0].state_dict()))
    assert state["position"] == 12 * 16 + 6 * 48 and state["seq_len"] == 48
    resumed = PackedLoader(dataset, 48, 2, seed=7)
    resumed.load_state_dict(state)
    after = PackedLoader(dataset, 12 * 16 + 8 * 48, 1, seed=7).next_batch()[0][0].numpy()[len(stream):]
    assert np.array_equal(resumed.next_batch()[0].numpy().ravel(), after)


def test_an_old_loader_state_counted_in_sequences_resumes_at_the_same_place(dataset):
    loader = PackedLoader(dataset, 64, 4, seed=2)
    _batches(loader, 3)
    old = {k: v for k, v in loader.state_dict().items() if k != "position"}     # saved before positions in tokens
    assert old["consumed"] == 12
    resumed = PackedLoader(dataset, 64, 4, seed=2)
    resumed.load_state_dict(old)
    assert np.array_equal(resumed.next_batch()[0], loader.next_batch()[0])

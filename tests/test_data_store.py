"""The token store: parts that do not depend on workers or slices, resume after a kill, bad stores, windows."""

import errno
import json
import threading
from pathlib import Path

import ml_collections
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from data import corpus, store
from data.errors import DataError
from tests.test_data_common import write_corpus


def data_config(train_files, tmp_path, **kw):
    d = ml_collections.ConfigDict(dict(
        train_files=train_files, val_files="", val_fraction=0.1, txt_documents="line", jsonl_field="text",
        parquet_column="text", tokenizer="", tokenizer_type="byte", vocab_size=512, cache_dir=str(tmp_path / "cache"),
        num_workers=1, shard_tokens=2000, tokenizer_sample_mb=64))
    d.update(kw)
    return d


def _files(tmp_path, n=4, lines=150):
    paths = [write_corpus(tmp_path, f"part{i}.txt", lines, seed=i) for i in range(n - 1)]
    with open(tmp_path / "web.jsonl", "w") as f:
        for i in range(lines):
            f.write(json.dumps({"text": f"record {i}: the words of document {i * 7 % 13}"}) + "\n")
    return ",".join(paths + [str(tmp_path / "web.jsonl")])


def _content(c):
    return {s: np.asarray(c.tokens[s]) for s in store.SPLITS}


def _fresh(cfg, tmp_path, name):
    """The same data config with a cache of its own."""
    return ml_collections.ConfigDict({**cfg.to_dict(), "cache_dir": str(tmp_path / name)})


def test_parts_do_not_depend_on_workers_or_slices(tmp_path):
    cfg = data_config(_files(tmp_path), tmp_path)
    one = corpus.load(_fresh(cfg, tmp_path, "one"))
    assert not one.cache_hit and len(store.read_json(
        corpus.store_dir(_fresh(cfg, tmp_path, "one"), corpus.units(cfg)) / store.INDEX)["parts"]) > 4
    two = _fresh(cfg, tmp_path, "two")
    corpus.prepare(two, num_workers=2, log=lambda m: None)
    sliced = _fresh(cfg, tmp_path, "sliced")
    directory = corpus.prepare(sliced, num_shards=2, shard=1, log=lambda m: None)
    assert not (directory / store.INDEX).exists()  # slice 0 still to come
    corpus.prepare(sliced, num_shards=2, shard=0, log=lambda m: None)
    for other in (corpus.load(two), corpus.load(sliced)):
        assert other.cache_hit and other.documents == one.documents and other.bytes == one.bytes
        for s, t in _content(one).items():
            np.testing.assert_array_equal(_content(other)[s], t)
    # The stream is the documents with eos after each; the split by hash; bytes and documents counted.
    train, val = [], []
    for f in cfg.train_files.split(","):
        tr, va = corpus.split_train_val(corpus.read_documents(Path(f), "line", "text"), 0.1)
        train += tr
        val += va
    tok = one.tokenizer
    want = [t for d in train for t in tok.encode(d) + [tok.eos_id]]
    assert _content(one)["train"].tolist() == want
    assert one.documents == {"train": len(train), "val": len(val)} and one.bytes["val"] == sum(
        len(d.encode()) for d in val)
    starts = one.tokens["train"].document_starts()
    assert len(starts) == len(train) and starts[0] == 0
    assert np.all(_content(one)["train"][starts[1:] - 1] == tok.eos_id)


def test_a_killed_preparation_resumes_at_the_part_where_it_stopped(tmp_path, monkeypatch):
    cfg = data_config(write_corpus(tmp_path, "big.txt", 600), tmp_path)
    reference = _content(corpus.load(_fresh(cfg, tmp_path, "ref")))
    calls = {"n": 0}
    real = store.write_json

    def dies_at_the_fourth_part(path, obj):
        if path.name.startswith("u00000-p") and calls["n"] == 3:
            raise KeyboardInterrupt  # killed between writing a part's arrays and its marker
        calls["n"] += path.name.startswith("u00000-p")
        return real(path, obj)

    monkeypatch.setattr(store, "write_json", dies_at_the_fourth_part)
    with pytest.raises(KeyboardInterrupt):
        corpus.load(cfg)
    monkeypatch.setattr(store, "write_json", real)
    directory = corpus.store_dir(cfg, corpus.units(cfg))
    done = sorted(p.name for p in directory.glob("u00000-p*.json"))
    assert len(done) == 3 and not (directory / store.INDEX).exists()
    before = {p.name: p.stat().st_mtime_ns for p in directory.glob("u00000-p000[0-2].*")}
    seen = []
    monkeypatch.setattr(store.PartWriter, "add", lambda self, *a, real_add=store.PartWriter.add: (
        seen.append(1), real_add(self, *a))[1])
    resumed = corpus.load(cfg)
    assert not resumed.cache_hit
    for s, t in reference.items():
        np.testing.assert_array_equal(_content(resumed)[s], t)
    assert {p.name: p.stat().st_mtime_ns for p in directory.glob("u00000-p000[0-2].*")} == before
    # Only the documents after the three finished parts were tokenized again.
    consumed = store.read_json(directory / "u00000-p0002.json")["documents_read"]
    assert consumed > 0 and len(seen) == sum(resumed.documents.values()) - consumed


def test_a_full_disk_leaves_no_partial_part(tmp_path, monkeypatch):
    cfg = data_config(write_corpus(tmp_path, "big.txt", 600), tmp_path)
    real = np.save
    count = {"n": 0}

    def full(f, arr, *a, **k):
        count["n"] += 1
        if count["n"] == 5:  # part 0 wrote four arrays; the fifth is part 1 training tokens
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(f, arr, *a, **k)

    monkeypatch.setattr(np, "save", full)
    with pytest.raises(DataError, match=r"cannot write .*u00000-p0001\.train\.npy \(No space left on device\): free "
                                        r"disk space or set data\.cache_dir"):
        corpus.load(cfg)
    directory = corpus.store_dir(cfg, corpus.units(cfg))
    assert not list(directory.glob("*.tmp")) and not list(directory.glob(".*.tmp"))
    assert not (directory / "u00000-p0001.json").exists()  # the part is not marked done: it is written again
    monkeypatch.setattr(np, "save", real)
    assert corpus.load(cfg).documents["train"] > 0


def test_changed_input_and_settings_make_another_store(tmp_path):
    path = write_corpus(tmp_path, "c.txt", 200)
    cfg = data_config(path, tmp_path)
    a = corpus.load(cfg)
    assert corpus.load(cfg).cache_hit
    assert not corpus.load(data_config(path, tmp_path, shard_tokens=3000)).cache_hit
    with open(path, "a") as f:
        f.write("one more line\n")
    b = corpus.load(cfg)
    assert not b.cache_hit and b.cache_path != a.cache_path


def test_a_damaged_store_is_one_clear_error(tmp_path):
    cfg = data_config(write_corpus(tmp_path, "c.txt", 300), tmp_path)
    c = corpus.load(cfg)
    directory = corpus.store_dir(cfg, corpus.units(cfg))
    with pytest.raises(DataError, match="written by tokenizer byte .* not the one configured"):
        store.open_store(directory, "0" * 64)
    (directory / "u00000-p0001.train.npy").unlink()
    with pytest.raises(DataError, match=r"lacks u00000-p0001\.train\.npy: delete .*data\.prepare"):
        corpus.load(cfg)
    assert c.cache_path == str(directory)


def test_only_process_zero_prepares_the_others_wait(tmp_path):
    cfg = data_config(_files(tmp_path, n=2), tmp_path)
    results = {}
    waiter = threading.Thread(target=lambda: results.setdefault(1, corpus.load(cfg, 1, 2)))
    waiter.start()
    waiter.join(timeout=2.0)
    assert waiter.is_alive()  # process 1 waits: it never tokenizes
    directory = corpus.store_dir(cfg, corpus.units(cfg))
    assert not list(directory.glob("u*.json")) if directory.exists() else True
    results[0] = corpus.load(cfg, 0, 2)
    waiter.join(timeout=30)
    assert not waiter.is_alive() and results[1].documents == results[0].documents


@settings(max_examples=40, deadline=None, derandomize=True, database=None)
@given(st.lists(st.integers(0, 30), min_size=1, max_size=8), st.integers(1, 40), st.data())
def test_windows_across_parts_equal_the_concatenated_stream(tmp_path_factory, lengths, width, data):
    d = tmp_path_factory.mktemp("parts")
    stream = np.arange(sum(lengths), dtype=np.uint16)
    parts, start = [], 0
    for i, n in enumerate(lengths):
        name = store.part_name(0, i)
        np.save(d / f"{name}.train.npy", stream[start:start + n])
        np.save(d / f"{name}.train.docs.npy", np.zeros(1 if n else 0, np.int64))
        parts.append({"name": name, "train": {"tokens": n}})
        start += n
    ts = store.TokenStream(d, "train", parts)
    assert len(ts) == len(stream)
    if len(stream) < width:
        return
    offsets = np.array(data.draw(st.lists(st.integers(0, len(stream) - width), min_size=1, max_size=6)))
    np.testing.assert_array_equal(ts.windows(offsets, width), stream[offsets[:, None] + np.arange(width)])
    lo, hi = sorted(data.draw(st.tuples(st.integers(0, len(stream)), st.integers(0, len(stream)))))
    np.testing.assert_array_equal(ts[lo:hi], stream[lo:hi])

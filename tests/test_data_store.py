"""The token store: parts that do not depend on workers or slices (run in parallel processes), parts bounded in
size for every split, files on disk before the marker that publishes them, resume after a kill, the index written
by --finalize, bad stores, windows."""

import errno
import json
import multiprocessing
import os
import re
import threading
from pathlib import Path

import ml_collections
import numpy as np
import pytest
from hypothesis import assume, given, settings
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


def _val_file(tmp_path, n=1000) -> Path:
    """n validation documents of 50 bytes each (51 tokens with eos under the byte tokenizer)."""
    path = tmp_path / "val.txt"
    path.write_text("".join(f"validation document {i:05d} {'x' * 24}\n" for i in range(n)))
    return path


def test_slices_prepared_in_parallel_processes_make_the_same_store(tmp_path):
    cfg = data_config(_files(tmp_path, n=3), tmp_path, val_files=str(_val_file(tmp_path, 300)))
    one = corpus.load(_fresh(cfg, tmp_path, "one"))
    sliced = _fresh(cfg, tmp_path, "sliced")
    ctx = multiprocessing.get_context("spawn")
    jobs = [ctx.Process(target=corpus.prepare, args=(sliced, 1, 2, k)) for k in (0, 1)]  # imports data/ alone
    for j in jobs:
        j.start()
    for j in jobs:
        j.join(timeout=120)
    assert [j.exitcode for j in jobs] == [0, 0]
    # Each slice checks after writing its own units, so the later of the two sees both: the index is written.
    assert (corpus.store_dir(sliced, corpus.units(sliced)) / store.INDEX).is_file()
    other = corpus.load(sliced)
    assert other.cache_hit and other.documents == one.documents and one.documents["val"] == 300
    for s, t in _content(one).items():
        np.testing.assert_array_equal(_content(other)[s], t)


def test_every_split_is_written_in_parts_of_bounded_size(tmp_path):
    # A validation file sends every document to the validation split: its parts are cut at shard_tokens too (at
    # most one 51-token document over), not held in memory whole (200 x 51 tokens) until the file ends.
    val = _val_file(tmp_path, 200)
    cfg = data_config(write_corpus(tmp_path, "train.txt", 40), tmp_path, val_files=str(val), shard_tokens=100)
    c = corpus.load(cfg)
    index = store.read_json(corpus.store_dir(cfg, corpus.units(cfg)) / store.INDEX)
    longest = max(len(d.encode()) + 1 for f in (cfg.train_files, str(val))
                  for d in corpus.read_documents(Path(f), "line", "text"))
    for p in index["parts"]:
        held = [p[s]["tokens"] for s in store.SPLITS]
        assert max(held) < cfg.shard_tokens + longest and min(held) < cfg.shard_tokens, p
    val_parts = [p for p in index["parts"] if p["name"].startswith("u00001-")]
    assert len(val_parts) == 200 // 2 and all(p["val"]["tokens"] == 102 for p in val_parts)  # 2 documents a part
    first = c.tokenizer.encode(f"validation document 00000 {'x' * 24}") + [c.tokenizer.eos_id]
    assert c.documents["val"] == 200 and len(first) == 51 and np.asarray(c.tokens["val"])[:51].tolist() == first


def test_a_part_is_on_disk_before_the_marker_that_publishes_it(tmp_path, monkeypatch):
    # A marker (a part's .json, a unit's .json) renamed into place must not outlive, after a machine crash, the files
    # it marks: each file is fsynced before its rename, and the directory after it, before the marker is renamed.
    cfg = data_config(write_corpus(tmp_path, "c.txt", 300), tmp_path)
    directory = corpus.store_dir(cfg, corpus.units(cfg))
    events, real_fsync, real_replace = [], os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.fstat(fd).st_ino))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("rename", os.stat(src).st_ino, Path(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    corpus.load(cfg)
    synced, renamed, durable, markers = set(), set(), set(), 0
    for event in events:
        if event[0] == "fsync" and event[1] == directory.stat().st_ino:
            durable |= renamed  # the directory entries of the renames so far are on disk
        elif event[0] == "fsync":
            synced.add(event[1])
        elif event[2].parent == directory:
            _, ino, path = event
            assert ino in synced, f"{path.name} published before its bytes were on disk"
            if m := re.fullmatch(r"(u\d{5}-p\d{4})\.json", path.name):
                markers += 1
                assert {f"{m[1]}.{s}{x}" for s in store.SPLITS for x in (".npy", ".docs.npy")} <= durable, path.name
            if m := re.fullmatch(r"u(\d{5})\.json", path.name):
                assert {p.name for p in directory.glob(f"u{m[1]}-p*.json")} <= durable, path.name
            renamed.add(path.name)
    assert markers > 2 and store.INDEX in durable


def test_preparation_checks_the_units_once_and_finalize_writes_the_index(tmp_path, monkeypatch):
    cfg = data_config(_files(tmp_path, n=6, lines=20), tmp_path)
    calls, real = [], store.check_complete
    monkeypatch.setattr(store, "check_complete", lambda d, n: (calls.append(n), real(d, n))[1])
    directory = corpus.prepare(cfg, num_shards=2, shard=0, log=lambda m: None)
    assert calls == [6, 6]  # the unfinished units before, the missing ones after: not once per unit
    assert not (directory / store.INDEX).exists()
    monkeypatch.setattr(corpus, "write_unit", lambda job: pytest.fail("--finalize tokenized a unit"))
    with pytest.raises(DataError, match=r"3 of 6 input files are not prepared yet: .*part1\.txt \(unit 1\), .*"
                                        r"--shard=i mod --num_shards"):
        corpus.prepare(cfg, finalize=True, log=lambda m: None)
    monkeypatch.undo()
    corpus.prepare(cfg, num_shards=2, shard=1, log=lambda m: None)
    reference = store.read_json(directory / store.INDEX)
    (directory / store.INDEX).unlink()  # as if both slices had missed each other's units
    monkeypatch.setattr(corpus, "write_unit", lambda job: pytest.fail("--finalize tokenized a unit"))
    corpus.prepare(cfg, finalize=True, log=lambda m: None)
    assert store.read_json(directory / store.INDEX) == reference


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
    assume(len(stream) >= width)
    offsets = np.array(data.draw(st.lists(st.integers(0, len(stream) - width), min_size=1, max_size=6)))
    np.testing.assert_array_equal(ts.windows(offsets, width), stream[offsets[:, None] + np.arange(width)])
    lo, hi = sorted(data.draw(st.tuples(st.integers(0, len(stream)), st.integers(0, len(stream)))))
    np.testing.assert_array_equal(ts[lo:hi], stream[lo:hi])

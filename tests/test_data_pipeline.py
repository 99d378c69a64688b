"""Pipeline: deterministic batch(step) across calls and process counts, val batches, prefetching, validation."""

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from data import corpus as corpus_lib
from data import pipeline
from data.errors import DataError
from tests.test_data_common import make_config, write_corpus

ARCHS = {"causal_lm": "gpt", "prefix_lm": "gpt", "mlm": "bert", "span_corruption": "t5"}


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("cache"))


def config(name, corpus_file, cache, **kw):
    return make_config(ARCHS[name], corpus_file, cache, **{"objective.name": name, **kw})


def assert_batches_equal(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.mark.parametrize("name", list(ARCHS))
def test_batch_is_a_pure_function_of_seed_and_step(name, corpus_file, cache):
    cfg = config(name, corpus_file, cache)
    data = pipeline.build(cfg)
    a, b = data.train.batch(5), data.train.batch(5)
    assert_batches_equal(a, b)
    assert_batches_equal(a, pipeline.build(cfg).train.batch(5))  # a fresh build (cache hit) too
    assert not np.array_equal(a["targets"], data.train.batch(6)["targets"])
    cfg.seed = 1
    assert not np.array_equal(a["targets"], pipeline.build(cfg).train.batch(5)["targets"])
    for k, v in a.items():
        shape, dtype = data.objective.batch_shapes(8)[k]
        assert v.shape == shape and v.dtype == dtype, k


@pytest.mark.parametrize("name", list(ARCHS))
@pytest.mark.parametrize("processes", [2, 4])
def test_process_slices_concatenate_to_the_global_batch(name, processes, corpus_file, cache):
    cfg = config(name, corpus_file, cache)
    whole = pipeline.build(cfg)
    parts = [pipeline.build(cfg, p, processes) for p in range(processes)]
    for split in ("train", "val"):
        glob = getattr(whole, split).batch(3)
        local = [getattr(d, split).batch(3) for d in parts]
        assert all(len(b["targets"]) == 8 // processes for b in local)
        assert_batches_equal(glob, {k: np.concatenate([b[k] for b in local]) for k in glob})


def test_val_batches_are_sequential_and_repeatable(corpus_file, cache):
    data = pipeline.build(config("causal_lm", corpus_file, cache))
    tokens, W = np.asarray(data.val.tokens), data.objective.window_len
    for i in range(3):
        b = data.val.batch(i)
        for g in range(8):
            start = ((i * 8 + g) % data.val.num_windows) * W
            np.testing.assert_array_equal(b["inputs"][g], tokens[start : start + W - 1])
    mlm = pipeline.build(config("mlm", corpus_file, cache))
    assert_batches_equal(mlm.val.batch(1), mlm.val.batch(1))


def test_target_bytes_equal_utf8_bytes_of_decoded_text(corpus_file, cache):
    data = pipeline.build(config("causal_lm", corpus_file, cache))
    tok = data.tokenizer
    b = data.val.batch(0)
    for row in range(8):
        keep = b["targets"][row] != tok.eos_id
        text = tok.decode(b["targets"][row][keep])
        assert int(b["target_bytes"][row][keep].sum()) == len(text.encode("utf-8"))
    assert data.summary()["val_bytes"] == int(data.tokenizer.token_bytes[np.asarray(data.val.tokens)].sum())


def test_iterate_prefetches_the_same_batches(corpus_file, cache):
    data = pipeline.build(config("mlm", corpus_file, cache))
    got = list(data.train.iterate(4, 5))
    assert [s for s, _ in got] == [4, 5, 6, 7, 8]
    for s, b in got:
        assert_batches_equal(b, data.train.batch(s))
    data.train.prefetch = 0
    assert [s for s, _ in data.train.iterate(0, 2)] == [0, 1]


def test_iterate_propagates_errors_and_stops(corpus_file, cache, monkeypatch):
    data = pipeline.build(config("causal_lm", corpus_file, cache))
    real = pipeline.Split.batch

    def flaky(self, step):
        if step == 3:
            raise RuntimeError("boom at 3")
        return real(self, step)

    monkeypatch.setattr(pipeline.Split, "batch", flaky)
    it = data.train.iterate(0, 10)
    assert [next(it)[0] for _ in range(3)] == [0, 1, 2]
    with pytest.raises(RuntimeError, match="boom at 3"):
        next(it)
    monkeypatch.setattr(pipeline.Split, "batch", real)
    it = data.train.iterate(0, 1000)
    next(it)
    it.close()  # the consumer stops early: the producer thread must end
    deadline = time.time() + 5
    while any(t.name.startswith("triad-") for t in threading.enumerate()) and time.time() < deadline:
        time.sleep(0.01)
    assert not any(t.name.startswith("triad-") for t in threading.enumerate())


def test_batch_is_fast(corpus_file, cache):
    for name in ARCHS:
        kw = {"data.seq_len": 128, "train.batch_size": 32}
        if name == "span_corruption":  # 32 windows of 2 x 141 + 1 stream tokens need more val text than 10%
            kw["data.val_fraction"] = 0.25
        data = pipeline.build(config(name, corpus_file, cache, **kw))
        data.train.batch(0)
        times = []
        for s in range(20):
            t = time.perf_counter()
            data.train.batch(s)
            times.append(time.perf_counter() - t)
        assert np.median(times) < 0.02, (name, np.median(times))  # about 0.5 ms measured; generous for CI noise


def test_summary(corpus_file, cache):
    s = pipeline.build(config("span_corruption", corpus_file, cache)).summary()
    docs = corpus_lib.read_documents(Path(corpus_file), "line", "text")
    assert s["train_documents"] + s["val_documents"] == 1500 == len(docs)
    assert s["val_documents"] == sum(corpus_lib.is_val(d, 0.1) for d in docs)  # each document by its hash
    assert s["vocab_size"] == 512 and s["cache_hit"] in (True, False) and s["train_tokens"] > 0
    assert s["objective"] == "span_corruption"


@pytest.mark.parametrize(
    "name, kw, pattern",
    [
        ("causal_lm", {"train.batch_size": 6}, r"train\.batch_size=6 is not divisible by the 4 processes"),
        ("span_corruption", {"data.seq_len": 3}, r"data\.seq_len=3 is too short for span_corruption; use at least 4"),
        ("span_corruption", {"data.target_len": 4}, r"data\.target_len=4 is too short.*>= 8 or 0"),
        ("span_corruption", {"data.seq_len": 4096}, r"data\.seq_len=4096 gives \d+ noise spans.*100 sentinels"),
        ("mlm", {"data.seq_len": 2}, r"data\.seq_len=2 is too short for mlm"),
        ("mlm", {"objective.mask_token_frac": 0.95}, r"objective\.mask_token_frac \+ objective\.random_token_frac"),
        ("mlm", {"objective.mask_rate": 0.0}, r"objective\.mask_rate=0\.0 must be in \(0, 1\)"),
        ("causal_lm", {"objective.name": "denoise"}, r"objective\.name: unknown 'denoise'"),
        (
            "causal_lm",
            {"data.seq_len": 10000},
            r"train split has \d+ tokens, fewer than one batch.*train\.batch_size=8",
        ),
        ("causal_lm", {"data.val_fraction": 0.002}, r"val split has \d+ tokens.*data\.val_fraction"),
        ("causal_lm", {"model.pad_id": 3}, r"model\.pad_id=3"),
        ("causal_lm", {"seed": -1}, r"seed=-1 must be >= 0"),
    ],
)
def test_bad_settings_raise_data_error(name, kw, pattern, corpus_file, cache):
    with pytest.raises(DataError, match=pattern) as e:
        pipeline.build(config(name, corpus_file, cache, **kw), 0, 4)
    assert "\n" not in str(e.value)


def test_bundled_corpus_cold_then_warm(tmp_path, monkeypatch):
    monkeypatch.setenv("TRIAD_CACHE", str(tmp_path))
    cfg = make_config("t5", "data/corpora/kjv.txt.gz", "", **{"data.vocab_size": 8000, "data.val_fraction": 0.02})
    cold = pipeline.build(cfg)
    t = time.perf_counter()
    warm = pipeline.build(cfg)
    warm_s = time.perf_counter() - t
    s = warm.summary()
    assert (cold.summary()["cache_hit"], s["cache_hit"]) == (False, True)
    assert s["train_documents"] + s["val_documents"] == 31102
    assert s["train_bytes"] + s["val_bytes"] == 4_106_745
    assert str(tmp_path) in s["cache_path"] and warm_s < 1.0
    assert_batches_equal(cold.train.batch(7), warm.train.batch(7))

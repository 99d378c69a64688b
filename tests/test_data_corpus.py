"""Corpus: reading txt/jsonl/gz, the document-level split, the token cache and its invalidation, bad files."""

import gzip
import json
import os

import ml_collections
import numpy as np
import pytest

from data import corpus
from data.errors import DataError
from tests.test_data_common import synthetic_text, write_corpus


def data_config(train_files, tmp_path, **kw):
    d = ml_collections.ConfigDict(
        dict(
            train_files=train_files,
            val_files="",
            val_fraction=0.1,
            txt_documents="line",
            jsonl_field="text",
            tokenizer="",
            tokenizer_type="unigram",
            vocab_size=512,
            cache_dir=str(tmp_path / "cache"),
            parquet_column="text",
            num_workers=1,
            shard_tokens=1 << 24,
            tokenizer_sample_mb=64,
        )
    )
    d.update(kw)
    return d


def test_split_is_document_level_and_deterministic():
    docs = [f"document number {i}" for i in range(1000)]
    train, val = corpus.split_train_val(docs, 0.05)
    assert 30 <= len(val) <= 70 and len(train) + len(val) == 1000  # about 5%: each document decides alone
    assert val == [d for d in docs if corpus.is_val(d, 0.05)]
    assert sorted(train + val) == sorted(docs)
    assert (train, val) == corpus.split_train_val(docs, 0.05)
    assert val == corpus.split_train_val(list(reversed(docs)), 0.05)[1][::-1]  # independent of file order
    assert train == [d for d in docs if d in set(train)]  # original order kept


def test_stream_counts_bytes_and_eos(tmp_path):
    path = write_corpus(tmp_path)
    c = corpus.load(data_config(path, tmp_path))
    docs = [line for line in synthetic_text().split("\n") if line]
    train, val = corpus.split_train_val(docs, 0.1)
    tok = c.tokenizer
    for name, split_docs in (("train", train), ("val", val)):
        tokens = np.asarray(c.tokens[name])
        assert c.documents[name] == len(split_docs)
        assert c.bytes[name] == sum(len(d.encode()) for d in split_docs)
        assert int(tok.token_bytes[tokens].sum()) == c.bytes[name]
        assert int((tokens == tok.eos_id).sum()) == len(split_docs) and tokens[-1] == tok.eos_id
    assert c.tokens["train"].dtype == np.uint16
    first = np.asarray(c.tokens["train"][: len(tok.encode(train[0])) + 1])
    assert first.tolist() == tok.encode(train[0]) + [tok.eos_id]


def test_cache_hit_and_invalidation_on_same_size_edit(tmp_path):
    path = write_corpus(tmp_path)
    cfg = data_config(path, tmp_path)
    a = corpus.load(cfg)
    b = corpus.load(cfg)
    assert (a.cache_hit, b.cache_hit) == (False, True)
    np.testing.assert_array_equal(a.tokens["train"], b.tokens["train"])
    st = os.stat(path)
    text = open(path, encoding="utf-8").read()
    edited = "Zz" + text[2:]  # same size; then restore the mtime too
    assert len(edited.encode()) == len(text.encode()) and edited != text
    open(path, "w", encoding="utf-8").write(edited)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    c = corpus.load(cfg)
    assert not c.cache_hit
    assert c.tokenizer.decode(np.asarray(c.tokens["train"][:20])).startswith("Zz") or c.tokenizer.decode(
        np.asarray(c.tokens["val"][:20])
    ).startswith("Zz")
    assert corpus.load(cfg).cache_hit
    assert not corpus.load(data_config(path, tmp_path, val_fraction=0.2)).cache_hit  # split settings are in the key


def test_byte_tokenizer_and_given_tokenizer(tmp_path):
    path = write_corpus(tmp_path, n_lines=300)
    b = corpus.load(data_config(path, tmp_path, tokenizer_type="byte"))
    assert b.tokenizer.vocab_size == 363  # 107 specials, then one id per byte value
    val = np.asarray(b.tokens["val"]).astype(np.int64)  # (uint16 would wrap around in a subtraction)
    assert set(np.unique(val[val < 107]).tolist()) == {b.tokenizer.eos_id}  # bytes and the document ends
    assert int((val >= 107).sum()) == b.bytes["val"] > 0
    trained = corpus.load(data_config(path, tmp_path))
    given = corpus.load(data_config(path, tmp_path, tokenizer=trained.tokenizer.path))
    np.testing.assert_array_equal(given.tokens["train"], trained.tokens["train"])


def test_formats_jsonl_gz_paragraphs_globs_and_val_files(tmp_path):
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps({"body": f"doc {i} text"}) for i in range(50)) + "\n")
    with gzip.open(tmp_path / "b.txt.gz", "wt") as f:
        f.write("para one\nstill one\n\n  \npara two\n\n\npara three\n")
    docs = corpus.read_documents(tmp_path / "b.txt.gz", "paragraph", "text")
    assert docs == ["para one\nstill one", "para two", "para three"]
    assert corpus.read_documents(tmp_path / "a.jsonl", "line", "body")[3] == "doc 3 text"
    files = corpus.expand(f"{tmp_path}/*.jsonl, {tmp_path}/b.txt.gz", "data.train_files")
    assert [f.name for f in files] == ["a.jsonl", "b.txt.gz"]
    write_corpus(tmp_path, "train.txt", 400)
    write_corpus(tmp_path, "val.txt", 40, seed=1)
    c = corpus.load(data_config(str(tmp_path / "train.txt"), tmp_path, val_files=str(tmp_path / "val.txt")))
    assert c.documents == {"train": 400, "val": 40}


def _load_err(tmp_path, **kw):
    return corpus.load(data_config(kw.pop("train_files", write_corpus(tmp_path)), tmp_path, **kw))


@pytest.mark.parametrize(
    "setup, kw, pattern",
    [
        (None, dict(train_files="{d}/missing.txt"), r"data\.train_files: '.*missing\.txt' does not exist; pass"),
        (None, dict(train_files="{d}/*.nothing"), r"data\.train_files: '.*\*\.nothing' matched no files"),
        (None, dict(val_files="{d}/nope/*.txt"), r"data\.val_files: '.*nope/\*\.txt' matched no files"),
        (("empty.txt", b""), dict(train_files="{d}/empty.txt"), r"empty\.txt: contains no text"),
        (("blank.txt", b" \n\t\n\n"), dict(train_files="{d}/blank.txt"), r"blank\.txt: contains no text"),
        (
            ("latin.txt", b"caf\xe9 ok\n"),
            dict(train_files="{d}/latin.txt"),
            r"latin\.txt:1: not valid UTF-8 at byte 3 of the line",
        ),
        (
            ("x.jsonl", b'{"text": "a"}\n{"body": "b"}\n'),
            dict(train_files="{d}/x.jsonl"),
            r"x\.jsonl:2: record has no 'text' field.*data\.jsonl_field",
        ),
        (("y.jsonl", b'{"text": "a"}\nnot json\n'), dict(train_files="{d}/y.jsonl"), r"y\.jsonl:2: invalid JSON"),
        (("z.txt.gz", b"not gzip"), dict(train_files="{d}/z.txt.gz"), r"z\.txt\.gz: not a valid gzip file"),
        (("doc.md", b"text\n"), dict(train_files="{d}/doc.md"), r"data\.train_files: .*doc\.md.*unsupported extension"),
        (None, dict(tokenizer_type="wordpiece"), r"data\.tokenizer_type: unknown 'wordpiece'"),
        (None, dict(txt_documents="page"), r"data\.txt_documents: unknown 'page'"),
        (None, dict(val_fraction=1.5), r"data\.val_fraction=1\.5 must be in \(0, 1\)"),
        (None, dict(vocab_size=100000), r"data\.vocab_size=100000 is too large"),
        (None, dict(tokenizer="{d}/none.model"), r"data\.tokenizer: .*none\.model' does not exist"),
    ],
)
def test_bad_inputs_raise_data_error(tmp_path, setup, kw, pattern):
    if setup:
        (tmp_path / setup[0]).write_bytes(setup[1])
    kw = {k: v.format(d=tmp_path) if isinstance(v, str) else v for k, v in kw.items()}
    with pytest.raises(DataError, match=pattern) as e:
        _load_err(tmp_path, **kw)
    assert "\n" not in str(e.value)


def test_gz_utf8_error_says_decompressed(tmp_path):
    with gzip.open(tmp_path / "bad.txt.gz", "wb") as f:
        f.write(b"hello\n\xff\xfe\n")
    with pytest.raises(DataError, match=r"bad\.txt\.gz:2: not valid UTF-8 at byte 0 of the line \(of the decompressed"):
        corpus.read_documents(tmp_path / "bad.txt.gz", "line", "text")


def test_bundled_corpus_is_found_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (f,) = corpus.expand("data/corpora/kjv.txt.gz", "data.train_files")
    assert f.is_file() and f.stat().st_size > 1_000_000


def _index_repos(split):
    import csv

    with open(os.path.join(corpus.REPO_ROOT, "data", "corpora", "modern", f"{split}.index.tsv")) as f:
        return [r["repo"] for r in csv.DictReader(f, delimiter="\t")]


def test_the_default_corpus_holds_out_whole_books(tmp_path):
    d = data_config("", tmp_path, corpus="modern")
    train_spec, val_spec = corpus.sources(d)
    units = corpus.units(d)
    assert [u.split for u in units] == ["train", "val"] and units[1].path.endswith("modern/val.txt.gz")
    train_books, val_books = _index_repos("train"), _index_repos("val")
    assert val_books and not set(train_books) & set(val_books)  # no chapter of a validation book is trained on
    for spec, books in ((train_spec, train_books), (val_spec, val_books)):  # one index line per document
        (path,) = corpus.expand(spec, "x")
        with gzip.open(path, "rt", encoding="utf-8") as f:
            assert sum(1 for _ in f) == len(books)
    assert len(set(val_books)) == 2 and 0.05 <= len(val_books) / (len(train_books) + len(val_books)) < 0.15


def test_the_king_james_bible_is_one_flag_away_and_corpus_mistakes_are_named(tmp_path):
    (u,) = corpus.units(data_config("", tmp_path, corpus="kjv"))
    assert u.path.endswith("kjv.txt.gz") and u.split == "split"  # held out by data.val_fraction, as before
    with pytest.raises(DataError, match=r"data.corpus: unknown 'bible'; choose one of \['modern', 'kjv'\]"):
        corpus.units(data_config("", tmp_path, corpus="bible"))
    with pytest.raises(DataError, match=r"data.val_files='v.txt' needs data.train_files"):
        corpus.units(data_config("", tmp_path, corpus="modern", val_files="v.txt"))
    own = tmp_path / "own.txt"
    own.write_text("a document\n")
    (u,) = corpus.units(data_config(str(own), tmp_path, corpus="modern"))  # train_files wins over the corpus
    assert u.path == str(own)

"""Streaming readers: every format x compression gives the same documents, txt modes match the old whole-file
semantics (hypothesis, with tiny chunks so lines straddle reads), memory stays bounded on a 30 MB .jsonl.zst, and
every bad file (truncated, corrupt, non-UTF-8, missing field or column) is one DataError naming the file."""

import errno
import gzip
import hashlib
import io
import json
import os
import random
import re
import tempfile
import tracemalloc
from pathlib import Path
from unittest import mock

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from data import readers
from data.errors import DataError

SETTINGS = settings(
    max_examples=60,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
DOCS = [
    "  first document  ",
    "",
    "zweite Zeile: äöü ✓ 中文",
    "   \t ",
    "third\twith a tab and a lone \r inside",
    *(f"doc {i} " + "word " * (i % 7) for i in range(20)),
]
EXPECTED = [d.strip() for d in DOCS if d.strip()]


def compress(raw: bytes, compression: str) -> bytes:
    if compression == ".gz":
        return gzip.compress(raw)
    if compression == ".zst":
        return zstandard.ZstdCompressor(level=1).compress(raw)
    return raw


def parquet_bytes(table: pa.Table, row_group_size: int = 3) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, row_group_size=row_group_size)
    return buf.getvalue()


def encode(docs: list, fmt: str) -> bytes:
    """`docs` as the bytes of a .txt (one per line), .jsonl ({"text": ...}) or .parquet (id, text) file."""
    if fmt == ".txt":
        return "\n".join(docs).encode()
    if fmt == ".jsonl":
        return "".join(json.dumps({"id": i, "text": d}) + "\n" for i, d in enumerate(docs)).encode()
    return parquet_bytes(pa.table({"id": list(range(len(docs))), "text": docs}))


def write(tmp_path: Path, name: str, raw: bytes, compression: str = "") -> Path:
    path = tmp_path / (name + compression)
    path.write_bytes(compress(raw, compression))
    return path


def read(path: Path, **kw) -> list[str]:
    return list(readers.iter_documents(path, **kw))


def test_suffixes():
    assert len(readers.SUFFIXES) == 9 and ".parquet.zst" in readers.SUFFIXES and ".txt" in readers.SUFFIXES
    readers.check_path(Path("a/b.jsonl.gz"))
    with pytest.raises(DataError, match=r"b\.csv: unsupported.*\.txt, .*\.parquet\.zst"):
        readers.check_path(Path("a/b.csv"))


@pytest.mark.parametrize("compression", readers.COMPRESSIONS)
@pytest.mark.parametrize("fmt", readers.FORMATS)
def test_every_format_and_compression_gives_the_same_documents(tmp_path, fmt, compression):
    path = write(tmp_path, "docs" + fmt, encode(DOCS, fmt), compression)
    assert read(path) == EXPECTED
    if fmt == ".parquet":
        assert pq.ParquetFile(io.BytesIO(encode(DOCS, fmt))).num_row_groups == 9  # several row groups were read


def test_txt_paragraphs_and_crlf_lines(tmp_path):
    text = "\ufeffPara one\r\nstill one \r\n\r\n \t \r\n\n  Para two\n\n\n\nthree\r\nlines\rhere\n  \n"
    path = write(tmp_path, "p.txt", text.encode())
    assert read(path, txt_documents="paragraph") == ["Para one\nstill one", "Para two", "three\nlines\rhere"]
    assert read(path) == ["Para one", "still one", "Para two", "three", "lines\rhere"]  # '\r' is stripped, BOM gone
    with pytest.raises(DataError, match="data.txt_documents: unknown 'page'"):
        readers.iter_documents(path, txt_documents="page")  # checked before reading


def test_multi_frame_zst(tmp_path):
    z = zstandard.ZstdCompressor()
    path = tmp_path / "two.txt.zst"
    path.write_bytes(z.compress(b"one\ntw") + z.compress(b"o\nthree\n"))  # as pzstd or `cat a.zst b.zst` write
    assert read(path) == ["one", "two", "three"]


def test_parquet_nulls_skipped_and_missing_or_non_text_column(tmp_path):
    table = pa.table({"id": [1, 2, 3, 4], "body": ["a ", None, "  ", "b"]})
    path = write(tmp_path, "n.parquet", parquet_bytes(table, 2))
    assert read(path, parquet_column="body") == ["a", "b"]
    with pytest.raises(DataError, match=r"n\.parquet: no column 'text' \(it has 'id', 'body'\).*data\.parquet_column"):
        read(path)
    with pytest.raises(DataError, match="column 'id' holds int64, not text"):
        read(path, parquet_column="id")
    dictionary = pa.table({"text": pa.array(["x", "y", "x"]).dictionary_encode()})
    assert read(write(tmp_path, "d.parquet", parquet_bytes(dictionary), ".zst")) == ["x", "y", "x"]


@pytest.mark.parametrize(
    "line, pattern",
    [
        ('{"text": "ok"', r"invalid JSON \(Expecting ',' delimiter\); each line must be one JSON object"),
        ("[1, 2]", "record has no 'text' field; set data.jsonl_field"),
        ('{"body": "x"}', "record has no 'text' field; set data.jsonl_field"),
        ('{"text": 3}', "field 'text' is not a string; data.jsonl_field must name text"),
        ("[" * 100_000 + "]" * 100_000, r"invalid JSON \(nested too deeply\)"),
    ],
)
def test_jsonl_errors_name_file_and_line(tmp_path, line, pattern):
    path = write(tmp_path, "e.jsonl", f'{{"text": "fine"}}\n\n{line}\n'.encode(), ".gz")
    with pytest.raises(DataError, match=re.escape(f"{path}:3: ") + pattern):
        read(path)


def test_jsonl_field_option(tmp_path):
    path = write(tmp_path, "f.jsonl", b'{"body": " x "}\n{"body": "y", "text": 1}\n')
    assert read(path, jsonl_field="body") == ["x", "y"]


def test_streaming_memory_is_bounded(tmp_path):
    """A 30 MB .jsonl.zst is read with a Python (tracemalloc) and Arrow peak far below the decompressed size."""
    filler = "lorem ipsum dolor sit amet " * 37
    raw = "".join(json.dumps({"text": f"document {i} {filler}"}) + "\n" for i in range(30_000)).encode()
    size = len(raw)
    assert size > 30_000_000
    path = write(tmp_path, "big.jsonl", raw, ".zst")
    del raw
    tracemalloc.start()
    try:
        n, chars, arrow_peak = 0, 0, 0
        for doc in readers.iter_documents(path):
            n, chars = n + 1, chars + len(doc)
            if n % 1000 == 0:
                arrow_peak = max(arrow_peak, pa.total_allocated_bytes())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert n == 30_000 and chars > 0.9 * size
    assert peak < size / 4, (peak, size)
    assert arrow_peak < size / 4, (arrow_peak, size)


def _cut(raw: bytes) -> bytes:
    return raw[: len(raw) // 2]


def _noise(n: int = 4000) -> bytes:
    return random.Random(0).randbytes(n)


_TEXT = "".join(f"line {i} with some text\n" for i in range(5000)).encode()
BAD_FILES = {
    "truncated gz": ("t.txt.gz", _cut(gzip.compress(_TEXT)), "not a valid gzip file or cut short"),
    "truncated zst": (
        "t.jsonl.zst",
        _cut(zstandard.ZstdCompressor().compress(encode(["a"] * 3000, ".jsonl"))),
        "not a valid zstd file or cut short",
    ),
    "random gz": ("r.txt.gz", _noise(), "not a valid gzip file"),
    "random zst": ("r.txt.zst", _noise(), "not a valid zstd file"),
    "random parquet": ("r.parquet", _noise(), "not a valid parquet file"),
    "half a parquet": ("h.parquet", _cut(encode(EXPECTED * 50, ".parquet")), "not a valid parquet file"),
    "empty parquet": ("e.parquet", b"", "not a valid parquet file"),
    "random parquet.gz": ("r.parquet.gz", gzip.compress(_noise()), "not a valid parquet file"),
    "truncated parquet.zst": (
        "t.parquet.zst",
        _cut(compress(encode(EXPECTED * 50, ".parquet"), ".zst")),
        "not a valid zstd file or cut short",
    ),
    "latin-1 txt": ("l.txt", "fine\ncafé\n".encode("latin1"), r":2: not valid UTF-8 at byte 3 of the line; .*iconv"),
    "latin-1 jsonl.gz": (
        "l.jsonl.gz",
        gzip.compress('{"text": "ok"}\n{"text": "café"}\n'.encode("latin1")),
        r":2: not valid UTF-8 at byte 13 of the line \(of the decompressed text\)",
    ),
    "empty txt": ("e.txt", b"\n  \n\t\n", "contains no text .*; remove it or add text"),
    "blank jsonl.zst": ("b.jsonl.zst", compress(b'{"text": " "}\n\n', ".zst"), "contains no text"),
    "all-null parquet": (
        "n.parquet",
        parquet_bytes(pa.table({"text": pa.array([None, ""], pa.string())})),
        "contains no text",
    ),
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_bad_files_raise_one_data_error_naming_the_file(tmp_path, case):
    name, raw, pattern = BAD_FILES[case]
    path = tmp_path / name
    path.write_bytes(raw)
    with pytest.raises(DataError, match=pattern) as e:  # any other exception type fails the test
        read(path)
    message = str(e.value)
    assert str(path) in message and "Traceback" not in message
    assert e.value.__context__ is None or e.value.__suppress_context__  # `from None`: no library error chained on


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"nope\.txt: cannot open \(No such file or directory\)"):
        read(tmp_path / "nope.txt")
    with pytest.raises(DataError, match=r"nope\.txt: cannot read"):
        readers.file_fingerprint(tmp_path / "nope.txt")


def test_corrupted_parquet_bytes_never_escape_as_other_errors(tmp_path):
    """Random byte flips in a small parquet file: every read either succeeds or raises DataError."""
    raw = encode(EXPECTED * 20, ".parquet")
    rng = random.Random(0)
    errors = 0
    for trial in range(120):
        b = bytearray(raw)
        for _ in range(rng.choice([1, 5, 40])):
            b[rng.randrange(len(b))] = rng.randrange(256)
        path = tmp_path / f"c{trial}.parquet"
        path.write_bytes(b)
        try:
            read(path)
        except DataError as e:
            assert str(path) in str(e)
            errors += 1
    assert errors > 30  # the flips did break files


def test_compressed_parquet_temp_file_is_removed(tmp_path, monkeypatch):
    tmp_dir = tmp_path / "tmp"
    tmp_dir.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_dir))
    path = write(tmp_path, "docs.parquet", encode(DOCS, ".parquet"), ".gz")
    docs = readers.iter_documents(path)
    assert next(docs) == EXPECTED[0]
    assert os.listdir(tmp_dir) == []  # anonymous: never visible, gone once closed even if the process dies
    docs.close()
    assert read(path) == EXPECTED and os.listdir(tmp_dir) == []


def test_full_temp_dir_is_a_data_error(tmp_path):
    class Full(io.BytesIO):
        def write(self, b):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    path = write(tmp_path, "docs.parquet", encode(DOCS, ".parquet"), ".zst")
    with mock.patch.object(tempfile, "TemporaryFile", lambda **kw: Full()):
        with pytest.raises(DataError, match=r"docs\.parquet\.zst: cannot decompress it to a temporary file.*TMPDIR"):
            read(path)


def test_file_fingerprint(tmp_path, monkeypatch):
    path = tmp_path / "f.txt"
    path.write_bytes(b"hello world\n")
    fp = readers.file_fingerprint(path)
    assert fp == {
        "name": "f.txt",
        "size": 12,
        "mtime_ns": path.stat().st_mtime_ns,
        "sha256": hashlib.sha256(b"hello world\n").hexdigest(),
    }
    st_ = path.stat()
    path.write_bytes(b"jello world\n")  # same size, mtime restored: only the hash sees the edit
    os.utime(path, ns=(st_.st_atime_ns, st_.st_mtime_ns))
    edited = readers.file_fingerprint(path)
    assert edited != fp and {k: edited[k] for k in ("name", "size", "mtime_ns")} == {
        k: fp[k] for k in ("name", "size", "mtime_ns")
    }
    monkeypatch.setattr(readers, "HASH_LIMIT", 12)
    assert "sha256" not in readers.file_fingerprint(path)  # at or above the limit: size and mtime only


def _old_documents(text: str, mode: str) -> list[str]:
    """The whole-file semantics of data/corpus.py's read_documents before streaming (the reference)."""
    text = text.removeprefix("\ufeff")
    if mode == "line":
        docs = [line.strip() for line in text.split("\n")]
    else:
        docs = [p.strip() for p in re.split(r"\n[ \t\r\f\v]*\n", text.replace("\r\n", "\n"))]
    return [d for d in docs if d]


@SETTINGS
@given(
    text=st.text(alphabet=st.sampled_from("ab \t\r\n\x0b\x0c\x1c\x85\u00a0\u2028\ufeffé✓"), max_size=60),
    mode=st.sampled_from(readers.TXT_DOCUMENTS),
    compression=st.sampled_from(readers.COMPRESSIONS),
    chunk=st.sampled_from([1, 2, 3, 7, 1 << 18]),
)
def test_txt_matches_the_whole_file_reference(tmp_path, text, mode, compression, chunk):
    path = write(tmp_path, "h.txt", text.encode(), compression)
    expected = _old_documents(text, mode)
    with mock.patch.object(readers, "_CHUNK", chunk):  # tiny reads: lines and UTF-8 sequences straddle chunks
        if expected:
            assert read(path, txt_documents=mode) == expected
        else:
            with pytest.raises(DataError, match="contains no text"):
                read(path, txt_documents=mode)


@SETTINGS
@given(
    docs=st.lists(
        st.text(st.characters(exclude_characters="\n\ufeff", exclude_categories=("Cs",)), max_size=12), max_size=12
    ),
    fmt=st.sampled_from([".txt", ".jsonl"]),
    compression=st.sampled_from(readers.COMPRESSIONS),
)
def test_written_documents_read_back_stripped(tmp_path, docs, fmt, compression):
    path = write(tmp_path, "docs" + fmt, encode(docs, fmt), compression)
    expected = [d.strip() for d in docs if d.strip()]
    if expected:
        assert read(path) == expected
    else:
        with pytest.raises(DataError, match="contains no text"):
            read(path)


@SETTINGS
@given(
    pieces=st.lists(st.sampled_from([b"\n", b"a", b"\xc3\xa9", b"\r", b"\xff"]), max_size=40),
    cuts=st.lists(st.integers(0, 40), max_size=6),
)
def test_lines_splits_like_bytes_split(pieces, cuts):
    data = b"".join(pieces)
    bounds = sorted({0, len(data), *(min(c, len(data)) for c in cuts)})
    chunks = [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
    assert list(readers._lines(iter(chunks))) == data.split(b"\n")

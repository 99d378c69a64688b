"""Streaming readers of corpus files: .txt, .jsonl and .parquet, each optionally .gz or .zst, in bounded memory.

Text formats are read in chunks of _CHUNK decompressed bytes and split into lines on b"\\n" (so memory is one chunk
plus the current document); parquet is read one batch of the text column at a time. Compressed parquet is first
decompressed, in chunks, to an anonymous temporary file in the system temp dir ($TMPDIR), because parquet needs
to seek; the file has no name, so it disappears when closed, even if the process is killed. Every problem a user
can fix (a bad suffix, a missing field, a corrupt or truncated file, non-UTF-8 text) is one DataError naming the
file and the fix.

.zst is decompressed with pyarrow's zstd stream rather than zstandard's stream_reader: the latter returns the
prefix of a truncated file without an error, and zstandard's decompressobj has no bound on the output of a call.
"""

import codecs
import gzip
import hashlib
import json
import re
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from data.errors import DataError

FORMATS = (".txt", ".jsonl", ".parquet")
COMPRESSIONS = ("", ".gz", ".zst")
SUFFIXES = tuple(f + c for f in FORMATS for c in COMPRESSIONS)
TXT_DOCUMENTS = ("line", "paragraph")
HASH_LIMIT = 64 << 20  # files smaller than this are identified by the sha256 of their bytes
_CHUNK = 1 << 18  # decompressed bytes per read; also the copy size into the temporary parquet file
_PARQUET_BATCH = 1024  # rows per parquet batch (a batch never spans row groups)
_BLANK = re.compile(r"[ \t\r\f\v]*")  # a line that separates paragraphs (as re.split(r"\n[ \t\r\f\v]*\n") did)
_UTF8_FIX = "convert the file to UTF-8 (e.g. iconv -f latin1 -t utf-8)"
_LIST_FIX = "or remove it from data.train_files / data.val_files"


def check_path(path: Path) -> None:
    """DataError naming the file and the supported suffixes unless `path` ends with one of SUFFIXES."""
    if not str(path).endswith(SUFFIXES):
        raise DataError(f"{path}: unsupported file type; use one of {', '.join(SUFFIXES)}")


def iter_documents(
    path: Path, txt_documents: str = "line", jsonl_field: str = "text", parquet_column: str = "text"
) -> Iterator[str]:
    """The stripped, non-empty documents of one file, in file order, streamed.

    The suffix and txt_documents are checked at once; everything else (a bad line, a corrupt file, a file with
    no text at all) raises DataError while iterating.
    """
    path = Path(path)
    check_path(path)
    if txt_documents not in TXT_DOCUMENTS:
        raise DataError(f"data.txt_documents: unknown {txt_documents!r}; choose 'line' or 'paragraph'")
    kind = _format(path)
    if kind == ".jsonl":
        docs = _jsonl_documents(path, jsonl_field)
    elif kind == ".parquet":
        docs = _parquet_documents(path, parquet_column)
    elif txt_documents == "line":
        docs = (d for _, line in _text_lines(path) if (d := line.strip()))
    else:
        docs = _paragraphs(path)
    return _require_text(path, docs)


def file_fingerprint(path: Path) -> dict:
    """Cheap identity of an input file, for cache keys: {"name", "size", "mtime_ns"}, plus "sha256" under 64 MiB.

    Small files are hashed, so an edit that keeps the size and mtime is still seen. Files of HASH_LIMIT bytes or
    more are not (hashing 10 GB at every start would take minutes): an edit to one that keeps both its size and
    its mtime (e.g. `cp -p` of another file of the same size) is served from the stale cache; `touch` the file.
    """
    path = Path(path)
    try:
        st = path.stat()
        fp = {"name": path.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
        if st.st_size < HASH_LIMIT:
            h = hashlib.sha256()
            with open(path, "rb") as f:
                while chunk := f.read(1 << 22):
                    h.update(chunk)
            fp["sha256"] = h.hexdigest()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror}); check the path in data.train_files") from None
    return fp


def _compression(path: Path) -> str:
    return next((c for c in COMPRESSIONS[1:] if path.name.endswith(c)), "")


def _format(path: Path) -> str:
    name = path.name.removesuffix(_compression(path))
    return next(f for f in FORMATS if name.endswith(f))


def _require_text(path: Path, docs: Iterator[str]) -> Iterator[str]:
    empty = True
    for doc in docs:
        empty = False
        yield doc
    if empty:
        raise DataError(f"{path}: contains no text (empty after stripping whitespace); remove it or add text")


def _chunks(path: Path) -> Iterator[bytes]:
    """The decompressed bytes of `path`, at most _CHUNK at a time; DataError if unreadable, corrupt or cut short."""
    compression = _compression(path)
    try:
        f = open(path, "rb")
    except OSError as e:
        raise DataError(f"{path}: cannot open ({e.strerror}); check the path in data.train_files") from None
    with f:
        try:
            if compression == ".gz":
                stream = gzip.GzipFile(fileobj=f)
            elif compression == ".zst":
                stream = pa.CompressedInputStream(f, "zstd")
            else:
                stream = f
            while chunk := stream.read(_CHUNK):
                yield chunk
        except (gzip.BadGzipFile, EOFError, zlib.error, pa.ArrowInvalid, OSError) as e:
            if not compression:
                raise DataError(f"{path}: cannot read ({e}); check the disk or copy the file again") from None
            tool = "gzip" if compression == ".gz" else "zstd"
            raise DataError(
                f"{path}: not a valid {tool} file or cut short ({e}); re-download or recompress it ({tool}), "
                f"{_LIST_FIX}"
            ) from None


def _lines(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """The pieces of the concatenated chunks between b"\\n"s, as bytes.split(b"\\n") would give them."""
    head: list[bytes] = []  # the pieces of a line not yet ended
    for chunk in chunks:
        lines = chunk.split(b"\n")
        if len(lines) == 1:
            head.append(chunk)
            continue
        head.append(lines[0])
        yield b"".join(head)
        yield from lines[1:-1]
        head = [lines[-1]]
    yield b"".join(head)


def _text_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, decoded line without its "\\n") of a text file, streamed; a leading BOM is dropped."""
    note = " (of the decompressed text)" if _compression(path) else ""
    for n, raw in enumerate(_lines(_chunks(path)), 1):
        if n == 1:
            raw = raw.removeprefix(codecs.BOM_UTF8)
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"{path}:{n}: not valid UTF-8 at byte {e.start} of the line{note}; {_UTF8_FIX}") from None
        yield n, line


def _paragraphs(path: Path) -> Iterator[str]:
    """Blank-line-separated paragraphs, each its lines joined by "\\n" ("\\r\\n" read as "\\n") and stripped."""
    lines: list[str] = []
    for _, line in _text_lines(path):
        if _BLANK.fullmatch(line):
            if doc := "\n".join(lines).strip():
                yield doc
            lines = []
        else:
            lines.append(line.removesuffix("\r"))
    if doc := "\n".join(lines).strip():
        yield doc


def _jsonl_documents(path: Path, field: str) -> Iterator[str]:
    for n, line in _text_lines(path):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{n}: invalid JSON ({e.msg}); each line must be one JSON object") from None
        except RecursionError:
            raise DataError(
                f"{path}:{n}: invalid JSON (nested too deeply); each line must be one JSON object"
            ) from None
        if not isinstance(record, dict) or field not in record:
            raise DataError(
                f"{path}:{n}: record has no {field!r} field; set data.jsonl_field to the field holding the text "
                f"or fix the line"
            )
        if not isinstance(text := record[field], str):
            raise DataError(f"{path}:{n}: field {field!r} is not a string; data.jsonl_field must name text")
        if text := text.strip():
            yield text


def _parquet_documents(path: Path, column: str) -> Iterator[str]:
    if not _compression(path):
        yield from _parquet_rows(path, str(path), column)
        return
    with tempfile.TemporaryFile(prefix="triad-", suffix=".parquet") as tmp:
        for chunk in _chunks(path):  # decompression errors are DataErrors already; an OSError here is the write
            try:
                tmp.write(chunk)
            except OSError as e:
                raise DataError(
                    f"{path}: cannot decompress it to a temporary file in {tempfile.gettempdir()} ({e.strerror}); "
                    f"set TMPDIR to a directory with room, or decompress the file yourself"
                ) from None
        tmp.seek(0)
        yield from _parquet_rows(path, tmp, column)


def _is_text(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):
        t = t.value_type
    return pa.types.is_string(t) or pa.types.is_large_string(t) or str(t) == "string_view"  # no is_string_view in 15


def _parquet_rows(path: Path, source, column: str) -> Iterator[str]:
    """The stripped non-empty strings of `column`, one batch at a time; nulls are skipped."""
    corrupt = f"re-download it, {_LIST_FIX}"
    try:
        pf = pq.ParquetFile(source)
        schema = pf.schema_arrow
    except (pa.ArrowInvalid, OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not a valid parquet file or cut short ({e}); {corrupt}") from None
    if column not in schema.names:
        raise DataError(
            f"{path}: no column {column!r} (it has {', '.join(map(repr, schema.names))}); set data.parquet_column "
            f"to the column holding the text"
        )
    if not _is_text(t := schema.field(column).type):
        raise DataError(f"{path}: column {column!r} holds {t}, not text; data.parquet_column must name a string column")
    batches = pf.iter_batches(batch_size=_PARQUET_BATCH, columns=[column])
    while True:
        try:
            batch = next(batches, None)
            texts = [] if batch is None else batch.column(0).to_pylist()
        except (pa.ArrowInvalid, OSError) as e:
            raise DataError(f"{path}: not a valid parquet file or cut short ({e}); {corrupt}") from None
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: column {column!r} is not valid UTF-8 ({e.reason}); {corrupt}") from None
        if batch is None:
            return
        yield from (d for text in texts if text is not None and (d := text.strip()))

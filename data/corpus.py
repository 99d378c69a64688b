"""Text files -> documents -> train/val split -> one flat token array per split, cached on disk.

Each split is stored as the documents' tokens with eos after every document, as a .npy (uint16 when the vocabulary
fits, else int32) that is memory-mapped on load. The cache key hashes the input files' bytes (so an edited file is
never served stale, even with the same size and mtime), the split settings and the tokenizer (its file's hash, or the
settings that train it); the tokenizer's hash is stored and checked again on load.
"""

import dataclasses
import glob
import gzip
import hashlib
import json
import os
import re
import shutil
import tempfile
import zlib
from pathlib import Path

import numpy as np
import sentencepiece as spm

from data import tokenizer as tokenizer_lib
from data.errors import DataError

CACHE_VERSION = 1
SUFFIXES = (".txt", ".jsonl", ".txt.gz", ".jsonl.gz")
REPO_ROOT = Path(__file__).resolve().parent.parent
_GLOB_CHARS = re.compile(r"[*?\[]")
_ENCODE_CHUNK = 8192  # documents encoded per call, so huge corpora never live as Python int lists


@dataclasses.dataclass
class Corpus:
    """Token streams of both splits plus what produced them."""

    tokenizer: tokenizer_lib.Tokenizer | tokenizer_lib.ByteTokenizer
    tokens: dict[str, np.ndarray]  # split -> (N,) uint16/int32, memory-mapped
    documents: dict[str, int]  # split -> number of documents
    bytes: dict[str, int]  # split -> UTF-8 bytes of its documents' text
    cache_hit: bool
    cache_path: str


def cache_root(cache_dir: str) -> Path:
    """data.cache_dir, or $TRIAD_CACHE, or ~/.cache/triad."""
    root = cache_dir or os.environ.get("TRIAD_CACHE", "") or "~/.cache/triad"
    return Path(root).expanduser()


def expand(spec: str, flag: str) -> list[Path]:
    """Comma-separated paths or globs -> existing files, in the order given (each glob sorted)."""
    fix = "pass existing paths or globs (comma-separated)"
    items = [s.strip() for s in spec.split(",") if s.strip()]
    if not items:
        raise DataError(f"{flag}: no files given ({spec!r}); {fix}")
    files: list[Path] = []
    for item in items:
        pattern = str(Path(item).expanduser())
        if _GLOB_CHARS.search(item):
            found = sorted(glob.glob(pattern, recursive=True)) or _from_repo(pattern, glob_=True)
            found = [f for f in found if Path(f).is_file()]
            if not found:
                raise DataError(f"{flag}: {item!r} matched no files; {fix}")
            files.extend(Path(f) for f in found)
        else:
            p = Path(pattern)
            if not p.exists():
                p = Path(next(iter(_from_repo(pattern, glob_=False)), pattern))
            if not p.exists():
                raise DataError(f"{flag}: {item!r} does not exist; {fix}")
            if not p.is_file():
                raise DataError(f"{flag}: {item!r} is a directory; pass files or globs such as '{item}/*.txt'")
            files.append(p)
    for f in files:
        if not str(f).endswith(SUFFIXES):
            raise DataError(f"{flag}: {str(f)!r} has an unsupported extension; use one of {', '.join(SUFFIXES)}")
    return files


def _from_repo(pattern: str, glob_: bool) -> list[str]:
    """A relative path not found from the working directory is also looked up from the repository root."""
    if Path(pattern).is_absolute():
        return []
    p = str(REPO_ROOT / pattern)
    if glob_:
        return sorted(glob.glob(p, recursive=True))
    return [p] if Path(p).exists() else []


def _read_text(path: Path) -> str:
    raw = path.read_bytes()
    note = ""
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"{path}: not a valid gzip file ({e}); recompress it or drop the .gz suffix") from None
        note = " (of the decompressed text)"
    try:
        return raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as e:
        raise DataError(
            f"{path}: not valid UTF-8 at byte offset {e.start}{note}; convert the file to UTF-8 "
            f"(e.g. iconv -f latin1 -t utf-8)"
        ) from None


def jsonl_records(path: Path, text: str | None = None):
    """(line number, parsed record) of each non-empty line of a .jsonl(.gz) file; DataError naming file:line."""
    for n, line in enumerate((_read_text(path) if text is None else text).split("\n"), 1):
        if not line.strip():
            continue
        try:
            yield n, json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{n}: invalid JSON ({e.msg}); each line must be one JSON object") from None


def read_documents(path: Path, txt_documents: str, jsonl_field: str) -> list[str]:
    """Documents of one file: stripped, empty ones dropped; raises DataError if none are left."""
    text = _read_text(path)
    name = path.name.removesuffix(".gz")
    if name.endswith(".jsonl"):
        docs = []
        for n, record in jsonl_records(path, text):
            if not isinstance(record, dict) or jsonl_field not in record:
                raise DataError(
                    f"{path}:{n}: record has no {jsonl_field!r} field; set data.jsonl_field to the field "
                    f"holding the text or fix the line"
                )
            if not isinstance(record[jsonl_field], str):
                raise DataError(f"{path}:{n}: field {jsonl_field!r} is not a string; data.jsonl_field must name text")
            docs.append(record[jsonl_field].strip())
    elif txt_documents == "line":
        docs = [line.strip() for line in text.split("\n")]
    elif txt_documents == "paragraph":
        docs = [p.strip() for p in re.split(r"\n[ \t\r\f\v]*\n", text.replace("\r\n", "\n"))]
    else:
        raise DataError(f"data.txt_documents: unknown {txt_documents!r}; choose 'line' or 'paragraph'")
    docs = [d for d in docs if d]
    if not docs:
        raise DataError(f"{path}: contains no text (empty after stripping whitespace); remove it or add text")
    return docs


def split_train_val(docs: list[str], val_fraction: float) -> tuple[list[str], list[str]]:
    """Holds out the round(val_fraction * n) documents (at least 1) with the smallest content hashes.

    Document-level and independent of the seed and of file order; identical documents land on the same side
    unless they straddle the cut. Both splits keep the original document order.
    """
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"data.val_fraction={val_fraction} must be in (0, 1); or pass data.val_files")
    if len(docs) < 2:
        raise DataError(
            f"data.train_files: {len(docs)} document, too few to carve a validation split; add text or pass "
            f"data.val_files"
        )
    n_val = min(len(docs) - 1, max(1, round(val_fraction * len(docs))))
    keys = [hashlib.blake2b(d.encode("utf-8"), digest_size=8).digest() for d in docs]
    order = sorted(range(len(docs)), key=lambda i: (keys[i], i))
    is_val = np.zeros(len(docs), bool)
    is_val[order[:n_val]] = True
    return [d for d, v in zip(docs, is_val, strict=True) if not v], [d for d, v in zip(docs, is_val, strict=True) if v]


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def _documents(files: list[Path], data) -> list[str]:
    docs: list[str] = []
    for f in files:
        docs.extend(read_documents(f, data.txt_documents, data.jsonl_field))
    return docs


def _stream(tok, docs: list[str], dtype) -> np.ndarray:
    """Tokens of `docs` with eos after every document."""
    parts = []
    for i in range(0, len(docs), _ENCODE_CHUNK):
        encoded = tok.encode_batch(docs[i : i + _ENCODE_CHUNK])
        lengths = np.fromiter((len(e) + 1 for e in encoded), np.int64, len(encoded))
        flat = np.fromiter((t for e in encoded for t in (*e, tok.eos_id)), dtype, int(lengths.sum()))
        parts.append(flat)
    return np.concatenate(parts) if parts else np.zeros(0, dtype)


def _tokenizer_key(data) -> dict:
    if data.tokenizer:
        return {"file_sha256": tokenizer_lib.load(data.tokenizer).sha256}
    if data.tokenizer_type == "byte":
        return {"type": "byte", "sha256": tokenizer_lib.ByteTokenizer().sha256}
    if data.tokenizer_type not in tokenizer_lib.MODEL_TYPES:
        raise DataError(
            f"data.tokenizer_type: unknown {data.tokenizer_type!r}; choose one of {list(tokenizer_lib.TOKENIZER_TYPES)}"
        )
    return {
        "type": data.tokenizer_type,
        "vocab_size": data.vocab_size,
        "sentencepiece": spm.__version__,
        "train_version": tokenizer_lib.TRAIN_VERSION,
    }


def _make_tokenizer(data, train_docs: list[str], root: Path):
    if data.tokenizer:
        return tokenizer_lib.load(data.tokenizer)
    if data.tokenizer_type == "byte":
        return tokenizer_lib.ByteTokenizer()
    return tokenizer_lib.train_cached(train_docs, data.vocab_size, data.tokenizer_type, root)[0]


def _load_cached(meta_path: Path, data):
    """The cached tokenizer and metadata, or None when anything is missing or does not match."""
    try:
        meta = json.loads(meta_path.read_text())
        if data.tokenizer:
            tok = tokenizer_lib.load(data.tokenizer)
        elif data.tokenizer_type == "byte":
            tok = tokenizer_lib.ByteTokenizer()
        else:
            tok = tokenizer_lib.Tokenizer(Path(meta["tokenizer_path"]).read_bytes(), meta["tokenizer_path"])
        if tok.sha256 != meta["tokenizer_sha256"]:
            return None
        tokens = {s: np.load(meta_path.parent / f"{s}.npy", mmap_mode="r") for s in ("train", "val")}
        if any(len(tokens[s]) != meta["tokens"][s] for s in tokens):
            return None
        return tok, tokens, meta
    except (OSError, KeyError, ValueError):
        return None


def load(data) -> Corpus:
    """Reads, splits, tokenizes and caches the corpus described by config.data (tokenizing only on a miss)."""
    train_files = expand(data.train_files, "data.train_files")
    val_files = expand(data.val_files, "data.val_files") if data.val_files else []
    if data.txt_documents not in ("line", "paragraph"):
        raise DataError(f"data.txt_documents: unknown {data.txt_documents!r}; choose 'line' or 'paragraph'")
    key_material = {
        "version": CACHE_VERSION,
        "train_files": [[f.name, _sha256_file(f)] for f in train_files],
        "val_files": [[f.name, _sha256_file(f)] for f in val_files],
        "val_fraction": None if val_files else data.val_fraction,
        "txt_documents": data.txt_documents,
        "jsonl_field": data.jsonl_field,
        "tokenizer": _tokenizer_key(data),
    }
    key = hashlib.sha256(json.dumps(key_material, sort_keys=True).encode()).hexdigest()[:24]
    root = cache_root(data.cache_dir)
    final = root / "tokens" / key
    if (cached := _load_cached(final / "meta.json", data)) is not None:
        tok, tokens, meta = cached
        return Corpus(tok, tokens, meta["documents"], meta["bytes"], True, str(final))

    docs = _documents(train_files, data)
    if val_files:
        split = {"train": docs, "val": _documents(val_files, data)}
    else:
        train_docs, val_docs = split_train_val(docs, data.val_fraction)
        split = {"train": train_docs, "val": val_docs}
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(
            f"data.cache_dir: cannot create {str(root)!r} ({e}); set data.cache_dir or $TRIAD_CACHE"
        ) from None
    tok = _make_tokenizer(data, split["train"], root)
    dtype = np.uint16 if tok.vocab_size <= 1 << 16 else np.int32
    tokens = {s: _stream(tok, d, dtype) for s, d in split.items()}
    meta = {
        "key": key_material,
        "tokenizer_path": tok.path,
        "tokenizer_sha256": tok.sha256,
        "documents": {s: len(d) for s, d in split.items()},
        "bytes": {s: sum(len(x.encode("utf-8")) for x in d) for s, d in split.items()},
        "tokens": {s: len(t) for s, t in tokens.items()},
    }
    tmp = Path(tempfile.mkdtemp(dir=_mkdir(root / "tokens"), prefix=f".{key}."))
    try:
        for s, t in tokens.items():
            np.save(tmp / f"{s}.npy", t)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        if final.exists():  # an invalid entry (e.g. its tokenizer changed): replace it
            shutil.rmtree(final, ignore_errors=True)
        try:
            os.rename(tmp, final)  # atomic: readers see the whole entry or none of it
        except OSError:
            pass  # another process wrote the same entry (the content is deterministic) in the meantime
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    tokens = {s: np.load(final / f"{s}.npy", mmap_mode="r") for s in tokens}
    return Corpus(tok, tokens, meta["documents"], meta["bytes"], False, str(final))


def _mkdir(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p

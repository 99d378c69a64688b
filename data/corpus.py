"""config.data -> a token store (data/store.py): which files, the train/val split, the tokenizer, and preparing it.

Preparation streams the input files (data/readers.py), tokenizes them in `data.num_workers` worker processes, one
input file per work unit, and writes the store with bounded memory whatever the corpus size: a worker holds at
most one part, fewer than `data.shard_tokens` tokens of each split plus one document (data/store.py). `load`
prepares what is missing (on a small corpus that is all there is to it) and opens the store, memory-mapped.
`python -m data.prepare` does the same ahead of training, for one slice of the units with --num_shards/--shard, so
a job array prepares a large corpus on many machines (and --finalize writes the index after it).

- The split is decided per document, from a hash of its text: a document is validation when its hash falls in
  the lowest data.val_fraction of the hash range (or it comes from data.val_files). No list of all documents.
- The tokenizer is data.tokenizer (a SentencePiece .model or a Hugging Face tokenizer.json), the byte tokenizer,
  or SentencePiece trained on a bounded, deterministic sample: the first data.tokenizer_sample_mb / n megabytes of
  training documents of each of the n training files.
- The store's key hashes the inputs' fingerprints (size, mtime and, under 64 MiB, the bytes: data/readers.py), the
  split and reader settings and the tokenizer's, so a changed input is never served stale; store.json records the
  tokenizer's hash, checked on load.
- Many processes (multi-host training): process 0 prepares; the others wait for its store.json. The store must
  then be on storage they all see (data.cache_dir).
"""

from __future__ import annotations

import dataclasses
import glob
import gzip
import hashlib
import json
import logging
import multiprocessing
import os
import re
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import sentencepiece as spm

from data import readers, store
from data import tokenizer as tokenizer_lib
from data.errors import DataError

STORE_VERSION = 2
REPO_ROOT = Path(__file__).resolve().parent.parent
_GLOB_CHARS = re.compile(r"[*?\[]")
_ENCODE_CHUNK = 2048  # documents encoded per call
_WAIT_SECONDS = 6 * 3600  # how long a process other than 0 waits for process 0's store
log = logging.getLogger(__name__)


@dataclasses.dataclass
class Corpus:
    """Token streams of both splits plus what produced them."""

    tokenizer: object
    tokens: dict[str, store.TokenStream]  # split -> the (N,) stream over the store's memory-mapped parts
    documents: dict[str, int]  # split -> number of documents
    bytes: dict[str, int]  # split -> UTF-8 bytes of its documents' text
    cache_hit: bool  # the store was complete already: nothing was tokenized
    cache_path: str  # the store's directory


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
        if not str(f).endswith(readers.SUFFIXES):
            raise DataError(f"{flag}: {str(f)!r} has an unsupported extension; use one of "
                            f"{', '.join(readers.SUFFIXES)}")
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
    """The whole text of a small file (labelled examples), gunzipped; DataError on bad gzip or UTF-8."""
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
    """(line number, parsed record) of each non-empty line of a small .jsonl(.gz) file; DataError naming file:line."""
    for n, line in enumerate((_read_text(path) if text is None else text).split("\n"), 1):
        if not line.strip():
            continue
        try:
            yield n, json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{n}: invalid JSON ({e.msg}); each line must be one JSON object") from None


def read_documents(path: Path, txt_documents: str, jsonl_field: str, parquet_column: str = "text") -> list[str]:
    """Documents of one file: stripped, empty ones dropped; raises DataError if none are left."""
    return list(readers.iter_documents(path, txt_documents, jsonl_field, parquet_column))


_VAL_SALT = b"triad-val-split-v1"


def is_val(doc: str, val_fraction: float) -> bool:
    """Whether a document of a training file is held out: its text's hash is in the lowest val_fraction."""
    h = int.from_bytes(hashlib.blake2b(doc.encode("utf-8"), digest_size=8, key=_VAL_SALT).digest(), "big")
    return h < val_fraction * 2.0**64


def split_train_val(docs: list[str], val_fraction: float) -> tuple[list[str], list[str]]:
    """(train, val) of a list of documents by `is_val`, each in the original order."""
    _check_fraction(val_fraction)
    flags = [is_val(d, val_fraction) for d in docs]
    return [d for d, v in zip(docs, flags, strict=True) if not v], [d for d, v in zip(docs, flags, strict=True) if v]


def _check_fraction(val_fraction: float) -> None:
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"data.val_fraction={val_fraction} must be in (0, 1); or pass data.val_files")


@dataclasses.dataclass(frozen=True)
class Unit:
    """One input file: its documents all go to `split`, or ('split') to train or val by `is_val`."""

    index: int
    path: str
    split: str  # 'train', 'val' or 'split'


# The corpora that ship with the repository (data/corpora/*/README.md): data.corpus -> (train files, val files).
BUNDLED = {
    "modern": ("data/corpora/modern/train.txt.gz", "data/corpora/modern/val.txt.gz"),  # whole books held out
    "kjv": ("data/corpora/kjv.txt.gz", ""),  # verses, held out by data.val_fraction
}


def sources(data) -> tuple[str, str]:
    """(train files, val files) of config.data: data.train_files / data.val_files, or with train_files '' the
    bundled corpus data.corpus names."""
    if data.train_files:
        return data.train_files, data.val_files
    if data.corpus not in BUNDLED:
        raise DataError(f"data.corpus: unknown {data.corpus!r}; choose one of {list(BUNDLED)} or pass "
                        "data.train_files")
    if data.val_files:
        raise DataError(f"data.val_files={data.val_files!r} needs data.train_files (data.corpus={data.corpus!r} "
                        "brings its own validation split); pass both, or neither")
    return BUNDLED[data.corpus]


def units(data) -> list[Unit]:
    """The work units of config.data, in order: the training files, then the validation files."""
    if data.txt_documents not in ("line", "paragraph"):
        raise DataError(f"data.txt_documents: unknown {data.txt_documents!r}; choose 'line' or 'paragraph'")
    train_spec, val_spec = sources(data)
    flag = "data.train_files" if data.train_files else f"data.corpus={data.corpus}"
    train_files = expand(train_spec, flag)
    val_files = expand(val_spec, "data.val_files" if data.train_files else flag) if val_spec else []
    if not val_files:
        _check_fraction(data.val_fraction)
    kinds = [(f, "train" if val_files else "split") for f in train_files] + [(f, "val") for f in val_files]
    return [Unit(i, str(f), kind) for i, (f, kind) in enumerate(kinds)]


def documents(data, split: str) -> Iterator[str]:
    """The documents of one split, streamed, in store order (what data/probes.py builds its tasks from)."""
    for u in units(data):
        for doc in readers.iter_documents(Path(u.path), data.txt_documents, data.jsonl_field, data.parquet_column):
            if (u.split == split) if u.split != "split" else (is_val(doc, data.val_fraction) == (split == "val")):
                yield doc


def _tokenizer_key(data) -> dict:
    if data.tokenizer:
        return {"file_sha256": tokenizer_lib.load(data.tokenizer).sha256}
    if data.tokenizer_type == "byte":
        return {"type": "byte", "sha256": tokenizer_lib.ByteTokenizer().sha256}
    if data.tokenizer_type not in tokenizer_lib.MODEL_TYPES:
        raise DataError(f"data.tokenizer_type: unknown {data.tokenizer_type!r}; choose one of "
                        f"{list(tokenizer_lib.TOKENIZER_TYPES)}")
    return {"type": data.tokenizer_type, "vocab_size": data.vocab_size, "sentencepiece": spm.__version__,
            "train_version": tokenizer_lib.TRAIN_VERSION, "sample_mb": data.tokenizer_sample_mb}


def tokenizer_sample(data, unit_list: list[Unit]) -> list[str]:
    """The bounded sample SentencePiece trains on: the first sample_mb / n MB of training documents of each of the
    n training files (deterministic; reads only the head of each file)."""
    train_units = [u for u in unit_list if u.split != "val"]
    budget = int(data.tokenizer_sample_mb * 2**20 / max(len(train_units), 1))
    out = []
    for u in train_units:
        taken = 0
        for doc in readers.iter_documents(Path(u.path), data.txt_documents, data.jsonl_field, data.parquet_column):
            if u.split == "split" and is_val(doc, data.val_fraction):
                continue
            out.append(doc)
            taken += len(doc.encode("utf-8"))
            if taken >= budget:
                break
    return out


def _make_tokenizer(data, unit_list: list[Unit], root: Path):
    if data.tokenizer:
        return tokenizer_lib.load(data.tokenizer)
    if data.tokenizer_type == "byte":
        return tokenizer_lib.ByteTokenizer()
    return tokenizer_lib.train_cached(tokenizer_sample(data, unit_list), data.vocab_size, data.tokenizer_type,
                                      root)[0]


def store_dir(data, unit_list: list[Unit]) -> Path:
    """Where the store of config.data lives: keyed by everything that determines its contents."""
    key = {
        "version": STORE_VERSION,
        "inputs": [[u.split, readers.file_fingerprint(Path(u.path))] for u in unit_list],
        "val_fraction": data.val_fraction if any(u.split == "split" for u in unit_list) else None,
        "txt_documents": data.txt_documents, "jsonl_field": data.jsonl_field, "parquet_column": data.parquet_column,
        "tokenizer": _tokenizer_key(data),
        "shard_tokens": data.shard_tokens,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    return cache_root(data.cache_dir) / "stores" / digest


@dataclasses.dataclass(frozen=True)
class _Job:
    """What a worker needs to write one unit (picklable: the workers are spawned processes)."""

    unit: Unit
    directory: str
    tokenizer: str  # a tokenizer file, or '' for the byte tokenizer
    dtype: str
    shard_tokens: int
    val_fraction: float
    txt_documents: str
    jsonl_field: str
    parquet_column: str


_TOKENIZERS: dict[str, object] = {}


def _load_tokenizer(path: str):
    if path not in _TOKENIZERS:
        _TOKENIZERS[path] = tokenizer_lib.load(path) if path else tokenizer_lib.ByteTokenizer()
    return _TOKENIZERS[path]


def write_unit(job: _Job) -> int:
    """Tokenizes one unit into its parts (resuming after the parts an earlier run finished); returns its index."""
    directory, u = Path(job.directory), job.unit
    tok = _load_tokenizer(job.tokenizer)
    start, already = store.resume_point(directory, u.index)
    writer = store.PartWriter(directory, u.index, job.dtype, job.shard_tokens, tok.eos_id, start, already)
    docs = readers.iter_documents(Path(u.path), job.txt_documents, job.jsonl_field, job.parquet_column)
    for _ in range(already):
        next(docs)
    for chunk in store.iter_chunks(docs, _ENCODE_CHUNK):
        for doc, ids in zip(chunk, tok.encode_batch(chunk, num_threads=1), strict=True):
            split = u.split if u.split != "split" else ("val" if is_val(doc, job.val_fraction) else "train")
            writer.add(split, ids, len(doc.encode("utf-8")))
    writer.flush()
    store.write_json(directory / f"u{u.index:05d}.json", {"unit": u.index, "path": u.path, "parts": writer.part})
    return u.index


def prepare(data, num_workers: int = 0, num_shards: int = 1, shard: int = 0, log=print,
            finalize: bool = False) -> Path:
    """Writes the units of slice `shard` of `num_shards` (all of them by default) that are not done yet, in
    `num_workers` processes (0: one per core, at most one per unit), and the index once every unit is done.
    finalize: write no unit, only the index, or raise DataError naming the files not prepared yet (the last step of
    a job array, where the last two slices can miss each other's units on storage that caches directory listings).
    Returns the store's directory."""
    if not 0 <= shard < num_shards:
        raise DataError(f"--shard={shard} must be in [0, --num_shards={num_shards})")
    unit_list = units(data)
    directory = store_dir(data, unit_list)
    if (directory / store.INDEX).is_file():
        return directory
    root = cache_root(data.cache_dir)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"data.cache_dir: cannot create {directory} ({e.strerror or e}); set data.cache_dir or "
                        "$TRIAD_CACHE") from None
    tok = _make_tokenizer(data, unit_list, root)
    tok.require("eos", purpose="the token stream (an eos after every document)")
    dtype = "uint16" if tok.vocab_size <= 1 << 16 else "int32"
    unfinished = set(store.check_complete(directory, len(unit_list)))  # once: each check looks at every unit
    todo = [] if finalize else [u for u in unit_list if u.index % num_shards == shard and u.index in unfinished]
    jobs = [_Job(u, str(directory), tok.path, dtype, data.shard_tokens, data.val_fraction, data.txt_documents,
                 data.jsonl_field, data.parquet_column) for u in todo]
    workers = max(1, min(num_workers or os.cpu_count() or 1, len(jobs)))
    t0 = time.perf_counter()
    if workers == 1:
        for job in jobs:
            write_unit(job)
    else:  # spawn: safe whatever the parent has started (JAX's threads, a prefetch thread)
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            for _ in pool.imap_unordered(write_unit, jobs):
                pass
    if jobs:
        log(f"prepared {len(jobs)} of {len(unit_list)} input files in {time.perf_counter() - t0:.1f} s with "
            f"{workers} worker{'s' * (workers > 1)} into {directory}")
    missing = store.check_complete(directory, len(unit_list))
    if not missing:
        header = {"version": STORE_VERSION, "tokenizer": tok.path or "byte", "tokenizer_sha256": tok.sha256,
                  "vocab_size": tok.vocab_size, "dtype": dtype, "shard_tokens": data.shard_tokens,
                  "inputs": [dataclasses.asdict(u) | {"fingerprint": readers.file_fingerprint(Path(u.path))}
                             for u in unit_list]}
        store.write_index(directory, header, len(unit_list))
    elif finalize:
        files = ", ".join(f"{unit_list[u].path} (unit {u})" for u in missing[:5]) + ", ..." * (len(missing) > 5)
        raise DataError(f"{directory}: {len(missing)} of {len(unit_list)} input files are not prepared yet: {files}; "
                        "no index written. Run their slices again (unit i belongs to --shard=i mod --num_shards), or "
                        "python -m data.prepare without --num_shards to prepare them here")
    elif num_shards == 1:
        raise DataError(f"preparing {directory} left units {missing[:5]} unfinished; run it again to resume")
    return directory


def _wait_for(directory: Path) -> None:
    t0 = time.perf_counter()
    while not (directory / store.INDEX).is_file():
        if time.perf_counter() - t0 > _WAIT_SECONDS:
            raise DataError(f"waited {_WAIT_SECONDS} s for process 0 to prepare {directory}: is data.cache_dir on "
                            "storage every process sees? Or prepare it first with python -m data.prepare")
        time.sleep(1.0)


def load(data, process_index: int = 0, process_count: int = 1) -> Corpus:
    """The store of config.data, prepared first if it is not complete (by process 0; the others wait for it)."""
    unit_list = units(data)
    directory = store_dir(data, unit_list)
    hit = (directory / store.INDEX).is_file()
    if not hit:
        if process_index == 0:
            prepare(data, data.num_workers, log=log.info)
        else:
            log.info("process %d waits for process 0 to prepare the token store %s", process_index, directory)
            _wait_for(directory)
    if data.tokenizer:
        tok = tokenizer_lib.load(data.tokenizer)
    elif data.tokenizer_type == "byte":
        tok = tokenizer_lib.ByteTokenizer()
    else:  # the one trained for this store, recorded in its index
        tok = tokenizer_lib.load(store.read_json(directory / store.INDEX)["tokenizer"])
    opened = store.open_store(directory, tok.sha256)
    return Corpus(tok, opened.streams, {s: opened.count(s, "documents") for s in store.SPLITS},
                  {s: opened.count(s, "bytes") for s in store.SPLITS}, hit, str(directory))

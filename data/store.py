"""The token store: a corpus tokenized once into fixed-size shards, memory-mapped for training.

A store is a directory. Its inputs are cut into work units (one per input file, in order); unit u writes parts
p = 0, 1, ..., each written as soon as either split in it reaches `shard_tokens` tokens (documents are not cut: the
split that reached it may exceed `shard_tokens` by its last document, the other holds fewer, so a writer holds fewer
than 2 x `shard_tokens` tokens plus one document, whatever the size or split of the file):

  u00003-p0001.train.npy  u00003-p0001.val.npy       tokens, eos after every document (uint16 or int32)
  u00003-p0001.train.docs.npy  ...val.docs.npy       int64 start offset of every document in the part
  u00003-p0001.json                                  the part's counts; written last, so it marks the part done
  u00003.json                                        the unit's totals: the unit is done
  store.json                                         the index of a complete store: every part, in order

Every file is written under a temporary name, flushed to disk (fsync, and its directory's after the rename) and
renamed, so neither a killed preparation nor a machine crash leaves a partial part, or a marker over one, that a
later run would read: it resumes at the first part without its .json (skipping the documents the earlier parts
consumed, without tokenizing them). Parts are a function of the inputs alone, not of the number of workers or
machines that wrote them, so slices of the units prepared on different machines form one store.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from data.errors import DataError

INDEX = "store.json"
SPLITS = ("train", "val")


def part_name(unit: int, part: int) -> str:
    return f"u{unit:05d}-p{part:04d}"


def _sync_directory(directory: Path) -> None:
    """fsync a directory, so the renames in it survive a machine crash (skipped where the filesystem cannot)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError as e:
        if e.errno in (errno.EACCES, errno.EISDIR):  # no directory handles here (e.g. Windows)
            return
        raise
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):  # filesystems that do not sync directories
            raise
    finally:
        os.close(fd)


def _write_atomic(path: Path, write, sync_directory: bool = True) -> None:
    """write(file object) into `path` through a temporary file, fsynced before the rename that publishes it and
    (sync_directory) its directory after: once this returns, `path` holds the whole file even after a machine crash
    (so a marker written later never survives the files it marks); a failure leaves nothing at `path`."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        if sync_directory:
            _sync_directory(path.parent)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        fix = "free disk space or set data.cache_dir to a larger disk" if e.errno == errno.ENOSPC else \
            "check the directory's permissions and free space, or set data.cache_dir"
        raise DataError(f"cannot write {path} ({e.strerror or e}): {fix}; the part was not kept, and preparing "
                        "again resumes at it") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj) -> None:
    _write_atomic(path, lambda f: f.write(json.dumps(obj, indent=1).encode()))


def read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


class PartWriter:
    """Accumulates one unit's documents and writes a part as soon as either split holds `shard_tokens` tokens (that
    split at most one document more, the other fewer)."""

    def __init__(self, directory: Path, unit: int, dtype, shard_tokens: int, eos_id: int, start_part: int = 0,
                 documents_read: int = 0):
        self.directory, self.unit, self.dtype, self.shard_tokens, self.eos_id = (
            directory, unit, np.dtype(dtype), shard_tokens, eos_id)
        self.part, self.documents_read = start_part, documents_read
        self._reset()

    def _reset(self) -> None:
        self.chunks = {s: [] for s in SPLITS}
        self.lengths = {s: [] for s in SPLITS}
        self.tokens = {s: 0 for s in SPLITS}
        self.bytes = {s: 0 for s in SPLITS}

    def add(self, split: str, ids: list[int], nbytes: int) -> None:
        """One document's token ids (eos is appended here)."""
        self.chunks[split].append(np.asarray(ids + [self.eos_id], self.dtype))
        self.lengths[split].append(len(ids) + 1)
        self.tokens[split] += len(ids) + 1
        self.bytes[split] += nbytes
        self.documents_read += 1
        if self.tokens[split] >= self.shard_tokens:  # only this split grew: the other is still below
            self.flush()

    def skip(self) -> None:
        """A document already written by an earlier run."""
        self.documents_read += 1

    def flush(self) -> dict | None:
        """Writes the part (if it holds anything) and starts the next; returns its record."""
        if not any(self.lengths[s] for s in SPLITS):
            return None
        name = part_name(self.unit, self.part)
        record = {"name": name, "documents_read": self.documents_read}
        for s in SPLITS:
            tokens = np.concatenate(self.chunks[s]) if self.chunks[s] else np.zeros(0, self.dtype)
            starts = np.concatenate([[0], np.cumsum(self.lengths[s])[:-1]]).astype(np.int64) if self.lengths[s] \
                else np.zeros(0, np.int64)
            _write_atomic(self.directory / f"{name}.{s}.npy", lambda f, t=tokens: np.save(f, t), False)
            _write_atomic(self.directory / f"{name}.{s}.docs.npy", lambda f, d=starts: np.save(f, d), False)
            record[s] = {"tokens": int(len(tokens)), "documents": len(self.lengths[s]), "bytes": self.bytes[s]}
        _sync_directory(self.directory)  # the four renames above on disk before the marker
        write_json(self.directory / f"{name}.json", record)  # last: the part is done
        self.part += 1
        self._reset()
        return record


def resume_point(directory: Path, unit: int) -> tuple[int, int]:
    """(first part to write, documents its unit consumed before it) from the parts an earlier run finished."""
    part, read = 0, 0
    while (record := read_json(directory / f"{part_name(unit, part)}.json")) is not None:
        part, read = part + 1, record["documents_read"]
    return part, read


def unit_records(directory: Path, unit: int) -> list[dict]:
    """The part records of a finished unit, in order."""
    done = read_json(directory / f"u{unit:05d}.json")
    if done is None:
        return []
    return [read_json(directory / f"{part_name(unit, p)}.json") for p in range(done["parts"])]


class TokenStream:
    """One split of a store as a single (N,) token stream over its memory-mapped parts."""

    def __init__(self, directory: Path, split: str, parts: list[dict]):
        self.directory, self.split = directory, split
        names = [p["name"] for p in parts if p[split]["tokens"]]
        self._parts = [np.load(directory / f"{n}.{split}.npy", mmap_mode="r") for n in names]
        self._names = names
        self.starts = np.concatenate([[0], np.cumsum([len(p) for p in self._parts])]).astype(np.int64)
        self.dtype = self._parts[0].dtype if self._parts else np.dtype(np.uint16)
        self._doc_maps: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return int(self.starts[-1])

    def windows(self, offsets: np.ndarray, width: int) -> np.ndarray:
        """(B, width) int32: the tokens at offsets[b] .. offsets[b] + width - 1 (windows may span parts)."""
        offsets = np.asarray(offsets, np.int64)
        out = np.empty((len(offsets), width), np.int32)
        first = np.searchsorted(self.starts, offsets, side="right") - 1
        last = np.searchsorted(self.starts, offsets + width - 1, side="right") - 1
        for p in np.unique(first[first == last]):  # rows inside one part: one gather per part
            rows = np.flatnonzero((first == p) & (last == p))
            out[rows] = self._parts[p][(offsets[rows] - self.starts[p])[:, None] + np.arange(width)]
        for b in np.flatnonzero(first != last):  # rows across a part boundary
            out[b] = self[int(offsets[b]):int(offsets[b]) + width]
        return out

    def __getitem__(self, key: slice) -> np.ndarray:
        if not isinstance(key, slice):
            raise TypeError("a TokenStream is read by slices or windows(offsets, width)")
        lo, hi, _ = key.indices(len(self))
        pieces = []
        for p in range(np.searchsorted(self.starts, lo, side="right") - 1, len(self._parts)):
            if self.starts[p] >= hi:
                break
            pieces.append(self._parts[p][max(lo - self.starts[p], 0):hi - self.starts[p]])
        return np.concatenate(pieces) if pieces else np.zeros(0, self.dtype)

    def __array__(self, dtype=None, copy=None):
        out = self[:]
        return out if dtype is None else out.astype(dtype)

    def starts_in(self, offsets: np.ndarray, width: int) -> np.ndarray:
        """(B, width) bool: whether the token at offsets[b] + j begins a document (each part's document offsets are
        memory-mapped and searched, so memory does not grow with the corpus)."""
        pos = np.asarray(offsets, np.int64)[:, None] + np.arange(width)
        out = np.zeros(pos.shape, bool)
        part = np.searchsorted(self.starts, pos, side="right") - 1
        for p in np.unique(part):
            at = part == p
            docs = self._docs(p)
            if len(docs):
                local = pos[at] - self.starts[p]
                out[at] = docs[np.minimum(np.searchsorted(docs, local), len(docs) - 1)] == local
        return out

    def _docs(self, p: int) -> np.ndarray:
        if p not in self._doc_maps:
            self._doc_maps[p] = np.load(self.directory / f"{self._names[p]}.{self.split}.docs.npy", mmap_mode="r")
        return self._doc_maps[p]

    def document_starts(self) -> np.ndarray:
        """(documents,) int64 offsets in the stream where each document begins."""
        docs = [np.load(self.directory / f"{n}.{self.split}.docs.npy") + s
                for n, s in zip(self._names, self.starts[:-1], strict=True)]
        return np.concatenate(docs) if docs else np.zeros(0, np.int64)


@dataclasses.dataclass
class Store:
    """A complete store: its directory, its index and one TokenStream per split."""

    directory: Path
    index: dict
    streams: dict[str, TokenStream]

    def count(self, split: str, what: str) -> int:
        return sum(p[split][what] for p in self.index["parts"])


def check_complete(directory: Path, units: int) -> list[int]:
    """The units (of 0..units-1) that have not finished."""
    return [u for u in range(units) if not (directory / f"u{u:05d}.json").is_file()]


def write_index(directory: Path, header: dict, units: int) -> dict:
    """store.json for a store whose units are all done: every part of every unit, in order."""
    parts = [r for u in range(units) for r in unit_records(directory, u)]
    index = {**header, "units": units, "parts": parts}
    write_json(directory / INDEX, index)
    return index


def open_store(directory: Path, tokenizer_sha256: str) -> Store:
    """The complete store at `directory`; DataError naming what is wrong (another tokenizer, a missing part)."""
    index = read_json(directory / INDEX)
    if index is None:
        raise DataError(f"{directory} is not a complete token store (no {INDEX}): run python -m data.prepare "
                        "with the same config, or delete the directory to prepare it again")
    if index["tokenizer_sha256"] != tokenizer_sha256:
        raise DataError(f"the token store {directory} was written by tokenizer {index['tokenizer']} "
                        f"(sha256 {index['tokenizer_sha256'][:12]}), not the one configured (sha256 "
                        f"{tokenizer_sha256[:12]}): delete the store to prepare it again with data.tokenizer")
    for p in index["parts"]:
        for s in SPLITS:
            for suffix in (".npy", ".docs.npy"):
                path = directory / f"{p['name']}.{s}{suffix}"
                if p[s]["tokens"] and not path.is_file():
                    raise DataError(f"the token store {directory} lacks {path.name}: delete {directory / INDEX} and "
                                    f"the unit's {p['name'][:6]}.json, then run python -m data.prepare to write it "
                                    "again (or delete the whole store)")
    return Store(directory, index, {s: TokenStream(directory, s, index["parts"]) for s in SPLITS})


def iter_chunks(items: Iterable, n: int) -> Iterator[list]:
    chunk = []
    for x in items:
        chunk.append(x)
        if len(chunk) == n:
            yield chunk
            chunk = []
    if chunk:
        yield chunk

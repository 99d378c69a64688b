"""`build(config)` -> Data with deterministic `train.batch(step)` / `val.batch(i)` numpy batches.

A batch is a pure function of (config.seed, split, step): row g of the global batch is built from its own rng,
`np.random.default_rng([seed, split_id, step, g])`, which picks the train window offset and drives the masking or
noise. So a process builds only its own rows, the rows are the same whatever the process count, and resuming at
step n replays exactly the batches a run that never stopped would have seen.

Train windows start at random offsets in the train stream. Validation batch i takes windows sequentially from the
start of the val stream (row g of batch i is window i * B + g, wrapping around if the stream runs out), with
masking/noise from a fixed rng per index, so every evaluation sees the same examples. An objective with a
`random_len` (next-sentence prediction) also gets, per row, that many tokens from a uniformly random position of
the same split whose span does not overlap the row's window (drawn from the row's rng after its offset).
"""

import dataclasses
import logging
import queue
import threading
from collections.abc import Iterator

import numpy as np

from data import corpus as corpus_lib
from data import objectives
from data.errors import DataError

SPLIT_IDS = {"train": 0, "val": 1}
log = logging.getLogger(__name__)


@dataclasses.dataclass
class Split:
    """One split's token stream and how to cut it into batches (this process's rows of each global batch)."""

    name: str
    tokens: corpus_lib.store.TokenStream  # (N,) the split's token stream over the store's memory-mapped parts
    objective: objectives.Objective
    seed: int
    global_batch_size: int
    rows: tuple[int, int]  # [start, stop) of this process's rows in the global batch
    prefetch: int
    documents: int
    bytes: int

    @property
    def num_windows(self) -> int:
        """Distinct non-overlapping windows in the stream (what sequential val batches cycle through)."""
        return len(self.tokens) // self.objective.window_len

    def _offsets(self, step: int, rngs: list[np.random.Generator]) -> np.ndarray:
        W, start, stop = self.objective.window_len, *self.rows
        if self.name == "train":
            high = len(self.tokens) - W + 1
            return np.array([r.integers(0, high) for r in rngs], np.int64)
        g = step * self.global_batch_size + np.arange(start, stop, dtype=np.int64)
        return (g % self.num_windows) * W

    def _random_offsets(self, offsets: np.ndarray, rngs: list[np.random.Generator]) -> np.ndarray:
        """Per row, the start of `random_len` tokens, uniform over the starts whose span misses the row's window."""
        W, R, N = self.objective.window_len, self.objective.random_len, len(self.tokens)
        out = np.empty(len(rngs), np.int64)
        for i, (o, r) in enumerate(zip(offsets, rngs, strict=True)):
            lo, hi = max(0, o - R + 1), min(N - R, o + W - 1)  # starts that would overlap [o, o + W)
            x = r.integers(0, N - R + 1 - (hi - lo + 1))
            out[i] = x + (hi - lo + 1) * (x >= lo)
        return out

    def batch(self, step: int) -> dict[str, np.ndarray]:
        """This process's rows of global batch `step` (for val: evaluation batch `step`)."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        start, stop = self.rows
        sid = SPLIT_IDS[self.name]
        rngs = [np.random.default_rng([self.seed, sid, step, g]) for g in range(start, stop)]
        offsets = self._offsets(step, rngs)
        W, R = self.objective.window_len, self.objective.random_len
        windows = self.tokens.windows(offsets, W)
        if R:
            other = self.tokens.windows(self._random_offsets(offsets, rngs), R)
            windows = np.concatenate([windows, other], axis=1)
        starts = self.tokens.starts_in(offsets, W) if self.objective.document_mask else None
        return self.objective(windows, rngs, starts)

    def iterate(self, start_step: int, num_steps: int) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        """Yields (step, batch) for start_step..start_step + num_steps - 1, `prefetch` batches prepared ahead.

        A daemon thread builds the batches; its exceptions are re-raised here; closing or dropping the iterator
        stops it.
        """
        steps = range(start_step, start_step + num_steps)
        if self.prefetch <= 0:
            return ((s, self.batch(s)) for s in steps)
        return _prefetch(self, steps, self.prefetch)


_DONE = object()


def _prefetch(split: Split, steps: range, depth: int):
    out: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                out.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce():
        try:
            for s in steps:
                if not put((s, split.batch(s))):
                    return
            put(_DONE)
        except BaseException as e:  # handed to the consumer, raised there
            put(e)

    thread = threading.Thread(target=produce, name=f"triad-{split.name}-batches", daemon=True)
    thread.start()
    try:
        while True:
            item = out.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)


@dataclasses.dataclass
class Data:
    """The tokenizer and both splits; `summary()` is what to log."""

    tokenizer: object
    train: Split
    val: Split
    objective: objectives.Objective
    cache_hit: bool
    cache_path: str
    eval_steps: int  # validation batches per evaluation (train.eval_steps)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    @property
    def layout(self) -> dict[str, tuple[tuple[int, ...], type]]:
        """Batch key -> (per-example shape, dtype)."""
        return dict(self.objective.shapes)

    def summary(self) -> dict:
        """Flat dict of corpus facts for logging."""
        out = {
            "objective": self.objective.name,
            "vocab_size": self.vocab_size,
            "tokenizer": self.tokenizer.path or "byte",
            "cache_hit": self.cache_hit,
            "cache_path": self.cache_path,
            "window_len": self.objective.window_len,
        }
        for s in (self.train, self.val):
            out[f"{s.name}_documents"] = s.documents
            out[f"{s.name}_tokens"] = len(s.tokens)
            out[f"{s.name}_bytes"] = s.bytes
            out[f"{s.name}_bytes_per_token"] = round(s.bytes / max(1, len(s.tokens)), 4)
        out["val_windows"] = self.val.num_windows
        return out


def _check_size(split: str, n_tokens: int, window: int, batch_size: int, random_len: int) -> None:
    if random_len and n_tokens < window + 2 * random_len:
        raise DataError(
            f"the {split} split has {n_tokens} tokens, too few to draw next-sentence pairs (objective.nsp needs "
            f"{window + 2 * random_len} at data.seq_len); lower data.seq_len or give the split more text"
        )
    need = window * batch_size
    if n_tokens >= need:
        return
    fix = (
        "add text to data.train_files" if split == "train" else "raise data.val_fraction or pass larger data.val_files"
    )
    raise DataError(
        f"the {split} split has {n_tokens} tokens, fewer than one batch (train.batch_size={batch_size} x "
        f"{window} tokens per example at data.seq_len); {fix}, or lower train.batch_size or data.seq_len"
    )


def build(config, process_index: int = 0, process_count: int = 1) -> Data:
    """Reads, tokenizes (cached) and validates everything config.data / config.objective describe."""
    B = config.train.batch_size
    if B <= 0:
        raise DataError(f"train.batch_size={B} must be positive")
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    if B % process_count:
        raise DataError(
            f"train.batch_size={B} is not divisible by the {process_count} processes; use a multiple of {process_count}"
        )
    if config.seed < 0:
        raise DataError(f"seed={config.seed} must be >= 0 (it seeds every batch)")
    if config.objective.name not in objectives.NAMES:
        raise DataError(f"objective.name: unknown {config.objective.name!r}; choose one of {list(objectives.NAMES)}")
    if config.data.prefetch < 0:
        raise DataError(f"data.prefetch={config.data.prefetch} must be >= 0")
    corpus = corpus_lib.load(config.data, process_index, process_count)
    tok = corpus.tokenizer
    if config.model.pad_id != tok.pad_id:
        raise DataError(f"model.pad_id={config.model.pad_id} but the tokenizer's pad id is {tok.pad_id}; set it")
    objective = objectives.build(config, tok)
    per = B // process_count
    rows = (process_index * per, (process_index + 1) * per)
    splits = {}
    for name in ("train", "val"):
        _check_size(name, len(corpus.tokens[name]), objective.window_len, B, objective.random_len)
        splits[name] = Split(
            name,
            corpus.tokens[name],
            objective,
            config.seed,
            B,
            rows,
            config.data.prefetch,
            corpus.documents[name],
            corpus.bytes[name],
        )
    data = Data(tok, splits["train"], splits["val"], objective, corpus.cache_hit, corpus.cache_path,
                config.train.eval_steps)
    needed = config.train.eval_steps * B
    if needed > data.val.num_windows:
        log.warning(
            "val split has %d distinct windows but an evaluation uses %d (train.eval_steps x train.batch_size); "
            "windows repeat (with different masking/noise)",
            data.val.num_windows,
            needed,
        )
    return data

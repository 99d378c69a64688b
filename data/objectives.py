"""Pre-training objectives: token windows -> fixed-shape numpy batches. Pure functions, numpy only.

Each function takes the raw token windows of a batch (B, W) and, where it needs randomness, one
`np.random.Generator` per row: row b's draws come only from rngs[b], so a row is the same whichever batch or
process builds it. Keys (B = rows, L = seq_len, S = encoder length, T = target length):

  causal_lm        inputs, targets, weights, target_bytes                    (B, L)
  prefix_lm        the same + prefix_len (B,)
  mlm              inputs, targets, weights, target_bytes                    (B, L)
  nsp (mlm + objective.nsp)  the same + token_types (B, L), nsp_labels (B,)
  span_corruption  encoder_inputs (B, S); targets, decoder_inputs, weights, target_bytes (B, T)

Ids are int32, weights float32 (0 on padding and on positions not predicted), target_bytes int32
(= token_bytes[targets], the UTF-8 bytes each target covers; for bits per byte, weight them like the loss).

The stream has an eos after every document. causal_lm, prefix_lm and mlm keep it (it is how they see document
boundaries); span corruption drops it: T5 reads documents concatenated with no separator, as T5 does on C4, so eos
appears only at the end of the encoder input and of the targets (see `span_corruption`).

Document masking (data.document_mask): `starts` (B, W) bool marks the window tokens that begin a document (from the
store's document offsets), and the batch gets segment ids (B, L) int32, non-decreasing along a row, one per
document: `segment_ids` (causal_lm, prefix_lm, mlm) or `encoder_segment_ids` (span_corruption). The model keeps
attention inside a segment and restarts positions at each. In causal_lm and prefix_lm the eos before a document
opens its segment (as a start token: the document's first token is predicted from it alone, as if the document ran
by itself after an eos); in mlm a document's eos closes its segment, and [CLS] / [SEP] join the first / last one;
in span_corruption a token keeps its document's segment, a sentinel takes that of the span it replaces and the
closing eos (and padding) that of the last token.
"""

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from data import spans
from data.errors import DataError

NAMES = ("causal_lm", "prefix_lm", "mlm", "span_corruption")


def _rows_uniform(rngs: Sequence[np.random.Generator], shape: tuple[int, ...]) -> np.ndarray:
    """(B, *shape) uniforms in [0, 1), row b drawn from rngs[b]."""
    return np.stack([r.random(shape) for r in rngs]) if len(rngs) else np.zeros((0, *shape))


def document_segments(starts: np.ndarray) -> np.ndarray:
    """(B, W) int32 segment ids of window tokens: a new segment at every document start (ids from 0 or 1)."""
    return np.cumsum(starts, axis=1, dtype=np.int32)


def causal_lm(windows: np.ndarray, token_bytes: np.ndarray, starts: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Next-token prediction on windows of L + 1 tokens; documents are separated by the eos in the stream."""
    w = windows.astype(np.int32)
    inputs, targets = w[:, :-1], w[:, 1:]
    batch = {
        "inputs": np.ascontiguousarray(inputs),
        "targets": np.ascontiguousarray(targets),
        "weights": np.ones(inputs.shape, np.float32),
        "target_bytes": token_bytes[targets],
    }
    if starts is not None:  # input i opens a segment when its target i + 1 begins a document (input i is the eos)
        batch["segment_ids"] = document_segments(starts[:, 1:])
    return batch


def prefix_lm(windows: np.ndarray, rngs: Sequence[np.random.Generator], token_bytes: np.ndarray,
              starts: np.ndarray | None = None):
    """causal_lm plus a random prefix per row (bidirectional for the model); only targets after it count."""
    batch = causal_lm(windows, token_bytes, starts)
    B, L = batch["inputs"].shape
    u = _rows_uniform(rngs, ())
    prefix_len = (1 + np.floor(u * (L - 1))).astype(np.int32)  # in [1, L - 1]
    # Position i predicts token i + 1, which lies inside the prefix when i + 1 < prefix_len.
    batch["weights"] = (np.arange(L)[None, :] >= prefix_len[:, None] - 1).astype(np.float32)
    batch["prefix_len"] = prefix_len
    return batch


def mlm(
    windows: np.ndarray,
    rngs: Sequence[np.random.Generator],
    tok,
    mask_rate: float,
    mask_token_frac: float,
    random_token_frac: float,
    word_start: np.ndarray | None = None,
    starts: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """BERT masking (`mask_tokens`) of [CLS] + window + [SEP] (length L = W + 2)."""
    B, W = windows.shape
    targets = np.empty((B, W + 2), np.int32)
    targets[:, 0] = tok.cls_id
    targets[:, 1:-1] = windows
    targets[:, -1] = tok.sep_id
    inputs, weights = mask_tokens(targets, rngs, tok, mask_rate, mask_token_frac, random_token_frac, word_start)
    batch = {"inputs": inputs, "targets": targets, "weights": weights, "target_bytes": tok.token_bytes[targets]}
    if starts is not None:  # [CLS] joins the first document's segment, [SEP] the last one's
        seg = document_segments(starts)
        batch["segment_ids"] = np.concatenate([seg[:, :1], seg, seg[:, -1:]], axis=1)
    return batch


def selected_count(mask_rate: float, n):
    """Tokens mask_tokens selects in a row of n non-special tokens: max(1, round_half_up(mask_rate * n)), 0 if n
    is 0. It grows with n, so selected_count(mask_rate, L) bounds every row of length L (without whole_word, whose
    first word is taken even when it has more pieces)."""
    n = np.asarray(n)
    return np.where(n > 0, np.maximum(1, np.floor(mask_rate * n + 0.5)), 0).astype(np.int64)


def mask_tokens(
    targets: np.ndarray,
    rngs: Sequence[np.random.Generator],
    tok,
    mask_rate: float,
    mask_token_frac: float,
    random_token_frac: float,
    word_start: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(inputs (B, L) int32, weights (B, L) float32): BERT masking of the target rows (B, L).

    Exactly max(1, round_half_up(mask_rate * n)) of each row's n non-special tokens are selected (uniformly at
    random); each selected token independently becomes [MASK] with probability mask_token_frac, a random non-special
    token with probability random_token_frac, else stays. Specials (cls, sep, eos, pad, ...) are never selected.
    Whole-word masking (word_start (V,) bool from `word_starts`): whole words are selected in random order, skipping
    a word that would overshoot, until the selected pieces reach that count; a word's pieces share one 80/10/10 draw.
    """
    B, L = targets.shape
    u = _rows_uniform(rngs, (3, L))
    candidate = ~tok.is_special[targets]
    n = candidate.sum(1)
    k = selected_count(mask_rate, n)
    if word_start is not None:
        selected, word = _select_words(targets, candidate, word_start, u[:, 0], k)
        u_rule = np.take_along_axis(u[:, 1], word, axis=1)  # Every piece of a word shares its word's draw.
    else:
        order = np.argsort(np.where(candidate, u[:, 0], np.inf), axis=1, kind="stable")
        rank = np.empty_like(order)
        np.put_along_axis(rank, order, np.broadcast_to(np.arange(L), (B, L)), axis=1)
        selected = rank < k[:, None]
        u_rule = u[:, 1]
    to_mask = selected & (u_rule < mask_token_frac)
    to_random = selected & ~to_mask & (u_rule < mask_token_frac + random_token_frac)
    normal = tok.normal_ids
    random_ids = normal[np.minimum((u[:, 2] * len(normal)).astype(np.int64), len(normal) - 1)]
    inputs = np.where(to_mask, tok.mask_id, np.where(to_random, random_ids, targets)).astype(np.int32)
    return inputs, selected.astype(np.float32)


def nsp_min_segment(T: int) -> int:
    """Fewest tokens A or B can have when they share T tokens (T // 8, at least 1)."""
    return max(1, T // 8)


def _nsp_cut(own: np.ndarray, other: np.ndarray, cut: int, m: int, eos_id: int) -> tuple[int, int]:
    """(a, start): A is own[:a]; a random B would start at other[start].

    If own has a document boundary (a token after eos) at an a in [m, T - m], a is the one nearest `cut`, and start
    is the first document start in `other` from which T - a tokens fit; if either is missing, a = cut, start = 0.
    """
    T = len(own)
    bounds = np.flatnonzero(own[m - 1 : T - m] == eos_id) + m  # a with own[a - 1] == eos
    if len(bounds):
        a = int(bounds[np.argmin(np.abs(bounds - cut))])
        starts = np.flatnonzero(other[: len(other) - (T - a)] == eos_id) + 1
        if len(starts):
            return a, int(starts[0])
    return cut, 0


def nsp(windows: np.ndarray, rngs: Sequence[np.random.Generator], tok, *mask_args) -> dict[str, np.ndarray]:
    """BERT's next-sentence prediction pairs [CLS] A [SEP] B [SEP] (length L = T + 3), then `mask_tokens(*mask_args)`.

    windows (B, 3T): each row's T stream tokens followed by 2T tokens from a random position of the same split that
    does not overlap them (data/pipeline.py). A is the first a tokens of the row's window. With probability 1/2, B
    is the rest of the window, the T - a tokens that follow A in the stream (nsp_labels 1, "IsNext"); otherwise
    T - a tokens of the random window (nsp_labels 0, "NotNext"). Every row is exactly L tokens, so there is no
    padding; token_types are 0 on [CLS] A [SEP] and 1 on B [SEP]. MLM targets are drawn from A and B only (the
    specials [CLS], [SEP] and eos are never selected).

    Where A and B are cut: a is drawn uniformly in [m, T - m] (m = nsp_min_segment(T), so both segments have at
    least m tokens), then moved to the nearest document boundary in that range, so that A ends a document and B
    begins one, like BERT's sentence-level segments; a random B then also begins at a document start (the first one
    in the random window). If the window has no boundary in range, or the random window no document start from
    which B fits, both labels cut at token level (B starts mid-document). The choice depends on the two windows and
    never on the label, so the segment lengths and the kind of B start (document start or not) are distributed
    alike for both labels and give the label away no more than chance.
    """
    B, n = windows.shape
    T = n // 3
    m = nsp_min_segment(T)
    u = _rows_uniform(rngs, (2,))
    labels = (u[:, 0] < 0.5).astype(np.int32)
    cuts = m + np.minimum((u[:, 1] * (T - 2 * m + 1)).astype(np.int64), T - 2 * m)
    targets = np.empty((B, T + 3), np.int32)
    token_types = np.zeros((B, T + 3), np.int32)
    for b in range(B):
        own, other = windows[b, :T], windows[b, T:]
        a, start = _nsp_cut(own, other, int(cuts[b]), m, tok.eos_id)
        segment_b = own[a:] if labels[b] else other[start : start + T - a]
        targets[b] = np.concatenate([[tok.cls_id], own[:a], [tok.sep_id], segment_b, [tok.sep_id]])
        token_types[b, a + 2 :] = 1
    inputs, weights = mask_tokens(targets, rngs, tok, *mask_args)
    return {
        "inputs": inputs,
        "targets": targets,
        "weights": weights,
        "target_bytes": tok.token_bytes[targets],
        "token_types": token_types,
        "nsp_labels": labels,
    }


def word_starts(tok) -> np.ndarray:
    """(V,) bool: the piece begins a word (SentencePiece's '\u2581' marker, or a space byte)."""
    pieces = [tok.id_to_piece(i) for i in range(tok.vocab_size)]
    return np.array([p.startswith("\u2581") or p == "<0x20>" for p in pieces]) & ~tok.is_special


def _select_words(targets, candidate, word_start, u, k):
    """(selected (B, L) bool, word (B, L) int: the position of each piece's word start) for whole-word masking.

    A word starts at a word-start piece or after a special token (document starts have no marker: the tokenizer
    adds no dummy prefix). Words are taken in the order of u at their start, skipping any that would make the
    row's selected pieces exceed k (but at least one word is taken).
    """
    B, L = targets.shape
    prev_special = np.concatenate([np.ones((B, 1), bool), ~candidate[:, :-1]], axis=1)
    start = candidate & (word_start[targets] | prev_special)
    pos = np.broadcast_to(np.arange(L), (B, L))
    word = np.maximum.accumulate(np.where(start, pos, 0), axis=1)  # position of the word start of each piece
    selected = np.zeros((B, L), bool)
    for b in range(B):
        starts = np.flatnonzero(start[b])
        sizes = np.bincount(word[b][candidate[b]], minlength=L)[starts]
        chosen, total = [], 0
        for i in np.argsort(u[b, starts], kind="stable"):
            if total + sizes[i] <= k[b] or not chosen:
                chosen.append(starts[i])
                total += sizes[i]
            if total >= k[b]:
                break
        selected[b] = candidate[b] & np.isin(word[b], chosen)
    return selected, word


@dataclasses.dataclass(frozen=True)
class Objective:
    """An objective bound to its settings: `window_len` (+ `random_len`) stream tokens per row in,
    `fn(windows, rngs, starts)` -> batch (starts: (B, window_len) bool document starts with document_mask, else
    None)."""

    name: str
    window_len: int
    fn: Callable[[np.ndarray, Sequence[np.random.Generator]], dict[str, np.ndarray]]
    shapes: dict[str, tuple[tuple[int, ...], type]]  # key -> (per-row shape, dtype)
    # Tokens per row from a random position of the split, not overlapping the row's window, appended to it (nsp).
    random_len: int = 0
    document_mask: bool = False  # batches carry segment ids built from `starts` (data.document_mask)

    def __call__(self, windows: np.ndarray, rngs: Sequence[np.random.Generator],
                 starts: np.ndarray | None = None) -> dict[str, np.ndarray]:
        if self.document_mask and starts is None:
            raise ValueError(f"{self.name} with document_mask needs the windows' document starts")
        return self.fn(windows, rngs, starts if self.document_mask else None)

    def batch_shapes(self, rows: int) -> dict[str, tuple[tuple[int, ...], type]]:
        """key -> ((rows, *shape), dtype) of a batch of `rows` examples (e.g. for abstract initialisation)."""
        return {k: ((rows, *s), d) for k, (s, d) in self.shapes.items()}


def _check_fraction(flag: str, value: float, lo_open: bool, hi_open: bool) -> None:
    lo_ok = value > 0 if lo_open else value >= 0
    hi_ok = value < 1 if hi_open else value <= 1
    if not (lo_ok and hi_ok):
        interval = f"{'(' if lo_open else '['}0, 1{')' if hi_open else ']'}"
        raise DataError(f"{flag}={value} must be in {interval}")


def build(config, tok) -> Objective:
    """The objective config.objective.name at config.data.seq_len, validated (DataError names the flag)."""
    obj, name, L = config.objective, config.objective.name, config.data.seq_len
    if name not in NAMES:
        raise DataError(f"objective.name: unknown {name!r}; choose one of {list(NAMES)}")
    i32, f32 = np.int32, np.float32
    if obj.nsp and (name != "mlm" or config.model.arch != "bert"):
        raise DataError(
            f"objective.nsp=True (next-sentence prediction) needs model.arch='bert' and objective.name='mlm', got "
            f"model.arch={config.model.arch!r} and objective.name={name!r}: set objective.nsp=False"
        )
    minimum = {"causal_lm": 1, "prefix_lm": 2, "mlm": 8 if obj.nsp else 3, "span_corruption": 4}[name]
    if L < minimum:
        what = "mlm with objective.nsp" if obj.nsp else name
        raise DataError(f"data.seq_len={L} is too short for {what}; use at least {minimum}")
    # Bits per byte only where a token's bytes are exact (tokenizers that normalise text have no exact count).
    tb = tok.token_bytes if tok.exact_bytes else np.zeros_like(tok.token_bytes)
    purpose = f"objective.name={name!r}"
    tok.require("eos", purpose=purpose)
    docs = bool(config.data.document_mask)
    if docs and obj.nsp:
        raise DataError("data.document_mask=True does not apply to objective.nsp=True (a next-sentence pair is its "
                        "own two-segment layout): set one of them to False")
    keys = ("inputs", "targets", "weights", "target_bytes") + (("segment_ids",) if docs else ())
    lm_shapes = {k: ((L,), f32 if k == "weights" else i32) for k in keys}
    if name == "causal_lm":
        return Objective(name, L + 1, lambda w, rngs, starts: causal_lm(w, tb, starts), lm_shapes, document_mask=docs)
    if name == "prefix_lm":
        return Objective(name, L + 1, lambda w, rngs, starts: prefix_lm(w, rngs, tb, starts),
                         {**lm_shapes, "prefix_len": ((), i32)}, document_mask=docs)
    if name == "mlm":
        tok.require("mask", "cls", "sep", purpose=purpose)
        _check_fraction("objective.mask_rate", obj.mask_rate, True, True)
        _check_fraction("objective.mask_token_frac", obj.mask_token_frac, False, False)
        _check_fraction("objective.random_token_frac", obj.random_token_frac, False, False)
        if obj.mask_token_frac + obj.random_token_frac > 1:
            raise DataError(
                f"objective.mask_token_frac + objective.random_token_frac = "
                f"{obj.mask_token_frac + obj.random_token_frac} must be at most 1"
            )
        args = (obj.mask_rate, obj.mask_token_frac, obj.random_token_frac, word_starts(tok) if obj.whole_word else None)
        if obj.nsp:  # [CLS] A [SEP] B [SEP]: L - 3 tokens, and twice that from elsewhere for a random B.
            shapes = {**lm_shapes, "token_types": ((L,), i32), "nsp_labels": ((), i32)}
            return Objective(name, L - 3, lambda w, rngs, starts: nsp(w, rngs, tok, *args), shapes,
                             random_len=2 * (L - 3))
        return Objective(name, L - 2, lambda w, rngs, starts: mlm(w, rngs, tok, *args, starts=starts), lm_shapes,
                         document_mask=docs)

    tok.require("sentinels", purpose=purpose)
    nd, msl = obj.noise_density, obj.mean_span_length
    _check_fraction("objective.noise_density", nd, True, True)
    if msl < 1:
        raise DataError(f"objective.mean_span_length={msl} must be at least 1")
    raw, derived_t = spans.random_spans_helper(L, nd, msl)
    spans.check_span_counts(raw, nd, msl, L)
    enc_len, _ = spans.span_lengths(raw, nd, msl)
    if raw < 2 or enc_len > L:
        fits = next(s for s in range(L + 1, L + 10_000) if spans.span_fits(s, nd, msl))
        raise DataError(
            f"data.seq_len={L} is too short for span_corruption (noise_density={nd}, mean_span_length={msl}): the "
            f"corrupted input needs room for its sentinels and eos; use data.seq_len >= {fits}"
        )
    num_spans = spans.span_counts(raw, nd, msl)[1]
    if num_spans > len(tok.sentinel_ids):
        raise DataError(
            f"data.seq_len={L} gives {num_spans} noise spans per example but there are only {len(tok.sentinel_ids)} "
            f"sentinels; lower data.seq_len or raise objective.mean_span_length"
        )
    T = config.data.target_len or derived_t
    if T < derived_t:
        raise DataError(
            f"data.target_len={T} is too short: span corruption of {raw} tokens makes {derived_t} targets; "
            f"use data.target_len >= {derived_t} or 0 (derived)"
        )
    shapes = {"encoder_inputs": ((L,), i32)} | {
        k: ((T,), f32 if k == "weights" else i32) for k in ("targets", "decoder_inputs", "weights", "target_bytes")
    }
    if docs:
        shapes["encoder_segment_ids"] = ((L,), i32)
    # 2 raw + 1 stream tokens hold at least raw that are not eos (no two eos are adjacent); see span_corruption.
    return Objective(name, 2 * raw + 1, lambda w, rngs, starts: spans.span_corruption(w, rngs, tok, nd, msl, L, T,
                                                                                       starts), shapes,
                     document_mask=docs)

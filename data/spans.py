"""T5 span corruption (t5.data.preprocessors): the noise-span counts, the random noise mask, and the batch.

Pure numpy. T5 reads documents concatenated with no separator, as T5 does on C4: a window's eos (document ends)
are dropped before corrupting, so eos appears only at the end of the encoder input and of the targets.
"""

import functools
from collections.abc import Sequence

import numpy as np

from data.errors import DataError


def span_counts(length: int, noise_density: float, mean_span_length: float) -> tuple[int, int]:
    """(noise tokens, noise spans) of a `length`-token example, as t5 random_spans_noise_mask counts them."""
    num_noise = min(max(int(round(length * noise_density)), 1), length - 1)
    num_spans = max(int(round(num_noise / mean_span_length)), 1)
    return num_noise, num_spans


def span_lengths(tokens_length: int, noise_density: float, mean_span_length: float) -> tuple[int, int]:
    """(encoder length, target length) of span corruption on `tokens_length` raw tokens, eos included."""
    num_noise, num_spans = span_counts(tokens_length, noise_density, mean_span_length)
    return tokens_length - num_noise + num_spans + 1, num_noise + num_spans + 1


@functools.cache
def random_spans_helper(inputs_length: int, noise_density: float, mean_span_length: float) -> tuple[int, int]:
    """t5.data.preprocessors.random_spans_helper (one sentinel per span, eos appended).

    Returns (raw tokens per example, target length): the most raw tokens whose corrupted encoder input still fits
    in `inputs_length`. Counts come from `span_counts` so that they always agree with the noise mask.
    """
    tokens_length = inputs_length
    # Not in t5, whose start always fits at its settings: with short spans (mean_span_length near 1) the sentinels
    # outnumber the removed tokens, so fewer raw tokens than inputs_length must be taken.
    while tokens_length > 2 and span_lengths(tokens_length, noise_density, mean_span_length)[0] > inputs_length:
        tokens_length -= 1
    while span_lengths(tokens_length + 1, noise_density, mean_span_length)[0] <= inputs_length:
        tokens_length += 1
    targets_length = span_lengths(tokens_length, noise_density, mean_span_length)[1]
    if noise_density == 0.5 and targets_length > inputs_length:  # t5's tweak: targets no longer than inputs
        tokens_length -= 1
        targets_length -= 1
    return tokens_length, targets_length


def check_span_counts(raw: int, noise_density: float, mean_span_length: float, seq_len: int) -> None:
    """DataError unless `raw` tokens hold at least as many non-noise tokens as noise spans.

    Spans alternate non-noise, noise, ..., noise, so each noise span needs a non-noise token before it; in closed
    form noise_density <= mean_span_length / (mean_span_length + 1), up to rounding at the example's length.
    """
    num_noise, num_spans = span_counts(raw, noise_density, mean_span_length)
    if raw - num_noise >= num_spans:
        return
    nd, msl = noise_density, mean_span_length
    max_nd, min_msl = msl / (msl + 1), nd / (1 - nd)
    if nd <= max_nd:  # Within the closed form; only rounding at this length breaks it.
        fix = (
            f"{nd} is within noise_density <= mean_span_length / (mean_span_length + 1) = {max_nd:.4g} but rounds past "
            f"it at this length: lower noise_density or raise mean_span_length a little, or change data.seq_len"
        )
    else:
        fix = (
            f"use noise_density <= mean_span_length / (mean_span_length + 1) = {max_nd:.4g}, or mean_span_length >= "
            f"noise_density / (1 - noise_density) = {min_msl:.4g}"
        )
    raise DataError(
        f"objective.noise_density={nd} with objective.mean_span_length={msl} makes more noise spans than non-noise "
        f"tokens ({num_spans} spans, {raw - num_noise} non-noise tokens in the {raw} raw tokens of data.seq_len="
        f"{seq_len}), but each noise span follows a non-noise one: {fix}"
    )


def span_fits(inputs_length: int, noise_density: float, mean_span_length: float) -> bool:
    raw = random_spans_helper(inputs_length, noise_density, mean_span_length)[0]
    return raw >= 2 and span_lengths(raw, noise_density, mean_span_length)[0] <= inputs_length


def _random_segmentation(u: np.ndarray, num_items: int, num_segments: int) -> np.ndarray:
    """(B, num_segments) lengths of a uniformly random split of num_items into non-empty segments.

    u: (B, num_items - 1) uniforms; the num_segments - 1 gaps with the smallest u start new segments
    (a uniform random subset, as t5's shuffle of the first-in-segment indicator gives).
    """
    B = u.shape[0]
    starts = np.sort(np.argsort(u, axis=1)[:, : num_segments - 1] + 1, axis=1)
    bounds = np.concatenate([np.zeros((B, 1), np.int64), starts, np.full((B, 1), num_items)], axis=1)
    return np.diff(bounds, axis=1)


def random_spans_noise_mask(
    rngs: Sequence[np.random.Generator], length: int, noise_density: float, mean_span_length: float
) -> np.ndarray:
    """(B, length) bool: t5 random_spans_noise_mask per row. Spans alternate non-noise, noise, ..., noise."""
    num_noise, num_spans = span_counts(length, noise_density, mean_span_length)
    num_nonnoise = length - num_noise
    B = len(rngs)
    u_noise = np.stack([r.random(num_noise - 1) for r in rngs]) if B else np.zeros((0, num_noise - 1))
    u_nonnoise = np.stack([r.random(num_nonnoise - 1) for r in rngs]) if B else np.zeros((0, num_nonnoise - 1))
    noise_lengths = _random_segmentation(u_noise, num_noise, num_spans)
    nonnoise_lengths = _random_segmentation(u_nonnoise, num_nonnoise, num_spans)
    interleaved = np.stack([nonnoise_lengths, noise_lengths], axis=2).reshape(B, 2 * num_spans)
    span_starts = np.cumsum(interleaved, axis=1)[:, :-1]
    indicator = np.zeros((B, length), np.int64)
    np.put_along_axis(indicator, span_starts, 1, axis=1)
    return np.cumsum(indicator, axis=1) % 2 == 1


def _spans_to_sentinels(tokens: np.ndarray, mask: np.ndarray, sentinel_ids: np.ndarray | None, out_len: int):
    """Each run of `mask` -> one sentinel (<extra_id_0>, <extra_id_1>, ... per row); rows keep out_len tokens.
    sentinel_ids None: each run keeps its first value instead (e.g. the segment id of the span a sentinel replaces)."""
    prev = np.zeros_like(mask)
    prev[:, 1:] = mask[:, :-1]
    first = mask & ~prev
    later = mask & prev
    replaced = tokens
    if sentinel_ids is not None:
        replaced = np.where(first, sentinel_ids[np.maximum(np.cumsum(first, axis=1) - 1, 0)], tokens)
    return replaced[~later].reshape(tokens.shape[0], out_len)


def drop_eos(windows: np.ndarray, eos_id: int, n: int, also: np.ndarray | None = None):
    """(B, n) int32: the first n tokens of each row of `windows` (B, W) that are not eos, in order (with `also`
    (B, W): the pair of it and the same selection of `also`).

    Raises DataError if a row has fewer: a window of 2n + 1 stream tokens always has n, since the corpus writes no
    empty documents and so no two eos in a row.
    """
    keep = windows != eos_id
    have = keep.sum(1)
    if (have < n).any():
        b = int(np.argmax(have < n))
        raise DataError(
            f"span corruption needs {n} tokens that are not eos per row, but row {b} of the batch has {have[b]} in "
            f"its {windows.shape[1]} stream tokens: the token stream has eos next to eos (a document with no tokens), "
            f"which data/corpus.py does not write; rebuild the token cache or check the tokenizer"
        )
    take = keep & (np.cumsum(keep, axis=1) <= n)
    out = windows[take].reshape(len(windows), n).astype(np.int32)
    return out if also is None else (out, also[take].reshape(len(windows), n))


def span_corruption(
    windows: np.ndarray,
    rngs: Sequence[np.random.Generator],
    tok,
    noise_density: float,
    mean_span_length: float,
    seq_len: int,
    target_len: int,
    starts: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """T5 span corruption (t5.data.preprocessors.span_corruption) of stream windows (B, W).

    T5 reads documents concatenated with no separator, as T5 does on C4: each row's eos (document ends) are dropped
    and the first raw = random_spans_helper(seq_len, ...)[0] remaining tokens are corrupted (build gives W = 2 raw +
    1, which always holds raw of them), so eos appears only at the end of the encoder input and of the targets.
    encoder_inputs: non-noise tokens with each noise span replaced by one sentinel, eos, pad to seq_len.
    targets: <extra_id_0> span_0 <extra_id_1> span_1 ... eos, pad to target_len. decoder_inputs: targets shifted
    right with pad (0) as the start token. weights: 1 on the real targets (sentinels and eos included).
    starts (B, W) bool (document masking): also encoder_segment_ids (B, seq_len), the document of each encoder
    token; a sentinel takes its span's, the eos and padding the last token's.
    """
    B = len(windows)
    raw = random_spans_helper(seq_len, noise_density, mean_span_length)[0]
    if starts is not None:
        tokens, segments = drop_eos(windows, tok.eos_id, raw, also=np.cumsum(starts, axis=1, dtype=np.int32))
    else:
        tokens = drop_eos(windows, tok.eos_id, raw)
    noise = random_spans_noise_mask(rngs, raw, noise_density, mean_span_length)
    enc_len, tgt_len = span_lengths(raw, noise_density, mean_span_length)
    enc = np.full((B, seq_len), tok.pad_id, np.int32)
    enc[:, : enc_len - 1] = _spans_to_sentinels(tokens, noise, tok.sentinel_ids, enc_len - 1)
    enc[:, enc_len - 1] = tok.eos_id
    targets = np.full((B, target_len), tok.pad_id, np.int32)
    targets[:, : tgt_len - 1] = _spans_to_sentinels(tokens, ~noise, tok.sentinel_ids, tgt_len - 1)
    targets[:, tgt_len - 1] = tok.eos_id
    decoder_inputs = np.full_like(targets, tok.pad_id)  # pad is T5's decoder start token
    decoder_inputs[:, 1:] = targets[:, :-1]
    weights = np.broadcast_to(np.arange(target_len) < tgt_len, (B, target_len)).astype(np.float32)
    batch = {
        "encoder_inputs": enc,
        "targets": targets,
        "decoder_inputs": decoder_inputs,
        "weights": weights,
        "target_bytes": tok.token_bytes[targets],
    }
    if starts is not None:
        seg = np.empty((B, seq_len), np.int32)
        seg[:, : enc_len - 1] = _spans_to_sentinels(segments, noise, None, enc_len - 1)
        seg[:, enc_len - 1:] = seg[:, enc_len - 2: enc_len - 1]
        batch["encoder_segment_ids"] = seg
    return batch

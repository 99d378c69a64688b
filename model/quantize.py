"""Symmetric int8 weight quantization of a parameter tree (evaluation only; compute stays in float).

Every leaf with ndim >= 2 (kernels, embedding tables) becomes int8 values q and float32 scales s with
w ~= q * s, q = round(w / s) in [-127, 127], s = max|w| / 127 per output channel:
- embedding tables (a path ending in 'embedding', (V, D)): one scale per row (per token; the tied output
  projection's output channel);
- other matrices: one scale per index of the last axis (reducing over all others): exact per-output-channel for
  (D_in, D_out) kernels and the attention output (H, Dh, D); q/k/v kernels (D, H, Dh) share a scale per Dh column
  across heads, and scanned stacks (a leading 'layers' axis) share it across layers (coarser, same error bound).
Vectors (biases, norm scales) stay float. The error of every element is at most s / 2.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def _axes(path, leaf) -> tuple[int, ...]:
    """Axes a scale is shared over (reduced by max)."""
    if str(getattr(path[-1], "key", path[-1])) == "embedding":
        return (leaf.ndim - 1,)
    return tuple(range(leaf.ndim - 1))


def quantize(params):
    """(int8 tree, scales tree): leaves with ndim < 2 are kept as they are in the first tree, scale None."""
    def one(path, w):
        if w.ndim < 2:
            return w, None
        w = jnp.asarray(w, jnp.float32)
        s = jnp.max(jnp.abs(w), axis=_axes(path, w), keepdims=True) / 127.0
        s = jnp.where(s > 0, s, 1.0)
        return jnp.clip(jnp.round(w / s), -127, 127).astype(jnp.int8), s

    pairs = jax.tree_util.tree_map_with_path(one, params)
    is_pair = lambda x: isinstance(x, tuple)
    return (jax.tree.map(lambda p: p[0], pairs, is_leaf=is_pair),
            jax.tree.map(lambda p: p[1], pairs, is_leaf=is_pair))


def dequantize(q_tree, scales, dtype=jnp.float32):
    """The float tree q * s (leaves without a scale as they are)."""
    return jax.tree.map(lambda q, s: q if s is None else (q.astype(jnp.float32) * s).astype(dtype), q_tree, scales,
                        is_leaf=lambda x: x is None)


def quantize_dequantize(params):
    """params with every matrix replaced by its int8 approximation (same dtypes as params)."""
    q, s = quantize(params)
    return jax.tree.map(lambda a, b: b.astype(a.dtype), params, dequantize(q, s))


def weight_bytes(params) -> tuple[int, int]:
    """(bytes as stored, bytes as int8 matrices + float32 scales + the other leaves as stored)."""
    stored = quantized = 0
    for path, w in jax.tree_util.tree_flatten_with_path(params)[0]:
        size, nbytes = int(np.prod(w.shape)), int(np.prod(w.shape)) * jnp.dtype(w.dtype).itemsize
        stored += nbytes
        if len(w.shape) < 2:
            quantized += nbytes
        else:
            kept = [d for i, d in enumerate(w.shape) if i not in _axes(path, w)]
            quantized += size + 4 * int(np.prod(kept))
    return stored, quantized

"""Attention masks as pure functions: boolean arrays broadcastable to (B, 1, Lq, Lk), True = may attend.

Positions are int arrays of shape (B or 1, L) (an int n means arange(n)), so the same functions build masks for a
full forward pass and for one decoding step against a KV cache.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _pos(p: int | jax.Array) -> jax.Array:
    return jnp.arange(p)[None] if isinstance(p, int) else jnp.asarray(p)


def causal(q_positions: int | jax.Array, k_positions: int | jax.Array | None = None) -> jax.Array:
    """(B|1, 1, Lq, Lk): a query sees keys at positions <= its own."""
    q = _pos(q_positions)
    k = q if k_positions is None else _pos(k_positions)
    return k[:, None, None, :] <= q[:, None, :, None]


def padding(key_valid: jax.Array, q_len: int) -> jax.Array:
    """(B, 1, Lq, Lk) from key_valid (B, Lk) bool: every query sees only the valid (non-pad) keys."""
    B, Lk = key_valid.shape
    return jnp.broadcast_to(key_valid[:, None, None, :], (B, 1, q_len, Lk))


def cross(q_len: int, encoder_valid: jax.Array) -> jax.Array:
    """(B, 1, Lq, S): decoder queries see the valid encoder positions."""
    return padding(encoder_valid, q_len)


def prefix(prefix_len: jax.Array, q_positions: int | jax.Array, k_positions: int | jax.Array | None = None
           ) -> jax.Array:
    """(B, 1, Lq, Lk) prefix-LM mask: positions < prefix_len (B,) see each other; the rest is causal."""
    q = _pos(q_positions)
    k = q if k_positions is None else _pos(k_positions)
    in_prefix = k[:, None, None, :] < jnp.asarray(prefix_len)[:, None, None, None]
    return causal(q, k) | in_prefix  # A query >= prefix_len already sees the whole prefix causally.


def segment(q_segments: jax.Array, k_segments: jax.Array) -> jax.Array:
    """(B, 1, Lq, Lk) document mask: a query sees only keys of its own segment (segment ids (B, Lq), (B, Lk))."""
    return jnp.asarray(q_segments)[:, None, :, None] == jnp.asarray(k_segments)[:, None, None, :]


def window(q_positions: int | jax.Array, k_positions: int | jax.Array | None, n: int,
           causal: bool = True) -> jax.Array:
    """(B|1, 1, Lq, Lk) local attention: causal keeps keys in (q - n, q]; bidirectional keeps |q - k| < n."""
    q = _pos(q_positions)
    k = q if k_positions is None else _pos(k_positions)
    d = q[:, None, :, None] - k[:, None, None, :]
    return ((d >= 0) & (d < n)) if causal else (jnp.abs(d) < n)


def combine(*masks: jax.Array | None) -> jax.Array | None:
    """Logical AND of the given masks (None entries ignored); None if there are none."""
    masks = [m for m in masks if m is not None]
    if not masks:
        return None
    out = masks[0]
    for m in masks[1:]:
        out = out & m
    return out

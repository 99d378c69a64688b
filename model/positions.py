"""The position encodings: learned and sinusoidal (added to embeddings), rope (rotates q and k inside
attention), alibi and t5_relative (biases added to the attention scores, computed once per stack).

Positions are int arrays (B or 1, L); in decode mode they start at the KV-cache index.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from model.config import ModelConfig


class LearnedPositions(nn.Module):
    """A (max_len, D) table of position embeddings, looked up at `positions`."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, positions: jax.Array) -> jax.Array:
        cfg = self.cfg
        table_LxD = self.param("embedding", nn.with_logical_partitioning(
            nn.initializers.normal(cfg.init_std), ("length", "embed")), (cfg.max_len, cfg.d_model),
            cfg.weight_dtype)
        return jnp.take(table_LxD, positions, axis=0).astype(cfg.compute_dtype)


def segment_positions(segment_ids_BxL: jax.Array) -> jax.Array:
    """(B, L) int32 position of each token inside its segment: 0 at each change of segment id along the row."""
    ids = jnp.asarray(segment_ids_BxL)
    idx = jnp.broadcast_to(jnp.arange(ids.shape[1], dtype=jnp.int32), ids.shape)
    starts = jnp.concatenate([jnp.ones_like(ids[:, :1], bool), ids[:, 1:] != ids[:, :-1]], axis=1)
    return idx - lax.cummax(jnp.where(starts, idx, 0), axis=1)


def sinusoidal(positions: jax.Array, d: int, max_timescale: float = 10000.0) -> jax.Array:
    """(B|1, L, d) fixed encodings: sin on the first d/2 features, cos on the rest (Vaswani et al.)."""
    inv_freq = max_timescale ** (-jnp.arange(0, d // 2, dtype=jnp.float32) / (d // 2))
    angles_BxLxF = positions[..., None].astype(jnp.float32) * inv_freq
    return jnp.concatenate([jnp.sin(angles_BxLxF), jnp.cos(angles_BxLxF)], axis=-1)


def apply_rope(x_BxLxHxDh: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
    """Rotary embedding (rotate-half convention of GPT-NeoX/Llama) at `positions` (B|1, L), in float32."""
    dh = x_BxLxHxDh.shape[-1]
    inv_freq = theta ** (-jnp.arange(0, dh, 2, dtype=jnp.float32) / dh)
    angles_BxLx1xF = (positions[..., None].astype(jnp.float32) * inv_freq)[:, :, None, :]
    cos, sin = jnp.cos(angles_BxLx1xF), jnp.sin(angles_BxLx1xF)
    x = x_BxLxHxDh.astype(jnp.float32)
    x1, x2 = x[..., : dh // 2], x[..., dh // 2:]
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x_BxLxHxDh.dtype)


def alibi_slopes(n_heads: int) -> np.ndarray:
    """Per-head slopes of ALiBi (Press et al.), including their rule for a head count not a power of 2."""
    def pow2(n):
        start = 2.0 ** (-(2.0 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]

    if math.log2(n_heads).is_integer():
        return np.array(pow2(n_heads), np.float32)
    closest = 2 ** math.floor(math.log2(n_heads))
    return np.array(pow2(closest) + list(alibi_slopes(2 * closest)[0::2][: n_heads - closest]), np.float32)


def alibi_bias(n_heads: int, q_positions: jax.Array, k_positions: jax.Array) -> jax.Array:
    """(B|1, H, Lq, Lk) float32 bias -slope_h * |q - k| (symmetric, so it also serves encoders)."""
    dist_BxLqxLk = jnp.abs(q_positions[:, :, None] - k_positions[:, None, :]).astype(jnp.float32)
    return -jnp.asarray(alibi_slopes(n_heads))[None, :, None, None] * dist_BxLqxLk[:, None]


def relative_bucket(relative: jax.Array, bidirectional: bool, num_buckets: int, max_distance: int) -> jax.Array:
    """T5's bucket of a relative position (key - query): exact for small distances, log-spaced beyond."""
    buckets = jnp.zeros_like(relative)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + (relative > 0).astype(relative.dtype) * num_buckets
        relative = jnp.abs(relative)
    else:
        relative = -jnp.minimum(relative, 0)
    max_exact = num_buckets // 2
    is_small = relative < max_exact
    large = max_exact + (jnp.log(jnp.maximum(relative, 1).astype(jnp.float32) / max_exact)
                         / math.log(max_distance / max_exact) * (num_buckets - max_exact)).astype(relative.dtype)
    large = jnp.minimum(large, num_buckets - 1)
    return buckets + jnp.where(is_small, relative, large)


class RelativeBias(nn.Module):
    """T5 bucketed relative-position bias, one scalar per (bucket, head); computed once per stack."""

    cfg: ModelConfig
    bidirectional: bool

    @nn.compact
    def __call__(self, q_positions: jax.Array, k_positions: jax.Array) -> jax.Array:
        cfg = self.cfg
        table_RxH = self.param("embedding", nn.with_logical_partitioning(
            nn.initializers.normal(cfg.init_std), ("relpos_buckets", "heads")), (cfg.rel_buckets, cfg.n_heads),
            cfg.weight_dtype)
        relative_BxLqxLk = (k_positions[:, None, :] - q_positions[:, :, None]).astype(jnp.int32)
        bucket_BxLqxLk = relative_bucket(relative_BxLqxLk, self.bidirectional, cfg.rel_buckets,
                                         cfg.rel_max_distance)
        bias_BxLqxLkxH = jnp.take(table_RxH.astype(jnp.float32), bucket_BxLqxLk, axis=0)
        return jnp.transpose(bias_BxLqxLkxH, (0, 3, 1, 2))

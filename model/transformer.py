"""Block (self-attention, optional cross-attention, MLP) and Stack (embeddings-side positions, masks, the
blocks as a python loop or nn.scan, optional remat, final norm): the encoder, the decoder and the decoder-only
model are all a Stack.

Masks follow the token indices in the row (causal, prefix, padding, local windows), positions the token's place in
its document: with segment_ids (document masking) attention stays inside each segment and positions restart at
each one. model.attention_pattern picks per block between the global mask and the local one.

Decode mode (decode=True): the first call (model.init on a (B, L_max) dummy) creates the 'cache' collection
and runs a normal forward pass; later calls (mutable=['cache']) take the next tokens, place them at the cache
index and attend over the whole cache with a mask built from the cached key positions.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from model import masks
from model import positions as pos
from model.config import ModelConfig
from model.layers import Attention, Mlp, Norm
from model.sharding import constrain

REMAT_POLICIES = {
    "full": None,  # Save nothing: recompute the whole block.
    "dots": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,  # Keep weight matmul outputs.
}


class Block(nn.Module):
    """One layer: self-attention, cross-attention (if cross) and MLP, each a pre- or post-norm residual."""

    cfg: ModelConfig
    cross: bool = False
    train: bool = False
    decode: bool = False

    @nn.compact
    def __call__(self, x_BxLxD, mask, bias, positions, encoded_BxSxD=None, cross_mask=None, local_mask=None,
                 is_local=None):
        """local_mask and is_local (a traced bool) pick this block's mask under nn.scan with a mixed pattern."""
        cfg = self.cfg
        if is_local is not None:
            mask = jnp.where(is_local, local_mask, mask)
        drop = nn.Dropout(cfg.dropout, deterministic=not self.train)

        def residual(name, fn, x):
            norm = Norm(cfg, name=f"{name}_norm")
            if cfg.norm_position == "pre":
                return x + drop(fn(norm(x)))
            return norm(x + drop(fn(x)))

        x_BxLxD = residual("self_attention", lambda h: Attention(cfg, name="self_attention")(
            h, h, mask, bias, positions=positions, decode=self.decode, train=self.train), x_BxLxD)
        if self.cross:
            x_BxLxD = residual("cross_attention", lambda h: Attention(cfg, cross=True, name="cross_attention")(
                h, encoded_BxSxD, cross_mask, None, train=self.train), x_BxLxD)
        x_BxLxD = residual("mlp", lambda h: Mlp(cfg, name="mlp")(h), x_BxLxD)
        return x_BxLxD, None


class Stack(nn.Module):
    """n_layers Blocks over already-embedded inputs, with positions, masks, biases and the final norm.

    causal: decoder self-attention (causal mask, unidirectional t5 buckets); cross: blocks attend to `encoded`.
    """

    cfg: ModelConfig
    n_layers: int
    causal: bool
    cross: bool = False

    @nn.compact
    def __call__(self, x_BxLxD: jax.Array, *, key_valid: jax.Array | None = None,
                 prefix_len: jax.Array | None = None, segment_ids: jax.Array | None = None,
                 encoded: jax.Array | None = None, encoded_valid: jax.Array | None = None, train: bool = False,
                 decode: bool = False) -> jax.Array:
        """key_valid (B, L) bool masks padded keys (non-causal stacks); prefix_len (B,) makes a prefix LM;
        segment_ids (B, L) int (documents, non-decreasing along a row) keeps attention inside each document and
        restarts positions at each; encoded (B, S, D) and encoded_valid (B, S) feed cross-attention.
        Returns (B, L, D)."""
        cfg = self.cfg
        B, L = x_BxLxD.shape[:2]
        x_BxLxD = constrain(self.perturb("embedded", x_BxLxD))  # perturb: gradient probe for tests.
        q_idx = k_idx = jnp.arange(L, dtype=jnp.int32)[None]
        if decode:
            if segment_ids is not None:
                raise ValueError("segment_ids (document masking) is for training and scoring, not KV-cache decoding")
            q_idx, k_idx = self._decode_positions(L)
        q_pos, k_pos = q_idx, k_idx
        if segment_ids is not None:
            q_pos = k_pos = pos.segment_positions(segment_ids)
        if cfg.position == "learned":
            if L > cfg.max_len:
                raise ValueError(f"sequence length {L} exceeds model.max_len={cfg.max_len} (learned positions)")
            x_BxLxD = x_BxLxD + pos.LearnedPositions(cfg, name="position_embedding")(q_pos)
        elif cfg.position == "sinusoidal":
            x_BxLxD = x_BxLxD + pos.sinusoidal(q_pos, cfg.d_model).astype(x_BxLxD.dtype)
        if cfg.embed_norm:
            x_BxLxD = Norm(cfg, name="embed_norm")(x_BxLxD)
        x_BxLxD = nn.Dropout(cfg.dropout)(x_BxLxD, deterministic=not train)

        mask = None
        if self.causal:
            mask = masks.causal(q_idx, k_idx) if prefix_len is None else masks.prefix(prefix_len, q_idx, k_idx)
        if key_valid is not None:
            mask = masks.combine(mask, masks.padding(key_valid, L))
        if segment_ids is not None:
            mask = masks.combine(mask, masks.segment(segment_ids, segment_ids))
        local = [cfg.local_layer(i) for i in range(self.n_layers)]
        local_mask = None
        if any(local):  # Local self-attention in these blocks; cross-attention is unaffected.
            window = masks.window(q_idx, k_idx, cfg.attention_window, causal=self.causal)
            local_mask = masks.combine(mask, window)
            if mask is None:
                mask = jnp.ones_like(window)
        bias = None
        if cfg.position == "alibi":
            bias = pos.alibi_bias(cfg.n_heads, q_pos, k_pos)
        elif cfg.position == "t5_relative":
            bias = pos.RelativeBias(cfg, bidirectional=not self.causal, name="relative_bias")(q_pos, k_pos)
        cross_mask = None
        if self.cross and encoded_valid is not None:
            cross_mask = masks.cross(L, encoded_valid)

        block = Block
        if cfg.remat != "none":
            block = nn.remat(Block, policy=REMAT_POLICIES[cfg.remat], prevent_cse=not cfg.scan_layers)
        rest = (bias, q_pos, encoded, cross_mask)
        if cfg.scan_layers:
            args, in_axes = (local_mask if all(local) else mask, *rest), (nn.broadcast,) * (1 + len(rest))
            if any(local) and not all(local):  # mixed pattern: each scanned block picks its mask
                args += (local_mask, jnp.array(local))
                in_axes += (nn.broadcast, 0)
            scanned = nn.scan(block, variable_axes={"params": 0, "cache": 0, "intermediates": 0},
                              split_rngs={"params": True, "dropout": True}, in_axes=in_axes,
                              length=self.n_layers, metadata_params={nn.PARTITION_NAME: "layers"})
            x_BxLxD, _ = scanned(cfg, self.cross, train, decode, name="layers")(x_BxLxD, *args)
        else:
            for i in range(self.n_layers):
                layer_mask = local_mask if local[i] else mask
                x_BxLxD, _ = block(cfg, self.cross, train, decode, name=f"layer_{i}")(x_BxLxD, layer_mask, *rest)
        if cfg.final_norm:
            x_BxLxD = Norm(cfg, name="final_norm")(x_BxLxD)
        return constrain(x_BxLxD)

    def _decode_positions(self, L: int):
        """Query positions (index .. index+L-1) and the positions of every cache slot; advances the index."""
        initialized = self.has_variable("cache", "index")
        index = self.variable("cache", "index", lambda: jnp.zeros((), jnp.int32))
        slots = self.variable("cache", "key_positions", lambda: jnp.arange(L, dtype=jnp.int32)[None])
        if not initialized:  # model.init: a plain forward pass over the (B, L_max) dummy.
            return slots.value, slots.value
        q_pos = index.value + jnp.arange(L, dtype=jnp.int32)[None]
        index.value = index.value + L
        return q_pos, slots.value

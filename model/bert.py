"""Encoder-only BERT: token (+ token-type) embedding -> bidirectional Stack -> MLM head (+ NSP head).

Keys equal to cfg.pad_id are masked. `features(...)` takes the same inputs as `__call__` and returns the
(B, L, D) final hidden states before the MLM head. The MLM head adds, beyond the encoder: with cfg.mlm_transform
a dense D*D + D and a norm 2D, with cfg.output_bias V, and V*D if untied.

With cfg.nsp_head the model also has BERT's next-sentence head: `pooler` (dense D*D + D, tanh, on the [CLS] state
at position 0) and `nsp` (dense D*2 + 2). `__call__` still returns only the MLM logits, so every caller that wants
token logits (sampling, fill-mask, HF export, the classifier's backbone, FLOP checks) is unchanged;
`mlm_and_nsp(...)` returns both and is what the train step applies when the batch has `nsp_labels`. `__call__`
runs the NSP head too (its result is dropped, and removed by XLA under jit), so that `init` creates its parameters.

`predict_at` (B, K) int32 positions, as BERT's own pretraining code takes masked_lm_positions: the MLM head runs on
the hidden states at those positions alone and the logits are (B, K, V). Training on 15% of 128 positions, the
head (the largest matmul of a small model) then costs K / L of its full price; the logits there are the same.
"""

from __future__ import annotations

from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from model.config import ModelConfig
from model.layers import Dense, Embed, OutputHead
from model.transformer import Stack


class BERT(nn.Module):
    """Masked LM over the whole (padded) sequence, optionally with the next-sentence head."""

    cfg: ModelConfig
    input_names: ClassVar[tuple[str, ...]] = ("inputs", "token_types", "segment_ids")

    def setup(self):
        cfg = self.cfg
        self.embed = Embed(cfg, cfg.vocab_size)
        if cfg.type_vocab:
            self.type_embed = Embed(cfg, cfg.type_vocab, axes=("type_vocab", "embed"))
        self.encoder = Stack(cfg, cfg.n_layers, causal=False)
        self.head = OutputHead(cfg)
        if cfg.nsp_head:
            self.pooler = Dense(cfg, (cfg.d_model,), ("embed", "mlp"), bias=cfg.use_bias)
            self.nsp = Dense(cfg, (2,), ("mlp", None), bias=cfg.use_bias, float32_out=True)

    def features(self, inputs: jax.Array, *, token_types: jax.Array | None = None,
                 segment_ids: jax.Array | None = None, train: bool = False) -> jax.Array:
        """(B, L) int32 tokens (and token types; segment_ids for document masking) -> (B, L, D) hidden states."""
        x = self.embed(inputs)
        if self.cfg.type_vocab:
            x = x + self.type_embed(jnp.zeros_like(inputs) if token_types is None else token_types)
        return self.encoder(x, key_valid=inputs != self.cfg.pad_id, segment_ids=segment_ids, train=train)

    def mlm_logits(self, h_BxLxD: jax.Array) -> jax.Array:
        """(B, L, V) float32 MLM logits of final hidden states (the output head, tied to the embedding or not)."""
        return self.head(h_BxLxD, self.embed.embedding if self.cfg.tie_embeddings else None)

    def mlm_and_nsp(self, inputs: jax.Array, *, token_types: jax.Array | None = None,
                    segment_ids: jax.Array | None = None, predict_at: jax.Array | None = None,
                    train: bool = False) -> tuple[jax.Array, jax.Array | None]:
        """(B, L, V) float32 MLM logits ((B, K, V) at `predict_at`) and (B, 2) float32 NSP logits (index 1 =
        IsNext; None without nsp_head)."""
        h_BxLxD = self.features(inputs, token_types=token_types, segment_ids=segment_ids, train=train)
        h = h_BxLxD if predict_at is None else jnp.take_along_axis(h_BxLxD, predict_at[..., None], axis=1)
        logits_BxLxV = self.mlm_logits(h)
        if not self.cfg.nsp_head:
            return logits_BxLxV, None
        pooled_BxD = jnp.tanh(self.pooler(h_BxLxD[:, 0]))
        return logits_BxLxV, self.nsp(pooled_BxD).astype(jnp.float32)

    def __call__(self, inputs: jax.Array, *, token_types: jax.Array | None = None,
                 segment_ids: jax.Array | None = None, predict_at: jax.Array | None = None,
                 train: bool = False) -> jax.Array:
        """(B, L) int32 tokens -> (B, L, V) float32 logits at every position (or (B, K, V) at `predict_at`)."""
        return self.mlm_and_nsp(inputs, token_types=token_types, segment_ids=segment_ids, predict_at=predict_at,
                                train=train)[0]

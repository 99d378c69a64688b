"""Encoder-only BERT: token (+ token-type) embedding -> bidirectional Stack -> MLM head.

Keys equal to cfg.pad_id are masked. `features(...)` takes the same inputs as `__call__` and returns the
(B, L, D) final hidden states before the MLM head. The MLM head adds, beyond the encoder (no pooler): with
cfg.mlm_transform a dense D*D + D and a norm 2D, with cfg.output_bias V, and V*D if untied.
"""

from __future__ import annotations

from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from model.config import ModelConfig
from model.layers import Embed, OutputHead
from model.transformer import Stack


class BERT(nn.Module):
    """Masked LM over the whole (padded) sequence."""

    cfg: ModelConfig
    input_names: ClassVar[tuple[str, ...]] = ("inputs", "token_types")

    def setup(self):
        cfg = self.cfg
        self.embed = Embed(cfg, cfg.vocab_size)
        if cfg.type_vocab_size:
            self.type_embed = Embed(cfg, cfg.type_vocab_size, axes=("type_vocab", "embed"))
        self.encoder = Stack(cfg, cfg.n_layers, causal=False)
        self.head = OutputHead(cfg)

    def features(self, inputs: jax.Array, *, token_types: jax.Array | None = None,
                 train: bool = False) -> jax.Array:
        """(B, L) int32 tokens (and token types) -> (B, L, D) final hidden states."""
        x = self.embed(inputs)
        if self.cfg.type_vocab_size:
            x = x + self.type_embed(jnp.zeros_like(inputs) if token_types is None else token_types)
        return self.encoder(x, key_valid=inputs != self.cfg.pad_id, train=train)

    def __call__(self, inputs: jax.Array, *, token_types: jax.Array | None = None,
                 train: bool = False) -> jax.Array:
        """(B, L) int32 tokens -> (B, L, V) float32 logits at every position."""
        h = self.features(inputs, token_types=token_types, train=train)
        return self.head(h, self.embed.embedding if self.cfg.tie_embeddings else None)

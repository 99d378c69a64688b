"""Decoder-only GPT: token embedding -> causal Stack -> output head (tied or not).

`features(...)` takes the same inputs as `__call__` and returns the (B, L, D) final hidden states (after the
final norm, before the head). With decode=True it runs against the KV cache (see model/transformer.py).
"""

from __future__ import annotations

from typing import ClassVar

import flax.linen as nn
import jax

from model.config import ModelConfig
from model.layers import Embed, OutputHead
from model.transformer import Stack


class GPT(nn.Module):
    """Causal LM; prefix_len (B,) turns it into a prefix LM (bidirectional inside the prefix); segment_ids (B, L)
    keeps attention inside each document (document masking)."""

    cfg: ModelConfig
    input_names: ClassVar[tuple[str, ...]] = ("inputs", "prefix_len", "segment_ids")

    def setup(self):
        self.embed = Embed(self.cfg, self.cfg.vocab_size)
        self.decoder = Stack(self.cfg, self.cfg.n_layers, causal=True)
        self.head = OutputHead(self.cfg)

    def features(self, inputs: jax.Array, *, prefix_len: jax.Array | None = None,
                 segment_ids: jax.Array | None = None, train: bool = False, decode: bool = False) -> jax.Array:
        """(B, L) int32 tokens -> (B, L, D) final hidden states."""
        return self.decoder(self.embed(inputs), prefix_len=prefix_len, segment_ids=segment_ids, train=train,
                            decode=decode)

    def __call__(self, inputs: jax.Array, *, prefix_len: jax.Array | None = None,
                 segment_ids: jax.Array | None = None, train: bool = False, decode: bool = False) -> jax.Array:
        """(B, L) int32 tokens -> (B, L, V) float32 next-token logits."""
        h = self.features(inputs, prefix_len=prefix_len, segment_ids=segment_ids, train=train, decode=decode)
        return self.head(h, self.embed.embedding if self.cfg.tie_embeddings else None)

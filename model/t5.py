"""Encoder-decoder T5: shared embedding -> bidirectional encoder Stack; causal decoder Stack with
cross-attention -> output head.

Encoder keys equal to cfg.pad_id are masked in encoder self-attention and in cross-attention. For generation,
run `encode` once and call `decode` per step (decode=True uses the decoder KV cache; cross-attention keys and
values are recomputed from `encoded` each step). `features(...)` takes the same inputs as `__call__` and returns
the (B, L, D) decoder hidden states before the head. Call methods with model.apply(..., method='encode').
"""

from __future__ import annotations

from typing import ClassVar

import flax.linen as nn
import jax

from model.config import ModelConfig
from model.layers import Embed, OutputHead
from model.transformer import Stack


class T5(nn.Module):
    """Sequence-to-sequence LM: logits for decoder_inputs given encoder_inputs."""

    cfg: ModelConfig
    input_names: ClassVar[tuple[str, ...]] = ("encoder_inputs", "decoder_inputs", "encoder_segment_ids")

    def setup(self):
        cfg = self.cfg
        self.embed = Embed(cfg, cfg.vocab_size)
        self.encoder = Stack(cfg, cfg.n_layers, causal=False)
        self.decoder = Stack(cfg, cfg.decoder_layers, causal=True, cross=True)
        self.head = OutputHead(cfg)

    def encode(self, encoder_inputs: jax.Array, *, encoder_segment_ids: jax.Array | None = None,
               train: bool = False) -> jax.Array:
        """(B, S) int32 tokens -> (B, S, D) encoder output (encoder_segment_ids: document masking)."""
        return self.encoder(self.embed(encoder_inputs), key_valid=encoder_inputs != self.cfg.pad_id,
                            segment_ids=encoder_segment_ids, train=train)

    def decoder_features(self, encoded: jax.Array, encoder_inputs: jax.Array, decoder_inputs: jax.Array, *,
                         train: bool = False, decode: bool = False) -> jax.Array:
        """(B, L, D) decoder hidden states given the encoder output (encoder_inputs give its padding)."""
        return self.decoder(self.embed(decoder_inputs), encoded=encoded,
                            encoded_valid=encoder_inputs != self.cfg.pad_id, train=train, decode=decode)

    def decode(self, encoded: jax.Array, encoder_inputs: jax.Array, decoder_inputs: jax.Array, *,
               train: bool = False, decode: bool = False) -> jax.Array:
        """(B, L, V) float32 logits given the encoder output."""
        h = self.decoder_features(encoded, encoder_inputs, decoder_inputs, train=train, decode=decode)
        return self.head(h, self.embed.embedding if self.cfg.tie_embeddings else None)

    def features(self, encoder_inputs: jax.Array, decoder_inputs: jax.Array, *,
                 encoder_segment_ids: jax.Array | None = None, train: bool = False, decode: bool = False) -> jax.Array:
        """(B, L, D) decoder hidden states."""
        encoded = self.encode(encoder_inputs, encoder_segment_ids=encoder_segment_ids, train=train)
        return self.decoder_features(encoded, encoder_inputs, decoder_inputs, train=train, decode=decode)

    def __call__(self, encoder_inputs: jax.Array, decoder_inputs: jax.Array, *,
                 encoder_segment_ids: jax.Array | None = None, train: bool = False, decode: bool = False) -> jax.Array:
        """(B, S) and (B, L) int32 tokens -> (B, L, V) float32 logits (encoder_segment_ids: document masking of
        the encoder; the decoder sees every encoder position)."""
        encoded = self.encode(encoder_inputs, encoder_segment_ids=encoder_segment_ids, train=train)
        return self.decode(encoded, encoder_inputs, decoder_inputs, train=train, decode=decode)

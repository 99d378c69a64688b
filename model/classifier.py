"""Classifier(cfg, num_classes): a GPT, BERT or T5 backbone, one pooled vector per example, and a small head.

The backbone is the submodule `backbone` (`pretrained_key`), so a pretrained model's parameter tree drops in as
params['backbone'] (train/loop.py's init_from loads it there); only the head starts fresh. Only `features` of the
backbone runs, so its LM head's parameters (if any) are not part of the classifier.

Pooling (which (D,) hidden state stands for the example):
  bert  the first position, [CLS]: bidirectional attention lets it see every token, and MLM pretraining fed it
        [CLS] at position 0 of every window.
  gpt   the last real token (position lengths - 1, the last token of the text): under causal attention it is
        the only position that has seen the whole text, and padding after it cannot reach it. No </s> is
        appended: after a pretrained GPT has read </s> its state predicts the start of an unrelated document and
        hardly depends on the text (measured: its spread across examples was 3% of its size).
  t5    the mean of the encoder's output over the real (non-pad) tokens. The decoder's first position was the
        alternative; it is input-invariant after span-corruption pretraining (it always predicts <extra_id_0>:
        measured spread across examples 2.6% of its size, against 8% for BERT's [CLS] and 76% for GPT's last
        token), so a short fine-tune starts from a constant feature; Sentence-T5 (Ni et al., 2021) likewise found
        encoder mean-pooling the better T5 sentence representation. The decoder's parameters are not used.
Head: dense D -> D with tanh (BERT's pooler), dropout (cfg.dropout), dense D -> C. Logits are float32 (B, 1, C), so
the one train step and losses.cross_entropy take them with targets and weights of shape (B, 1).
"""

from __future__ import annotations

from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from model.bert import BERT
from model.config import ModelConfig
from model.gpt import GPT
from model.layers import Dense
from model.t5 import T5

_BACKBONES = {"gpt": GPT, "bert": BERT, "t5": T5}
# Batch entries each architecture's classifier takes: the backbone's inputs plus what pooling needs.
INPUT_NAMES = {"bert": ("inputs", "token_types"), "gpt": ("inputs", "lengths"), "t5": ("encoder_inputs",)}


class Classifier(nn.Module):
    """(B, 1, C) float32 class logits from the pooled backbone state (see the module docstring)."""

    cfg: ModelConfig
    num_classes: int
    pretrained_key: ClassVar[str] = "backbone"  # Subtree of the params that init_from's parameters fill.

    @property
    def input_names(self) -> tuple[str, ...]:
        return INPUT_NAMES[self.cfg.arch]

    def setup(self):
        cfg = self.cfg
        self.backbone = _BACKBONES[cfg.arch](cfg)
        self.pooler = Dense(cfg, (cfg.d_model,), ("embed", "mlp"), name="pooler")
        self.dropout = nn.Dropout(cfg.dropout)
        self.out = Dense(cfg, (self.num_classes,), ("mlp", None), float32_out=True, name="out")

    def pooled(self, inputs: jax.Array | None = None, token_types: jax.Array | None = None,
               lengths: jax.Array | None = None, encoder_inputs: jax.Array | None = None,
               decoder_inputs: jax.Array | None = None, *, train: bool = False) -> jax.Array:
        """(B, D) backbone hidden state that represents each example."""
        arch = self.cfg.arch
        if arch == "bert":
            return self.backbone.features(inputs, token_types=token_types, train=train)[:, 0]
        if arch == "gpt":
            h_BxLxD = self.backbone.features(inputs, train=train)
            last_B = jnp.clip(lengths - 1, 0, inputs.shape[1] - 1)
            return jnp.take_along_axis(h_BxLxD, last_B[:, None, None], axis=1)[:, 0]
        h_BxSxD = self.backbone.encode(encoder_inputs, train=train)
        valid_BxSx1 = (encoder_inputs != self.cfg.pad_id)[..., None].astype(jnp.float32)
        return (jnp.sum(h_BxSxD.astype(jnp.float32) * valid_BxSx1, axis=1)
                / jnp.maximum(jnp.sum(valid_BxSx1, axis=1), 1.0)).astype(h_BxSxD.dtype)

    def __call__(self, inputs: jax.Array | None = None, token_types: jax.Array | None = None,
                 lengths: jax.Array | None = None, encoder_inputs: jax.Array | None = None,
                 decoder_inputs: jax.Array | None = None, *, train: bool = False) -> jax.Array:
        """Inputs named by `input_names` -> (B, 1, C) float32 logits."""
        h_BxD = self.pooled(inputs, token_types, lengths, encoder_inputs, decoder_inputs, train=train)
        h_BxD = self.dropout(jnp.tanh(self.pooler(h_BxD)), deterministic=not train)
        return self.out(h_BxD)[:, None, :].astype(jnp.float32)

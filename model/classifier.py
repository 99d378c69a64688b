"""Classifier(cfg, num_classes): a GPT, BERT or T5 backbone, one pooled vector per example, and a small head.

The backbone is the submodule `backbone` (`pretrained_key`), so a pretrained model's parameter tree drops in as
params['backbone'] (train/loop.py's init_from loads it there); only the head starts fresh. Only `features` of the
backbone runs, so its LM head's parameters (if any) are not part of the classifier.

Pooling (which (D,) hidden state stands for the example):
  bert  the first position, [CLS]: bidirectional attention lets it see every token, and MLM pretraining fed it
        [CLS] at position 0 in every window.
  gpt   the last real token (position lengths - 1, always </s> in data/classify.py's encoding): under causal
        attention it is the only position that has seen the whole text; padding after it cannot reach it.
  t5    the decoder's first position (decoder input = the start token 0) attending to the encoder. Chosen over
        mean-pooling the encoder because it uses the whole pretrained model (at matched parameters half of T5 is
        its decoder, which mean-pooling would throw away), it is the position span corruption trained to read the
        encoder from (the first target is always predicted from there), and it matches how T5 is fine-tuned: the
        decoder produces the answer.
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
INPUT_NAMES = {"bert": ("inputs", "token_types"), "gpt": ("inputs", "lengths"),
               "t5": ("encoder_inputs", "decoder_inputs")}


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
        return self.backbone.features(encoder_inputs, decoder_inputs, train=train)[:, 0]

    def __call__(self, inputs: jax.Array | None = None, token_types: jax.Array | None = None,
                 lengths: jax.Array | None = None, encoder_inputs: jax.Array | None = None,
                 decoder_inputs: jax.Array | None = None, *, train: bool = False) -> jax.Array:
        """Inputs named by `input_names` -> (B, 1, C) float32 logits."""
        h_BxD = self.pooled(inputs, token_types, lengths, encoder_inputs, decoder_inputs, train=train)
        h_BxD = self.dropout(jnp.tanh(self.pooler(h_BxD)), deterministic=not train)
        return self.out(h_BxD)[:, None, :].astype(jnp.float32)

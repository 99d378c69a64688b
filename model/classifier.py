"""Classifier(cfg, num_classes): a GPT, BERT or T5 backbone, one pooled vector per example, and a small head.

The backbone is the submodule `backbone` (`pretrained_key`), so a pretrained model's parameter tree drops in as
params['backbone'] (train/loop.py's init_from loads it there); only the head starts fresh. Only `features` of the
backbone runs, so its LM head's parameters (if any) are not part of the classifier.

Pooling (which (D,) vector stands for the example; config task.pooling; the architecture's default when ''):
  bert  'first', [CLS]: bidirectional attention lets it see every token, and MLM pretraining fed it [CLS] at
        position 0 of every window.
  gpt   'last', the last real token (position lengths - 1, the last token of the text): under causal attention it
        is the only position that has seen the whole text, and padding after it cannot reach it. No </s> is
        appended: after a pretrained GPT has read </s> its state predicts the start of an unrelated document and
        hardly depends on the text (docs/results.md, "Pooling").
  t5    'mean' of the encoder's output over the real (non-pad) tokens. The decoder's first position was the
        alternative; it barely varies across inputs after span-corruption pretraining (it always predicts
        <extra_id_0>; docs/results.md, "Pooling"), so a short fine-tune would start from a nearly constant feature;
        Sentence-T5 (Ni et al., 2021) likewise found encoder mean-pooling the better T5 sentence representation.
        The decoder's parameters are not used. With t5_states='decoder' (task.t5_states) it reads the decoder
        instead, as BART classifies: the encoder gets the text, the decoder [start] + the same text (inputs
        `decoder_inputs` and `lengths`, the real decoder positions), and pooling runs over the decoder's final
        states. A briefly trained T5's decoder learns to read its encoder late (train.evaluate --shuffle_encoder),
        so the decoder is where such a T5 keeps what it learned; the probe recipe uses it.
  Any of 'first', 'last', 'mean' and 'max' (elementwise over the real tokens) can be chosen for any architecture;
  the states are BERT's and GPT's final hidden states and T5's encoder output (or its decoder's). 'max' suits "is
  anything anywhere in the text wrong" (the probes, experiments/configs/finetune.py): one position that fires is
  enough.
Head: dense D -> D with tanh (BERT's pooler), dropout (cfg.dropout), dense D -> C. Logits are float32 (B, 1, C), so
the one train step and losses.cross_entropy take them with targets and weights of shape (B, 1).
"""

from __future__ import annotations

from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from model.bert import BERT
from model.config import ConfigError, ModelConfig
from model.gpt import GPT
from model.layers import Dense
from model.t5 import T5

_BACKBONES = {"gpt": GPT, "bert": BERT, "t5": T5}
POOLINGS = ("first", "last", "mean", "max")
T5_STATES = ("encoder", "decoder")
DEFAULT_POOLING = {"bert": "first", "gpt": "last", "t5": "mean"}
# Batch entries each architecture's classifier takes: the backbone's inputs plus what pooling needs.
INPUT_NAMES = {"bert": ("inputs", "token_types"), "gpt": ("inputs", "lengths"), "t5": ("encoder_inputs",)}


class Classifier(nn.Module):
    """(B, 1, C) float32 class logits from the pooled backbone state (see the module docstring)."""

    cfg: ModelConfig
    num_classes: int
    pooling: str = ""  # One of POOLINGS; '' = DEFAULT_POOLING[cfg.arch].
    t5_states: str = "encoder"  # T5: pool the encoder output, or the decoder states with the text fed to both.
    pretrained_key: ClassVar[str] = "backbone"  # Subtree of the params that init_from's parameters fill.

    @property
    def input_names(self) -> tuple[str, ...]:
        if self.cfg.arch == "t5" and self.t5_states == "decoder":
            return ("encoder_inputs", "decoder_inputs", "lengths")
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
        arch, pooling = self.cfg.arch, self.pooling or DEFAULT_POOLING[self.cfg.arch]
        if pooling not in POOLINGS:
            raise ConfigError(f"task.pooling={pooling!r} is unknown; choose one of {list(POOLINGS)} or '' (the "
                              f"architecture's default, {DEFAULT_POOLING[arch]!r} for {arch})")
        if arch == "t5" and self.t5_states not in T5_STATES:
            raise ConfigError(f"task.t5_states={self.t5_states!r} is unknown; choose one of {list(T5_STATES)}")
        if arch == "t5" and self.t5_states == "decoder":  # BART-style: lengths = decoder positions that are real
            ids_BxL, h_BxLxD = decoder_inputs, self.backbone.features(encoder_inputs, decoder_inputs, train=train)
        elif arch == "t5":
            ids_BxL, h_BxLxD = encoder_inputs, self.backbone.encode(encoder_inputs, train=train)
        elif arch == "bert":
            ids_BxL, h_BxLxD = inputs, self.backbone.features(inputs, token_types=token_types, train=train)
        else:
            ids_BxL, h_BxLxD = inputs, self.backbone.features(inputs, train=train)
        if lengths is None:  # bert, t5: padding is pad_id after the text
            lengths = jnp.sum(ids_BxL != self.cfg.pad_id, axis=1)
        if pooling == "first":
            return h_BxLxD[:, 0]
        if pooling == "last":
            last_B = jnp.clip(lengths - 1, 0, ids_BxL.shape[1] - 1)
            return jnp.take_along_axis(h_BxLxD, last_B[:, None, None], axis=1)[:, 0]
        valid_BxLx1 = (jnp.arange(ids_BxL.shape[1])[None, :] < lengths[:, None])[..., None]
        dtype, h_BxLxD = h_BxLxD.dtype, h_BxLxD.astype(jnp.float32)
        if pooling == "max":
            pooled_BxD = jnp.max(jnp.where(valid_BxLx1, h_BxLxD, -jnp.inf), axis=1)
            pooled_BxD = jnp.where(jnp.isfinite(pooled_BxD), pooled_BxD, 0.0)  # an empty row pools to 0
        else:
            pooled_BxD = (jnp.sum(jnp.where(valid_BxLx1, h_BxLxD, 0.0), axis=1)
                          / jnp.maximum(jnp.sum(valid_BxLx1, axis=1), 1))
        return pooled_BxD.astype(dtype)

    def __call__(self, inputs: jax.Array | None = None, token_types: jax.Array | None = None,
                 lengths: jax.Array | None = None, encoder_inputs: jax.Array | None = None,
                 decoder_inputs: jax.Array | None = None, *, train: bool = False) -> jax.Array:
        """Inputs named by `input_names` -> (B, 1, C) float32 logits."""
        h_BxD = self.pooled(inputs, token_types, lengths, encoder_inputs, decoder_inputs, train=train)
        h_BxD = self.dropout(jnp.tanh(self.pooler(h_BxD)), deterministic=not train)
        return self.out(h_BxD)[:, None, :].astype(jnp.float32)

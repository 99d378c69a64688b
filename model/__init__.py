"""Triad's model library: one set of layers wired as GPT, BERT or T5 (see `build`).

Logits are float32 (B, L, V); `features(...)` (same inputs) gives the (B, L, D) hidden states before the head.
KV cache: `_, v = model.apply({'params': p}, zeros((B, L_max)), decode=True, mutable=['cache'])` (or
model.init(..., decode=True)) creates an empty cache of L_max slots; then call with the next token(s) and
`{'params': p, 'cache': v['cache']}, decode=True, mutable=['cache']`. T5: `method='encode'` once, then
`method='decode'` with the encoder output. model.init also returns a zero 'perturbations' collection (a
gradient probe used by the tests); keep only init(...)['params'].
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from model.bert import BERT
from model.config import ConfigError, ModelConfig, from_dict, preset
from model.gpt import GPT
from model.t5 import T5

__all__ = ["BERT", "GPT", "T5", "ConfigError", "ModelConfig", "abstract_params", "build", "from_dict", "preset"]

_ARCHS = {"gpt": GPT, "bert": BERT, "t5": T5}


def build(cfg: ModelConfig) -> nn.Module:
    """The GPT, BERT or T5 module for cfg.arch."""
    return _ARCHS[cfg.arch](cfg)


def abstract_params(cfg: ModelConfig):
    """The parameter tree of build(cfg) as ShapeDtypeStructs, from jax.eval_shape (nothing is computed)."""
    dummy = jnp.zeros((1, 1), jnp.int32)
    args = (dummy, dummy) if cfg.arch == "t5" else (dummy,)
    return nn.meta.unbox(jax.eval_shape(build(cfg).init, jax.random.key(0), *args)["params"])

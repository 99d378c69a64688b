"""The Hugging Face tensor layouts: how a GPT-2 (GPT2LMHeadModel), BERT (BertForMaskedLM; BertForPreTraining adds
the pooler and next-sentence head, model.nsp_head) or T5 (T5ForConditionalGeneration, v1.0 and v1.1) checkpoint
maps to Triad's parameters and ModelConfig.

`FAMILIES` holds, per HF model_type, the `Tensor` layout (HF tensor name -> Triad parameter path(s), with the
shape transform `to_ours` / `to_hf`), the config.json defaults and reader (`config_from_hf`), and the names HF keeps
that Triad ignores. The layouts are the single description of the mapping: model/hf_convert.py reads and writes
model directories with them, in both directions.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable

import numpy as np

from model.config import ConfigError, ModelConfig, preset

QKV = ("query", "key", "value")


class HFImportError(ConfigError):
    """A Hugging Face checkpoint Triad cannot read; the message names the file, tensor or config.json field (a
    ConfigError, so the commands report it as one line)."""


@dataclasses.dataclass(frozen=True)
class Tensor:
    """One HF tensor and the Triad parameter path(s) ('/'-separated) it holds.

    Several paths: a fused tensor (GPT-2's c_attn) split evenly on its last axis. linear: a torch nn.Linear
    weight, stored (out, in), so transposed; GPT-2's Conv1D weights are already (in, out). reverse: the output
    axis is in the opposite order (BERT's NSP head: HF's class 0 is IsNext, Triad's class 1).
    """

    hf: str
    ours: tuple[str, ...]
    linear: bool = False
    reverse: bool = False


def _n_in(path: str) -> int:
    """Input axes of a Triad parameter seen as a matrix: 0 for vectors (biases, norm scales), 2 for the
    attention output kernel (H, Dh, D), 1 for other kernels and embedding tables."""
    if path.endswith("out/kernel"):
        return 2
    return 0 if path.rsplit("/", 1)[-1] in ("bias", "scale") else 1


def _flat(shape: tuple[int, ...], n_in: int) -> tuple[int, ...]:
    return (math.prod(shape),) if n_in == 0 else (math.prod(shape[:n_in]), math.prod(shape[n_in:]))


def hf_shape(t: Tensor, shapes: dict[str, tuple[int, ...]]) -> tuple[int, ...]:
    """The shape the HF tensor must have, given the Triad parameter shapes."""
    parts = [_flat(shapes[p], _n_in(p)) for p in t.ours]
    shape = parts[0][:-1] + (sum(s[-1] for s in parts),)
    return shape[::-1] if t.linear else shape


def to_ours(t: Tensor, x: np.ndarray, shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """HF tensor -> {Triad path: float32 array}."""
    x = np.asarray(x, np.float32)
    x = x.T if t.linear else x
    x = x[..., ::-1] if t.reverse else x
    sizes = [_flat(shapes[p], _n_in(p))[-1] for p in t.ours]
    pieces = np.split(x, np.cumsum(sizes)[:-1], axis=-1)
    return {p: np.ascontiguousarray(piece.reshape(shapes[p])) for p, piece in zip(t.ours, pieces, strict=True)}


def to_hf(t: Tensor, arrays: dict[str, np.ndarray]) -> np.ndarray:
    """{Triad path: array} -> the HF tensor (float32)."""
    parts = [np.asarray(arrays[p], np.float32).reshape(_flat(np.shape(arrays[p]), _n_in(p))) for p in t.ours]
    x = np.concatenate(parts, axis=-1)
    x = x[..., ::-1] if t.reverse else x
    return np.ascontiguousarray(x.T if t.linear else x)


def _dense(hf: str, ours: str, cfg: ModelConfig, linear: bool = True) -> list[Tensor]:
    out = [Tensor(f"{hf}.weight", (f"{ours}/kernel",), linear)]
    return out + [Tensor(f"{hf}.bias", (f"{ours}/bias",))] if cfg.use_bias else out


def _norm(hf: str, ours: str, cfg: ModelConfig) -> list[Tensor]:
    out = [Tensor(f"{hf}.weight", (f"{ours}/scale",))]
    return out + [Tensor(f"{hf}.bias", (f"{ours}/bias",))] if cfg.norm == "layernorm" and cfg.use_bias else out


# ---- Layouts: HF tensor names (after `normalise`) -> Triad parameter paths. ----

def _gpt2_layout(cfg: ModelConfig) -> list[Tensor]:
    ts = [Tensor("wte.weight", ("embed/embedding",)), Tensor("wpe.weight", ("decoder/position_embedding/embedding",)),
          *_norm("ln_f", "decoder/final_norm", cfg)]
    for i in range(cfg.n_layers):
        h, us = f"h.{i}.", f"decoder/layer_{i}/"
        a = us + "self_attention/"
        ts += [*_norm(h + "ln_1", us + "self_attention_norm", cfg),
               Tensor(h + "attn.c_attn.weight", tuple(f"{a}{n}/kernel" for n in QKV)),
               Tensor(h + "attn.c_attn.bias", tuple(f"{a}{n}/bias" for n in QKV)),
               *_dense(h + "attn.c_proj", a + "out", cfg, linear=False),
               *_norm(h + "ln_2", us + "mlp_norm", cfg),
               *_dense(h + "mlp.c_fc", us + "mlp/wi", cfg, linear=False),
               *_dense(h + "mlp.c_proj", us + "mlp/wo", cfg, linear=False)]
    return ts if cfg.tie_embeddings else ts + [Tensor("lm_head.weight", ("head/lm_head/kernel",), True)]


def _bert_layout(cfg: ModelConfig) -> list[Tensor]:
    e = "bert.embeddings."
    ts = [Tensor(e + "word_embeddings.weight", ("embed/embedding",)),
          Tensor(e + "position_embeddings.weight", ("encoder/position_embedding/embedding",)),
          Tensor(e + "token_type_embeddings.weight", ("type_embed/embedding",)),
          *_norm(e + "LayerNorm", "encoder/embed_norm", cfg)]
    for i in range(cfg.n_layers):
        h, us = f"bert.encoder.layer.{i}.", f"encoder/layer_{i}/"
        for n in QKV:
            ts += _dense(f"{h}attention.self.{n}", f"{us}self_attention/{n}", cfg)
        ts += [*_dense(h + "attention.output.dense", us + "self_attention/out", cfg),
               *_norm(h + "attention.output.LayerNorm", us + "self_attention_norm", cfg),
               *_dense(h + "intermediate.dense", us + "mlp/wi", cfg),
               *_dense(h + "output.dense", us + "mlp/wo", cfg),
               *_norm(h + "output.LayerNorm", us + "mlp_norm", cfg)]
    p = "cls.predictions."
    ts += [*_dense(p + "transform.dense", "head/transform", cfg), *_norm(p + "transform.LayerNorm",
                                                                         "head/transform_norm", cfg),
           Tensor(p + "decoder.bias", ("head/bias",))]
    if cfg.nsp_head:  # BertForPreTraining's pooler and next-sentence head.
        ts += [*_dense("bert.pooler.dense", "pooler", cfg),
               Tensor("cls.seq_relationship.weight", ("nsp/kernel",), linear=True, reverse=True)]
        ts += [Tensor("cls.seq_relationship.bias", ("nsp/bias",), reverse=True)] if cfg.use_bias else []
    return ts if cfg.tie_embeddings else ts + [Tensor(p + "decoder.weight", ("head/lm_head/kernel",), True)]


def _t5_layout(cfg: ModelConfig) -> list[Tensor]:
    ts = [Tensor("shared.weight", ("embed/embedding",))]
    mlp = ("wi_0", "wi_1", "wo") if cfg.mlp in ("geglu", "swiglu") else ("wi", "wo")
    for stack, n_layers in (("encoder", cfg.n_layers), ("decoder", cfg.decoder_layers)):
        ts += [Tensor(f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
                      (f"{stack}/relative_bias/embedding",)), *_norm(f"{stack}.final_layer_norm",
                                                                      f"{stack}/final_norm", cfg)]
        subs = [("SelfAttention", "self_attention")] + [("EncDecAttention", "cross_attention")] * (stack == "decoder")
        for i in range(n_layers):
            h, us = f"{stack}.block.{i}.layer.", f"{stack}/layer_{i}/"
            for j, (theirs, ours) in enumerate(subs):
                for a, b in zip("qkvo", (*QKV, "out"), strict=True):
                    ts += _dense(f"{h}{j}.{theirs}.{a}", f"{us}{ours}/{b}", cfg)
                ts += _norm(f"{h}{j}.layer_norm", f"{us}{ours}_norm", cfg)
            for w in mlp:
                ts += _dense(f"{h}{len(subs)}.DenseReluDense.{w}", f"{us}mlp/{w}", cfg)
            ts += _norm(f"{h}{len(subs)}.layer_norm", f"{us}mlp_norm", cfg)
    return ts if cfg.tie_embeddings else ts + [Tensor("lm_head.weight", ("head/lm_head/kernel",), True)]


# ---- Configs: config.json -> ModelConfig (defaults are those of the transformers config classes, since
# config.json files often leave defaults out). ----

_GPT2_DEFAULTS = dict(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12, n_inner=None,
                      activation_function="gelu_new", resid_pdrop=0.1, attn_pdrop=0.1, layer_norm_epsilon=1e-5,
                      initializer_range=0.02, scale_attn_weights=True, scale_attn_by_inverse_layer_idx=False,
                      add_cross_attention=False, pad_token_id=0)  # GPT-2 has no pad token; Triad's GPT ignores it.
_BERT_DEFAULTS = dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                      intermediate_size=3072, hidden_act="gelu", hidden_dropout_prob=0.1,
                      attention_probs_dropout_prob=0.1, max_position_embeddings=512, type_vocab_size=2,
                      initializer_range=0.02, layer_norm_eps=1e-12, pad_token_id=0,
                      position_embedding_type="absolute", is_decoder=False, add_cross_attention=False)
_T5_DEFAULTS = dict(vocab_size=32128, d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_decoder_layers=None,
                    num_heads=8, relative_attention_num_buckets=32, relative_attention_max_distance=128,
                    dropout_rate=0.1, layer_norm_epsilon=1e-6, feed_forward_proj="relu", pad_token_id=0,
                    n_positions=512)
# HF activation name -> Triad MLP fields (plain MLP; and the gated T5 kinds).
ACTIVATIONS = {"gelu_new": dict(mlp="gelu", gelu_approximate=True),
               "gelu_pytorch_tanh": dict(mlp="gelu", gelu_approximate=True),
               "gelu": dict(mlp="gelu", gelu_approximate=False), "relu": dict(mlp="relu")}
GATED_ACTIVATIONS = {"gelu_new": dict(mlp="geglu", gelu_approximate=True),
                     "gelu_pytorch_tanh": dict(mlp="geglu", gelu_approximate=True),
                     "gelu": dict(mlp="geglu", gelu_approximate=False),
                     "silu": dict(mlp="swiglu"), "swish": dict(mlp="swiglu")}


class _Fields:
    """config.json values with the transformers defaults filled in; unsupported values raise HFImportError."""

    def __init__(self, c: dict, defaults: dict, where: str):
        self.c, self.defaults, self.where = c, defaults, where

    def __call__(self, key: str):
        v = self.c.get(key)
        return self.defaults[key] if v is None else v

    def require(self, key: str, value) -> None:
        if self(key) != value:
            raise HFImportError(f"{self.where}: {key}={self(key)!r} is not supported by Triad's "
                                f"{self.c.get('model_type')} (only {value!r})")

    def activation(self, key: str, name: str, table: dict) -> dict:
        if name not in table:
            raise HFImportError(f"{self.where}: {key}={self(key)!r} is not supported: Triad has "
                                f"{', '.join(map(repr, table))}")
        return table[name]


def _gpt2_config(f: _Fields, tie: bool) -> ModelConfig:
    f.require("scale_attn_by_inverse_layer_idx", False)
    f.require("add_cross_attention", False)
    return preset("gpt2").replace(
        vocab_size=f("vocab_size"), d_model=f("n_embd"), n_heads=f("n_head"), d_ff=f("n_inner") or 4 * f("n_embd"),
        n_layers=f("n_layer"), max_len=f("n_positions"), norm_eps=f("layer_norm_epsilon"),
        dropout=f("resid_pdrop"), attention_dropout=f("attn_pdrop"), attention_scale=f("scale_attn_weights"),
        init_std=f("initializer_range"), pad_id=f("pad_token_id"), tie_embeddings=tie,
        **f.activation("activation_function", f("activation_function"), ACTIVATIONS))


def _bert_config(f: _Fields, tie: bool) -> ModelConfig:
    f.require("position_embedding_type", "absolute")
    f.require("is_decoder", False)
    f.require("add_cross_attention", False)
    if f("type_vocab_size") < 1:
        raise HFImportError(f"{f.where}: type_vocab_size={f('type_vocab_size')} must be >= 1 (BertEmbeddings always "
                            "adds a token-type embedding)")
    return preset("bert-base").replace(
        vocab_size=f("vocab_size"), d_model=f("hidden_size"), n_heads=f("num_attention_heads"),
        d_ff=f("intermediate_size"), n_layers=f("num_hidden_layers"), max_len=f("max_position_embeddings"),
        type_vocab_size=f("type_vocab_size"), norm_eps=f("layer_norm_eps"), dropout=f("hidden_dropout_prob"),
        attention_dropout=f("attention_probs_dropout_prob"), init_std=f("initializer_range"),
        pad_id=f("pad_token_id"), tie_embeddings=tie, **f.activation("hidden_act", f("hidden_act"), ACTIVATIONS))


def t5_activation(proj: str) -> tuple[bool, str]:
    """(gated, HF activation name) of a T5 feed_forward_proj, as transformers' T5Config derives them."""
    parts = proj.split("-")
    return parts[0] == "gated", "gelu_new" if proj == "gated-gelu" else parts[-1]


def _t5_config(f: _Fields, tie: bool) -> ModelConfig:
    gated, act = t5_activation(f("feed_forward_proj"))
    mlp = f.activation("feed_forward_proj", act, GATED_ACTIVATIONS if gated else ACTIVATIONS)
    # Logits are scaled by d_model**-0.5 in v1.0 only: transformers 5 writes scale_decoder_outputs, 4 derived
    # it from tie_word_embeddings (False in v1.1 configs).
    scale = f.c.get("scale_decoder_outputs", f.c.get("tie_word_embeddings", True))
    if scale and not tie:
        raise HFImportError(f"{f.where}: the output is scaled by d_model**-0.5 (tie_word_embeddings / "
                            "scale_decoder_outputs) but lm_head.weight differs from shared.weight: Triad scales "
                            "only a tied output projection")
    n_layers = f("num_layers")
    return preset("t5.1.1-small" if gated else "t5-small").replace(
        vocab_size=f("vocab_size"), d_model=f("d_model"), head_dim=f("d_kv"), n_heads=f("num_heads"),
        d_ff=f("d_ff"), n_layers=n_layers, n_decoder_layers=f("num_decoder_layers") or n_layers,
        max_len=f("n_positions"), rel_buckets=f("relative_attention_num_buckets"),
        rel_max_distance=f("relative_attention_max_distance"), norm_eps=f("layer_norm_epsilon"),
        dropout=f("dropout_rate"), attention_dropout=f("dropout_rate"), pad_id=f("pad_token_id"),
        tie_embeddings=tie, scale_tied_logits=bool(scale), **mlp)


def _strip(prefix: str) -> Callable[[str], str]:
    return lambda n: n[len(prefix):] if n.startswith(prefix) else n


def _bert_name(n: str) -> str:
    n = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", n))
    return n if n.startswith(("bert.", "cls.")) else "bert." + n  # A bare BertModel file has no "bert." prefix.


@dataclasses.dataclass(frozen=True)
class Family:
    """How one HF model type maps to Triad."""

    model_type: str  # config.json model_type.
    arch: str  # Triad ModelConfig.arch.
    architecture: str  # The HF class Triad reads and writes.
    variant: Callable[[ModelConfig], str]  # Published variant (preset) an imported config starts from.
    defaults: dict  # transformers' defaults of the config.json fields read.
    config: Callable[[_Fields, bool], ModelConfig]  # (config.json fields, tied output) -> ModelConfig.
    layout: Callable[[ModelConfig], list[Tensor]]
    normalise: Callable[[str], str]  # File tensor name -> the name in `layout`.
    embedding: str  # Token embedding tensor.
    head: str  # Output projection tensor (a copy of `embedding`, or absent, when tied).
    aliases: dict[str, str]  # Tied copies: alias -> canonical name (used if the canonical name is absent).
    ignored: tuple[str, ...]  # Regexes of tensors HF keeps that do not affect the logits.
    nsp_head: tuple[str, ...] = ()  # Tensors whose presence means the file has a next-sentence head to read.


FAMILIES = {f.model_type: f for f in (
    Family("gpt2", "gpt", "GPT2LMHeadModel", lambda c: "gpt2", _GPT2_DEFAULTS, _gpt2_config, _gpt2_layout,
           _strip("transformer."), "wte.weight", "lm_head.weight", {},
           (r"h\.\d+\.attn\.(bias|masked_bias)",)),  # Causal-mask buffers of older transformers.
    Family("bert", "bert", "BertForMaskedLM", lambda c: "bert-base", _BERT_DEFAULTS, _bert_config, _bert_layout,
           _bert_name, "bert.embeddings.word_embeddings.weight", "cls.predictions.decoder.weight",
           # The decoder's bias is the one forward() adds; transformers ties predictions.bias to it and often
           # saves only that copy.
           {"cls.predictions.bias": "cls.predictions.decoder.bias"},
           (r"bert\.pooler\..*",  # A partial pooler / next-sentence head (see nsp_head): not in the MLM logits.
            r"cls\.seq_relationship\..*", r"bert\.embeddings\.(position_ids|token_type_ids)"),  # Buffers.
           ("bert.pooler.dense.weight", "cls.seq_relationship.weight")),
    Family("t5", "t5", "T5ForConditionalGeneration",
           lambda c: "t5.1.1-small" if c.mlp in ("geglu", "swiglu") else "t5-small", _T5_DEFAULTS, _t5_config,
           _t5_layout, lambda n: n, "shared.weight", "lm_head.weight",
           {"encoder.embed_tokens.weight": "shared.weight", "decoder.embed_tokens.weight": "shared.weight"},
           # Stored by old checkpoints; transformers never reads it (cross-attention has no position bias).
           (r"decoder\.block\.0\.layer\.1\.EncDecAttention\.relative_attention_bias\.weight",)),
)}
FAMILY_OF_ARCH = {f.arch: f for f in FAMILIES.values()}


def family_of(c: dict, where: str = "config.json") -> Family:
    """The Family of a transformers config.json's contents `c`; an unsupported model_type raises HFImportError."""
    if c.get("model_type") not in FAMILIES:
        raise HFImportError(f"{where}: model_type={c.get('model_type')!r} is not supported: Triad imports "
                            f"{', '.join(repr(k) for k in FAMILIES)}")
    return FAMILIES[c["model_type"]]


def config_from_hf(c: dict, tie: bool, where: str = "config.json") -> ModelConfig:
    """The ModelConfig of a transformers config.json's contents `c` (tie: the output projection is the token
    embedding); an unsupported value raises HFImportError naming the field."""
    family = family_of(c, where)
    try:
        return family.config(_Fields(c, family.defaults, where), bool(tie))
    except HFImportError:
        raise
    except ConfigError as e:
        raise HFImportError(f"{where} describes a model Triad cannot build: {e}") from None

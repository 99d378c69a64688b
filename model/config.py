"""ModelConfig: the frozen, validated hyperparameters of every Triad model, and the size presets.

Every field is a plain int/float/str/bool so a config round-trips through `dataclasses.asdict` and
`ml_collections.ConfigDict` and can be overridden with `--config.model.<field>=<value>`. `0` means "derive it"
where a field says so (n_kv_heads, head_dim, n_decoder_layers, type_vocab_size). Resolved values are properties
(kv_heads, dh, decoder_layers, type_vocab, compute_dtype, weight_dtype).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

ARCHS = ("gpt", "bert", "t5")
POSITIONS = ("learned", "sinusoidal", "rope", "alibi", "t5_relative", "none")
NORMS = ("layernorm", "rmsnorm")
NORM_POSITIONS = ("pre", "post")
MLPS = ("relu", "gelu", "swiglu", "geglu", "relu2")
DTYPES = ("float32", "bfloat16", "auto")
PARAM_DTYPES = ("float32", "bfloat16")
ATTENTION_IMPLS = ("xla", "cudnn")
REMATS = ("none", "full", "dots")


class ConfigError(ValueError):
    """A model configuration a user can fix; the message names the field as `model.<field>` and the fix."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Hyperparameters of a GPT, BERT or T5 model (see the module docstring for the conventions)."""

    arch: str = "gpt"  # 'gpt' (decoder-only), 'bert' (encoder-only) or 't5' (encoder-decoder).
    vocab_size: int = 8000  # Token vocabulary size (rows of the embedding table and output columns).
    d_model: int = 128  # Width of the residual stream.
    n_heads: int = 4  # Query heads per attention layer.
    n_kv_heads: int = 0  # Key/value heads (0 = n_heads; fewer gives GQA, 1 gives MQA); must divide n_heads.
    head_dim: int = 0  # Width of one head (0 = d_model // n_heads).
    d_ff: int = 512  # Hidden width of the MLP (of each branch for the gated kinds).
    n_layers: int = 4  # Blocks in gpt/bert; encoder blocks in t5.
    n_decoder_layers: int = 0  # t5 only: decoder blocks (0 = n_layers).
    max_len: int = 128  # Longest sequence (learned-position table size; default KV-cache length).
    position: str = "rope"  # 'learned', 'sinusoidal', 'rope', 'alibi', 't5_relative' or 'none'.
    rel_buckets: int = 32  # t5_relative: number of relative-position buckets.
    rel_max_distance: int = 128  # t5_relative: distance beyond which all positions share the last bucket.
    rope_theta: float = 10000.0  # rope: base of the rotary frequencies.
    norm: str = "layernorm"  # 'layernorm' (mean and variance) or 'rmsnorm' (no mean subtraction, no bias).
    norm_position: str = "pre"  # 'pre' (norm inside the residual branch) or 'post' (norm after the residual add).
    norm_eps: float = 1e-5  # Epsilon added to the variance in every norm.
    final_norm: bool = True  # Norm after the last block of every stack (pre-norm models need it).
    embed_norm: bool = False  # Norm on the summed embeddings before the first block (BERT's embedding LayerNorm).
    qk_norm: bool = False  # Norm queries and keys over head_dim before the scores.
    mlp: str = "gelu"  # MLP kind: 'relu', 'gelu', 'relu2' (relu squared), 'swiglu' or 'geglu' (gated: two inputs).
    gelu_approximate: bool = True  # Tanh approximation of GELU (used by 'gelu', 'geglu' and the MLM transform).
    dropout: float = 0.0  # Dropout on embeddings and on every residual branch output.
    attention_dropout: float = 0.0  # Dropout on attention probabilities.
    use_bias: bool = True  # Biases in dense layers and in LayerNorms.
    tie_embeddings: bool = True  # Output projection is the transposed token embedding table.
    scale_tied_logits: bool = False  # Multiply the final hidden states by d_model**-0.5 before the tied output.
    attention_scale: bool = True  # Divide attention scores by sqrt(head_dim) (T5 does not).
    type_vocab_size: int = 0  # bert only: token-type (segment) embeddings (0 = none, or 2 with nsp_head).
    mlm_transform: bool = False  # bert only: dense + activation + norm before the output projection.
    nsp_head: bool = False  # bert only: pooler (dense + tanh on [CLS]) and next-sentence head (objective.nsp).
    output_bias: bool = False  # Bias on the output projection.
    dtype: str = "float32"  # Compute dtype: 'float32', 'bfloat16' or 'auto' (bfloat16 on accelerators).
    param_dtype: str = "float32"  # Storage dtype of parameters: 'float32' or 'bfloat16'.
    attention_window: int = 0  # Local self-attention: causal keys in (q - n, q], bidirectional |q - k| < n (n - 1 each
    #   side); 0 = full attention.
    attention_pattern: str = ""  # Per-layer 'L' (local, attention_window) / 'G' (global), repeated over each stack's
    #   depth, e.g. 'LLG' ('' = every layer local if attention_window > 0, else global).
    attention_soft_cap: float = 0.0  # Attention scores (position bias included) -> c * tanh(s / c) (0 = off).
    logits_soft_cap: float = 0.0  # Output logits -> c * tanh(logits / c) (0 = off).
    attention_impl: str = "xla"  # 'xla' (einsum attention) or 'cudnn' (fused; falls back to xla off GPU).
    remat: str = "none"  # Rematerialise each block in the backward pass: 'none', 'full' or 'dots'.
    scan_layers: bool = False  # Run the blocks of a stack with nn.scan (params stacked on a 'layers' axis).
    init_std: float = 0.02  # Standard deviation of the normal init of every matrix and embedding.
    pad_id: int = 0  # Padding token id (masked as attention keys in bert and the t5 encoder).

    def __post_init__(self):
        for f in dataclasses.fields(self):
            _check_type(self, f)
        _validate(self)

    # Resolved values.
    @property
    def kv_heads(self) -> int:
        """Key/value heads after resolving 0 to n_heads."""
        return self.n_kv_heads or self.n_heads

    @property
    def dh(self) -> int:
        """Head width after resolving 0 to d_model // n_heads."""
        return self.head_dim or self.d_model // self.n_heads

    @property
    def decoder_layers(self) -> int:
        """t5 decoder blocks after resolving 0 to n_layers."""
        return self.n_decoder_layers or self.n_layers

    @property
    def type_vocab(self) -> int:
        """bert token types after resolving 0 to 2 with nsp_head (segments A and B) and to none otherwise."""
        return self.type_vocab_size or (2 if self.nsp_head else 0)

    def local_layer(self, i: int) -> bool:
        """Whether block i of a stack (encoder and decoder count from 0 each) has local self-attention."""
        if not self.attention_pattern:
            return self.attention_window > 0
        return self.attention_pattern[i % len(self.attention_pattern)] == "L"

    @property
    def compute_dtype(self):
        """The jnp compute dtype ('auto' resolved against the default backend)."""
        return jnp.dtype(resolve_dtype(self.dtype))

    @property
    def weight_dtype(self):
        """The jnp parameter dtype."""
        return jnp.dtype(self.param_dtype)

    def replace(self, **changes: Any) -> ModelConfig:
        """A copy with `changes` applied (validated again)."""
        _check_keys(changes)
        return dataclasses.replace(self, **changes)


_TYPES = {"int": int, "float": float, "str": str, "bool": bool}


def _check_type(cfg: ModelConfig, f: dataclasses.Field) -> None:
    want = _TYPES[f.type if isinstance(f.type, str) else f.type.__name__]
    v = getattr(cfg, f.name)
    if want is float and type(v) is int:
        object.__setattr__(cfg, f.name, float(v))
        return
    if (want is not bool and isinstance(v, bool)) or not isinstance(v, want):
        raise ConfigError(
            f"model.{f.name}={v!r} has type {type(v).__name__}: it must be a {want.__name__}")


def _fail(msg: str) -> None:
    raise ConfigError(msg)


def _choice(cfg: ModelConfig, name: str, choices: tuple[str, ...]) -> None:
    v = getattr(cfg, name)
    if v not in choices:
        _fail(f"model.{name}={v!r} is not valid: choose one of {', '.join(map(repr, choices))}")


def _validate(c: ModelConfig) -> None:
    for name, choices in (("arch", ARCHS), ("position", POSITIONS), ("norm", NORMS),
                          ("norm_position", NORM_POSITIONS), ("mlp", MLPS), ("dtype", DTYPES),
                          ("param_dtype", PARAM_DTYPES), ("attention_impl", ATTENTION_IMPLS),
                          ("remat", REMATS)):
        _choice(c, name, choices)
    for name in ("vocab_size", "d_model", "n_heads", "d_ff", "n_layers", "max_len"):
        if getattr(c, name) <= 0:
            _fail(f"model.{name}={getattr(c, name)} must be positive")
    for name in ("n_kv_heads", "head_dim", "n_decoder_layers", "type_vocab_size"):
        if getattr(c, name) < 0:
            _fail(f"model.{name}={getattr(c, name)} must be >= 0 (0 = derive it)")
    if c.attention_window < 0:
        _fail(f"model.attention_window={c.attention_window} must be >= 0 (0 = full attention)")
    if c.attention_pattern and set(c.attention_pattern) - set("LG"):
        _fail(f"model.attention_pattern={c.attention_pattern!r} may hold only 'L' (local) and 'G' (global), "
              f"e.g. 'LLG'")
    if "L" in c.attention_pattern and not c.attention_window:
        _fail(f"model.attention_pattern={c.attention_pattern!r} has local layers but model.attention_window=0: "
              f"set the window, e.g. model.attention_window=64")
    for name in ("attention_soft_cap", "logits_soft_cap"):
        if getattr(c, name) < 0:
            _fail(f"model.{name}={getattr(c, name)} must be >= 0 (0 = off)")
    if c.n_heads % c.kv_heads:
        _fail(f"model.n_kv_heads={c.n_kv_heads} does not divide model.n_heads={c.n_heads}: "
              f"choose a divisor of n_heads (1 = multi-query) or 0 for n_heads")
    if not c.head_dim and c.d_model % c.n_heads:
        _fail(f"model.d_model={c.d_model} is not divisible by model.n_heads={c.n_heads}: "
              f"choose d_model a multiple of n_heads or set model.head_dim")
    if c.position == "rope" and c.dh % 2:
        _fail(f"model.position='rope' needs an even head width, got {c.dh}: change model.head_dim "
              f"(or model.d_model / model.n_heads)")
    if c.position == "sinusoidal" and c.d_model % 2:
        _fail(f"model.position='sinusoidal' needs an even model.d_model, got {c.d_model}")
    if c.position == "t5_relative":
        if c.rel_buckets < 4 or c.rel_buckets % 2:
            _fail(f"model.rel_buckets={c.rel_buckets} must be an even number >= 4")
        if c.rel_max_distance <= c.rel_buckets // 2:
            _fail(f"model.rel_max_distance={c.rel_max_distance} must exceed model.rel_buckets // 2 = "
                  f"{c.rel_buckets // 2}")
    if c.rope_theta <= 0:
        _fail(f"model.rope_theta={c.rope_theta} must be positive")
    if c.norm_eps <= 0:
        _fail(f"model.norm_eps={c.norm_eps} must be positive (e.g. 1e-5)")
    if c.init_std <= 0:
        _fail(f"model.init_std={c.init_std} must be positive (e.g. 0.02)")
    for name in ("dropout", "attention_dropout"):
        if not 0.0 <= getattr(c, name) < 1.0:
            _fail(f"model.{name}={getattr(c, name)} must be in [0, 1)")
    if c.arch != "t5" and c.n_decoder_layers:
        _fail(f"model.n_decoder_layers={c.n_decoder_layers} only applies to model.arch='t5' "
              f"(got arch={c.arch!r}): set it to 0 and use model.n_layers")
    if c.arch != "bert" and c.type_vocab_size:
        _fail(f"model.type_vocab_size={c.type_vocab_size} only applies to model.arch='bert': set it to 0")
    if c.arch != "bert" and c.mlm_transform:
        _fail("model.mlm_transform=True only applies to model.arch='bert': set it to False")
    if c.arch != "bert" and c.nsp_head:
        _fail(f"model.nsp_head=True (next-sentence prediction, set by objective.nsp) only applies to "
              f"model.arch='bert', not {c.arch!r}: set objective.nsp=False")
    if c.scale_tied_logits and not c.tie_embeddings:
        _fail("model.scale_tied_logits=True needs model.tie_embeddings=True: set scale_tied_logits=False")
    if not 0 <= c.pad_id < c.vocab_size:
        _fail(f"model.pad_id={c.pad_id} must be a token id in [0, model.vocab_size={c.vocab_size})")


def resolve_dtype(dtype: str) -> str:
    """'auto' -> 'float32' on CPU, 'bfloat16' on accelerators; other names unchanged."""
    if dtype != "auto":
        return dtype
    return "float32" if jax.default_backend() == "cpu" else "bfloat16"


def _check_keys(d: Mapping[str, Any]) -> None:
    valid = [f.name for f in dataclasses.fields(ModelConfig)]
    unknown = sorted(set(d) - set(valid))
    if unknown:
        raise ConfigError(f"unknown model config field(s) {', '.join('model.' + k for k in unknown)}; "
                          f"valid fields: {', '.join(valid)}")


def from_dict(d: Any, **overrides: Any) -> ModelConfig:
    """ModelConfig from a mapping or ConfigDict (e.g. `config.model`), with `overrides` applied last.

    Unknown keys raise ConfigError; dtype 'auto' is resolved against jax.default_backend().
    """
    if hasattr(d, "to_dict"):
        d = d.to_dict()
    d = {**dict(d), **overrides}
    _check_keys(d)
    if "dtype" in d:
        d["dtype"] = resolve_dtype(d["dtype"])
    return ModelConfig(**d)


_OURS = dict(position="rope", norm="layernorm", norm_position="pre", norm_eps=1e-5, mlp="gelu",
             gelu_approximate=True, use_bias=True, tie_embeddings=True, final_norm=True, dropout=0.0,
             attention_dropout=0.0, dtype="float32", vocab_size=8000)
_SIZES = {
    "tiny": dict(d_model=128, n_heads=4, d_ff=512, n_layers=4, max_len=128),
    "small": dict(d_model=384, n_heads=6, d_ff=1536, n_layers=6, max_len=256),
}
_T5_COMMON = dict(arch="t5", vocab_size=32128, d_model=512, head_dim=64, max_len=512, position="t5_relative",
                  rel_buckets=32, rel_max_distance=128, norm="rmsnorm", norm_position="pre", norm_eps=1e-6,
                  final_norm=True, use_bias=False, attention_scale=False, dropout=0.1, attention_dropout=0.1,
                  init_std=0.02, pad_id=0)
_PUBLISHED = {
    "gpt2": dict(arch="gpt", vocab_size=50257, d_model=768, n_heads=12, d_ff=3072, n_layers=12, max_len=1024,
                 position="learned", norm="layernorm", norm_position="pre", norm_eps=1e-5, final_norm=True,
                 mlp="gelu", gelu_approximate=True, use_bias=True, tie_embeddings=True, output_bias=False,
                 dropout=0.1, attention_dropout=0.1, pad_id=0),
    "bert-base": dict(arch="bert", vocab_size=30522, d_model=768, n_heads=12, d_ff=3072, n_layers=12,
                      max_len=512, type_vocab_size=2, position="learned", norm="layernorm", norm_position="post",
                      norm_eps=1e-12, final_norm=False, embed_norm=True, mlp="gelu", gelu_approximate=False,
                      use_bias=True, tie_embeddings=True, mlm_transform=True, output_bias=True, dropout=0.1,
                      attention_dropout=0.1, pad_id=0),
    "t5-small": dict(_T5_COMMON, n_heads=8, d_ff=2048, n_layers=6, n_decoder_layers=6, mlp="relu",
                     tie_embeddings=True, scale_tied_logits=True),
    "t5.1.1-small": dict(_T5_COMMON, n_heads=6, d_ff=1024, n_layers=8, n_decoder_layers=8, mlp="geglu",
                         gelu_approximate=True, tie_embeddings=False, scale_tied_logits=False),
}
PRESETS = tuple(_PUBLISHED) + tuple(_SIZES)


def preset(name: str, arch: str | None = None) -> ModelConfig:
    """A named config: published architectures ('gpt2', 'bert-base', 't5-small', 't5.1.1-small'; arch implied)
    or our training sizes ('tiny', 'small'; arch required, same layer choices for every arch)."""
    if name in _PUBLISHED:
        fields = _PUBLISHED[name]
        if arch is not None and arch != fields["arch"]:
            raise ConfigError(f"preset {name!r} is a model.arch={fields['arch']!r} model, not {arch!r}: "
                              f"drop arch or pick a {arch} preset")
        return ModelConfig(**fields)
    if name in _SIZES:
        if arch not in ARCHS:
            raise ConfigError(f"preset {name!r} needs model.arch, one of {', '.join(map(repr, ARCHS))}; "
                              f"got {arch!r}")
        fields = dict(_OURS, **_SIZES[name], arch=arch)
        if arch == "t5":  # Same total depth, split between encoder and decoder.
            fields.update(n_layers=fields["n_layers"] // 2, n_decoder_layers=fields["n_layers"] // 2)
        return ModelConfig(**fields)
    raise ConfigError(f"unknown model preset {name!r}: choose one of {', '.join(PRESETS)}")


# Fields a training run sets for itself, which leave a published architecture what it is: the vocabulary and the
# longest sequence (the run's tokenizer and data.seq_len), the NSP head (objective.nsp), the padding id, and
# regularisation, initialisation and implementation settings. Every other field must equal the preset's.
RUN_FIELDS = ("vocab_size", "max_len", "nsp_head", "pad_id", "dropout", "attention_dropout", "init_std", "dtype",
              "param_dtype", "attention_impl", "remat", "scan_layers")


def _architecture(cfg: ModelConfig) -> dict[str, Any]:
    """The fields outside RUN_FIELDS, with the derived ones resolved (n_kv_heads=0 and =n_heads are one model)."""
    d = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name not in RUN_FIELDS}
    return {**d, "n_kv_heads": cfg.kv_heads, "head_dim": cfg.dh, "n_decoder_layers": cfg.decoder_layers,
            "type_vocab_size": cfg.type_vocab}


def published_match(cfg: ModelConfig) -> str | None:
    """The published preset ('gpt2', ...) whose architecture `cfg` is, up to RUN_FIELDS; None if none."""
    arch = _architecture(cfg)
    return next((name for name in _PUBLISHED if _architecture(preset(name)) == arch), None)

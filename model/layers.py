"""The layers every model shares: Dense, Embed, Norm, Mlp, Attention and the OutputHead.

Shape letters: B batch, L length (query), S key/encoder length, D model, H heads, K kv heads, Dh head dim,
F mlp hidden, V vocab. Parameters carry logical axis names (model/sharding.py); softmax and norms run in float32.
"""

from __future__ import annotations

import logging
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from model import positions as pos
from model.config import ModelConfig

log = logging.getLogger(__name__)
_warned: set[str] = set()


def _warn_once(msg: str) -> None:
    if msg not in _warned:
        _warned.add(msg)
        log.warning(msg)


def _init(cfg: ModelConfig, axes: tuple[str | None, ...], kind: str = "normal"):
    init = {"normal": nn.initializers.normal(cfg.init_std), "zeros": nn.initializers.zeros,
            "ones": nn.initializers.ones}[kind]
    return nn.with_logical_partitioning(init, axes)


def activation(cfg: ModelConfig):
    """The elementwise non-linearity of cfg.mlp (the gate's for the gated kinds)."""
    if cfg.mlp == "relu":
        return nn.relu
    if cfg.mlp == "relu2":  # Squared ReLU (So et al. 2021, Primer; modded-nanogpt, nanochat).
        return lambda x: jnp.square(nn.relu(x))
    if cfg.mlp == "swiglu":
        return nn.silu
    return lambda x: nn.gelu(x, approximate=cfg.gelu_approximate)


class Dense(nn.Module):
    """y = x . kernel (+ bias), contracting the last `n_in` axes of x; `axes` names the kernel's axes."""

    cfg: ModelConfig
    features: tuple[int, ...]
    axes: tuple[str | None, ...]
    n_in: int = 1
    bias: bool = True
    float32_out: bool = False  # Accumulate and return float32 whatever the compute dtype (output logits).

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg, dt = self.cfg, self.cfg.compute_dtype
        kernel = self.param("kernel", _init(cfg, self.axes), x.shape[x.ndim - self.n_in:] + self.features,
                            cfg.weight_dtype)
        # As one (tokens, in) x (in, out) matmul: on CPU, XLA transposes a 2-D gradient for the kernel's
        # gradient far faster than the same (B, L, ...) one (docs/performance.md); the values are the same.
        lead, n_in = x.shape[:x.ndim - self.n_in], math.prod(kernel.shape[:self.n_in])
        y = jnp.dot(x.reshape(-1, n_in).astype(dt), kernel.reshape(n_in, -1).astype(dt),
                    preferred_element_type=jnp.float32 if self.float32_out else None)
        y = y.reshape(lead + self.features)
        if self.bias:
            b = self.param("bias", _init(cfg, self.axes[self.n_in:], "zeros"), self.features, cfg.weight_dtype)
            y = y + b.astype(dt)
        return y


class Embed(nn.Module):
    """A (num, D) embedding table: `__call__` looks ids up, `attend` is the tied output projection."""

    cfg: ModelConfig
    num: int
    axes: tuple[str, str] = ("vocab", "embed")

    def setup(self):
        self.embedding = self.param("embedding", _init(self.cfg, self.axes), (self.num, self.cfg.d_model),
                                    self.cfg.weight_dtype)

    def __call__(self, ids_BxL: jax.Array) -> jax.Array:
        return jnp.take(self.embedding, ids_BxL, axis=0).astype(self.cfg.compute_dtype)


class Norm(nn.Module):
    """LayerNorm (mean, variance, scale, bias if cfg.use_bias) or RMSNorm (scale only), in float32."""

    cfg: ModelConfig
    axis_name: str = "norm"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.cfg
        x32 = x.astype(jnp.float32)
        if cfg.norm == "layernorm":
            x32 = x32 - jnp.mean(x32, axis=-1, keepdims=True)
        y = x32 * lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + cfg.norm_eps)
        scale = self.param("scale", _init(cfg, (self.axis_name,), "ones"), x.shape[-1:], cfg.weight_dtype)
        y = y * scale.astype(jnp.float32)
        if cfg.norm == "layernorm" and cfg.use_bias:
            y = y + self.param("bias", _init(cfg, (self.axis_name,), "zeros"), x.shape[-1:],
                               cfg.weight_dtype).astype(jnp.float32)
        return y.astype(cfg.compute_dtype)


class Mlp(nn.Module):
    """D -> F -> D with cfg.mlp: 'relu'/'gelu' (wi, wo) or gated 'swiglu'/'geglu' (act(wi_0) * wi_1, wo)."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, x_BxLxD: jax.Array, train: bool = False) -> jax.Array:
        cfg = self.cfg
        act = activation(cfg)
        up = lambda name: Dense(cfg, (cfg.d_ff,), ("embed", "mlp"), bias=cfg.use_bias, name=name)(x_BxLxD)
        if cfg.mlp in ("swiglu", "geglu"):
            h_BxLxF = act(up("wi_0")) * up("wi_1")
        else:
            h_BxLxF = act(up("wi"))
        return Dense(cfg, (cfg.d_model,), ("mlp", "embed"), bias=cfg.use_bias, name="wo")(h_BxLxF)


def soft_cap(x: jax.Array, cap: float) -> jax.Array:
    """cap * tanh(x / cap) (Gemma 2's logit soft-capping); x unchanged for cap 0."""
    return cap * jnp.tanh(x / cap) if cap else x


def dot_product_attention(q_BxLxHxDh, k_BxSxKxDh, v_BxSxKxDh, mask, bias, *, scale: float,
                          dropout=None, record=None, cap: float = 0.0) -> jax.Array:
    """softmax(soft_cap(q.k * scale + bias, cap), masked) . v with K kv heads shared by H // K query heads each.

    mask: bool broadcastable to (B, 1, L, S), True = attend; bias: float broadcastable to (B, H, L, S);
    dropout: optional callable applied to the float32 probabilities; record: optional callable given the float32
    (B, H, L, S) probabilities before dropout (attention maps).
    """
    B, L, H, Dh = q_BxLxHxDh.shape
    S, K = k_BxSxKxDh.shape[1], k_BxSxKxDh.shape[2]
    G = H // K
    q_BxLxKxGxDh = q_BxLxHxDh.reshape(B, L, K, G, Dh)
    s_BxKxGxLxS = jnp.einsum("blkgd,bskd->bkgls", q_BxLxKxGxDh, k_BxSxKxDh, preferred_element_type=jnp.float32)
    s_BxHxLxS = s_BxKxGxLxS.reshape(B, H, L, S) * scale
    if bias is not None:
        s_BxHxLxS = s_BxHxLxS + bias.astype(jnp.float32)
    s_BxHxLxS = soft_cap(s_BxHxLxS, cap)
    if mask is not None:
        s_BxHxLxS = jnp.where(mask, s_BxHxLxS, jnp.finfo(jnp.float32).min)
    p_BxHxLxS = jax.nn.softmax(s_BxHxLxS, axis=-1)
    if record is not None:
        record(p_BxHxLxS)
    if dropout is not None:
        p_BxHxLxS = dropout(p_BxHxLxS)
    p_BxKxGxLxS = p_BxHxLxS.astype(v_BxSxKxDh.dtype).reshape(B, K, G, L, S)
    o_BxLxKxGxDh = jnp.einsum("bkgls,bskd->blkgd", p_BxKxGxLxS, v_BxSxKxDh)
    return o_BxLxKxGxDh.reshape(B, L, H, Dh)


class Attention(nn.Module):
    """Multi-head attention of q_inputs over kv_inputs: self- (kv_inputs is q_inputs) or cross-attention.

    Self-attention applies rope at `positions` and, with decode=True, keeps a KV cache in the 'cache'
    collection ('cached_key', 'cached_value', 'cache_index'); the mask then covers the whole cache. Applied with
    mutable=['intermediates'], it sows its (B, H, L, S) attention probabilities as 'attention_weights'.
    """

    cfg: ModelConfig
    cross: bool = False  # Keys/values come from the encoder: no rope, no cache.

    @nn.compact
    def __call__(self, q_inputs: jax.Array, kv_inputs: jax.Array, mask: jax.Array | None = None,
                 bias: jax.Array | None = None, *, positions: jax.Array | None = None, decode: bool = False,
                 train: bool = False) -> jax.Array:
        cfg = self.cfg
        H, K, Dh = cfg.n_heads, cfg.kv_heads, cfg.dh
        proj = lambda name, n, heads_axis, x: Dense(cfg, (n, Dh), ("embed", heads_axis, "head_dim"),
                                                    bias=cfg.use_bias, name=name)(x)
        q_BxLxHxDh = proj("query", H, "heads", q_inputs)
        k_BxSxKxDh = proj("key", K, "kv_heads", kv_inputs)
        v_BxSxKxDh = proj("value", K, "kv_heads", kv_inputs)
        if cfg.qk_norm:
            q_BxLxHxDh = Norm(cfg, "head_dim", name="query_norm")(q_BxLxHxDh)
            k_BxSxKxDh = Norm(cfg, "head_dim", name="key_norm")(k_BxSxKxDh)
        if cfg.position == "rope" and not self.cross:
            if positions is None:
                positions = jnp.arange(q_inputs.shape[1])[None]
            q_BxLxHxDh = pos.apply_rope(q_BxLxHxDh, positions, cfg.rope_theta)
            k_BxSxKxDh = pos.apply_rope(k_BxSxKxDh, positions, cfg.rope_theta)
        if decode and not self.cross:
            k_BxSxKxDh, v_BxSxKxDh = self._cache(k_BxSxKxDh, v_BxSxKxDh)

        dropout = None
        if train and cfg.attention_dropout > 0:
            dropout = lambda p: nn.Dropout(cfg.attention_dropout)(p, deterministic=False)
        scale = Dh**-0.5 if cfg.attention_scale else 1.0
        o_BxLxHxDh = self._attend(q_BxLxHxDh, k_BxSxKxDh, v_BxSxKxDh, mask, bias, scale, dropout)
        return Dense(cfg, (cfg.d_model,), ("heads", "head_dim", "embed"), n_in=2, bias=cfg.use_bias,
                     name="out")(o_BxLxHxDh)

    def _cache(self, k_BxLxKxDh, v_BxLxKxDh):
        """Write this call's keys/values at the cache index; return the whole cache (the init call: as is)."""
        initialized = self.has_variable("cache", "cached_key")
        ck = self.variable("cache", "cached_key", jnp.zeros, k_BxLxKxDh.shape, k_BxLxKxDh.dtype)
        cv = self.variable("cache", "cached_value", jnp.zeros, v_BxLxKxDh.shape, v_BxLxKxDh.dtype)
        ci = self.variable("cache", "cache_index", lambda: jnp.zeros((), jnp.int32))
        if not initialized:
            return k_BxLxKxDh, v_BxLxKxDh
        i = ci.value
        ck.value = lax.dynamic_update_slice(ck.value, k_BxLxKxDh.astype(ck.value.dtype), (0, i, 0, 0))
        cv.value = lax.dynamic_update_slice(cv.value, v_BxLxKxDh.astype(cv.value.dtype), (0, i, 0, 0))
        ci.value = i + k_BxLxKxDh.shape[1]
        return ck.value, cv.value

    def _attend(self, q, k, v, mask, bias, scale, dropout):
        if self.is_mutable_collection("intermediates"):  # Attention maps asked for: sow the xla probabilities.
            record = lambda p_BxHxLxS: self.sow("intermediates", "attention_weights", p_BxHxLxS)
            return dot_product_attention(q, k, v, mask, bias, scale=scale, dropout=dropout, record=record,
                                         cap=self.cfg.attention_soft_cap)
        if self.cfg.attention_impl == "cudnn":
            why = None
            if jax.default_backend() != "gpu":
                why = f"backend is {jax.default_backend()!r}"
            elif q.dtype not in (jnp.bfloat16, jnp.float16):
                why = f"cudnn needs bfloat16/float16 inputs, compute dtype is {q.dtype}"
            elif dropout is not None:
                why = "cudnn attention has no attention dropout"
            elif self.cfg.attention_soft_cap:
                why = "cudnn attention has no soft cap (model.attention_soft_cap)"
            if why is None:
                b = None if bias is None else jnp.broadcast_to(bias, (q.shape[0], q.shape[2]) + bias.shape[2:])
                m = None if mask is None else jnp.broadcast_to(mask, (q.shape[0], 1) + mask.shape[2:])
                return jax.nn.dot_product_attention(q, k, v, bias=None if b is None else b.astype(q.dtype),
                                                    mask=m, scale=scale, implementation="cudnn")
            _warn_once(f"model.attention_impl='cudnn' unavailable ({why}); using the xla attention")
        return dot_product_attention(q, k, v, mask, bias, scale=scale, dropout=dropout,
                                     cap=self.cfg.attention_soft_cap)


class OutputHead(nn.Module):
    """Hidden states -> float32 logits: optional MLM transform, tied (table given) or untied projection, bias,
    soft cap."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, x_BxLxD: jax.Array, table_VxD: jax.Array | None = None) -> jax.Array:
        cfg, dt = self.cfg, self.cfg.compute_dtype
        if cfg.mlm_transform:  # BERT: dense D*D + D, activation, norm 2D.
            x_BxLxD = Dense(cfg, (cfg.d_model,), ("embed", "mlp"), bias=cfg.use_bias, name="transform")(x_BxLxD)
            x_BxLxD = Norm(cfg, name="transform_norm")(activation(cfg)(x_BxLxD))
        if table_VxD is not None:
            if cfg.scale_tied_logits:
                x_BxLxD = x_BxLxD * cfg.d_model**-0.5
            x_NxD = x_BxLxD.reshape(-1, cfg.d_model).astype(dt)  # 2-D, as in Dense
            logits_BxLxV = jnp.dot(x_NxD, table_VxD.astype(dt).T, preferred_element_type=jnp.float32).reshape(
                x_BxLxD.shape[:-1] + table_VxD.shape[:1])
        else:
            logits_BxLxV = Dense(cfg, (cfg.vocab_size,), ("embed", "vocab"), bias=False, float32_out=True,
                                 name="lm_head")(x_BxLxD)
        logits_BxLxV = logits_BxLxV.astype(jnp.float32)
        if cfg.output_bias:
            logits_BxLxV = logits_BxLxV + self.param("bias", _init(cfg, ("vocab",), "zeros"), (cfg.vocab_size,),
                                                     cfg.weight_dtype).astype(jnp.float32)
        return soft_cap(logits_BxLxV, cfg.logits_soft_cap)

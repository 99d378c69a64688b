"""Analytic parameter counts and FLOPs of a ModelConfig: pure arithmetic, no JAX, no initialisation.

Parameters: `param_count` equals the number of scalars in the real parameter tree of `model.build(cfg)` (checked
against `jax.eval_shape(model.init)` in tests/test_flops.py); `param_breakdown` splits it by module path.

FLOP conventions (`flops_per_example`, `flops_per_token`, `training_flops_per_step`):
- Only matrix multiplications are counted, each (m x k) . (k x n) as 2*m*k*n. Embedding lookups, position
  tables, biases, norms, softmax, masking, activations, rope and dropout are not matmuls and are ignored
  (XLA's cost analysis counts them too: about 1% more at d_model 256, L 128, V 2000; see tests).
- Dense: query H*Dh and key/value K*Dh projections (GQA), output projection, MLP (gated kinds: three matrices),
  BERT's MLM transform, cross-attention: queries from the T decoder tokens, keys/values from the S encoder tokens.
- Attention: scores q.k and the weighted sum p.v, 2 * 2 * Lq * Lk * H * Dh per layer per sequence. `attention`
  (and forward, train, the budgets and `mfu`) counts the FULL Lq x Lk square of every layer, as the einsum
  attention computes it: causal, local (model.attention_window, model.attention_pattern) and document masks only
  hide scores. `attention_causal` / `forward_causal` (and `mfu_causal`, as MaxText counts) count only the pairs a
  query attends to: k <= q in causal stacks (L*(L+1)/2 pairs), and in local layers only the keys inside the
  window (causal: min(q + 1, n) per query; bidirectional: |q - k| < n). Document masks are data, not counted.
- Head: the vocabulary projection 2*D*V at every position of the model's output (all L positions for gpt/bert,
  all T decoder positions for t5), whatever the loss weights; with BERT's nsp_head also the pooler 2*D*D and the
  next-sentence projection 2*D*2, once per example (on [CLS]). This is the count of budgets and plans. MLM
  training computes the head at its K predicted positions alone (model/bert.py predict_at): `predicted=K` counts
  that, the FLOPs the step executes, which is what MFU divides.
- Optimizer: `newton_schulz_flops`, the matrix work of an orthogonalising optimizer (Muon) on the hidden matrices
  (`hidden_matrices`: every dense kernel inside a block, in the (in, out) shape it multiplies by), once per step
  whatever the batch; elementwise optimizer work (Adam's moments) is not a matmul and is not counted.
- Training = 3 x forward (the backward pass costs twice the forward: gradients w.r.t. activations and weights).
  Rematerialisation (model.remat) recomputes the forward and is NOT included: these are model FLOPs, not
  hardware FLOPs.
- Per token: per example / tokens per example, where tokens per example is L for gpt/bert and S + T (encoder
  plus decoder positions) for t5. A step costs `training_flops_per_step` = 3 * forward per example * batch.
"""

from __future__ import annotations

from model.config import ModelConfig

_GATED = ("swiglu", "geglu")


# ---------------------------------------------------------------------------------------------- parameters


def _norm(cfg: ModelConfig, d: int) -> int:
    """LayerNorm: scale (+ bias if use_bias); RMSNorm: scale."""
    return d * (2 if cfg.norm == "layernorm" and cfg.use_bias else 1)


def _dense(cfg: ModelConfig, n_in: int, n_out: int) -> int:
    return n_in * n_out + (n_out if cfg.use_bias else 0)


def _attention_params(cfg: ModelConfig) -> int:
    D, H, K, Dh = cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.dh
    n = _dense(cfg, D, H * Dh) + 2 * _dense(cfg, D, K * Dh) + _dense(cfg, H * Dh, D)
    if cfg.qk_norm:
        n += 2 * _norm(cfg, Dh)
    return n


def _mlp_params(cfg: ModelConfig) -> int:
    n_up = 2 if cfg.mlp in _GATED else 1
    return n_up * _dense(cfg, cfg.d_model, cfg.d_ff) + _dense(cfg, cfg.d_ff, cfg.d_model)


def _block_groups(cfg: ModelConfig, cross: bool) -> list[tuple[str, int]]:
    """(submodule, count) of one Block, in the order the block runs them."""
    norm = _norm(cfg, cfg.d_model)
    out = [("self_attention", _attention_params(cfg)), ("self_attention_norm", norm)]
    if cross:
        out += [("cross_attention", _attention_params(cfg)), ("cross_attention_norm", norm)]
    return out + [("mlp", _mlp_params(cfg)), ("mlp_norm", norm)]


def _stack_groups(cfg: ModelConfig, name: str, n_layers: int, cross: bool, per_layer: bool) -> list[tuple[str, int]]:
    D = cfg.d_model
    out = []
    if cfg.position == "learned":
        out.append((f"{name}/position_embedding", cfg.max_len * D))
    if cfg.embed_norm:
        out.append((f"{name}/embed_norm", _norm(cfg, D)))
    if cfg.position == "t5_relative":  # One table per stack, shared by its layers.
        out.append((f"{name}/relative_bias", cfg.rel_buckets * cfg.n_heads))
    block = _block_groups(cfg, cross)
    if cfg.scan_layers:  # nn.scan stacks every layer's parameters under one 'layers' module.
        out += [(f"{name}/layers/{sub}", n_layers * n) for sub, n in block]
    elif per_layer:
        out += [(f"{name}/layer_{i}/{sub}", n) for i in range(n_layers) for sub, n in block]
    else:
        out += [(f"{name}/layer_*/{sub}", n_layers * n) for sub, n in block]
    if cfg.final_norm:
        out.append((f"{name}/final_norm", _norm(cfg, D)))
    return out


def _head_groups(cfg: ModelConfig) -> list[tuple[str, int]]:
    D, V = cfg.d_model, cfg.vocab_size
    out = []
    if cfg.mlm_transform:
        out += [("head/transform", _dense(cfg, D, D)), ("head/transform_norm", _norm(cfg, D))]
    if not cfg.tie_embeddings:
        out.append(("head/lm_head", D * V))  # No bias on the projection itself; see output_bias.
    if cfg.output_bias:
        out.append(("head/bias", V))
    if cfg.nsp_head:
        out += [("pooler", _dense(cfg, D, D)), ("nsp", _dense(cfg, D, 2))]
    return out


def param_breakdown(cfg: ModelConfig, per_layer: bool = False) -> list[tuple[str, int]]:
    """(module path, parameter count) per module group, summing to `param_count(cfg)`.

    Paths are those of the parameter tree ('decoder/layer_3/mlp'); with per_layer=False the layers of a stack are
    merged into one row per submodule, written 'decoder/layer_*/mlp' ('decoder/layers/mlp' under scan_layers).
    Zero-size groups are left out.
    """
    out = [("embed", cfg.vocab_size * cfg.d_model)]
    if cfg.arch == "bert" and cfg.type_vocab:
        out.append(("type_embed", cfg.type_vocab * cfg.d_model))
    if cfg.arch == "gpt":
        out += _stack_groups(cfg, "decoder", cfg.n_layers, cross=False, per_layer=per_layer)
    elif cfg.arch == "bert":
        out += _stack_groups(cfg, "encoder", cfg.n_layers, cross=False, per_layer=per_layer)
    else:
        out += _stack_groups(cfg, "encoder", cfg.n_layers, cross=False, per_layer=per_layer)
        out += _stack_groups(cfg, "decoder", cfg.decoder_layers, cross=True, per_layer=per_layer)
    out += _head_groups(cfg)
    return [(path, n) for path, n in out if n]


def param_count(cfg: ModelConfig) -> int:
    """Scalars in the parameter tree of `model.build(cfg)` (every stored parameter, tied tables once)."""
    return sum(n for _, n in param_breakdown(cfg))


def matmul_param_count(cfg: ModelConfig) -> int:
    """Weights used as matmul operands once per token: every kernel plus the output projection (the tied table
    counts here as the head). Excludes biases, norms, position tables and the embedding lookup; the 'N' of the
    6N rule: for gpt/bert, forward `dense + head` FLOPs per token are exactly 2 * this (plus, with nsp_head, the
    once-per-example pooler and NSP matmuls, which are not per-token weights and are left out here)."""
    D, H, K, Dh, F = cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.dh, cfg.d_ff
    attn = D * (H + 2 * K) * Dh + H * Dh * D
    mlp = (3 if cfg.mlp in _GATED else 2) * D * F
    enc = cfg.n_layers * (attn + mlp)
    dec = cfg.decoder_layers * (2 * attn + mlp) if cfg.arch == "t5" else 0
    head = D * cfg.vocab_size + (D * D if cfg.mlm_transform else 0)
    return enc + dec + head


# ---------------------------------------------------------------------------------------------- FLOPs


def _lengths(cfg: ModelConfig, seq_len: int, target_len: int | None) -> tuple[int, int]:
    """(S, T): encoder/only-stack length and t5 decoder length (0 for gpt/bert), validated."""
    if seq_len <= 0:
        raise ValueError(f"seq_len={seq_len} must be positive")
    if cfg.arch == "t5":
        if not target_len or target_len <= 0:
            raise ValueError("t5 needs target_len (the decoder length T) > 0; derive it from the span-corruption "
                             "settings (data.spans.random_spans_helper) when data.target_len is 0")
        return seq_len, target_len
    if target_len:
        raise ValueError(f"target_len={target_len} only applies to model.arch='t5' (got {cfg.arch!r}): pass 0")
    return seq_len, 0


def _attn_proj(cfg: ModelConfig, q_tokens: int, kv_tokens: int) -> int:
    """Q/K/V/out projection FLOPs of one attention layer over q_tokens queries and kv_tokens keys."""
    D, H, K, Dh = cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.dh
    return 2 * q_tokens * D * H * Dh * 2 + 2 * kv_tokens * D * K * Dh * 2  # (query + out) + (key + value)


def _attn_core(cfg: ModelConfig, pairs: int) -> int:
    """Scores and value-sum FLOPs for `pairs` (query, key) pairs: 2 matmuls x 2 x pairs x H x Dh."""
    return 2 * 2 * pairs * cfg.n_heads * cfg.dh


def _mlp(cfg: ModelConfig, tokens: int) -> int:
    return 2 * tokens * cfg.d_model * cfg.d_ff * (3 if cfg.mlp in _GATED else 2)


def attended_pairs(L: int, causal: bool, window: int = 0) -> int:
    """(query, key) pairs of one L-token self-attention that are not masked: all L*L, or k <= q if causal, and
    within a local window of n (causal: q - n < k <= q; bidirectional: |q - k| < n) if window = n > 0."""
    if not window or window >= L:
        return L * (L + 1) // 2 if causal else L * L
    n = window
    causal_pairs = n * (n + 1) // 2 + (L - n) * n  # queries q < n see q + 1 keys, the rest n
    return causal_pairs if causal else 2 * causal_pairs - L  # both sides of each query, itself once


def _self_attention(cfg: ModelConfig, n_layers: int, L: int, causal: bool) -> tuple[int, int]:
    """(full-square, attended) attention FLOPs of a stack's n_layers self-attentions over L tokens."""
    full = n_layers * _attn_core(cfg, L * L)
    attended = sum(_attn_core(cfg, attended_pairs(L, causal, cfg.attention_window if cfg.local_layer(i) else 0))
                   for i in range(n_layers))
    return full, attended


def flops_per_example(cfg: ModelConfig, seq_len: int, target_len: int | None = None,
                      predicted: int | None = None) -> dict[str, float]:
    """Forward/training matmul FLOPs of one example (see the module docstring for what is counted).

    seq_len is L for gpt/bert and the encoder length S for t5; target_len is the t5 decoder length T; predicted
    (bert) the positions the MLM head runs on (None = all L).
    Keys: tokens (L or S + T), dense, attention (full squares), attention_causal (only the pairs attended: key <=
    query in causal stacks, within the window in local layers), head (MLM transform + vocabulary projection + NSP
    pooler and projection), forward = dense + attention + head, forward_causal = dense + attention_causal + head,
    train = 3 * forward.
    """
    S, T = _lengths(cfg, seq_len, target_len)
    dense = attn = attn_causal = 0
    if cfg.arch in ("gpt", "bert"):
        L = S
        dense = cfg.n_layers * (_attn_proj(cfg, L, L) + _mlp(cfg, L))
        attn, attn_causal = _self_attention(cfg, cfg.n_layers, L, causal=cfg.arch == "gpt")
        head_tokens = L if predicted is None or cfg.arch != "bert" else min(predicted, L)
    else:
        enc_dense = cfg.n_layers * (_attn_proj(cfg, S, S) + _mlp(cfg, S))
        dec_dense = cfg.decoder_layers * (_attn_proj(cfg, T, T) + _attn_proj(cfg, T, S) + _mlp(cfg, T))
        dense = enc_dense + dec_dense
        enc_full, enc_attended = _self_attention(cfg, cfg.n_layers, S, causal=False)
        dec_full, dec_attended = _self_attention(cfg, cfg.decoder_layers, T, causal=True)
        cross = cfg.decoder_layers * _attn_core(cfg, T * S)
        attn = enc_full + cross + dec_full
        attn_causal = enc_attended + cross + dec_attended
        head_tokens = T
    head = 2 * head_tokens * cfg.d_model * cfg.vocab_size
    if cfg.mlm_transform:
        head += 2 * head_tokens * cfg.d_model * cfg.d_model
    if cfg.nsp_head:  # Pooler and next-sentence projection on the one [CLS] state.
        head += 2 * cfg.d_model * cfg.d_model + 2 * cfg.d_model * 2
    forward = dense + attn + head
    return {
        "tokens": float(S + T),
        "dense": float(dense),
        "attention": float(attn),
        "attention_causal": float(attn_causal),
        "head": float(head),
        "forward": float(forward),
        "forward_causal": float(dense + attn_causal + head),
        "train": 3.0 * forward,
    }


def flops_per_token(cfg: ModelConfig, seq_len: int, target_len: int | None = None) -> dict[str, float]:
    """`flops_per_example` divided by the tokens of an example (L, or S + T for t5); same keys, plus tokens."""
    ex = flops_per_example(cfg, seq_len, target_len)
    return {k: (v if k == "tokens" else v / ex["tokens"]) for k, v in ex.items()}


def training_flops_per_step(cfg: ModelConfig, batch_size: int, seq_len: int, target_len: int | None = 0,
                            predicted: int | None = None) -> float:
    """Model FLOPs of one optimizer step: 3 * forward FLOPs per example * batch_size."""
    if batch_size <= 0:
        raise ValueError(f"batch_size={batch_size} must be positive")
    return flops_per_example(cfg, seq_len, target_len, predicted)["train"] * batch_size


def hidden_matrices(cfg: ModelConfig) -> list[tuple[int, int, int]]:
    """(count, rows, cols) of the dense kernels inside the blocks (attention, MLP, t5's cross-attention), each as the
    (in, out) matrix it multiplies by: query (D, H*Dh), key and value (D, K*Dh), output (H*Dh, D), MLP (D, F) (two
    for gated kinds) and (F, D). These are the matrices Muon orthogonalises (train/optim.py is_hidden_matrix)."""
    D, H, K, Dh, F = cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.dh, cfg.d_ff
    attention = [(1, D, H * Dh), (2, D, K * Dh), (1, H * Dh, D)]
    mlp = [(2 if cfg.mlp in _GATED else 1, D, F), (1, F, D)]
    out = [(cfg.n_layers * n, r, c) for n, r, c in attention + mlp]
    if cfg.arch == "t5":
        out += [(2 * cfg.decoder_layers * n, r, c) for n, r, c in attention]  # self- and cross-attention
        out += [(cfg.decoder_layers * n, r, c) for n, r, c in mlp]
    return out


def newton_schulz_flops(cfg: ModelConfig, steps: int) -> float:
    """Matmul FLOPs of `steps` quintic Newton-Schulz iterations on every hidden matrix (Muon, optax.contrib): on X of
    m x n with m <= n (the longer side second), A = X X^T (2 m^2 n), A A (2 m^3), (b A + c A A) X (2 m^2 n)."""
    total = 0
    for count, rows, cols in hidden_matrices(cfg):
        m, n = min(rows, cols), max(rows, cols)
        total += count * steps * (4 * m * m * n + 2 * m ** 3)
    return float(total)

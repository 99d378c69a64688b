"""GPT, BERT and T5 end to end: causality by gradient, padding, KV cache, remat, scan, dtypes, dropout, init.

Speed (2 CPU cores): parameters come from jax.eval_shape filled by numpy (real init compiles RNG kernels, seconds
on CPU; model.init is tested once); most tests run eagerly on one set of shapes so compiled ops are shared, and
the few jitted tests compile with cheap XLA options.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import model
from model import config
from tests.helpers import to_scanned

B, L, S, V = 2, 8, 8, 100  # S == L lets T5 share compiled eager ops with GPT and BERT.
# Compile-time over run-time for the jitted tests (halves XLA:CPU compile time of these tiny programs).
jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0,
                                                   "xla_llvm_disable_expensive_passes": True})


def tiny(arch="gpt", **kw):
    base = dict(vocab_size=V, d_model=32, n_heads=4, d_ff=64, n_layers=2, max_len=16)
    return config.preset("tiny", arch).replace(**{**base, **kw})


def tokens(seed, shape=(B, L)):
    return jnp.asarray(np.random.default_rng(seed).integers(1, V, shape), jnp.int32)


def args_for(cfg):
    return (tokens(1, (B, S)), tokens(2)) if cfg.arch == "t5" else (tokens(2),)


def fake_variables(m, *args, seed=0, perturb=False, **kw):
    """Random params (std 0.3 so every path matters; norm scales around 1) [and zero perturbations]."""
    shapes = nn.meta.unbox(jax.eval_shape(lambda: m.init(jax.random.key(0), *args, **kw)))
    rng = np.random.default_rng(seed)
    out = {"params": jax.tree_util.tree_map_with_path(
        lambda p, s: jnp.asarray((rng.normal(0, 0.3, s.shape) + ("scale" in str(p[-1]))).astype(s.dtype)),
        shapes["params"])}
    if perturb:
        out["perturbations"] = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes["perturbations"])
    return out


# Every option value of the layer library, in one combination per position encoding (few combinations keep
# compiles few); each runs forward and backward for every architecture in the causality tests below.
OPTIONS = [
    dict(position="learned", norm="rmsnorm", mlp="relu", n_kv_heads=1, use_bias=False, norm_position="post",
         final_norm=False),
    dict(position="sinusoidal", mlp="swiglu", qk_norm=True, tie_embeddings=False, output_bias=True),
    dict(position="rope", mlp="geglu", gelu_approximate=False, n_kv_heads=2, head_dim=16, attention_scale=False,
         scale_tied_logits=True),
    dict(position="alibi", norm="rmsnorm"),
    dict(position="t5_relative", mlp="relu", norm_position="post", qk_norm=True),
    dict(position="none", mlp="swiglu", n_kv_heads=2, use_bias=False),
]
IDS = [o["position"] for o in OPTIONS]
BERT_HEAD = dict(type_vocab_size=2, mlm_transform=True, embed_norm=True)  # bert-base's extras.


def option_config(arch, kw):
    return tiny(arch, **kw, **(BERT_HEAD if arch == "bert" and kw["position"] == "learned" else {}))


def dependence(call, variables):
    """{stack: (B, L_out, B, L_in) |d (logits . w)[b, t] / d embedded_stack[b', s]|} via jacrev.

    Also checks the logits (float32, (B, L, V)) and that every parameter gets a finite, non-zero gradient.
    """
    logits = call(variables)
    assert logits.dtype == jnp.float32 and logits.shape == (B, L, V)
    w = jnp.asarray(np.random.default_rng(3).normal(size=(V,)), jnp.float32)
    f = lambda params, pert: call({"params": params, "perturbations": pert}) @ w
    jac_p, jac_x = jax.jacrev(f, argnums=(0, 1))(variables["params"], variables["perturbations"])
    for path, g in jax.tree_util.tree_flatten_with_path(jac_p)[0]:
        name = jax.tree_util.keystr(path)
        assert np.isfinite(g).all(), f"non-finite gradient for {name}"
        assert np.abs(g).sum() > 0, f"no gradient reaches {name}"
    return {k: np.linalg.norm(np.asarray(v["embedded"]), axis=-1) for k, v in jac_x.items()}


def lower(n):
    return np.tril(np.ones((n, n), bool))


@pytest.mark.parametrize("kw", OPTIONS, ids=IDS)
def test_gpt_is_causal(kw):
    m = model.build(option_config("gpt", kw))
    x = tokens(2)
    d = dependence(lambda v: m.apply(v, x), fake_variables(m, x, perturb=True))["decoder"]
    for b in range(B):
        assert (d[b, :, b][~lower(L)] == 0).all(), "a logit depends on a later token"
        assert (d[b, :, b][lower(L)] > 0).all(), "a logit ignores an earlier token"
        assert (d[b, :, 1 - b] == 0).all(), "batch rows leak into each other"


def test_prefix_lm_is_bidirectional_inside_the_prefix_only():
    m = model.build(tiny("gpt"))
    x, prefix_len = tokens(2), jnp.array([3, 5], jnp.int32)
    v = fake_variables(m, x, prefix_len=prefix_len, perturb=True)
    d = dependence(lambda v: m.apply(v, x, prefix_len=prefix_len), v)["decoder"]
    for b, p in enumerate([3, 5]):
        allowed = lower(L)
        allowed[:p, :p] = True
        assert (d[b, :, b][~allowed] == 0).all() and (d[b, :, b][allowed] > 0).all()


@pytest.mark.parametrize("kw", OPTIONS, ids=IDS)
def test_t5_decoder_is_causal_and_encoder_bidirectional(kw):
    cfg = option_config("t5", kw)
    m = model.build(cfg)
    enc, dec = args_for(cfg)
    d = dependence(lambda v: m.apply(v, enc, dec), fake_variables(m, enc, dec, perturb=True))
    assert (d["decoder"][0, :, 0][~lower(L)] == 0).all() and (d["decoder"][0, :, 0][lower(L)] > 0).all()
    assert (d["decoder"][0, :, 1] == 0).all()
    # Every decoder position sees every encoder token of its own example.
    assert (d["encoder"][0, :, 0] > 0).all() and (d["encoder"][0, :, 1] == 0).all()


@pytest.mark.parametrize("kw", OPTIONS, ids=IDS)
def test_bert_is_bidirectional(kw):
    m = model.build(option_config("bert", kw))
    x = tokens(2)
    d = dependence(lambda v: m.apply(v, x), fake_variables(m, x, perturb=True))["encoder"]
    assert (d[0, :, 0] > 0).all() and (d[0, :, 1] == 0).all()


def test_t5_encoder_alone_is_bidirectional():
    cfg = tiny("t5", position="t5_relative")
    m = model.build(cfg)
    enc, dec = args_for(cfg)
    v = fake_variables(m, enc, dec, perturb=True)
    w = jnp.ones((cfg.d_model,))
    jac = jax.jacrev(lambda p: m.apply({**v, "perturbations": p}, enc, method="encode") @ w)(v["perturbations"])
    d = np.linalg.norm(np.asarray(jac["encoder"]["embedded"]), axis=-1)  # (B, S, B, S)
    assert (d[0, :, 0] > 0).all() and (d[0, :, 1] == 0).all()


def pad_to(x, n, value=0):
    return jnp.concatenate([x, jnp.full((x.shape[0], n - x.shape[1]), value, x.dtype)], axis=1)


@pytest.mark.parametrize("kw", [dict(position="t5_relative", norm="rmsnorm"),
                                dict(position="learned", norm_position="post", final_norm=False, **BERT_HEAD)])
def test_bert_padding_does_not_change_real_positions(kw):
    m = model.build(tiny("bert", **kw))
    x = tokens(2, (B, 6))
    v = fake_variables(m, x)
    out = m.apply(v, x)
    np.testing.assert_allclose(m.apply(v, pad_to(x, L))[:, :6], out, atol=1e-5)
    assert not np.allclose(m.apply(v, pad_to(x, L, value=7))[:, :6], out, atol=1e-3)  # The check can fail.


def test_t5_encoder_padding_does_not_change_outputs():
    cfg = tiny("t5", position="t5_relative")
    m = model.build(cfg)
    enc, dec = tokens(1, (B, 5)), tokens(2)  # Encoder and decoder lengths differ here.
    v = fake_variables(m, enc, dec)
    out = m.apply(v, enc, dec)
    np.testing.assert_allclose(m.apply(v, pad_to(enc, L), dec), out, atol=1e-5)
    np.testing.assert_allclose(m.apply(v, pad_to(enc, L), method="encode")[:, :5],
                               m.apply(v, enc, method="encode"), atol=1e-5)
    assert not np.allclose(m.apply(v, pad_to(enc, L, value=7), dec), out, atol=1e-3)


def decode_stepwise(m, v, cfg, chunks, use_jit=False):
    """Logits from feeding the target tokens through the KV cache in chunks of the given lengths."""
    enc, dec = args_for(cfg)[0], args_for(cfg)[-1]
    params = {"params": v["params"]}
    dummy = jnp.zeros((B, cfg.max_len), jnp.int32)
    if cfg.arch == "t5":
        encoded = m.apply(params, enc, method="encode")
        step = lambda c, t: m.apply({**params, "cache": c}, encoded, enc, t, decode=True, mutable=["cache"],
                                    method="decode")
        _, cache = m.apply(params, encoded, enc, dummy, decode=True, mutable=["cache"], method="decode")
    else:
        step = lambda c, t: m.apply({**params, "cache": c}, t, decode=True, mutable=["cache"])
        _, cache = m.apply(params, dummy, decode=True, mutable=["cache"])
    step = jit(step) if use_jit else step
    cache, outs, i = cache["cache"], [], 0
    for n in chunks:
        out, upd = step(cache, dec[:, i:i + n])
        cache, i = upd["cache"], i + n
        outs.append(out)
    return jnp.concatenate(outs, axis=1)


@pytest.mark.parametrize("arch", ["gpt", "t5"])
@pytest.mark.parametrize("kw", OPTIONS, ids=IDS)
def test_kv_cache_matches_full_forward(arch, kw):
    cfg = option_config(arch, kw)
    m = model.build(cfg)
    v = fake_variables(m, *args_for(cfg))
    np.testing.assert_allclose(decode_stepwise(m, v, cfg, [1] * L), m.apply(v, *args_for(cfg)), atol=2e-5)


def test_kv_cache_chunked_prefill_prefix_lm_and_scan():
    cfg = tiny("gpt", position="rope")
    m = model.build(cfg)
    x, prefix_len = tokens(2), jnp.array([4, 4], jnp.int32)
    v = fake_variables(m, x)
    full = m.apply(v, x, prefix_len=prefix_len)
    _, cache = m.apply(v, jnp.zeros((B, cfg.max_len), jnp.int32), decode=True, mutable=["cache"])
    first, cache = m.apply({**v, **cache}, x[:, :4], prefix_len=prefix_len, decode=True, mutable=["cache"])
    outs = [first]
    for t in range(4, L):
        out, cache = m.apply({**v, **cache}, x[:, t:t + 1], decode=True, mutable=["cache"])
        outs.append(out)
    np.testing.assert_allclose(jnp.concatenate(outs, axis=1), full, atol=2e-5)
    # Scanned layers keep a stacked cache; jitted steps.
    cfg = tiny("t5", position="alibi", scan_layers=True)
    m = model.build(cfg)
    v = fake_variables(m, *args_for(cfg))
    np.testing.assert_allclose(decode_stepwise(m, v, cfg, [3] + [1] * (L - 3), use_jit=True),
                               m.apply(v, *args_for(cfg)), atol=2e-5)


def loss_fn(m, args):
    def loss(p):
        logits = m.apply({"params": p}, *args)
        return -jnp.mean(jax.nn.log_softmax(logits)[..., 5])

    return loss


def test_remat_and_scan_equal_the_plain_loop():
    cfg = tiny("gpt", position="t5_relative")
    args = args_for(cfg)
    p = fake_variables(model.build(cfg), *args)["params"]
    variants = {"loop": (cfg, p), "remat_full": (cfg.replace(remat="full"), p),
                "scan_remat_dots": (cfg.replace(scan_layers=True, remat="dots"), to_scanned(p, 2))}
    shapes = nn.meta.unbox(jax.eval_shape(model.build(variants["scan_remat_dots"][0]).init, jax.random.key(0),
                                          *args)["params"])
    assert jax.tree.structure(shapes) == jax.tree.structure(variants["scan_remat_dots"][1])

    @jit
    def all_losses_and_grads(p, p_scan):
        return {k: jax.value_and_grad(loss_fn(model.build(c), args))(p_scan if "scan" in k else p)
                for k, (c, _) in variants.items()}

    out = all_losses_and_grads(p, to_scanned(p, 2))
    loss, grads = out["loop"]
    for k in ("remat_full", "scan_remat_dots"):
        np.testing.assert_allclose(out[k][0], loss, rtol=1e-6)
        want = to_scanned(grads, 2) if "scan" in k else grads
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), out[k][1], want)
    # T5 (two stacks, cross-attention): scanned and looped layers give the same logits.
    cfg = tiny("t5", position="rope")
    m_loop, m_scan = model.build(cfg), model.build(cfg.replace(scan_layers=True))
    p = fake_variables(m_loop, *args_for(cfg))["params"]
    np.testing.assert_allclose(m_scan.apply({"params": to_scanned(p, 2)}, *args_for(cfg)),
                               m_loop.apply({"params": p}, *args_for(cfg)), rtol=1e-5, atol=1e-5)


def test_bfloat16_compute_and_params_run_forward_and_backward():
    cfg = tiny("gpt", dtype="bfloat16", param_dtype="bfloat16", position="alibi")
    m = model.build(cfg)
    args = args_for(cfg)
    p = fake_variables(m, *args)["params"]
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(p))
    logits, (loss, g) = jit(lambda p: (m.apply({"params": p}, *args), jax.value_and_grad(loss_fn(m, args))(p)))(p)
    assert logits.dtype == jnp.float32 and np.isfinite(loss)
    assert all(np.isfinite(np.asarray(x, np.float32)).all() for x in jax.tree.leaves(g))
    ref = model.build(cfg.replace(dtype="float32", param_dtype="float32")).apply(
        {"params": jax.tree.map(lambda x: x.astype(jnp.float32), p)}, *args)
    # The same bf16-rounded weights in float32: what differs is the rounding of activations. bf16 keeps 8
    # significant bits, so rounding to nearest changes a value by at most 2^-8 of it. On the way to the logits a
    # pre-norm block rounds 13 activations (norm output, q, k, v, the probabilities, their product with v, the
    # attention projection, the residual sum, norm output, MLP in, activation, MLP out, residual sum; scores,
    # softmax and norm statistics are float32) and the final norm one more: n = 13 x layers + 1. Each rounding is
    # relative, so norms and matmuls carry it forward at about its size; independent errors of mean zero add in
    # quadrature: |logits - ref| <= sqrt(n) x 2^-8 |ref| in the root-mean-square over all logits (a worst case
    # that adds them linearly, n x 2^-8, would be 0.1 here and pass a broken model).
    n = 13 * cfg.n_layers + 1
    rel = float(np.linalg.norm(np.asarray(logits) - np.asarray(ref)) / np.linalg.norm(np.asarray(ref)))
    assert 0 < rel <= np.sqrt(n) * 2.0**-8, (rel, np.sqrt(n) * 2.0**-8)


@pytest.mark.parametrize("arch", ["gpt", "bert", "t5"])
def test_jit_equals_eager_and_features(arch):
    cfg = tiny(arch)
    m = model.build(cfg)
    args = args_for(cfg)
    v = fake_variables(m, *args)
    eager = m.apply(v, *args)
    assert eager.shape == (B, L, V) and eager.dtype == jnp.float32
    np.testing.assert_allclose(jit(lambda v: m.apply(v, *args))(v), eager, atol=1e-5)
    h = m.apply(v, *args, method="features")
    assert h.shape == (B, L, cfg.d_model)
    np.testing.assert_allclose(jnp.einsum("bld,vd->blv", h, v["params"]["embed"]["embedding"]), eager, atol=1e-5)
    assert type(m).input_names == {"gpt": ("inputs", "prefix_len", "segment_ids"),
                                   "bert": ("inputs", "token_types", "segment_ids"),
                                   "t5": ("encoder_inputs", "decoder_inputs", "encoder_segment_ids")}[arch]


def test_dropout_only_in_training():
    cfg = tiny("gpt", dropout=0.1, attention_dropout=0.1)
    m = model.build(cfg)
    x = tokens(2)
    v = fake_variables(m, x)
    base = m.apply(v, x)
    np.testing.assert_array_equal(m.apply(v, x, train=False), base)
    np.testing.assert_array_equal(base, model.build(cfg.replace(dropout=0.0, attention_dropout=0.0)).apply(v, x))
    t1 = m.apply(v, x, train=True, rngs={"dropout": jax.random.key(1)})
    t2 = m.apply(v, x, train=True, rngs={"dropout": jax.random.key(2)})
    assert not np.allclose(t1, base) and not np.allclose(t1, t2)
    np.testing.assert_array_equal(t1, m.apply(v, x, train=True, rngs={"dropout": jax.random.key(1)}))


def test_init_is_deterministic_with_the_documented_initializers():
    cfg = tiny("bert", n_layers=1, type_vocab_size=2)
    m = model.build(cfg)
    x = tokens(2)
    init = jit(lambda k: nn.meta.unbox(m.init(k, x))["params"])
    p1, p2, p3 = init(jax.random.key(0)), init(jax.random.key(0)), init(jax.random.key(1))
    jax.tree.map(np.testing.assert_array_equal, p1, p2)
    assert not np.allclose(p1["embed"]["embedding"], p3["embed"]["embedding"])
    for path, val in jax.tree_util.tree_flatten_with_path(p1)[0]:
        name = jax.tree_util.keystr(path)
        if name.endswith("['scale']"):
            np.testing.assert_array_equal(val, 1.0)
        elif name.endswith("['bias']"):
            np.testing.assert_array_equal(val, 0.0)
        elif val.size >= 2048:
            assert abs(float(val.std()) - cfg.init_std) < 0.2 * cfg.init_std, name


def test_t5_learns_to_copy_its_input_through_cross_attention():
    """The decoder reads the encoder: trained on 'repeat the input', a small T5 goes from ln(61) = 4.1 nats (what a
    decoder that ignores its encoder can do on uniform random tokens) to under 1 nat. (On span corruption at the
    default comparison's budget it does not yet: train.evaluate --shuffle_encoder; that is learning, not wiring.)"""
    import optax

    cfg = config.ModelConfig(arch="t5", vocab_size=64, d_model=64, n_heads=4, d_ff=256, n_layers=2,
                             n_decoder_layers=2, max_len=16)
    t5 = model.build(cfg)
    rng = np.random.default_rng(0)
    x = rng.integers(3, 64, (1000, 32, 12)).astype(np.int32)  # batches of 32 rows of 12 tokens, ids 3..63
    dec = np.concatenate([np.zeros_like(x[..., :1]), x[..., :-1]], axis=-1)
    params = jax.jit(t5.init)(jax.random.key(0), x[0], dec[0])["params"]  # jitted: op by op takes seconds
    tx = optax.adamw(1e-3)

    def loss(p, xb, db):
        return optax.softmax_cross_entropy_with_integer_labels(t5.apply({"params": p}, xb, db), xb).mean()

    @jax.jit
    def train(params, x, dec):
        def step(carry, batch):
            p, s = carry
            value, g = jax.value_and_grad(loss)(p, *batch)
            updates, s = tx.update(g, s, p)
            return (optax.apply_updates(p, updates), s), value

        return jax.lax.scan(step, (params, tx.init(params)), (x, dec))[1]

    losses = np.asarray(train(params, x, dec))
    assert losses[:10].mean() > 3.9 and losses[-20:].mean() < 1.0, losses[::100]

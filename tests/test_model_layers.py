"""Masks, position encodings, attention against a numpy reference, GQA, the cudnn fallback and sharding names."""

import logging
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import model
from model import config, layers, masks, positions, sharding


def tiny(arch="gpt", **kw):
    base = dict(vocab_size=100, d_model=32, n_heads=4, d_ff=64, n_layers=2, max_len=16)
    return config.preset("tiny", arch).replace(**{**base, **kw})


def fake_params(module, *args, seed=0):
    """Random parameters from the abstract init (real init compiles RNG kernels: seconds on CPU)."""
    shapes = nn.meta.unbox(jax.eval_shape(module.init, jax.random.key(0), *args)["params"])
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: jnp.asarray(rng.normal(0, 0.3, s.shape).astype(s.dtype)), shapes)


def test_masks():
    c = np.asarray(masks.causal(4))
    assert c.shape == (1, 1, 4, 4) and (c[0, 0] == np.tril(np.ones((4, 4), bool))).all()
    p = np.asarray(masks.prefix(jnp.array([2, 0]), 4))
    assert p.shape == (2, 1, 4, 4)
    expect = np.tril(np.ones((4, 4), bool))
    expect[:2, :2] = True
    assert (p[0, 0] == expect).all() and (p[1, 0] == np.tril(np.ones((4, 4), bool))).all()
    valid = jnp.array([[True, True, False], [True, False, False]])
    pad = np.asarray(masks.padding(valid, 2))
    assert pad.shape == (2, 1, 2, 3) and (pad[1, 0, 1] == [True, False, False]).all()
    assert masks.cross(5, valid).shape == (2, 1, 5, 3)
    both = np.asarray(masks.combine(masks.causal(3), masks.padding(valid, 3), None))
    assert (both[0, 0] == np.tril(np.ones((3, 3), bool)) & [True, True, False]).all()
    assert masks.combine(None) is None
    # Decode step: query position 2 against 4 cache slots.
    step = np.asarray(masks.causal(jnp.array([[2]]), jnp.arange(4)[None]))
    assert (step[0, 0, 0] == [True, True, True, False]).all()


def test_relative_bucket_matches_t5_reference():
    def ref(rel, bidirectional, nb=32, md=128):  # Hugging Face T5's _relative_position_bucket, in numpy.
        out = 0
        if bidirectional:
            nb //= 2
            out += (rel > 0).astype(np.int64) * nb
            n = np.abs(rel)
        else:
            n = -np.minimum(rel, 0)
        me = nb // 2
        with np.errstate(divide="ignore", invalid="ignore"):
            large = me + (np.log(n.astype(np.float32) / me) / np.log(md / me) * (nb - me)).astype(np.int64)
        return out + np.where(n < me, n, np.minimum(large, nb - 1))

    rel = np.arange(-300, 300)
    for bi in (True, False):
        got = np.asarray(positions.relative_bucket(jnp.asarray(rel, jnp.int32), bi, 32, 128))
        np.testing.assert_array_equal(got, ref(rel, bi))


def test_rope_and_alibi():
    x = jax.random.normal(jax.random.key(0), (1, 5, 2, 8))
    r = positions.apply_rope(x, jnp.arange(5)[None], 10000.0)
    np.testing.assert_allclose(jnp.linalg.norm(r, axis=-1), jnp.linalg.norm(x, axis=-1), rtol=1e-5)
    np.testing.assert_allclose(r[:, 0], x[:, 0], rtol=1e-6)  # Position 0 is not rotated.
    # Scores depend only on relative position: shift both positions by 7.
    q, k = x[:, :, 0], x[:, :, 1]
    s = lambda o: jnp.einsum("bld,bmd->blm", positions.apply_rope(q[:, :, None], jnp.arange(5)[None] + o, 1e4)[:, :, 0],
                             positions.apply_rope(k[:, :, None], jnp.arange(5)[None] + o, 1e4)[:, :, 0])
    np.testing.assert_allclose(s(0), s(7), atol=1e-5)
    np.testing.assert_allclose(positions.alibi_slopes(8), 2.0 ** -np.arange(1, 9), rtol=1e-6)
    assert positions.alibi_slopes(6).shape == (6,)
    b = positions.alibi_bias(8, jnp.arange(3)[None], jnp.arange(3)[None])
    assert b.shape == (1, 8, 3, 3) and float(b[0, 0, 2, 0]) == -1.0
    sin = positions.sinusoidal(jnp.arange(4)[None], 6)
    assert sin.shape == (1, 4, 6) and float(sin[0, 0, 3]) == 1.0


def test_rope_matches_the_rotate_half_reference():
    """x * cos + rotate_half(x) * sin with the frequencies repeated over both halves (GPT-NeoX / Llama)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 7, 3, 8))
    pos = np.array([[0, 1, 2, 3, 4, 5, 6], [5, 9, 13, 100, 2, 0, 1]])
    for theta in (10000.0, 500.0):
        inv_freq = 1.0 / theta ** (np.arange(0, 8, 2) / 8)
        angles = pos[..., None] * inv_freq  # (B, L, 4)
        emb = np.concatenate([angles, angles], axis=-1)[:, :, None, :]
        rotate_half = np.concatenate([-x[..., 4:], x[..., :4]], axis=-1)
        want = x * np.cos(emb) + rotate_half * np.sin(emb)
        got = positions.apply_rope(jnp.asarray(x, jnp.float32), jnp.asarray(pos), theta)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def _press_get_slopes(n):
    """ALiBi's slopes as Press et al. compute them (github.com/ofirpress/attention_with_linear_biases)."""
    def get_slopes_power_of_2(n):
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        ratio = start
        return [start * ratio**i for i in range(n)]

    if math.log2(n).is_integer():
        return get_slopes_power_of_2(n)
    closest_power_of_2 = 2 ** math.floor(math.log2(n))
    return (get_slopes_power_of_2(closest_power_of_2)
            + _press_get_slopes(2 * closest_power_of_2)[0::2][: n - closest_power_of_2])


@pytest.mark.parametrize("heads", [3, 6, 8, 12, 20])
def test_alibi_slopes_match_press_et_al(heads):
    np.testing.assert_allclose(positions.alibi_slopes(heads), _press_get_slopes(heads), rtol=1e-6)
    if heads == 3:  # by hand: 2^-4, 2^-8 from the 2-head sequence, then 2^-2 from the 4-head one
        np.testing.assert_allclose(positions.alibi_slopes(3), [2**-4, 2**-8, 2**-2], rtol=1e-6)
    b = np.asarray(positions.alibi_bias(heads, jnp.arange(4)[None], jnp.arange(4)[None]))
    np.testing.assert_allclose(b[0, :, 3, 1], -2 * np.asarray(_press_get_slopes(heads)), rtol=1e-6)


def numpy_attention(params, x, mask, scale):
    p = jax.tree.map(np.asarray, params)
    q = np.einsum("bld,dhk->blhk", x, p["query"]["kernel"]) + p["query"]["bias"]
    k = np.einsum("bld,dhk->blhk", x, p["key"]["kernel"]) + p["key"]["bias"]
    v = np.einsum("bld,dhk->blhk", x, p["value"]["kernel"]) + p["value"]["bias"]
    s = np.einsum("blhk,bmhk->bhlm", q, k) * scale
    s = np.where(mask, s, -np.inf)
    a = np.exp(s - s.max(-1, keepdims=True))
    a /= a.sum(-1, keepdims=True)
    o = np.einsum("bhlm,bmhk->blhk", a, v)
    return np.einsum("blhk,hkd->bld", o, p["out"]["kernel"]) + p["out"]["bias"]


@pytest.mark.parametrize("scaled", [True, False])
def test_attention_matches_numpy(scaled):
    cfg = tiny(position="none", attention_scale=scaled)
    att = layers.Attention(cfg)
    x = np.asarray(jax.random.normal(jax.random.key(1), (2, 5, 32)))
    mask = masks.causal(5)
    params = fake_params(att, x, x, mask)
    got = att.apply({"params": params}, x, x, mask)
    want = numpy_attention(params, x, np.asarray(mask), cfg.dh**-0.5 if scaled else 1.0)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kv_heads", [1, 2])
def test_gqa_equals_mha_with_repeated_kv_heads(kv_heads):
    cfg_g = tiny(n_kv_heads=kv_heads, position="rope")
    x = jax.random.normal(jax.random.key(1), (2, 6, 32))
    mask = masks.causal(6)
    pg = fake_params(layers.Attention(cfg_g), x, x, mask)
    out_g = layers.Attention(cfg_g).apply({"params": pg}, x, x, mask)
    # MHA whose head h uses kv head h // (H // K): repeat each kv head for its group of query heads.
    rep = lambda t, axis: jnp.repeat(t, 4 // kv_heads, axis=axis)
    pm = dict(pg)
    for n in ("key", "value"):
        pm[n] = {"kernel": rep(pm[n]["kernel"], 1), "bias": rep(pm[n]["bias"], 0)}
    out_m = layers.Attention(cfg_g.replace(n_kv_heads=4)).apply({"params": pm}, x, x, mask)
    np.testing.assert_allclose(out_g, out_m, rtol=1e-5, atol=1e-5)


def test_cudnn_falls_back_to_xla_on_cpu(caplog):
    if jax.default_backend() == "gpu":
        pytest.skip("fallback is for non-GPU backends")
    cfg = tiny("bert", position="alibi")
    x = jnp.array([[5, 6, 7, 0, 0], [8, 9, 10, 11, 12]], jnp.int32)
    m_x, m_c = model.build(cfg), model.build(cfg.replace(attention_impl="cudnn"))
    v = {"params": fake_params(m_x, x)}
    layers._warned.clear()
    with caplog.at_level(logging.WARNING):
        out_c = m_c.apply(v, x)
    assert "falls back" in caplog.text or "using the xla attention" in caplog.text
    np.testing.assert_array_equal(out_c, m_x.apply(v, x))


def test_norms():
    x = jax.random.normal(jax.random.key(0), (2, 3, 8)) * 3 + 1
    ln = layers.Norm(tiny(norm="layernorm"))
    y = ln.apply({"params": {"scale": jnp.ones(8), "bias": jnp.zeros(8)}}, x)
    np.testing.assert_allclose(y.mean(-1), 0, atol=1e-5)
    np.testing.assert_allclose(y.var(-1), 1, atol=1e-3)
    rms = layers.Norm(tiny(norm="rmsnorm"))
    np.testing.assert_allclose(jnp.mean(rms.apply({"params": {"scale": jnp.ones(8)}}, x) ** 2, -1), 1, atol=1e-3)
    names = lambda norm: set(jax.eval_shape(norm.init, jax.random.key(0), x)["params"])
    assert names(rms) == {"scale"} and names(ln) == {"scale", "bias"}
    assert names(layers.Norm(tiny(use_bias=False))) == {"scale"}


@pytest.mark.parametrize("arch", ["gpt", "bert", "t5"])
def test_every_param_has_known_logical_names(arch):
    kw = dict(type_vocab_size=2, mlm_transform=True, output_bias=True) if arch == "bert" else {}
    cfg = tiny(arch, position="t5_relative", scan_layers=arch == "t5", tie_embeddings=arch != "gpt",
               qk_norm=True, **kw)
    x = jnp.ones((2, 4), jnp.int32)
    boxed = jax.eval_shape(model.build(cfg).init, jax.random.key(0), *((x, x) if arch == "t5" else (x,)))
    known = {name for name, _ in sharding.rules()}
    leaves = jax.tree.leaves(boxed["params"], is_leaf=lambda t: isinstance(t, nn.LogicallyPartitioned))
    assert leaves and all(isinstance(t, nn.LogicallyPartitioned) for t in leaves)
    for t in leaves:
        assert len(t.names) == len(t.value.shape) and set(t.names) <= known, t.names
    assert any(t.names[0] == "layers" for t in leaves) == (arch == "t5")


def test_sharded_init_and_forward_under_a_mesh():
    cfg = tiny("gpt", n_layers=1)
    m = model.build(cfg)
    x = jnp.ones((2, 4), jnp.int32)
    boxed = jax.eval_shape(m.init, jax.random.key(0), x)["params"]
    mesh = jax.make_mesh((1, 1, 1), sharding.MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3)
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.rules()):
        shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed), mesh, sharding.rules())
        P = jax.sharding.PartitionSpec
        assert shardings["embed"]["embedding"].spec == P("tensor", "fsdp")
        assert shardings["decoder"]["layer_0"]["self_attention"]["query"]["kernel"].spec == P("fsdp", "tensor", None)
        assert shardings["decoder"]["layer_0"]["mlp"]["wo"]["kernel"].spec == P("tensor", "fsdp")
        params = jax.jit(lambda: nn.meta.unbox(m.init(jax.random.key(0), x)["params"]), out_shardings=shardings)()
        out = jax.jit(lambda p: m.apply({"params": p}, x, train=True, rngs={"dropout": jax.random.key(1)}))(params)
    assert out.shape == (2, 4, 100) and np.isfinite(out).all()


def test_prefix_mask_over_a_cache_by_hand():
    """One decoding step against a KV cache: queries at positions 3 and 4 over keys 0..5 (the cache), prefixes of
    2 and 5 tokens. A key is visible when it is not after the query or lies inside the row's prefix."""
    q, k, prefix_len = np.array([[3, 4]] * 2), np.array([[0, 1, 2, 3, 4, 5]] * 2), np.array([2, 5])
    want = np.array([[[[kk <= qq or kk < p for kk in k[b]] for qq in q[b]]] for b, p in enumerate(prefix_len)])
    np.testing.assert_array_equal(np.asarray(masks.prefix(jnp.asarray(prefix_len), jnp.asarray(q), jnp.asarray(k))),
                                  want)
    assert want[1, 0, 0, 4] and not want[0, 0, 0, 4]  # the prefix of 5 shows key 4 to the query at 3

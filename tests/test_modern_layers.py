"""The 2024-era layer options against their formulas: ReLU^2, soft caps, per-layer local/global attention
patterns (masks, KV cache, scan == loop, FLOPs)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import model
from model import flops, masks
from model.layers import Mlp, dot_product_attention
from tests.helpers import to_scanned
from tests.test_model_models import B, L, args_for, decode_stepwise, fake_variables, tiny

# ---- ReLU^2 and soft caps --------------------------------------------------------------------------------------


def test_relu2_mlp_is_the_squared_relu_by_hand():
    cfg = tiny("gpt", mlp="relu2")
    x = np.random.default_rng(0).normal(size=(B, L, cfg.d_model)).astype(np.float32)
    mlp = Mlp(cfg)
    params = fake_variables(mlp, jnp.asarray(x))["params"]
    h = np.maximum(x @ np.asarray(params["wi"]["kernel"]) + np.asarray(params["wi"]["bias"]), 0.0) ** 2
    want = h @ np.asarray(params["wo"]["kernel"]) + np.asarray(params["wo"]["bias"])
    np.testing.assert_allclose(mlp.apply({"params": params}, jnp.asarray(x)), want, rtol=1e-4, atol=1e-4)
    assert flops.param_count(cfg) == flops.param_count(cfg.replace(mlp="relu"))  # two matrices, not gated


def test_attention_soft_cap_by_hand():
    rng = np.random.default_rng(1)
    H, Dh, cap, scale = 2, 8, 1.5, 8**-0.5
    q, k, v = (rng.normal(0, 2, (1, L, H, Dh)).astype(np.float32) for _ in range(3))
    bias = rng.normal(size=(1, H, L, L)).astype(np.float32)
    mask = np.asarray(masks.causal(L))
    s = np.einsum("blhd,bshd->bhls", q, k) * scale + bias
    s = np.where(mask, cap * np.tanh(s / cap), -np.inf)  # capped, then masked
    p = np.exp(s - s.max(-1, keepdims=True))
    want = np.einsum("bhls,bshd->blhd", p / p.sum(-1, keepdims=True), v)
    got = dot_product_attention(*map(jnp.asarray, (q, k, v)), jnp.asarray(mask), jnp.asarray(bias), scale=scale,
                                cap=cap)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    uncapped = dot_product_attention(*map(jnp.asarray, (q, k, v)), jnp.asarray(mask), jnp.asarray(bias), scale=scale)
    assert not np.allclose(got, uncapped, atol=1e-3)


@pytest.mark.parametrize("arch", ["gpt", "bert", "t5"])
def test_logits_soft_cap_is_c_tanh_of_the_logits(arch):
    cfg, cap = tiny(arch), 2.0
    m, args = model.build(cfg), args_for(cfg)
    v = fake_variables(m, *args)
    plain = np.asarray(m.apply(v, *args))
    assert np.abs(plain).max() > 2 * cap  # the cap matters at these weights
    capped = np.asarray(model.build(cfg.replace(logits_soft_cap=cap)).apply(v, *args))
    np.testing.assert_allclose(capped, cap * np.tanh(plain / cap), rtol=1e-5, atol=1e-5)


def test_soft_caps_must_be_non_negative():
    for field in ("attention_soft_cap", "logits_soft_cap"):
        with pytest.raises(model.ConfigError, match=rf"model.{field}=-1.0 must be >= 0 \(0 = off\)"):
            tiny(**{field: -1.0})


# ---- Attention patterns ----------------------------------------------------------------------------------------


def test_pattern_repeats_over_the_depth_and_is_validated():
    cfg = tiny(n_layers=5, attention_window=2, attention_pattern="LLG")
    assert [cfg.local_layer(i) for i in range(5)] == [True, True, False, True, True]
    assert [tiny(attention_window=2).local_layer(i) for i in range(2)] == [True, True]  # '' = all local
    assert not tiny().local_layer(0)
    with pytest.raises(model.ConfigError, match="may hold only 'L' .local. and 'G' .global."):
        tiny(attention_window=2, attention_pattern="LX")
    with pytest.raises(model.ConfigError, match="has local layers but model.attention_window=0"):
        tiny(attention_pattern="LG")


def attention_maps(m, v, args):
    """{layer name: (B, H, L, S) probabilities} of every self-attention, in layer order."""
    _, state = m.apply(v, *args, mutable=["intermediates"])
    flat = jax.tree_util.tree_flatten_with_path(state["intermediates"])[0]
    return {jax.tree_util.keystr(p[:-2]): np.asarray(x) for p, x in flat if "self_attention" in jax.tree_util.keystr(p)}


@pytest.mark.parametrize("arch", ["gpt", "bert", "t5"])
def test_each_layer_attends_as_its_pattern_letter_says(arch):
    n = 2
    cfg = tiny(arch, n_layers=3, attention_window=n, attention_pattern="LG",
               **({"n_decoder_layers": 3} if arch == "t5" else {}))
    m, args = model.build(cfg), args_for(cfg)
    maps = attention_maps(m, fake_variables(m, *args), args)
    assert len(maps) == (6 if arch == "t5" else 3)
    q, k = np.meshgrid(np.arange(L), np.arange(L), indexing="ij")
    for name, p in maps.items():
        i = int(name.split("layer_")[1].split("'")[0])
        causal = arch == "gpt" or "decoder" in name
        inside = (k <= q) & (q - k < n) if causal else np.abs(q - k) < n
        allowed = inside if i % 2 == 0 else (k <= q if causal else np.ones_like(inside))
        assert (p[..., ~allowed] == 0).all(), f"{name} attends outside its mask"
        assert (p[..., allowed] > 0).all(), f"{name} ignores keys its mask allows"


def test_uniform_patterns_equal_the_plain_settings():
    cfg = tiny("gpt", attention_window=3)
    m, args = model.build(cfg), args_for(cfg)
    v = fake_variables(m, *args)
    local = np.asarray(m.apply(v, *args))
    np.testing.assert_array_equal(model.build(cfg.replace(attention_pattern="L")).apply(v, *args), local)
    full = np.asarray(model.build(cfg.replace(attention_window=0)).apply(v, *args))
    np.testing.assert_array_equal(model.build(cfg.replace(attention_pattern="GG")).apply(v, *args), full)
    mixed = np.asarray(model.build(cfg.replace(attention_pattern="LG")).apply(v, *args))
    assert not np.allclose(mixed, local, atol=1e-3) and not np.allclose(mixed, full, atol=1e-3)


@pytest.mark.parametrize("arch", ["gpt", "t5"])
def test_mixed_pattern_scan_equals_loop(arch):
    cfg = tiny(arch, n_layers=3, attention_window=2, attention_pattern="GLL",
               **({"n_decoder_layers": 3} if arch == "t5" else {}))
    m, args = model.build(cfg), args_for(cfg)
    v = fake_variables(m, *args)
    scanned = {"params": to_scanned(v["params"], 3)}
    np.testing.assert_allclose(model.build(cfg.replace(scan_layers=True)).apply(scanned, *args), m.apply(v, *args),
                               rtol=1e-5, atol=1e-5)


def test_kv_cache_with_a_pattern_matches_the_full_forward():
    # GPT's decoder is the Stack T5's decoder also is: one architecture covers the cached masks.
    cfg = tiny("gpt", attention_window=3, attention_pattern="LG")
    m = model.build(cfg)
    v = fake_variables(m, *args_for(cfg))
    full = m.apply(v, *args_for(cfg))
    np.testing.assert_allclose(decode_stepwise(m, v, cfg, [3, 1, 1, 3]), full, atol=2e-5)


@pytest.mark.parametrize("causal", [True, False])
def test_attended_pairs_count_the_mask(causal):
    for length in (1, 5, 16):
        for n in (0, 1, 3, 16, 40):
            mask = np.asarray(masks.window(length, None, n, causal=causal)) if n else np.ones((length, length), bool)
            if causal:
                mask = mask & np.asarray(masks.causal(length))
            assert flops.attended_pairs(length, causal, n) == mask.sum(), (length, n)


def test_flops_count_each_pattern_layer():
    base = dict(n_layers=3, attention_window=4)
    for arch, seq, tgt in (("gpt", 16, 0), ("bert", 16, 0), ("t5", 16, 8)):
        extra = {"n_decoder_layers": 3} if arch == "t5" else {}
        glob = flops.flops_per_example(tiny(arch, **extra, attention_pattern="GGG", **base), seq, tgt)
        loc = flops.flops_per_example(tiny(arch, **extra, attention_pattern="LLL", **base), seq, tgt)
        mixed = flops.flops_per_example(tiny(arch, **extra, attention_pattern="LGL", **base), seq, tgt)
        assert mixed["attention"] == glob["attention"] == loc["attention"]  # the full square: what runs
        assert loc["attention_causal"] < mixed["attention_causal"] < glob["attention_causal"]
        # two local layers and one global, in each stack
        np.testing.assert_allclose(mixed["attention_causal"] - loc["attention_causal"],
                                   (glob["attention_causal"] - loc["attention_causal"]) / 3)


def test_pattern_parameters_are_unchanged():
    cfg = tiny("t5", attention_window=2, attention_pattern="LG")
    m, args = model.build(cfg), args_for(cfg)
    shapes = nn.meta.unbox(jax.eval_shape(lambda: m.init(jax.random.key(0), *args)))
    assert sum(x.size for x in jax.tree.leaves(shapes["params"])) == flops.param_count(cfg) == flops.param_count(
        cfg.replace(attention_window=0, attention_pattern=""))

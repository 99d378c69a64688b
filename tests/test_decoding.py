"""model/decoding.py: filters against numpy, cached == uncached generation for every position encoding,
per-row eos, mixed prompt lengths == each prompt alone."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import model
from model import decoding
from model.config import ModelConfig

V = 64
N_NEW = 10
# Three left-aligned prompts of different lengths (6, 2, 4); junk after each prompt must be ignored.
PROMPTS = np.random.default_rng(0).integers(1, V, (3, 6)).astype(np.int32)
LENGTHS = np.array([6, 2, 4], np.int32)


@functools.cache
def tiny(arch: str, position: str):
    """A random tiny model whose greedy outputs vary (init_std 0.5 gives peaked, non-constant logits)."""
    cfg = ModelConfig(arch=arch, vocab_size=V, d_model=32, n_heads=2, d_ff=64, n_layers=2, max_len=32,
                      position=position, init_std=0.5)
    m = model.build(cfg)
    dummy = jnp.zeros((1, 1), jnp.int32)
    return m, m.init(jax.random.key(1), *((dummy, dummy) if arch == "t5" else (dummy,)))["params"]


# ---- Filters against numpy references. ----

def np_top_k(logits, k):
    kth = np.sort(logits, axis=-1)[:, -k][:, None]
    return np.where(logits < kth, -np.inf, logits)


def np_top_p(logits, p):
    """Keep the smallest set of most likely tokens whose probability sums to >= p (and ties with its last)."""
    out = np.full_like(logits, -np.inf)
    for b, row in enumerate(logits):
        probs = np.exp(row - row.max())
        probs /= probs.sum()
        order = np.argsort(-row)
        n = min(int(np.searchsorted(np.cumsum(probs[order]), p)) + 1, len(row))
        out[b] = np.where(row >= row[order[n - 1]], row, -np.inf)
    return out


@pytest.mark.parametrize("k", [1, 3, 17, V])
def test_top_k_matches_numpy(k):
    logits = np.random.default_rng(k).normal(size=(4, V)).astype(np.float32)
    np.testing.assert_array_equal(decoding.top_k_filter(jnp.asarray(logits), k), np_top_k(logits, k))
    np.testing.assert_array_equal(decoding.top_k_filter(jnp.asarray(logits), 0), logits)


@pytest.mark.parametrize("p", [0.05, 0.5, 0.9, 0.999])
def test_top_p_matches_numpy(p):
    logits = 3 * np.random.default_rng(int(p * 1000)).normal(size=(4, V)).astype(np.float32)
    got = np.asarray(decoding.top_p_filter(jnp.asarray(logits), p))
    np.testing.assert_array_equal(got, np_top_p(logits, p))
    assert (np.isfinite(got).sum(1) >= 1).all()
    np.testing.assert_array_equal(decoding.top_p_filter(jnp.asarray(logits), 1.0), logits)


def test_filters_keep_ties_and_compose_with_temperature():
    logits = np.array([[2.0, 1.0, 1.0, 0.0, -1.0]], np.float32)
    assert np.isfinite(decoding.top_k_filter(jnp.asarray(logits), 2)).sum() == 3  # the tie at the k-th is kept
    t, k, p = 0.7, 3, 0.8
    want = np_top_p(np_top_k(logits / t, k), p)
    got = decoding.filter_logits(jnp.asarray(logits), temperature=t, top_k=k, top_p=p)
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_sampling_follows_the_filtered_softmax():
    logits = np.random.default_rng(3).normal(size=(1, 12)).astype(np.float32)
    t, k = 0.8, 5
    draw = jax.jit(jax.vmap(lambda r: decoding.sample_logits(jnp.asarray(logits), r, temperature=t, top_k=k)))
    samples = np.asarray(draw(jax.random.split(jax.random.key(0), 20000)))[:, 0]
    want = np.exp(np_top_k(logits / t, k)[0] - (logits / t).max())
    want /= want.sum()
    freq = np.bincount(samples, minlength=12) / len(samples)
    np.testing.assert_allclose(freq, want, atol=0.015)
    assert set(np.flatnonzero(freq)) <= set(np.flatnonzero(want))
    greedy = decoding.sample_logits(jnp.asarray(logits), jax.random.key(0), temperature=0.0, top_k=k)
    assert int(greedy[0]) == int(np.argmax(logits))


# ---- Generation. Each model's generations are traced into one jit: XLA's fixed cost per compile dominates on
# CPU, and one compile of several generate calls costs about as much as one call's. ----

SAMPLING = dict(temperature=1.0, top_k=20, top_p=0.9)


@functools.cache
def gpt_runs(position: str) -> dict:
    """Greedy generations with and without the cache; for rope also sampled, with an eos, and each row alone."""
    m, params = tiny("gpt", position)

    def runs(params, rng):
        gen = functools.partial(decoding.generate, m, params, max_new_tokens=N_NEW)
        out = {"greedy": gen(PROMPTS, LENGTHS), "greedy_full": gen(PROMPTS, LENGTHS, use_cache=False)}
        if position == "rope":
            out["sampled"] = gen(PROMPTS, LENGTHS, rng=rng, **SAMPLING)
            out["sampled_full"] = gen(PROMPTS, LENGTHS, rng=rng, use_cache=False, **SAMPLING)
            out["alone"] = [gen(PROMPTS[b:b + 1, :n], [n])[0] for b, n in enumerate(LENGTHS)]
            out["eos_id"] = out["greedy"][0, 3]  # a token row 0 emits (traced: no recompile)
            out["eos"] = gen(PROMPTS, LENGTHS, eos_id=out["eos_id"])
        return out

    return jax.tree.map(np.asarray, jax.jit(runs)(params, jax.random.key(7)))


@pytest.mark.parametrize("position", ["learned", "sinusoidal", "rope", "alibi", "t5_relative"])
def test_gpt_cache_equals_no_cache(position):
    r = gpt_runs(position)
    np.testing.assert_array_equal(r["greedy"], r["greedy_full"])
    assert r["greedy"].shape == (3, N_NEW) and len(np.unique(r["greedy"])) > 3  # not a degenerate output


def test_gpt_sampling_cache_equals_no_cache():
    r = gpt_runs("rope")  # both paths draw with fold_in(rng, position), so the samples agree too
    np.testing.assert_array_equal(r["sampled"], r["sampled_full"])
    assert not np.array_equal(r["sampled"], r["greedy"])


@pytest.mark.parametrize("position", ["t5_relative", "rope"])
def test_t5_cache_equals_no_cache(position):
    m, params = tiny("t5", position)
    enc = PROMPTS * (np.arange(6)[None] < LENGTHS[:, None])  # right-padded encoder inputs of different lengths

    def runs(params):
        gen = functools.partial(decoding.generate_seq2seq, m, params, enc, max_new_tokens=N_NEW)
        return gen(), gen(use_cache=False)

    cached, full = map(np.asarray, jax.jit(runs)(params))
    np.testing.assert_array_equal(cached, full)
    assert len(np.unique(cached)) > 3


def test_mixed_prompt_lengths_equal_each_prompt_alone():
    r = gpt_runs("rope")
    for b in range(len(LENGTHS)):
        np.testing.assert_array_equal(r["alone"][b], r["greedy"][b], err_msg=f"row {b}")


def test_each_row_stops_at_its_eos():
    r = gpt_runs("rope")
    free, expected, eos = r["greedy"], r["greedy"].copy(), int(r["eos_id"])
    stops = []
    for b in range(len(free)):
        hits = np.flatnonzero(free[b] == eos)
        if len(hits):
            expected[b, hits[0] + 1:] = 0  # the eos is kept, pad after it
            stops.append(hits[0])
    assert min(stops) <= 3 and (len(set(stops)) > 1 or len(stops) < len(free))  # rows stop at different steps
    np.testing.assert_array_equal(r["eos"], expected)


def test_generation_errors():
    m, params = tiny("gpt", "rope")
    with pytest.raises(ValueError, match="model.max_len=32"):
        decoding.generate(m, params, PROMPTS, LENGTHS, max_new_tokens=30)
    with pytest.raises(ValueError, match="prompt_lengths"):
        decoding.generate(m, params, PROMPTS, [6, 0, 4], max_new_tokens=2)
    with pytest.raises(ValueError, match="top_p"):
        decoding.generate(m, params, PROMPTS, LENGTHS, max_new_tokens=2, top_p=0.0)
    with pytest.raises(ValueError, match="generate_seq2seq"):
        decoding.generate(tiny("t5", "rope")[0], params, PROMPTS, LENGTHS, max_new_tokens=2)

"""MLM trains with its head at the masked positions alone (model/bert.py predict_at, train/objectives.py predicted):
the same logits there, the same loss sums and gradients as the head over every position, and the FLOPs the step
executes as XLA counts them. The bound it relies on (no row has more masked tokens than K) is a property of
data/objectives.py's masking, checked here over random rates and lengths."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import model as model_lib
from data import objectives as data_objectives
from model import flops
from model.config import ModelConfig
from tests import helpers
from tests.test_model_models import fake_variables
from tests.test_objectives_properties import SETTINGS, TOK, mixed_rows, rngs

CFG = ModelConfig(arch="bert", vocab_size=300, d_model=16, n_heads=2, d_ff=32, n_layers=2, max_len=24,
                  mlm_transform=True, output_bias=True)


def test_predict_at_gives_the_logits_at_those_positions():
    m = model_lib.build(CFG)
    x = jnp.asarray(np.random.default_rng(0).integers(5, 300, (3, 24)), jnp.int32)
    params = fake_variables(m, x)
    at = jnp.asarray([[0, 5, 23], [7, 7, 1], [2, 3, 4]], jnp.int32)
    full = m.apply(params, x)
    picked = m.apply(params, x, predict_at=at)
    assert picked.shape == (3, 3, 300)
    np.testing.assert_allclose(picked, jnp.take_along_axis(full, at[..., None], axis=1), rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    from train import loop

    config = helpers.tiny_config("bert", str(tmp_path_factory.mktemp("mlm_predicted")))
    return (config, *loop.build(config))


def test_mlm_loss_and_gradients_match_the_head_over_every_position(built):
    config, data, _, model, runner = built
    ours = runner.objective
    L = config.data.seq_len
    assert ours.predicted == int(data_objectives.selected_count(config.objective.mask_rate, L)) == 5 < L
    everywhere = dataclasses.replace(ours, predicted=0)
    batch = jax.tree.map(jnp.asarray, data.train.batch(0))
    params = fake_variables(model, batch["inputs"])["params"]

    def grads(objective):
        def mean(p):
            s = objective.loss_sums(model, p, batch, None, False, {})
            return s["loss"] / s["weight"], s
        return jax.jit(jax.grad(mean, has_aux=True))(params)

    (g_ours, s_ours), (g_all, s_all) = grads(ours), grads(everywhere)
    for k in s_all:
        np.testing.assert_allclose(s_ours[k], s_all[k], rtol=1e-5, err_msg=k)
    assert float(s_all["weight"]) == float(jnp.sum(batch["weights"])) > 0
    for a, b in zip(jax.tree.leaves(g_ours), jax.tree.leaves(g_all), strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6)


def test_whole_words_and_other_objectives_keep_the_full_head(tmp_path):
    from train import objectives

    oc = helpers.tiny_config("bert", str(tmp_path)).objective
    layout = {"targets": ((32,), np.int32)}
    assert objectives.build(oc, layout).predicted == 5
    oc.whole_word = True  # a first word longer than the count is still taken whole: no bound
    assert objectives.build(oc, layout).predicted == 0
    oc.whole_word, oc.name = False, "causal_lm"
    assert objectives.build(oc, layout).predicted == 0


def test_executed_flops_match_xla():
    """flops.flops_per_example(..., predicted=K): the forward XLA compiles with the head at K positions."""
    cfg = ModelConfig(arch="bert", vocab_size=2000, d_model=256, n_heads=4, d_ff=1024, n_layers=2, max_len=128)
    m = model_lib.build(cfg)
    x = jnp.zeros((2, 128), jnp.int32)
    at = jnp.zeros((2, 19), jnp.int32)
    abstract = jax.eval_shape(lambda: m.init(jax.random.key(0), x))
    cost = jax.jit(lambda p, x, at: m.apply(p, x, predict_at=at)).lower(abstract, x, at).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    ours = flops.flops_per_example(cfg, 128, predicted=19)
    assert ours["forward"] * 2 <= float(cost["flops"]) <= ours["forward"] * 2 * 1.03
    full = flops.flops_per_example(cfg, 128)
    assert ours["head"] == pytest.approx(full["head"] * 19 / 128) and ours["dense"] == full["dense"]


@SETTINGS
@given(B=st.integers(1, 4), W=st.integers(1, 62), rate=st.floats(0.01, 1.0), special_frac=st.sampled_from([0, 0.3]),
       seed=st.integers(0, 2**16))
def test_no_row_has_more_masked_tokens_than_the_train_side_bound(B, W, rate, special_frac, seed):
    """The mlm batches data/ builds ([CLS] + W tokens + [SEP]) never weight more positions in a row than the K that
    train/objectives.py derives from the config and the layout; rows with no special token reach it."""
    from train import objectives

    oc = helpers.objective_config("mlm", seq_len=W + 2)
    oc.objective.update(mask_rate=rate, label_smoothing=0.0, z_loss=0.0)
    b = data_objectives.mlm(mixed_rows(B, W, seed, special_frac), rngs(B, seed), TOK, rate, 0.8, 0.1)
    K = objectives.build(oc.objective, {"targets": ((W + 2,), np.int32)}).predicted
    per_row = b["weights"].sum(1)
    assert (per_row <= K).all()
    if special_frac == 0:
        assert (per_row == int(data_objectives.selected_count(rate, W))).all()

"""The optimizer: weight decay by parameter kind, decoupled decay for every optimizer, clipping order, the applied
learning rate, and scan == loop training (the decay must not depend on the layer layout)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import model
from model import config as model_config
from model import flops
from tests import helpers
from train import optim
from train import step as step_lib


def _tc(**kw):
    base = dict(optimizer="adamw", learning_rate=0.5, warmup_steps=0, steps=100, schedule="constant",
                min_lr_ratio=0.1, b1=0.9, b2=0.95, eps=1e-8, momentum=0.9, weight_decay=0.1, decay_embeddings=False,
                grad_clip=0.0, muon_learning_rate=0.5, muon_momentum=0.95, muon_nesterov=True, muon_ns_steps=5,
                muon_consistent_rms=0.0, lion_b1=0.9, lion_b2=0.99)
    return ml_collections.ConfigDict({**base, **kw})


def _abstract_params(cfg):
    m = model.build(cfg)
    args = {"t5": dict(encoder_inputs=jnp.zeros((1, 8), jnp.int32), decoder_inputs=jnp.zeros((1, 8), jnp.int32))
            }.get(cfg.arch, dict(inputs=jnp.zeros((1, 8), jnp.int32)))
    return nn.meta.unbox(jax.eval_shape(lambda: m.init(jax.random.key(0), **args))["params"])


def _size(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


TREES = {
    "gpt": dict(arch="gpt"),
    "gpt-untied-learned": dict(arch="gpt", tie_embeddings=False, position="learned", output_bias=True),
    "bert+nsp": dict(arch="bert", nsp_head=True, mlm_transform=True, embed_norm=True, position="learned"),
    "t5": dict(arch="t5", n_decoder_layers=2, position="t5_relative", norm="rmsnorm", use_bias=False),
    "t5-gated": dict(arch="t5", n_decoder_layers=3, mlp="geglu", tie_embeddings=False, qk_norm=True),
}


@pytest.mark.parametrize("scan", [False, True], ids=["loop", "scan"])
@pytest.mark.parametrize("name", list(TREES))
def test_decay_mask_is_the_kernels_of_the_real_trees(name, scan):
    kw = TREES[name]
    cfg = model_config.preset("tiny", kw["arch"]).replace(
        **{"vocab_size": 96, "d_model": 32, "n_heads": 4, "d_ff": 48, "n_layers": 2, "max_len": 16, **kw,
           "scan_layers": scan})
    params = _abstract_params(cfg)
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    for decay_embeddings in (False, True):
        mask = jax.tree_util.tree_flatten_with_path(optim.decay_mask(params, decay_embeddings))[0]
        decayed = {jax.tree_util.keystr(p) for p, m in mask if m}
        # Independent reference 1: the analytic count of matmul weights (model/flops.py), where a tied head
        # counts the token table (an embedding, not a kernel) and the once-per-example NSP head is left out.
        D, V = cfg.d_model, cfg.vocab_size
        kernels = flops.matmul_param_count(cfg) - (D * V if cfg.tie_embeddings else 0)
        kernels += (D * D + 2 * D) if cfg.nsp_head else 0
        tables = sum(int(np.prod(x.shape)) for p, x in flat if jax.tree_util.keystr(p).endswith("['embedding']"))
        assert sum(int(np.prod(x.shape)) for p, x in flat if jax.tree_util.keystr(p) in decayed) == (
            kernels + (tables if decay_embeddings else 0))
        # Independent reference 2: nothing one-dimensional per layer (biases incl. q/k/v's (H, Dh), norm scales).
        for p, _ in flat:
            if p[-1].key in ("bias", "scale"):
                assert jax.tree_util.keystr(p) not in decayed, p
        assert any("['query']['kernel']" in k for k in decayed)


def test_decay_mask_is_the_same_for_loop_and_scan():
    base = model_config.preset("tiny", "t5").replace(vocab_size=96, d_model=32, n_heads=4, d_ff=48, n_layers=2,
                                                     max_len=16, n_decoder_layers=2)
    masks = {}
    for scan in (False, True):
        params = _abstract_params(base.replace(scan_layers=scan))
        mask = optim.decay_mask(params)
        masks[scan] = mask if scan else helpers.to_scanned(mask, 2)
    stacked, scanned = jax.tree.leaves(masks[False]), jax.tree.leaves(masks[True])
    assert jax.tree.structure(masks[False]) == jax.tree.structure(masks[True])
    assert [bool(np.all(a == b)) for a, b in zip(stacked, scanned, strict=True)] == [True] * len(scanned)
    assert 0 < sum(scanned) < len(scanned)


def test_unknown_parameter_kind_is_an_error():
    with pytest.raises(ValueError, match="no known kind"):
        optim.decay_mask({"block": {"w": jnp.zeros((2, 2))}})


def _tree():
    rng = np.random.default_rng(0)
    return {"dense": {"kernel": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32),
                      "bias": jnp.asarray(rng.normal(size=(3,)), jnp.float32)},
            "norm": {"scale": jnp.asarray(1 + rng.normal(size=(3,)), jnp.float32)},
            "embed": {"embedding": jnp.asarray(rng.normal(size=(5, 4)), jnp.float32)}}


@pytest.mark.parametrize("opt", optim.OPTIMIZERS)
def test_zero_gradient_step_is_decoupled_decay(opt):
    tc = _tc(optimizer=opt)
    tx, lr = optim.make(tc)
    params = _tree()
    zeros = jax.tree.map(jnp.zeros_like, params)
    new, opt_state = step_lib.apply_update(tx, lr(0), zeros, tx.init(params), params)
    np.testing.assert_allclose(new["dense"]["kernel"], params["dense"]["kernel"] * (1 - 0.5 * 0.1), rtol=1e-6)
    for path in (("dense", "bias"), ("norm", "scale"), ("embed", "embedding")):
        np.testing.assert_array_equal(new[path[0]][path[1]], params[path[0]][path[1]])
    # A second step: decoupled decay does not pass through the momentum (SGD's would add 0.9 x the first decay).
    new, _ = step_lib.apply_update(tx, lr(1), zeros, opt_state, new)
    np.testing.assert_allclose(new["dense"]["kernel"], params["dense"]["kernel"] * (1 - 0.5 * 0.1) ** 2, rtol=1e-6)
    # At step 0 of a warmup the rate is 0, and so is the decay.
    tx, lr = optim.make(_tc(optimizer=opt, warmup_steps=10, schedule="cosine"))
    new, _ = step_lib.apply_update(tx, lr(0), zeros, tx.init(params), params)
    jax.tree.map(np.testing.assert_array_equal, new, params)


def test_decay_embeddings_decays_the_tables():
    tx, lr = optim.make(_tc(decay_embeddings=True))
    params = _tree()
    new, _ = step_lib.apply_update(tx, lr(0), jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
    np.testing.assert_allclose(new["embed"]["embedding"], params["embed"]["embedding"] * 0.95, rtol=1e-6)


def test_clipping_happens_before_the_optimizer():
    # SGD without momentum, with decay: the direction is -(clip(g) + wd p). Clipping after the optimizer would
    # give -clip(g + wd p), and no clipping -(g + wd p).
    tx, lr = optim.make(_tc(optimizer="sgd", momentum=0.0, grad_clip=1.0))
    params = _tree()
    grads = jax.tree.map(lambda p: 10.0 + jnp.zeros_like(p), params)
    norm = float(np.sqrt(sum(np.sum(np.square(g)) for g in jax.tree.leaves(grads))))
    direction, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(direction["dense"]["kernel"], -(10.0 / norm + 0.1 * params["dense"]["kernel"]),
                               rtol=1e-6)
    np.testing.assert_allclose(direction["dense"]["bias"], -10.0 / norm * np.ones(3), rtol=1e-6)


def test_adamw_matches_the_formula():
    # One step of AdamW by hand: bias-corrected m / (sqrt(v) + eps) = g / (|g| + eps), plus wd * p on kernels.
    tx, lr = optim.make(_tc())
    params = _tree()
    grads = jax.tree.map(lambda p: 0.3 * jnp.ones_like(p) - 0.1 * p, params)
    new, _ = step_lib.apply_update(tx, lr(0), grads, tx.init(params), params)
    for group, name in (("dense", "kernel"), ("dense", "bias")):
        p, g = np.asarray(params[group][name], np.float64), np.asarray(grads[group][name], np.float64)
        want = p - 0.5 * (g / (np.abs(g) + 1e-8) + (0.1 * p if name == "kernel" else 0.0))
        np.testing.assert_allclose(new[group][name], want, rtol=1e-5)


@pytest.fixture(scope="module")
def gpt_data(tmp_path_factory):
    from train import loop

    d = str(tmp_path_factory.mktemp("optim"))
    config = helpers.tiny_config("gpt", d, **{"train.warmup_steps": 0, "train.nonfinite": "skip"})
    data, mcfg, m, runner = loop.build(config)
    return config, data, mcfg, runner.objective


def test_skipped_update_keeps_the_schedule_on_the_step(gpt_data):
    config, data, mcfg, objective = gpt_data
    config = config.copy_and_resolve_references()
    config.train.schedule, config.train.steps = "linear", 6
    m = model.build(mcfg)
    tx, lr = optim.make(config.train)
    params = nn.meta.unbox(m.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"])
    state = step_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))
    step = jax.jit(lambda s, b: step_lib.train_step(s, b, model=m, objective=objective, tx=tx, lr_schedule=lr,
                                                    config=config))
    good = jax.tree.map(jnp.asarray, data.train.batch(0))
    bad = dict(good, weights=good["weights"].at[0, 0].set(jnp.nan))  # a planted non-finite loss
    rates = []
    for s in range(4):
        new, metrics = step(state, bad if s == 1 else good)
        assert float(metrics["nonfinite"]) == float(s == 1)
        if s == 1:  # Skipped: parameters and optimizer state untouched, the step advanced.
            jax.tree.map(np.testing.assert_array_equal, new.params, state.params)
        rates.append(float(metrics["lr"]))
        state = new
    assert int(state.step) == 4
    # The logged rate is the schedule at the step (no lag after the skip), and the one applied: redo step 3.
    np.testing.assert_allclose(rates, [float(lr(s)) for s in range(4)], rtol=1e-7)
    assert rates[0] > rates[3] > 0


def _train_losses(config, mcfg, objective, data, params, steps):
    m = model.build(mcfg)
    tx, lr = optim.make(config.train)
    state = step_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))
    step = jax.jit(lambda s, b: step_lib.train_step(s, b, model=m, objective=objective, tx=tx, lr_schedule=lr,
                                                    config=config))
    out = []
    for s in range(steps):
        state, metrics = step(state, jax.tree.map(jnp.asarray, data.train.batch(s)))
        out.append(float(metrics["loss"] / metrics["weight"]))
    return out, state.params


def test_scan_and_loop_train_alike(gpt_data):
    """A few steps at a positive learning rate with weight decay: the same losses and parameters."""
    config, data, mcfg, objective = gpt_data
    config = config.copy_and_resolve_references()
    config.train.learning_rate, config.train.weight_decay = 1e-2, 0.5  # strong decay: a wrong mask shows
    m = model.build(mcfg)
    params = nn.meta.unbox(m.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"])
    loop_losses, loop_params = _train_losses(config, mcfg, objective, data, params, 4)
    scan_losses, scan_params = _train_losses(config, mcfg.replace(scan_layers=True), objective, data,
                                             helpers.to_scanned(params, mcfg.n_layers), 4)
    np.testing.assert_allclose(scan_losses, loop_losses, rtol=1e-5)
    assert loop_losses[-1] < loop_losses[0]
    # Float reassociation (scan's stacked matmuls) moves Adam's updates by ~1e-6; a wrong decay mask moves a
    # parameter by lr * wd * |p| per step: >= 1e-4 for the kernels (|p| ~ 0.02), 5e-3 for norm scales.
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-5),
                 helpers.to_scanned(loop_params, mcfg.n_layers), scan_params)


def test_unknown_optimizer_names_the_field_and_the_choices():
    with pytest.raises(Exception) as e:
        optim.make(_tc(optimizer="adamz"))
    assert str(e.value) == ("train.optimizer='adamz' is unknown: choose one of " + ", ".join(optim.OPTIMIZERS))
    assert "adamw, " in str(e.value)


def _first_direction(tc, grads):
    tx, _ = optim.make(tc)
    params = _tree()
    return tx.update(grads, tx.init(params), params)[0], tx, params


def test_adamw_first_step_by_hand_at_non_default_betas():
    # Adam's first step: m = (1 - b1) g, v = (1 - b2) g^2, bias-corrected to g and g^2, so the direction is
    # -g / (|g| + eps) - wd p (decay on kernels only). eps of 0.5 shows; b1, b2 only through the bias correction.
    tc = _tc(b1=0.5, b2=0.6, eps=0.5, weight_decay=0.0)
    grads = jax.tree.map(lambda p: jnp.full_like(p, 2.0), _tree())
    d, tx, params = _first_direction(tc, grads)
    np.testing.assert_allclose(d["dense"]["kernel"], np.full((4, 3), -2.0 / 2.5), rtol=1e-6)
    # Second step, same gradient: m_hat = g, v_hat = g^2 whatever b1, b2; a different gradient shows b1.
    state = tx.update(grads, tx.init(params), params)[1]
    g2 = jax.tree.map(lambda p: jnp.full_like(p, -2.0), params)
    m_hat = (0.5 * 0.5 * 2.0 + 0.5 * -2.0) / (1 - 0.5**2)
    v_hat = (0.6 * 0.4 * 4.0 + 0.4 * 4.0) / (1 - 0.6**2)
    np.testing.assert_allclose(tx.update(g2, state, params)[0]["dense"]["kernel"],
                               np.full((4, 3), -m_hat / (np.sqrt(v_hat) + 0.5)), rtol=1e-5)


def test_adafactor_direction_is_scale_free_and_of_unit_rms():
    # Adafactor divides by factored second moments: scaling the gradient leaves the direction as it is, and the
    # direction of a matrix has RMS about 1 at learning rate 1 (SGD's would scale with the gradient).
    rng = np.random.default_rng(1)
    grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), _tree())
    tc = _tc(optimizer="adafactor", weight_decay=0.0)
    d1, _, _ = _first_direction(tc, grads)
    d10, _, _ = _first_direction(tc, jax.tree.map(lambda g: 10.0 * g, grads))
    np.testing.assert_allclose(d10["dense"]["kernel"], d1["dense"]["kernel"], rtol=1e-4)
    rms = float(np.sqrt(np.mean(np.square(d1["dense"]["kernel"]))))
    assert 0.5 < rms <= 1.0 + 1e-6, rms


def test_sgd_momentum_accumulates():
    tc = _tc(optimizer="sgd", momentum=0.9, weight_decay=0.0)
    grads = jax.tree.map(lambda p: jnp.ones_like(p), _tree())
    d, tx, params = _first_direction(tc, grads)
    state = tx.update(grads, tx.init(params), params)[1]
    np.testing.assert_allclose(d["dense"]["kernel"], -np.ones((4, 3)))
    np.testing.assert_allclose(tx.update(grads, state, params)[0]["dense"]["kernel"], -1.9 * np.ones((4, 3)),
                               rtol=1e-6)


def test_unknown_schedule_names_the_field_and_the_choices():
    with pytest.raises(Exception) as e:
        optim.schedule(_tc(schedule="cosyne"))
    assert str(e.value) == "train.schedule='cosyne' is unknown: choose one of " + ", ".join(optim.SCHEDULES)
    assert len(optim.SCHEDULES) > 1 and ", " in str(e.value)

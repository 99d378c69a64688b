"""Muon, Lion and warmup-stable-decay (train/optim.py): which parameters Muon takes and as which matrices, one and
two steps of each against hand-written formulas, wsd at its breakpoints, the bad-input messages, and tiny runs that
train and resume."""

import json
import math
import os
import re
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import model
from experiments.configs import base
from model import classifier
from model import config as model_config
from tests import helpers
from train import errors, optim
from train import step as step_lib

NS_COEFFS = (3.4445, -4.7750, 2.0315)  # Keller Jordan's quintic, the coefficients modded-nanogpt and optax use


def _tc(**kw) -> ml_collections.ConfigDict:
    """The real config.train (every field, new ones included) at a constant rate of 0.5, no warmup, no clipping."""
    tc = base.base_config("gpt", "tiny").train
    defaults = dict(learning_rate=0.5, warmup_steps=0, steps=100, schedule="constant", grad_clip=0.0, weight_decay=0.1)
    for k, v in {**defaults, **kw}.items():
        tc[k] = v
    return tc


def _cfg(**kw) -> model_config.ModelConfig:
    return model_config.preset("tiny", kw["arch"]).replace(
        **{"vocab_size": 96, "d_model": 32, "n_heads": 4, "d_ff": 48, "n_layers": 2, "max_len": 16, **kw})


def _random(tree, seed=0):
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s.shape), jnp.float32), tree)


def _flat(tree) -> dict:
    return {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


# ---------------------------------------------------------------------------------------------- (a) the split

TREES = {
    "gpt": dict(arch="gpt"),
    "gpt-untied-learned-gqa": dict(arch="gpt", tie_embeddings=False, position="learned", output_bias=True,
                                   n_kv_heads=2),
    "bert+nsp": dict(arch="bert", nsp_head=True, mlm_transform=True, embed_norm=True, position="learned"),
    "t5": dict(arch="t5", n_decoder_layers=2, position="t5_relative", norm="rmsnorm", use_bias=False),
    "t5-gated": dict(arch="t5", n_decoder_layers=3, mlp="geglu", tie_embeddings=False, qk_norm=True),
}
# A block kernel, written out: stack / block / attention or MLP / projection / kernel.
BLOCK_KERNEL = re.compile(r"(\['backbone'\])?\['(encoder|decoder)'\]\['(layer_\d+|layers)'\]"
                          r"(\['(self_attention|cross_attention)'\]\['(query|key|value|out)'\]"
                          r"|\['mlp'\]\['(wi|wi_0|wi_1|wo)'\])\['kernel'\]")


def _expected_matrices(cfg) -> tuple[int, int]:
    """(number of Muon leaves, their total size) from the config alone."""
    D, F, HDh, KDh = cfg.d_model, cfg.d_ff, cfg.n_heads * cfg.dh, cfg.kv_heads * cfg.dh
    attn, mlp = (4, 2 * D * HDh + 2 * D * KDh), (3 if cfg.mlp in ("swiglu", "geglu") else 2, 0)
    mlp = (mlp[0], mlp[0] * D * F)
    stacks = [(cfg.n_layers, False)] + ([(cfg.decoder_layers, True)] if cfg.arch == "t5" else [])
    leaves = size = 0
    for n, cross in stacks:
        per_layer = [attn, mlp] + ([attn] if cross else [])
        leaves += sum(k for k, _ in per_layer) * (1 if cfg.scan_layers else n)
        size += sum(s for _, s in per_layer) * n
    return leaves, size


def _check_split(params, cfg):
    mask = _flat(optim.muon_mask(params))
    flat = _flat(params)
    muon = {k for k, m in mask.items() if m}
    assert muon == {k for k in flat if BLOCK_KERNEL.fullmatch(k)}
    leaves, size = _expected_matrices(cfg)
    assert len(muon) == leaves
    assert sum(int(np.prod(flat[k].shape)) for k in muon) == size
    # Everything else, by name: embeddings, head, norms, biases, pooler / nsp / transform, classifier heads.
    assert all(not m for k, m in mask.items() if k.endswith(("['embedding']", "['bias']", "['scale']")))
    assert all(not mask[k] for k in flat if re.search(r"lm_head|transform|pooler|nsp|relative_bias", k))


@pytest.mark.parametrize("scan", [False, True], ids=["loop", "scan"])
@pytest.mark.parametrize("name", list(TREES))
def test_muon_takes_exactly_the_block_kernels(name, scan):
    cfg = _cfg(**TREES[name], scan_layers=scan)
    params = model.abstract_params(cfg)
    _check_split(params, cfg)
    if name == "bert+nsp":  # the kernels BERT keeps outside its blocks take AdamW
        mask = _flat(optim.muon_mask(params))
        assert [mask[f"['{k}']['kernel']"] for k in ("pooler", "nsp")] == [False, False]
        assert mask["['head']['transform']['kernel']"] is False


def test_a_classifier_head_takes_adamw():
    cfg = _cfg(arch="bert")
    m = classifier.Classifier(cfg, 3)
    zeros = jnp.zeros((1, 8), jnp.int32)
    params = nn.meta.unbox(jax.eval_shape(lambda: m.init(jax.random.key(0), inputs=zeros, token_types=zeros))
                           ["params"])
    _check_split(params, cfg)
    mask = _flat(optim.muon_mask(params))
    assert mask["['out']['kernel']"] is False and mask["['pooler']['kernel']"] is False  # 'out' outside a block
    assert mask["['backbone']['encoder']['layer_0']['self_attention']['out']['kernel']"] is True


@pytest.mark.parametrize("scan", [False, True], ids=["loop", "scan"])
def test_muon_sees_each_kernel_as_the_matrix_the_layer_multiplies_by(scan):
    # (in, out) of every block matmul, from the layer definitions (model/layers.py): queries D -> H*Dh, keys and
    # values D -> K*Dh, the output H*Dh -> D (a 3-D (H, Dh, D) kernel), the MLP D -> F -> D.
    for name in ("gpt-untied-learned-gqa", "t5-gated"):
        cfg = _cfg(**TREES[name], scan_layers=scan)
        D, F, HDh, KDh = cfg.d_model, cfg.d_ff, cfg.n_heads * cfg.dh, cfg.kv_heads * cfg.dh
        want = {"query": (D, HDh), "key": (D, KDh), "value": (D, KDh), "out": (HDh, D), "wi": (D, F),
                "wi_0": (D, F), "wi_1": (D, F), "wo": (F, D)}
        assert KDh != HDh or name != "gpt-untied-learned-gqa"
        params = model.abstract_params(cfg)
        for path, x in jax.tree_util.tree_flatten_with_path(params)[0]:
            if not optim.is_hidden_matrix(path):
                continue
            dims = optim.muon_dimension_numbers(path, x)
            batch = sorted(set(range(x.ndim)) - set(dims.reduction_axis) - set(dims.output_axis))
            assert batch == ([0] if scan else []), (path, dims)
            shape = tuple(math.prod(x.shape[a] for a in axes) for axes in (dims.reduction_axis, dims.output_axis))
            assert shape == want[path[-2].key], (jax.tree_util.keystr(path), dims)


# ---------------------------------------------------------------------------------------------- (b) Muon step

def _newton_schulz(g: np.ndarray, steps: int) -> np.ndarray:
    """Hand-written quintic Newton-Schulz in float64, as in modded-nanogpt: X <- aX + (bA + cA^2)X, A = XX^T."""
    a, b, c = NS_COEFFS
    x = g / (np.linalg.norm(g) + 1e-8)
    tall = x.shape[0] > x.shape[1]
    x = x.T if tall else x
    for _ in range(steps):
        A = x @ x.T
        x = a * x + (b * A + c * A @ A) @ x
    return x.T if tall else x


def _as_matrix(name: str, x: np.ndarray) -> np.ndarray:
    """A loop-layout block kernel as the (in, out) matrix: the attention output contracts its first two axes."""
    return x.reshape(-1, x.shape[-1]) if name == "out" else x.reshape(x.shape[0], -1)


def _gpt_tree():
    """(config, random params, random grads) of a 2-layer GPT (loop layout) with an untied head, learned positions
    and an output bias; d_ff 40 against d_model 16 makes wi wide (fan_out / fan_in 2.5) and wo tall."""
    cfg = _cfg(arch="gpt", vocab_size=24, d_model=16, n_heads=2, d_ff=40, max_len=8, tie_embeddings=False,
               position="learned", output_bias=True)
    abstract = model.abstract_params(cfg)
    return cfg, _random(abstract, 0), _random(abstract, 1)


@pytest.mark.parametrize("rms,muon_lr", [(0.0, 0.1), (0.2, 0.5)], ids=["width-scaling", "consistent-rms"])
def test_one_muon_step_is_newton_schulz_of_the_gradient_and_adam_elsewhere(rms, muon_lr):
    cfg, params, grads = _gpt_tree()
    tc = _tc(optimizer="muon", learning_rate=0.5, muon_learning_rate=muon_lr, muon_consistent_rms=rms,
             b1=0.9, b2=0.95, eps=1e-8)
    tx, lr = optim.make(tc)
    assert float(lr(3)) == 0.5  # the one schedule is the AdamW group's; Muon's direction carries muon_lr / 0.5
    ratio = muon_lr / 0.5
    direction = _flat(jax.jit(tx.update)(grads, tx.init(params), params)[0])
    fp, fg = _flat(params), _flat(grads)
    n_muon = 0
    for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]:
        k = jax.tree_util.keystr(path)
        p, g, d = (np.asarray(t[k], np.float64) for t in (fp, fg, direction))
        if BLOCK_KERNEL.fullmatch(k):
            # The first (Nesterov) momentum is a multiple of g, and Newton-Schulz is blind to scale.
            name = path[-2].key
            G = _as_matrix(name, g)
            O = _newton_schulz(G, 5)
            fan_in, fan_out = G.shape
            scale = rms * math.sqrt(max(fan_in, fan_out)) if rms else math.sqrt(max(1.0, fan_out / fan_in))
            want = -ratio * (O.reshape(g.shape) * scale + 0.1 * p)  # the Muon group peaks at muon_lr, not 0.5
            np.testing.assert_allclose(d, want, rtol=2e-4, atol=2e-6, err_msg=k)
            # Independent of the coefficients: O = U f(S) V^T where G = U S V^T, with f(s) in about (0.7, 1.2)
            # where s is not tiny against the largest (5 steps lift s / |G|_F by at most 3.4445^5).
            U, S, Vt = np.linalg.svd(G, full_matrices=False)
            core = U.T @ (-(d / ratio + 0.1 * p) / scale).reshape(G.shape) @ Vt.T
            np.testing.assert_allclose(core - np.diag(np.diag(core)), 0.0, atol=1e-4, err_msg=k)
            f = np.diag(core)
            assert np.all((f > 0) & (f < 1.25)) and np.all(f[S > 0.1 * S[0]] > 0.6), (k, S / S[0], f)
            n_muon += 1
        else:  # Adam's first step: -(g / (|g| + eps)), plus the decay on kernels (lm_head here).
            decay = 0.1 * p if path[-1].key == "kernel" else 0.0
            np.testing.assert_allclose(d, -(g / (np.abs(g) + 1e-8) + decay), rtol=1e-5, err_msg=k)
    assert n_muon == 2 * 6


@pytest.mark.parametrize("nesterov,steps", [(True, 5), (False, 2)])
def test_second_muon_step_orthogonalises_the_momentum(nesterov, steps):
    # optax's momentum, bias-corrected: m_t = b m_{t-1} + (1 - b) g_t; Nesterov orthogonalises
    # b m_t / (1 - b^(t+1)) + (1 - b) g_t / (1 - b^t), plain momentum m_t (its correction is only a scale).
    _, params, g1 = _gpt_tree()
    g2 = _random(g1, 2)
    b = 0.8
    tx, _ = optim.make(_tc(optimizer="muon", learning_rate=0.5, muon_learning_rate=0.5, weight_decay=0.0,
                           muon_momentum=b, muon_nesterov=nesterov, muon_ns_steps=steps))
    update = jax.jit(tx.update)
    state = update(g1, tx.init(params), params)[1]
    direction = _flat(update(g2, state, params)[0])
    f1, f2 = _flat(g1), _flat(g2)
    checked = 0
    for k, d in direction.items():
        if not BLOCK_KERNEL.fullmatch(k):
            continue
        name = re.findall(r"\['(\w+)'\]", k)[-2]
        m = b * (1 - b) * np.asarray(f1[k], np.float64) + (1 - b) * np.asarray(f2[k], np.float64)
        look = b * m / (1 - b**3) + (1 - b) * np.asarray(f2[k], np.float64) / (1 - b**2) if nesterov else m
        G = _as_matrix(name, look)
        scale = math.sqrt(max(1.0, G.shape[1] / G.shape[0]))
        np.testing.assert_allclose(d, -_newton_schulz(G, steps).reshape(d.shape) * scale, rtol=2e-4, atol=2e-6,
                                   err_msg=k)
        checked += 1
    assert checked == 12


def test_muon_scan_and_loop_give_the_same_update():
    # The scanned layout's leading layers axis must be a batch axis: one orthogonalisation per layer.
    cfg, params, grads = _gpt_tree()
    tx, _ = optim.make(_tc(optimizer="muon"))
    loop = jax.jit(tx.update)(grads, tx.init(params), params)[0]
    s_params, s_grads = helpers.to_scanned(params, cfg.n_layers), helpers.to_scanned(grads, cfg.n_layers)
    scan = jax.jit(tx.update)(s_grads, tx.init(s_params), s_params)[0]
    assert jax.tree.structure(scan) == jax.tree.structure(s_params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
                 helpers.to_scanned(loop, cfg.n_layers), scan)


def test_muon_without_block_kernels_is_adamw():
    # A tree with no Stack (test_optim's toy tree) leaves the Muon group empty: the update is AdamW's.
    _, params, grads = _gpt_tree()
    toy = {"head": params["head"], "embed": params["embed"]}
    toy_g = {"head": grads["head"], "embed": grads["embed"]}
    muon, _ = optim.make(_tc(optimizer="muon"))
    adamw, _ = optim.make(_tc(optimizer="adamw"))
    jax.tree.map(np.testing.assert_array_equal, muon.update(toy_g, muon.init(toy), toy)[0],
                 adamw.update(toy_g, adamw.init(toy), toy)[0])


# ---------------------------------------------------------------------------------------------- (c) Lion

def _toy():
    rng = np.random.default_rng(3)
    return {"dense": {"kernel": jnp.asarray(rng.normal(size=(6, 5)), jnp.float32),
                      "bias": jnp.asarray(rng.normal(size=(5,)), jnp.float32)},
            "norm": {"scale": jnp.asarray(1 + rng.normal(size=(5,)), jnp.float32)},
            "embed": {"embedding": jnp.asarray(rng.normal(size=(7, 6)), jnp.float32)}}


def test_lion_one_and_two_steps_by_hand():
    # c = b1 m + (1 - b1) g; update -lr (sign(c) + wd p) with decay on kernels only; then m = b2 m + (1 - b2) g.
    b1, b2, wd, lr = 0.8, 0.9, 0.2, 0.5
    tc = _tc(optimizer="lion", lion_b1=b1, lion_b2=b2, weight_decay=wd, learning_rate=lr, b1=0.3, b2=0.4)
    tx, schedule = optim.make(tc)
    p0 = _toy()
    g1 = jax.tree.map(lambda p: jnp.asarray(np.random.default_rng(4).normal(size=p.shape), jnp.float32), p0)
    noise = jax.tree.map(lambda p: jnp.asarray(np.random.default_rng(5).normal(size=p.shape), jnp.float32), p0)
    g2 = jax.tree.map(lambda a, n: -0.3 * a + n, g1, noise)
    p1, state = step_lib.apply_update(tx, schedule(0), g1, tx.init(p0), p0)
    p2, _ = step_lib.apply_update(tx, schedule(1), g2, state, p1)
    signs = {"c2": [], "g1": [], "g2": []}
    for group, name in (("dense", "kernel"), ("dense", "bias"), ("norm", "scale"), ("embed", "embedding")):
        P0, G1, G2 = (np.asarray(t[group][name], np.float64) for t in (p0, g1, g2))
        decayed = wd if name == "kernel" else 0.0
        want1 = P0 - lr * (np.sign((1 - b1) * G1) + decayed * P0)
        np.testing.assert_allclose(p1[group][name], want1, rtol=1e-6, atol=1e-6)
        c2 = b1 * (1 - b2) * G1 + (1 - b1) * G2
        want2 = want1 - lr * (np.sign(c2) + decayed * want1)
        np.testing.assert_allclose(p2[group][name], want2, rtol=1e-6, atol=1e-6)
        for key, v in (("c2", c2), ("g1", G1), ("g2", G2)):
            signs[key].append(np.sign(v).ravel())
    c2, s1, s2 = (np.concatenate(signs[k]) for k in ("c2", "g1", "g2"))
    assert np.any(c2 != s1) and np.any(c2 != s2)  # the second step is neither gradient's sign alone


# ---------------------------------------------------------------------------------------------- (d) wsd

def _wsd(**kw):
    tc = ml_collections.ConfigDict(dict(learning_rate=1.0, warmup_steps=10, steps=100, schedule="wsd",
                                        min_lr_ratio=0.1, decay_fraction=0.2, decay_shape="linear"))
    tc.update(kw)
    return optim.schedule(tc)


@pytest.mark.parametrize("shape,mid,last", [
    ("linear", 0.1 + 0.9 * 0.5, 0.1 + 0.9 * 0.05),  # t = 0.5 at step 90, t = 0.95 at step 99
    ("1-sqrt", 0.1 + 0.9 * (1 - math.sqrt(0.5)), 0.1 + 0.9 * (1 - math.sqrt(0.95))),
])
def test_wsd_at_its_breakpoints(shape, mid, last):
    lr = _wsd(decay_shape=shape)
    want = {0: 0.0, 5: 0.5, 10: 1.0, 50: 1.0, 80: 1.0, 90: mid, 99: last, 100: 0.1, 150: 0.1}
    got = {s: float(lr(s)) for s in want}
    np.testing.assert_allclose(list(got.values()), list(want.values()), rtol=1e-6, atol=1e-7)
    assert float(jax.jit(lr)(jnp.int32(90))) == pytest.approx(mid, rel=1e-6)  # traced steps too
    assert float(lr(85)) == pytest.approx(0.1 + 0.9 * ((1 - 0.25) if shape == "linear" else (1 - math.sqrt(0.25))))


def test_wsd_without_warmup_and_with_decay_over_everything():
    assert float(_wsd(warmup_steps=0)(0)) == 1.0
    # decay_fraction 1 starts the decay when the warmup ends (never inside it): over steps 10..100.
    lr = _wsd(decay_fraction=1.0)
    assert [float(lr(s)) for s in (5, 10)] == [0.5, 1.0]
    assert float(lr(55)) == pytest.approx(0.55, rel=1e-6)
    assert float(_wsd(decay_fraction=0.001, steps=7, warmup_steps=0)(6)) == 1.0  # at least one decay step
    assert float(_wsd(decay_fraction=0.001, steps=7, warmup_steps=0)(7)) == pytest.approx(0.1)


# ---------------------------------------------------------------------------------------------- (e) bad input

@pytest.mark.parametrize("make,field,value,message", [
    ("schedule", "decay_fraction", 0.0, "train.decay_fraction=0.0 must be in (0, 1] (the fraction of train.steps "
                                        "over which wsd decays to train.min_lr_ratio x the peak)"),
    ("schedule", "decay_fraction", 1.5, "train.decay_fraction=1.5 must be in (0, 1] (the fraction of train.steps "
                                        "over which wsd decays to train.min_lr_ratio x the peak)"),
    ("schedule", "decay_fraction", float("nan"), "train.decay_fraction=nan must be in (0, 1] (the fraction of "
                                                 "train.steps over which wsd decays to train.min_lr_ratio x the peak)"),
    ("schedule", "decay_shape", "cosine", "train.decay_shape='cosine' is unknown: choose one of linear, 1-sqrt"),
    ("muon", "learning_rate", 0.0, "train.learning_rate=0.0 must be positive with train.optimizer='muon' (the Muon "
                                   "group's rate is train.muon_learning_rate x schedule / train.learning_rate)"),
    ("muon", "muon_learning_rate", -0.1, "train.muon_learning_rate=-0.1 must be >= 0"),
    ("muon", "muon_momentum", 1.0, "train.muon_momentum=1.0 must be in [0, 1)"),
    ("muon", "muon_ns_steps", 0, "train.muon_ns_steps=0 must be a whole number >= 1"),
    ("muon", "muon_consistent_rms", -1.0, "train.muon_consistent_rms=-1.0 must be >= 0 (0 = optax's width scaling)"),
    ("lion", "lion_b1", 1.0, "train.lion_b1=1.0 must be in [0, 1)"),
    ("lion", "lion_b2", float("nan"), "train.lion_b2=nan must be in [0, 1)"),
])
def test_bad_input_names_the_flag(make, field, value, message):
    tc = _tc(schedule="wsd") if make == "schedule" else _tc(optimizer=make)
    tc[field] = value
    with pytest.raises(errors.UserError) as e:
        optim.make(tc)
    assert str(e.value) == message


def test_unknown_optimizer_and_schedule_list_the_new_ones():
    with pytest.raises(errors.UserError, match=r"choose one of adamw, adafactor, sgd, muon, lion$"):
        optim.make(_tc(optimizer="muom"))
    with pytest.raises(errors.UserError, match=r"choose one of cosine, linear, rsqrt, constant, wsd$"):
        optim.make(_tc(schedule="wds"))


# ---------------------------------------------------------------------------------------------- (f) tiny runs

def _losses(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return {r["step"]: r["train/loss"] for r in map(json.loads, f) if "train/loss" in r}


def _tiny_run(tmp_path_factory, **overrides):
    from train import loop

    shared = str(tmp_path_factory.getbasetemp() / "optim_modern")  # corpus and tokenizer shared by the runs
    workdir = str(tmp_path_factory.mktemp("run"))
    summary = loop.train_and_evaluate(helpers.tiny_config("gpt", shared, **overrides), workdir)
    losses = _losses(workdir)
    assert sorted(losses) == [1, 2, 3, 4, 5, 6] and all(math.isfinite(v) for v in losses.values())
    assert losses[6] < losses[1] - 0.05, losses
    return workdir, losses, summary, lambda: loop.train_and_evaluate(
        helpers.tiny_config("gpt", shared, **overrides), workdir)


def test_tiny_muon_run_learns_and_resumes(tmp_path_factory):
    # Scanned layers (Muon batches over the layers axis) and wsd; the nested optimizer state must checkpoint.
    workdir, losses, full, again = _tiny_run(tmp_path_factory, **{
        "train.optimizer": "muon", "model.scan_layers": True, "train.schedule": "wsd", "train.decay_shape": "linear"})
    # Lose everything after the checkpoint at step 3, as a kill at step 5 would, and start again.
    shutil.rmtree(os.path.join(workdir, "checkpoints", "6"))
    resumed = again()
    assert resumed["start_step"] == 3
    assert _losses(workdir) == losses  # bitwise on CPU in float32
    assert resumed["final_eval"]["eval/loss"] == full["final_eval"]["eval/loss"]


def test_tiny_lion_run_learns(tmp_path_factory):
    _tiny_run(tmp_path_factory, **{"train.optimizer": "lion", "train.learning_rate": 1e-3, "train.schedule": "wsd"})

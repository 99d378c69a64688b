"""Training: losses against hand formulas, the optimizer, the step (accumulation, jit), resume and errors."""

import json
import logging
import math
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from tests import helpers
from train import losses, optim, parallel
from train import step as step_lib

ARCHS = ("gpt", "bert", "t5")


def _np_log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_cross_entropy_matches_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 5, 11)).astype(np.float32) * 3
    targets = rng.integers(0, 11, size=(3, 5))
    weights = (rng.random((3, 5)) > 0.3).astype(np.float32)
    nbytes = rng.integers(0, 4, size=(3, 5))
    eps, zc = 0.1, 1e-3
    got = jax.device_get(losses.cross_entropy(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(weights),
                                              jnp.asarray(nbytes), label_smoothing=eps, z_loss=zc))
    logp = _np_log_softmax(logits.astype(np.float64))
    nll = -np.take_along_axis(logp, targets[..., None], -1)[..., 0]
    q = np.full(logits.shape, eps / 10)
    np.put_along_axis(q, targets[..., None], 1 - eps, -1)
    smooth = -(q * logp).sum(-1) + (q * np.log(q)).sum(-1)  # KL(q || p): zero for a perfect model
    log_z = np.log(np.exp(logits.astype(np.float64)).sum(-1))
    np.testing.assert_allclose(got["nll"], (nll * weights).sum(), rtol=1e-5)
    np.testing.assert_allclose(got["loss"], ((smooth + zc * log_z**2) * weights).sum(), rtol=1e-5)
    np.testing.assert_allclose(got["z_loss"], (zc * log_z**2 * weights).sum(), rtol=1e-5)
    assert got["correct"] == ((logits.argmax(-1) == targets) * weights).sum()
    assert got["weight"] == weights.sum()
    assert got["bytes"] == (nbytes * (weights > 0)).sum()


def test_bits_per_byte_by_hand():
    # A toy tokenizer whose 4 tokens cover 1, 2, 3 and 4 bytes; a uniform model pays ln 4 nats per token.
    token_bytes = np.array([1, 2, 3, 4])
    targets = np.array([[0, 1, 2, 3, 3, 0]])
    weights = np.array([[1, 1, 1, 1, 1, 0]], np.float32)
    sums = jax.device_get(losses.cross_entropy(jnp.zeros((1, 6, 4)), jnp.asarray(targets), jnp.asarray(weights),
                                               jnp.asarray(token_bytes[targets])))
    out = losses.token_metrics(sums, "eval")
    assert out["eval/bits_per_byte"] == pytest.approx(5 * 2.0 / (1 + 2 + 3 + 4 + 4))  # log2(4) = 2 bits a token
    assert out["eval/perplexity"] == pytest.approx(4.0)
    assert out["eval/loss"] == pytest.approx(math.log(4))


def test_schedule_warmup_and_cosine_end():
    tc = ml_collections.ConfigDict(dict(learning_rate=1.0, warmup_steps=10, steps=110, schedule="cosine",
                                        min_lr_ratio=0.1))
    lr = optim.schedule(tc)
    assert float(lr(0)) == 0.0 and float(lr(5)) == pytest.approx(0.5) and float(lr(10)) == pytest.approx(1.0)
    assert float(lr(110)) == pytest.approx(0.1)
    assert float(lr(60)) == pytest.approx(0.1 + 0.9 * 0.5, rel=1e-5)  # halfway down the cosine
    tc.schedule = "rsqrt"
    assert float(optim.schedule(tc)(30)) == pytest.approx((10 / 30) ** 0.5, rel=1e-5)


def test_mesh_shape_resolution_and_errors():
    cfg = ml_collections.ConfigDict(dict(data=-1, fsdp=2, tensor=1))
    assert parallel.mesh_shape(cfg, 8) == {"data": 4, "fsdp": 2, "tensor": 1}
    with pytest.raises(parallel.ParallelError, match="mesh.data"):
        parallel.mesh_shape(ml_collections.ConfigDict(dict(data=3, fsdp=1, tensor=1)), 8)
    with pytest.raises(parallel.ParallelError, match="does not divide"):
        parallel.mesh_shape(ml_collections.ConfigDict(dict(data=-1, fsdp=3, tensor=1)), 8)


def test_recompile_detector_names_the_change(caplog):
    compiled = parallel._Compiled("toy_step", jax.jit(lambda x: x * 2))
    compiled(jnp.zeros((2, 3)))
    compiled(jnp.ones((2, 3)))
    assert compiled.compiles == 1
    with caplog.at_level(logging.ERROR):
        compiled(jnp.zeros((2, 4)))
    assert compiled.compiles == 2
    assert "compiling a second time" in caplog.text and "(2, 3)" in caplog.text and "(2, 4)" in caplog.text


def one_layer(arch):
    """One block per stack: compiling the step (the cost of these tests) scales with the unrolled layers, and what
    they check (accumulated gradients, the runner's step) is per block."""
    return {"model.n_layers": 1, **({"model.n_decoder_layers": 1} if arch == "t5" else {})}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Data, model and runner per architecture (built once: tokenizer training is shared through the cache)."""
    from train import loop

    d = str(tmp_path_factory.mktemp("built"))
    configs = {arch: helpers.tiny_config(arch, d, **one_layer(arch)) for arch in ARCHS}
    configs["bert+nsp"] = helpers.tiny_config("bert", d, **one_layer("bert"), **{"objective.nsp": True})
    return {name: (config, *loop.build(config)) for name, config in configs.items()}


@pytest.mark.parametrize("arch", ARCHS)
def test_initial_loss_is_log_vocab(built, arch):
    from train import loop

    config, data, mcfg, model, runner = built[arch]
    state = runner.init(jax.random.key(0))
    out = loop.evaluate(runner, state, data, 2)
    # Near-zero logits at init give ln V per token. BERT sits slightly below: with tied embeddings the 10% of
    # targets left unchanged in the input get a small head start from their own embedding.
    assert out["eval/loss"] == pytest.approx(math.log(mcfg.vocab_size), abs=0.1)
    assert 0 < out["eval/bits_per_byte"] < 20


# bert+nsp runs BERT's masked-LM loss and its NSP head: plain BERT adds nothing here but the cost (slow suite).
@pytest.mark.parametrize("arch", ["gpt", pytest.param("bert", marks=pytest.mark.slow), "t5", "bert+nsp"])
def test_microbatches_equal_one_big_batch(built, arch):
    config, data, mcfg, model, runner = built[arch]
    config = config.copy_and_resolve_references()
    # A positive rate at step 0, and SGD, whose update is proportional to the gradient (Adam's first update is
    # about lr * sign(g), blind to a wrongly scaled gradient).
    config.train.warmup_steps, config.train.optimizer, config.train.momentum = 0, "sgd", 0.0
    config.train.learning_rate = 0.1
    tx, lr = optim.make(config.train)
    params = runner.init(jax.random.key(1)).params
    state = step_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))
    batch = jax.tree.map(jnp.asarray, data.train.batch(0))
    results = []
    for k in (1, 2):
        config.train.microbatches = k
        new, metrics = jax.jit(lambda s, b: step_lib.train_step(s, b, model=model, objective=runner.objective, tx=tx,
                                                                lr_schedule=lr,
                                                                config=config))(state, batch)
        results.append((new, metrics))
    (a, ma), (b, mb) = results
    np.testing.assert_allclose(ma["loss"], mb["loss"], rtol=1e-5)
    np.testing.assert_allclose(ma["grad_norm"], mb["grad_norm"], rtol=1e-4)
    delta = [jax.tree.map(lambda new, old: np.asarray(new - old), r[0].params, state.params) for r in results]
    # Every matrix took a step (a key bias need not: softmax ignores a shift shared by all keys).
    flat = jax.tree_util.tree_flatten_with_path(delta[0])[0]
    assert min(float(np.abs(v).max()) for p, v in flat if p[-1].key == "kernel") > 1e-5
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-3, atol=1e-8), *delta)


def test_runner_equals_plain_jit(built):
    """The runner's step (compiled ahead of time over the mesh, state donated) against a plain jax.jit."""
    config, data, mcfg, model, runner = built["gpt"]
    tx, lr = optim.make(config.train)
    plain_step = jax.jit(lambda s, b: step_lib.train_step(s, b, model=model, objective=runner.objective, tx=tx,
                                                          lr_schedule=lr, config=config))
    plain = runner.init(jax.random.key(2))  # each init compiles anew: one, and copies (the runner donates `ours`)
    initial = jax.device_get(plain.params)
    ours = jax.tree.map(lambda x: x.copy(), plain)
    for step in (3, 4):  # two steps: the first at warmup's rate 0, the second at a positive rate
        batch = data.train.batch(step)
        plain, mp = plain_step(plain, jax.tree.map(jnp.asarray, batch))
        ours, mo = runner.train(ours, batch)
        np.testing.assert_allclose(mp["loss"], mo["loss"], rtol=1e-6)
    assert float(mo["lr"]) > 0
    moved = jax.tree.map(lambda new, old: float(np.max(np.abs(np.asarray(new) - old))), ours.params, initial)
    assert min(jax.tree.leaves(moved)) > 1e-5
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7), plain.params, ours.params)
    assert int(ours.step) == 2


def _losses(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return {r["step"]: r["train/loss"] for r in map(json.loads, f) if "train/loss" in r}


# Resuming is the same code for every family: BERT and T5 run in the slow suite (with tests/test_e2e.py's kill -9).
@pytest.mark.parametrize("arch", ["gpt", pytest.param("bert", marks=pytest.mark.slow),
                                  pytest.param("t5", marks=pytest.mark.slow)])
def test_resume_reproduces_uninterrupted_run(tmp_path, arch):
    import shutil

    from train import loop

    config = helpers.tiny_config(arch, str(tmp_path))
    workdir = str(tmp_path / "run")
    full = loop.train_and_evaluate(config, workdir)
    uninterrupted = _losses(workdir)
    assert sorted(uninterrupted) == [1, 2, 3, 4, 5, 6] and full["compile_s"] > 0
    # Lose everything after the checkpoint at step 3, as a kill at step 5 would, and start again.
    shutil.rmtree(os.path.join(workdir, "checkpoints", "6"))
    resumed = loop.train_and_evaluate(config, workdir)
    assert resumed["start_step"] == 3
    assert _losses(workdir) == uninterrupted  # bitwise on CPU in float32
    assert resumed["final_eval"]["eval/loss"] == full["final_eval"]["eval/loss"]


def test_nonfinite_loss_stops_with_step_and_checkpoint(tmp_path):
    from train import loop
    from train.metrics import NonFiniteError

    config = helpers.tiny_config("gpt", str(tmp_path), **{"train.learning_rate": 1e12, "train.grad_clip": 0.0,
                                                           "train.warmup_steps": 0, "train.steps": 30})
    with pytest.raises(NonFiniteError, match=r"at step \d+; last good checkpoint"):
        loop.train_and_evaluate(config, str(tmp_path / "run"))


def _main(args, cwd, devices=1):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    return subprocess.run([sys.executable, "-m", "train.main", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env=env)


@pytest.mark.parametrize("flag,expect", [
    ("--config.data.train_files=/no/such/file.txt", "data.train_files"),
    ("--config.train.no_such_field=3", "no_such_field"),
    ("--config.train.batch_size=7", "train.batch_size"),
    ("--config.objective.nsp=True", "objective.nsp=True"),
])
def test_main_bad_input_is_one_line(tmp_path, flag, expect):
    corpus = helpers.small_corpus(str(tmp_path))
    r = _main(["--config=experiments/configs/gpt.py:tiny", f"--workdir={tmp_path}/run",
               f"--config.data.train_files={corpus}", "--config.data.vocab_size=512",
               f"--config.data.cache_dir={tmp_path}/cache", "--config.train.steps=2", flag], helpers.ROOT, devices=4)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    assert expect in r.stderr


def test_init_from_loads_the_trained_parameters(tmp_path):
    from train import checkpoint, loop

    config = helpers.tiny_config("gpt", str(tmp_path))
    first = loop.train_and_evaluate(config, str(tmp_path / "first"))
    config.init_from = str(tmp_path / "first")
    config.train.steps = 1
    config.train.learning_rate = 0.0
    config.train.warmup_steps = 0
    config.train.eval_every = 1
    second = loop.train_and_evaluate(config, str(tmp_path / "second"))
    # One step at learning rate 0 changes nothing: the second run evaluates the first run's final parameters.
    assert second["final_eval"]["eval/loss"] == pytest.approx(first["final_eval"]["eval/loss"], rel=1e-6)
    with pytest.raises(checkpoint.CheckpointError, match="init_from"):
        checkpoint.resolve(str(tmp_path / "missing"))
    # What train.sample and train.evaluate read of a trained run (tests/test_sample.py reads random parameters).
    from train.workdir import load_workdir

    saved, _, m, params, tok = load_workdir(str(tmp_path / "first"))
    assert saved.train.steps == 6 and tok.vocab_size == 512
    assert jax.tree.map(lambda x: (x.shape, x.dtype), params) == jax.tree.map(lambda x: (x.shape, x.dtype), (
        nn.meta.unbox(jax.eval_shape(m.init, jax.random.key(0), jnp.zeros((1, 1), jnp.int32))["params"])))

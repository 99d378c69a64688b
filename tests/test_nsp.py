"""Next-sentence prediction (objective.nsp): pairs checked against the token stream, the head against a hand
computation, the loss and its gradient against MLM mean + NSP mean, HF import/export, and the errors."""

import functools
import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from data import objectives, pipeline
from data.errors import DataError
from experiments.configs import base
from model import build, flops
from model.config import ConfigError, ModelConfig
from tests import helpers
from tests.test_data_common import make_config, write_corpus
from tests.test_data_objectives import TOK
from tests.test_model_models import fake_variables, jit

NSP = {"objective.nsp": True}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("nsp_corpus")
    return write_corpus(d), str(d / "cache")


@pytest.fixture(scope="module")
def data(corpus):
    return pipeline.build(make_config("bert", *corpus, **NSP))


def _segments(targets, token_types):
    """(A, B) token arrays of one [CLS] A [SEP] B [SEP] row."""
    first_b = np.flatnonzero(token_types)[0]
    return targets[1 : first_b - 1], targets[first_b:-1]


def _occurs(stream, seq) -> bool:
    """seq is a contiguous run of stream."""
    starts = np.flatnonzero(stream[: len(stream) - len(seq) + 1] == seq[0])
    return bool((stream[starts[:, None] + np.arange(len(seq))] == seq).all(1).any())


# ---------------------------------------------------------------------------------------------- data


def test_b_follows_a_in_the_stream_exactly_when_the_label_says_so(data):
    for split in (data.train, data.val):
        stream = np.asarray(split.tokens)
        for step in range(3):
            b = split.batch(step)
            for i, label in enumerate(b["nsp_labels"]):
                a_tok, b_tok = _segments(b["targets"][i], b["token_types"][i])
                assert _occurs(stream, np.concatenate([a_tok, b_tok])) == bool(label), (split.name, step, i)
                assert _occurs(stream, a_tok) and _occurs(stream, b_tok)  # a random B comes from the same split


def test_layout_types_and_masking(data):
    tok, L = data.tokenizer, 32
    T, m = L - 3, objectives.nsp_min_segment(L - 3)
    for step in range(4):
        b = data.train.batch(step)
        assert b["token_types"].dtype == np.int32 and b["nsp_labels"].dtype == np.int32
        for t, types, w, inp in zip(b["targets"], b["token_types"], b["weights"], b["inputs"], strict=True):
            seps = np.flatnonzero(t == tok.sep_id)
            a = seps[0] - 1
            assert t[0] == tok.cls_id and list(seps) == [a + 1, L - 1] and (t != tok.pad_id).all()
            assert m <= a <= T - m
            np.testing.assert_array_equal(types, [0] * (a + 2) + [1] * (L - a - 2))
            special = tok.is_special[t]
            assert not (w[special] > 0).any(), "[CLS], [SEP], eos or pad selected for MLM"
            assert w.sum() == max(1, np.floor(0.15 * (~special).sum() + 0.5))
            np.testing.assert_array_equal(inp[w == 0], t[w == 0])


def test_labels_are_balanced_and_give_nothing_else_away():
    """Over many rows: half IsNext; B's length and whether B starts a document do not depend on the label."""
    B, T = 4000, 61
    rng = np.random.default_rng(0)
    w = rng.integers(107, 2000, (B, 3 * T)).astype(np.int32)
    w[rng.random(w.shape) < 0.05] = TOK.eos_id  # documents of about 20 tokens
    b = objectives.nsp(w, [np.random.default_rng([1, i]) for i in range(B)], TOK, 0.15, 0.8, 0.1, None)
    labels = b["nsp_labels"]
    assert abs(labels.mean() - 0.5) < 0.03
    first_b = np.argmax(b["token_types"], axis=1)
    b_len = T + 3 - first_b - 1
    doc_start = b["targets"][np.arange(B), first_b - 2] == TOK.eos_id  # A ends with eos: B starts a document
    assert 0.5 < doc_start.mean() < 1  # mostly cut at documents, both kinds present
    for stat, tol in ((b_len, 1.0), (doc_start, 0.03)):
        assert abs(stat[labels == 1].mean() - stat[labels == 0].mean()) < tol
    for i in range(B):  # IsNext: B is the rest of the row's window; NotNext: a run of the random window
        a_tok, b_tok = _segments(b["targets"][i], b["token_types"][i])
        np.testing.assert_array_equal(a_tok, w[i, : len(a_tok)])
        if labels[i]:
            np.testing.assert_array_equal(b_tok, w[i, len(a_tok) : T])
        else:
            assert _occurs(w[i, T:], b_tok)


def test_rows_depend_only_on_their_own_rng():
    import ml_collections

    cfg = ml_collections.ConfigDict(dict(
        objective=dict(name="mlm", mask_rate=0.15, mask_token_frac=0.8, random_token_frac=0.1, whole_word=False,
                       nsp=True), data=dict(seq_len=40, document_mask=False), model=dict(arch="bert")))
    obj = objectives.build(cfg, TOK)
    assert (obj.window_len, obj.random_len) == (37, 74)
    w = np.random.default_rng(0).integers(107, 2000, (6, obj.window_len + obj.random_len)).astype(np.int32)
    w[:, ::9] = TOK.eos_id
    r = lambda s: [np.random.default_rng([0, i]) for i in range(6)[s]]
    whole = obj(w, r(slice(0, 6)))
    halves = [obj(w[s], r(s)) for s in (slice(0, 2), slice(2, 6))]
    for k, v in whole.items():
        np.testing.assert_array_equal(v, np.concatenate([h[k] for h in halves]))
        assert v.shape[1:] == obj.shapes[k][0] and v.dtype == obj.shapes[k][1]


def test_process_slices_concatenate_to_the_global_batch(corpus, data):
    parts = [pipeline.build(make_config("bert", *corpus, **NSP), p, 2) for p in range(2)]
    for split in ("train", "val"):
        whole = getattr(data, split).batch(3)
        local = [getattr(d, split).batch(3) for d in parts]
        for k in whole:
            np.testing.assert_array_equal(whole[k], np.concatenate([b[k] for b in local]), err_msg=k)


@pytest.mark.parametrize("arch, kw, pattern", [
    ("gpt", {}, r"objective\.nsp=True .*needs model\.arch='bert' and objective\.name='mlm'.*'gpt'"),
    ("t5", {}, r"objective\.nsp=True .*'t5'.*'span_corruption'.*set objective\.nsp=False"),
    ("bert", {"data.seq_len": 7}, r"data\.seq_len=7 is too short for mlm with objective\.nsp; use at least 8"),
])
def test_bad_settings_name_the_flag(arch, kw, pattern, corpus):
    with pytest.raises(DataError, match=pattern):
        pipeline.build(make_config(arch, *corpus, **NSP, **kw))


def test_model_config_error_names_objective_nsp():
    with pytest.raises(ConfigError, match=r"model\.nsp_head=True .*objective\.nsp.*model\.arch='bert'"):
        ModelConfig(arch="gpt", nsp_head=True)
    c = base.base_config("t5")
    c.objective.nsp = True  # model.nsp_head follows it
    assert c.model.nsp_head is True and c.to_dict()["model"]["nsp_head"] is True


# ---------------------------------------------------------------------------------------------- model

CFG = ModelConfig(arch="bert", vocab_size=60, d_model=16, n_heads=2, d_ff=32, n_layers=2, max_len=12, nsp_head=True)


def _ids(B=3, L=12):
    x = np.random.default_rng(0).integers(1, 60, (B, L)).astype(np.int32)
    return jnp.asarray(x), jnp.asarray((np.arange(L) >= 5).astype(np.int32)[None].repeat(B, 0))


def test_nsp_logits_equal_a_hand_computation():
    model, (x, types) = build(CFG), _ids()
    params = fake_variables(model, x)["params"]

    @jit
    def outputs(params):
        apply = functools.partial(model.apply, {"params": params})
        return (*apply(x, token_types=types, method="mlm_and_nsp"), apply(x, token_types=types),
                apply(x, token_types=types, method="features"), apply(x, method="features"))

    mlm, nsp, mlm_call, h, h_no_types = outputs(params)
    h, p = np.asarray(h, np.float64), jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    pooled = np.tanh(h[:, 0] @ p["pooler"]["kernel"] + p["pooler"]["bias"])
    want = pooled @ p["nsp"]["kernel"] + p["nsp"]["bias"]
    assert nsp.shape == (3, 2) and nsp.dtype == jnp.float32
    np.testing.assert_allclose(nsp, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(mlm, mlm_call)  # __call__ gives the MLM logits alone
    assert p["type_embed"]["embedding"].shape == (2, 16)  # type_vocab_size 0 resolves to 2 with the NSP head
    assert not np.allclose(h, h_no_types)  # and the token types are used


def test_parameter_trees_and_counts():
    x, _ = _ids()
    tree = lambda cfg: jax.tree.map(lambda a: a.shape, nn.meta.unbox(
        jax.eval_shape(build(cfg).init, jax.random.key(0), x)["params"]))
    off, on = tree(CFG.replace(nsp_head=False, type_vocab_size=2)), tree(CFG)
    assert set(off) == {"embed", "type_embed", "encoder"} and tree(CFG.replace(nsp_head=False)).keys() == {
        "embed", "encoder"}
    assert on == {**off, "pooler": {"kernel": (16, 16), "bias": (16,)}, "nsp": {"kernel": (16, 2), "bias": (2,)}}
    for cfg in (CFG, CFG.replace(use_bias=False), CFG.replace(nsp_head=False)):
        assert flops.param_count(cfg) == sum(np.prod(s) for s in jax.tree.leaves(tree(cfg), is_leaf=lambda s: (
            isinstance(s, tuple))))
    head = lambda cfg: flops.flops_per_example(cfg, 12)["head"]
    assert head(CFG) - head(CFG.replace(nsp_head=False, type_vocab_size=2)) == 2 * 16 * 16 + 2 * 16 * 2


# ---------------------------------------------------------------------------------------------- train


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    from train import loop

    config = helpers.tiny_config("bert", str(tmp_path_factory.mktemp("nsp_train")), **NSP)
    return (config, *loop.build(config))


def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_loss_is_mlm_mean_plus_nsp_mean_and_its_gradient(built):
    config, data, mcfg, model, runner = built
    params = fake_variables(model, jnp.asarray(data.train.batch(0)["inputs"]))["params"]
    batch = jax.tree.map(jnp.asarray, data.train.batch(0))
    inputs = dict(inputs=batch["inputs"], token_types=batch["token_types"])

    def ours(p):
        s = runner.objective.loss_sums(model, p, batch, None, False, runner.objective.constants(batch))
        return s["loss"] / s["weight"], s

    def reference(p):
        m, n = model.apply({"params": p}, **inputs, method="mlm_and_nsp")
        m_nll = -jnp.take_along_axis(jax.nn.log_softmax(m), batch["targets"][..., None], -1)[..., 0]
        n_nll = -jnp.take_along_axis(jax.nn.log_softmax(n), batch["nsp_labels"][:, None], -1)
        return jnp.sum(m_nll * batch["weights"]) / jnp.sum(batch["weights"]) + jnp.mean(n_nll), (m, n)

    @jit
    def both(p):
        return jax.grad(ours, has_aux=True)(p), jax.grad(reference, has_aux=True)(p)

    (g_ours, sums), (g_ref, logits) = both(params)
    mlm, nsp = (np.asarray(a, np.float64) for a in logits)
    t, w, y = np.asarray(batch["targets"]), np.asarray(batch["weights"]), np.asarray(batch["nsp_labels"])
    mlm_mean = -(np.take_along_axis(_log_softmax(mlm), t[..., None], -1)[..., 0] * w).sum() / w.sum()
    nsp_mean = -np.take_along_axis(_log_softmax(nsp), y[:, None], -1).mean()
    out = runner.objective.summarize(jax.device_get(sums), "eval")
    assert out["eval/loss"] == pytest.approx(mlm_mean + nsp_mean, rel=1e-5)
    assert out["eval/nll"] == pytest.approx(mlm_mean, rel=1e-5)
    assert out["eval/nsp_loss"] == pytest.approx(nsp_mean, rel=1e-5)
    assert out["eval/nsp_accuracy"] == np.mean(nsp.argmax(-1) == y)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7), g_ours, g_ref)
    assert np.abs(g_ours["nsp"]["kernel"]).max() > 0 and np.abs(g_ours["pooler"]["kernel"]).max() > 0


def test_training_logs_nsp_metrics(built, tmp_path):
    from train import loop

    config = built[0].copy_and_resolve_references()
    config.train.steps, config.train.eval_every, config.train.eval_steps = 1, 1, 1
    summary = loop.train_and_evaluate(config, str(tmp_path / "run"))
    with open(tmp_path / "run" / "metrics.jsonl") as f:
        rows = [json.loads(line) for line in f]
    train_rows, eval_rows = [r for r in rows if "train/loss" in r], [r for r in rows if "eval/loss" in r]
    assert train_rows and eval_rows
    for r in train_rows:
        assert 0 <= r["train/nsp_accuracy"] <= 1 and r["train/nsp_loss"] > 0
        assert r["train/loss"] == pytest.approx(r["train/nll"] + r["train/nsp_loss"], rel=1e-5)
    assert {"eval/nsp_accuracy", "eval/nsp_loss"} <= eval_rows[-1].keys()
    assert summary["final_eval"]["eval/nsp_accuracy"] == eval_rows[-1]["eval/nsp_accuracy"]
    with open(tmp_path / "run" / "config.json") as f:
        assert json.load(f)["model_config"]["nsp_head"] is True
    assert summary["params"] == flops.param_count(built[2])


@pytest.mark.slow
def test_meshes_and_pmap_match_one_device(tmp_path):
    """The NSP normaliser is taken over the global batch: data/tensor-parallel meshes and pmap (8 fake devices)
    give the one-device losses."""
    settings = ("one", "data=8", "data=2,fsdp=2,tensor=2", "pmap")
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    r = subprocess.run([sys.executable, "-m", "tests.mesh_worker", "bert+nsp", str(tmp_path), "4", *settings],
                       cwd=helpers.ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    runs = json.loads(r.stdout.strip().splitlines()[-1])
    for setting in settings[1:]:
        np.testing.assert_allclose(runs[setting]["losses"], runs["one"]["losses"], rtol=1e-5, err_msg=setting)


# ---------------------------------------------------------------------------------------------- HF


def test_hf_bert_for_pretraining_round_trips_with_hf_class_order(tmp_path):
    from model.hf_convert import export_hf, import_hf

    src = os.path.join(helpers.ROOT, "tests", "fixtures", "hf", "bert")
    t = load_file(os.path.join(src, "model.safetensors"))
    D = t["bert.embeddings.word_embeddings.weight"].shape[1]
    rng = np.random.default_rng(0)
    hf = {"bert.pooler.dense.weight": rng.normal(size=(D, D)), "bert.pooler.dense.bias": rng.normal(size=D),
          "cls.seq_relationship.weight": rng.normal(size=(2, D)), "cls.seq_relationship.bias": rng.normal(size=2)}
    hf = {k: v.astype(np.float32) for k, v in hf.items()}
    d = tmp_path / "pretraining"
    d.mkdir()
    with open(os.path.join(src, "config.json")) as f, open(d / "config.json", "w") as g:
        g.write(f.read())
    save_file({**t, **hf}, str(d / "model.safetensors"), metadata={"format": "pt"})
    cfg, params = import_hf(str(d))
    assert cfg.nsp_head and cfg == import_hf(src)[0].replace(nsp_head=True)
    x, types = _ids(2, 8)
    apply = jit(lambda p: build(cfg).apply({"params": p}, x, token_types=types, method="mlm_and_nsp")[1:]
                    + (build(cfg).apply({"params": p}, x, token_types=types, method="features"),))
    nsp, h = apply(params)
    h = np.asarray(h, np.float64)
    pooled = np.tanh(h[:, 0] @ hf["bert.pooler.dense.weight"].T + hf["bert.pooler.dense.bias"])
    hf_logits = pooled @ hf["cls.seq_relationship.weight"].T + hf["cls.seq_relationship.bias"]  # 0 = IsNext
    np.testing.assert_allclose(nsp, hf_logits[:, ::-1], rtol=1e-4, atol=1e-5)
    export_hf(cfg, params, str(tmp_path / "out"))
    back = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert all(np.array_equal(back[k], v) for k, v in hf.items())
    with open(tmp_path / "out" / "config.json") as f:
        assert json.load(f)["architectures"] == ["BertForPreTraining"]
    cfg2, params2 = import_hf(str(tmp_path / "out"))
    assert cfg2 == cfg and all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(params2),
                                                                    jax.tree.leaves(params), strict=True))

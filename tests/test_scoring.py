"""model/scoring.py against one-row-at-a-time references, and the zero-shot pair accuracy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import probes
from model import build, scoring
from model import config as model_config

V, CLS, SEP, MASK, EOS = 64, 5, 6, 4, 1


def _model(arch):
    cfg = model_config.ModelConfig(arch=arch, vocab_size=V, d_model=32, n_heads=2, d_ff=64, n_layers=2,
                                   max_len=16)
    model = build(cfg)
    dummy = jnp.zeros((1, 4), jnp.int32)
    params = model.init(jax.random.key(1), *((dummy, dummy) if arch == "t5" else (dummy,)))["params"]
    return model, params


def _log_softmax(x):
    x = np.asarray(x, np.float64)
    return x - x.max() - np.log(np.exp(x - x.max()).sum())


def _rows():
    rng = np.random.default_rng(0)
    contexts = [[], list(rng.integers(10, V, 3)), list(rng.integers(10, V, 5)), []]
    targets = [list(rng.integers(10, V, 4)), list(rng.integers(10, V, 2)), list(rng.integers(10, V, 6)), [11]]
    return [[int(i) for i in c] for c in contexts], [[int(i) for i in t] for t in targets]


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(scoring, "_TOKENS", 24)  # several compiled calls of 1-3 rows, lengths 8 and 16, padded ones


def test_causal_scores_are_the_chain_rule_over_unpadded_prefixes(small_chunks):
    model, params = _model("gpt")
    contexts, targets = _rows()
    got = scoring.causal_scores(model, params, contexts, targets, start_id=EOS)
    apply = jax.jit(lambda p, x: model.apply({"params": p}, x))
    for n, (c, t) in enumerate(zip(contexts, targets, strict=True)):
        want = 0.0
        for j, token in enumerate(t):
            prefix = jnp.asarray([[EOS, *c, *t[:j]]], jnp.int32)  # exactly the prefix, no padding
            want += _log_softmax(apply(params, prefix)[0, -1])[token]
        assert got[n] == pytest.approx(want, abs=1e-4), n


@pytest.mark.parametrize("arch", ["bert", "t5"])
def test_pseudo_scores_mask_one_token_at_a_time(arch, small_chunks):
    model, params = _model(arch)
    contexts, targets = _rows()
    kw = dict(mask_id=MASK, end_id=SEP, cls_id=CLS) if arch == "bert" else dict(mask_id=7, end_id=EOS)
    got = scoring.pseudo_scores(model, params, contexts, targets, **kw)
    apply = jax.jit(lambda p, *x: model.apply({"params": p}, *x))
    for n, (c, t) in enumerate(zip(contexts, targets, strict=True)):
        want = 0.0
        for j, token in enumerate(t):
            hidden = [*c, *t[:j], kw["mask_id"], *t[j + 1:]]
            if arch == "bert":
                row = jnp.asarray([[CLS, *hidden, SEP]], jnp.int32)
                logits = apply(params, row)[0, 1 + len(c) + j]
            else:
                row = jnp.asarray([[*hidden, EOS]], jnp.int32)
                logits = apply(params, row, jnp.asarray([[0, 7]], jnp.int32))[0, 1]
            want += _log_softmax(logits)[token]
        assert got[n] == pytest.approx(want, abs=1e-4), (arch, n)


def test_scoring_refuses_rows_longer_than_max_len_and_the_wrong_architecture():
    model, params = _model("gpt")
    with pytest.raises(model_config.ConfigError, match="more than the model's max_len=16"):
        scoring.causal_scores(model, params, [[]], [[10] * 16], start_id=EOS)
    with pytest.raises(model_config.ConfigError, match="use causal_scores"):
        scoring.pseudo_scores(model, params, [[]], [[10]], mask_id=MASK, end_id=SEP)


def test_pair_accuracy_counts_true_first_pairs_and_half_ties():
    assert probes.pair_accuracy([2.0, 1.0, 0.0, 3.0, 1.0, 1.0, -1.0, -2.0]) == pytest.approx((1 + 0 + 0.5 + 1) / 4)
    with pytest.raises(ValueError, match="not a non-empty list of pairs"):
        probes.pair_accuracy([1.0, 2.0, 3.0])
    # Each pair's result, as the per-pair files keep them for the report's paired bootstrap.
    assert probes.pair_correct([2.0, 1.0, 0.0, 3.0, 1.0, 1.0, -1.0, -2.0]) == [1.0, 0.0, 0.5, 1.0]

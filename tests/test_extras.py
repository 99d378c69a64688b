"""Extras as ablatable switches: sliding-window attention, whole-word masking, int8 evaluation, embedding probes
and attention maps."""

from pathlib import Path

import numpy as np
import pytest

import model
from data import objectives
from model import masks
from tests.test_data_objectives import FakeTok
from tests.test_data_objectives import rngs as fake_rngs
from tests.test_data_objectives import windows as fake_windows
from tests.test_model_models import B, L, args_for, decode_stepwise, dependence, fake_variables, tiny, tokens

# ---- 1. Sliding-window attention -----------------------------------------------------------------------------


def test_window_mask_is_local():
    causal = np.asarray(masks.window(6, None, 3))[0, 0]
    q, k = np.meshgrid(np.arange(6), np.arange(6), indexing="ij")
    np.testing.assert_array_equal(causal, (k <= q) & (k > q - 3))
    both = np.asarray(masks.window(6, None, 3, causal=False))[0, 0]
    np.testing.assert_array_equal(both, np.abs(q - k) < 3)


def test_the_modern_suite_says_how_far_its_window_reaches():
    # attention_window=n keeps |q - k| < n in a bidirectional stack: n - 1 keys on each side of the query.
    import re

    from experiments.suites import modern

    n = modern.MODERN["bert-modern"]["overrides"]["model.attention_window"]
    side = int(re.search(r"(\d+) each side here", " ".join(modern.__doc__.split()))[1])
    row = np.asarray(masks.window(4 * n, None, n, causal=False))[0, 0, 2 * n]
    keys = np.flatnonzero(row)
    assert (2 * n - keys.min(), keys.max() - 2 * n) == (side, side) == (n - 1, n - 1)


def test_window_must_be_non_negative():
    with pytest.raises(model.ConfigError, match="model.attention_window"):
        tiny(attention_window=-1)


@pytest.mark.parametrize("arch", ["gpt", "bert", "t5"])
def test_window_as_long_as_the_sequence_is_full_attention(arch):
    cfg = tiny(arch)
    m, args = model.build(cfg), args_for(cfg)
    v = fake_variables(m, *args)
    full = np.asarray(m.apply(v, *args))
    np.testing.assert_array_equal(np.asarray(model.build(cfg.replace(attention_window=L)).apply(v, *args)), full)
    assert not np.allclose(model.build(cfg.replace(attention_window=4)).apply(v, *args), full, atol=1e-3)


def test_windowed_gpt_is_causal_and_local():
    n = 3  # Two layers: a logit sees tokens up to 2 * (n - 1) positions back, nothing further.
    m = model.build(tiny("gpt", attention_window=n))
    x = tokens(2)
    d = dependence(lambda v: m.apply(v, x), fake_variables(m, x, perturb=True))["decoder"]
    t, s = np.meshgrid(np.arange(L), np.arange(L), indexing="ij")
    seen = (s <= t) & (t - s <= 2 * (n - 1))
    for b in range(B):
        assert (d[b, :, b][~seen] == 0).all(), "a logit depends on a later token or one beyond the window"
        assert (d[b, :, b][seen] > 0).all()
    assert d[0, L - 1, 0, 0] == 0


def test_windowed_bert_is_local_both_ways():
    m = model.build(tiny("bert", attention_window=2))
    x = tokens(2)
    d = dependence(lambda v: m.apply(v, x), fake_variables(m, x, perturb=True))["encoder"]
    t, s = np.meshgrid(np.arange(L), np.arange(L), indexing="ij")
    np.testing.assert_array_equal(d[0, :, 0] > 0, np.abs(t - s) <= 2)


def test_windowed_kv_cache_matches_full_forward():
    cfg = tiny("gpt", attention_window=3)
    m = model.build(cfg)
    v = fake_variables(m, *args_for(cfg))
    np.testing.assert_allclose(decode_stepwise(m, v, cfg, [1] * L), m.apply(v, *args_for(cfg)), atol=2e-5)
    np.testing.assert_allclose(decode_stepwise(m, v, cfg, [3, 5]), m.apply(v, *args_for(cfg)), atol=2e-5)


# ---- 2. Whole-word masking -----------------------------------------------------------------------------------

class WordTok(FakeTok):
    """FakeTok whose pieces with id % 3 == 0 begin a word ('\u2581' marker)."""

    def id_to_piece(self, i):
        return ("\u2581" if i % 3 == 0 else "") + f"p{i}"


def test_whole_word_masking_selects_whole_words_at_the_rate():
    tok, B, L = WordTok(), 1000, 64
    w = fake_windows(B, L - 2)
    b = objectives.mlm(w, fake_rngs(B), tok, 0.15, 0.8, 0.1, word_start=objectives.word_starts(tok))
    t, sel = b["targets"], b["weights"] > 0
    special = tok.is_special[t]
    assert not (sel & special).any()
    starts = ~special & ((t % 3 == 0) | np.concatenate([np.ones((B, 1), bool), special[:, :-1]], 1))
    word = np.cumsum(starts, axis=1)
    n_words = 0
    for r in range(B):
        for wid in np.unique(word[r][sel[r]]):
            piece = (word[r] == wid) & ~special[r]
            assert sel[r][piece].all(), "a word is only partly selected"
            n_words += 1
    rate = sel.sum() / (~special).sum()
    assert abs(rate - 0.15) < 0.01, rate
    # 80/10/10 per word: a word's pieces are all [MASK], all kept, or all random (none [MASK], not all kept).
    masked, kept, other = 0, 0, 0
    for r in range(B):
        for wid in np.unique(word[r][sel[r]]):
            piece = (word[r] == wid) & ~special[r]
            x = b["inputs"][r][piece]
            if (x == tok.mask_id).all():
                masked += 1
            elif (x == t[r][piece]).all():
                kept += 1
            else:
                assert not (x == tok.mask_id).any(), "a word mixes [MASK] with other treatments"
                other += 1
    total = masked + kept + other
    assert total == n_words > 4000
    assert abs(masked / total - 0.8) < 0.03 and abs(kept / total - 0.1) < 0.02 and abs(other / total - 0.1) < 0.02


def test_whole_word_treats_document_starts_as_word_starts():
    tok = WordTok()
    start = objectives.word_starts(tok)
    t = np.array([[tok.cls_id, 200, 202, 203, tok.eos_id, 301, 302, 303, tok.sep_id]])
    cand = ~tok.is_special[t]
    sel, word = objectives._select_words(t, cand, start, np.zeros((1, 9)), np.array([3]))
    np.testing.assert_array_equal(word[0, 1:4], 1)  # '200' starts the first document's first word.
    np.testing.assert_array_equal(word[0, 5:8], [5, 5, 7])  # After eos; '303' has the word marker.
    assert sel.sum() == 3


# ---- 3-5. Int8 evaluation, embedding probes and attention maps on one workdir ----------------------------------
# (random parameters in a workdir as train.main writes it: what these read needs no training; tests/test_sample.py
# reads a trained one)

@pytest.fixture(scope="module")
def gpt_workdir(tmp_path_factory):
    from tests.helpers import untrained_workdir

    d = tmp_path_factory.mktemp("extras")
    return untrained_workdir("gpt", str(d / "data"), str(d / "wd"), **{"data.seq_len": 16})


def test_quantize_error_is_at_most_half_a_step():
    from model import quantize

    rng = np.random.default_rng(0)
    params = {"embed": {"embedding": rng.normal(size=(50, 8)).astype(np.float32)},
              "mlp": {"wi": {"kernel": rng.normal(size=(8, 16)).astype(np.float32),
                             "bias": rng.normal(size=(16,)).astype(np.float32)}},
              "attn": {"query": {"kernel": rng.normal(size=(8, 2, 4)).astype(np.float32)}}}
    q, s = quantize.quantize(params)
    back = quantize.dequantize(q, s)
    assert q["mlp"]["wi"]["kernel"].dtype == np.int8 and s["mlp"]["wi"]["kernel"].shape == (1, 16)
    assert s["embed"]["embedding"].shape == (50, 1) and s["mlp"]["wi"]["bias"] is None
    np.testing.assert_array_equal(back["mlp"]["wi"]["bias"], params["mlp"]["wi"]["bias"])
    for path in (("embed", "embedding"), ("mlp", "wi", "kernel"), ("attn", "query", "kernel")):
        w, b, sc = params, back, s
        for k in path:
            w, b, sc = w[k], b[k], sc[k]
        assert (np.abs(np.asarray(b) - w) <= np.asarray(sc) / 2 + 1e-7).all()
    stored, small = quantize.weight_bytes(params)
    assert stored == 4 * (400 + 128 + 16 + 64) and small == (400 + 4 * 50) + (128 + 4 * 16) + 4 * 16 + (64 + 4 * 4)


def test_int8_eval_loss_is_within_two_percent_of_float(gpt_workdir):
    from train import evaluate

    r = evaluate.evaluate_workdir(gpt_workdir, "int8", eval_steps=1)
    assert abs(r["int8/loss"] - r["float/loss"]) < 0.02 * r["float/loss"]
    assert "int8/bits_per_byte" in r and r["weight_bytes/int8"] < 0.35 * r["weight_bytes/float"]
    assert any("int8 loss change" in line for line in evaluate.report(r))


def test_shuffled_encoder_loss_matches_a_direct_forward_pass(gpt_workdir, tmp_path):
    """train.evaluate --shuffle_encoder: the loss of the same targets with row i's encoder input taken from row i+1,
    against model.apply on hand-rolled inputs; refused for a model without an encoder."""
    import jax
    import optax

    from data import pipeline
    from tests.helpers import untrained_workdir
    from train import errors, evaluate
    from train.workdir import load_workdir

    wd = untrained_workdir("t5", str(tmp_path / "data"), str(tmp_path / "t5"))
    r = evaluate.evaluate_workdir(wd, eval_steps=1, shuffle_encoder=True)
    config, _, model, params, _ = load_workdir(wd)
    b = pipeline.build(config).val.batch(0)
    apply = jax.jit(lambda p, x, y: model.apply({"params": p}, x, y))

    def loss(encoder_inputs):
        logits = apply(params, encoder_inputs, b["decoder_inputs"])
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, b["targets"])
        return float((ce * b["weights"]).sum() / b["weights"].sum())

    rolled = np.concatenate([b["encoder_inputs"][1:], b["encoder_inputs"][:1]])
    np.testing.assert_allclose([r["float/loss"], r["shuffled/loss"]], [loss(b["encoder_inputs"]), loss(rolled)],
                               rtol=1e-5)
    assert r["shuffled/loss"] != r["float/loss"]
    assert any("encoder use" in line for line in evaluate.report(r))
    with pytest.raises(errors.UserError, match="encoder-decoder"):
        evaluate.evaluate_workdir(gpt_workdir, shuffle_encoder=True)


def test_embedding_neighbours_and_analogy(gpt_workdir):
    from train import sample

    lines = []
    sample.sample(gpt_workdir, out=lines.append, neighbours="Moses", analogy="man:king::woman", top_k=5)
    text = "\n".join(lines)
    assert "nearest to" in text and "averaged over its" in text  # 'king' is several tokens at vocab 512.
    hits = lines[1].split(", ")
    assert len(hits) == 5


def test_attention_maps_shapes_and_causality(gpt_workdir, tmp_path, monkeypatch):
    import json

    from train import introspect, sample

    drawn = {}
    real = introspect.write_attention_png
    monkeypatch.setattr(introspect, "write_attention_png",
                        lambda path, maps, labels: (drawn.update(maps=maps, labels=labels), real(path, maps, labels)))
    png = tmp_path / "att.png"
    lines = []
    sample.sample(gpt_workdir, out=lines.append, text="And God said", attention_png=str(png))
    cfg = json.loads((Path(gpt_workdir) / "config.json").read_text())["model_config"]
    maps, (rows, cols) = drawn["maps"], drawn["labels"]["self-attention"]
    n = len(rows)  # eos + the text's tokens, as in training
    assert list(maps) == ["self-attention"] and n == len(cols) > 3
    assert maps["self-attention"].shape == (cfg["n_layers"], cfg["n_heads"], n, n)
    np.testing.assert_allclose(maps["self-attention"].sum(-1), 1, atol=1e-5)  # each query's weights are a softmax
    above = np.triu(np.ones((n, n), bool), 1)
    assert (maps["self-attention"][..., above] == 0).all() and (maps["self-attention"][..., ~above] > 0).all()
    assert png.stat().st_size > 1000 and f"{cfg['n_layers']} layers x {cfg['n_heads']} heads" in lines[-1]


def test_attention_maps_gpt_lower_triangular_bert_not():
    from train import introspect

    for arch in ("gpt", "bert", "t5"):
        cfg = tiny(arch)
        m = model.build(cfg)
        args = args_for(cfg)
        maps = introspect.attention_maps(m, fake_variables(m, *args)["params"], cfg, args)
        first = next(iter(maps.values()))
        assert first.shape == (2, cfg.n_heads, L, L)
        np.testing.assert_allclose(first.sum(-1), 1, atol=1e-5)
        above = np.triu(np.ones((L, L), bool), 1)
        if arch == "gpt":
            assert list(maps) == ["self-attention"] and (first[..., above] == 0).all()
        elif arch == "bert":
            assert list(maps) == ["encoder self-attention"] and (first[..., above] > 0).any()
        else:
            assert list(maps) == ["encoder self-attention", "decoder self-attention", "cross-attention"]
            assert (maps["decoder self-attention"][..., above] == 0).all()

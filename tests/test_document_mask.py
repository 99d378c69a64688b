"""Document masking (data.document_mask): segment ids from the store's document starts, attention kept inside a
document (by gradient), positions restarting at each (equal to running each document alone), for GPT, BERT and the
T5 encoder."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import model
from data import corpus, objectives, spans
from model import masks
from model import positions as pos
from tests.helpers import objective_config, tiny_config
from tests.test_data_objectives import TOK, V
from tests.test_data_objectives import rngs as fake_rngs
from tests.test_model_models import B, L, dependence, fake_variables, tiny
from tests.test_model_models import V as MODEL_V

# ---- masks and positions -----------------------------------------------------------------------------------


def test_segment_mask_and_positions_by_hand():
    seg = np.array([[0, 0, 1, 1, 1, 2], [5, 5, 5, 5, 5, 5]])
    np.testing.assert_array_equal(pos.segment_positions(seg), [[0, 1, 0, 1, 2, 0], [0, 1, 2, 3, 4, 5]])
    m = np.asarray(masks.segment(seg, seg))
    assert m.shape == (2, 1, 6, 6)
    np.testing.assert_array_equal(m[0, 0], seg[0][:, None] == seg[0][None, :])
    assert m[1].all()


# ---- the model: a logit never depends on another document; each document as if alone -------------------------


def segments(seed=0):
    """(B, L) non-decreasing segment ids with 2-3 documents per row."""
    rng = np.random.default_rng(seed)
    out = np.zeros((B, L), np.int32)
    for b in range(B):
        cuts = np.sort(rng.choice(np.arange(1, L), size=2, replace=False))
        out[b, cuts[0]:], out[b, cuts[1]:] = 1, 2
    return out


def ids(seed=2):
    return jnp.asarray(np.random.default_rng(seed).integers(7, MODEL_V, (B, L)), jnp.int32)


POSITIONS = ["learned", "rope", "alibi", "t5_relative", "sinusoidal"]


@pytest.mark.parametrize("arch", ["gpt", "bert", "t5"])
def test_a_logit_never_depends_on_another_document(arch):
    seg, x = segments(), ids()
    cfg = tiny(arch)
    m = model.build(cfg)
    if arch == "t5":
        dec = ids(3)
        call = lambda v: m.apply(v, x, dec, encoder_segment_ids=seg)
        d = dependence(call, fake_variables(m, x, dec, encoder_segment_ids=seg, perturb=True))["encoder"]
        # Every decoder position sees every encoder document (the targets come from all of them) ...
        assert (d > 0)[np.arange(B), :, np.arange(B)].all()
        # ... while each encoder state sees only its own document: checked on encode below.
        return
    call = lambda v: m.apply(v, x, segment_ids=seg)
    d = dependence(call, fake_variables(m, x, segment_ids=seg, perturb=True))["decoder" if arch == "gpt" else "encoder"]
    t, s = np.meshgrid(np.arange(L), np.arange(L), indexing="ij")
    for b in range(B):
        same = seg[b][:, None] == seg[b][None, :]
        allowed = same & (s <= t) if arch == "gpt" else same
        assert (d[b, :, b][~allowed] == 0).all(), "a logit depends on a token of another document"
        assert (d[b, :, b][allowed] > 0).all()


def test_t5_encoder_states_stay_inside_their_document():
    seg, x = segments(), ids()
    m = model.build(tiny("t5"))
    v = fake_variables(m, x, ids(3), encoder_segment_ids=seg, perturb=True)
    w = jnp.asarray(np.random.default_rng(4).normal(size=(tiny("t5").d_model,)), jnp.float32)
    f = lambda pert: m.apply({"params": v["params"], "perturbations": pert}, x, encoder_segment_ids=seg,
                             method="encode") @ w
    jac = jax.jacrev(f)(v["perturbations"])["encoder"]["embedded"]  # (B, L, B, L, D)
    d = np.linalg.norm(np.asarray(jac), axis=-1)
    for b in range(B):
        same = seg[b][:, None] == seg[b][None, :]
        assert (d[b, :, b][~same] == 0).all(), "an encoder state depends on a token of another document"
        assert (d[b, :, b][same] > 0).all()


def alone(x, seg, pad_id):
    """Each document of each row as its own sequence, left-aligned in a row of length L and padded with pad_id
    (which a causal model cannot see and a bidirectional one masks): (docs, L) ids and the (row, positions) of each."""
    rows, where = [], []
    for b in range(B):
        for k in np.unique(seg[b]):
            at = np.flatnonzero(seg[b] == k)
            rows.append(np.concatenate([np.asarray(x[b, at]), np.full(L - len(at), pad_id)]))
            where.append((b, at))
    return jnp.asarray(np.stack(rows), jnp.int32), where


# Every position kind in GPT; BERT and T5 share the Stack, so two kinds each (absolute and relative) cover them.
ALONE = [("gpt", p) for p in POSITIONS] + [("bert", "learned"), ("bert", "alibi"), ("t5", "sinusoidal"),
                                          ("t5", "t5_relative")]


@pytest.mark.parametrize("arch,position", ALONE)
def test_packed_documents_equal_each_document_alone(arch, position):
    seg, x = segments(1), ids()
    cfg = tiny(arch, position=position)
    m = model.build(cfg)
    pieces, where = alone(x, seg, cfg.pad_id)
    if arch == "t5":
        v = fake_variables(m, x, ids(3))
        packed = m.apply(v, x, encoder_segment_ids=seg, method="encode")
        each = m.apply(v, pieces, method="encode")
    else:
        v = fake_variables(m, x)
        packed, each = m.apply(v, x, segment_ids=seg), m.apply(v, pieces)
    for i, (b, at) in enumerate(where):
        np.testing.assert_allclose(packed[b, at], each[i, :len(at)], rtol=2e-5, atol=2e-5)


def test_one_segment_is_no_mask():
    cfg = tiny("gpt", position="learned")
    m, x = model.build(cfg), ids()
    v = fake_variables(m, x)
    np.testing.assert_array_equal(m.apply(v, x, segment_ids=np.full((B, L), 3, np.int32)), m.apply(v, x))


# ---- the data: segment ids from document starts ---------------------------------------------------------------


def stream_windows(doc_lengths, W, offset):
    """A stream of documents (each followed by eos) with the window [offset, offset + W) and its start flags
    (hypothesis discards a stream too short for the window)."""
    toks, starts = [], []
    for n in doc_lengths:
        body = list(np.random.default_rng(n).integers(107, V, n)) + [TOK.eos_id]
        toks += body
        starts += [True] + [False] * n
    toks, starts = np.array(toks, np.int32), np.array(starts)
    assume(len(toks) >= offset + W)
    return toks[offset:offset + W][None], starts[offset:offset + W][None]


docs_strategy = st.lists(st.integers(1, 9), min_size=2, max_size=12)


def same_partition(a, b):
    """Two id rows cut the row at the same places (ids may differ by a constant)."""
    return np.array_equal(np.diff(a) != 0, np.diff(b) != 0)


@settings(max_examples=60, deadline=None)
@given(docs_strategy, st.integers(0, 8))
def test_causal_segments_open_at_each_eos(doc_lengths, offset):
    w, starts = stream_windows(doc_lengths, 12, offset)
    batch = objectives.causal_lm(w, TOK.token_bytes, starts)
    inputs, seg = batch["inputs"][0], batch["segment_ids"][0]
    reference = np.cumsum(inputs == TOK.eos_id)  # the eos opens the next document
    assert same_partition(seg, reference)
    assert (np.diff(seg) >= 0).all()


@settings(max_examples=60, deadline=None)
@given(docs_strategy, st.integers(0, 8))
def test_mlm_segments_close_at_each_eos(doc_lengths, offset):
    w, starts = stream_windows(doc_lengths, 12, offset)
    batch = objectives.mlm(w, fake_rngs(1), TOK, 0.15, 0.8, 0.1, starts=starts)
    seg, targets = batch["segment_ids"][0], batch["targets"][0]
    after_eos = np.concatenate([[0], (targets[:-1] == TOK.eos_id)]).astype(int)
    after_eos[-1] = 0  # [SEP] joins the last document
    assert same_partition(seg, np.cumsum(after_eos))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(2, 12), min_size=4, max_size=10), st.integers(0, 30))
def test_span_corruption_segments_follow_the_source_documents(doc_lengths, seed):
    seq_len = 24
    raw = spans.random_spans_helper(seq_len, 0.3, 2.0)[0]
    # document k's tokens all lie in [107 + 50 k, 107 + 50 (k + 1)): a token's id says its document
    toks, starts = [], []
    for k, n in enumerate(doc_lengths):
        toks += list(107 + 50 * k + np.arange(n) % 50) + [TOK.eos_id]
        starts += [True] + [False] * n
    W = 2 * raw + 1
    assume(len(toks) >= W)  # a stream too short for the window is discarded, not passed unchecked
    w, st_ = np.array(toks[:W], np.int32)[None], np.array(starts[:W])[None]
    T = spans.random_spans_helper(seq_len, 0.3, 2.0)[1]
    batch = spans.span_corruption(w, fake_rngs(1, seed), TOK, 0.3, 2.0, seq_len, T, st_)
    enc, seg, tgt = batch["encoder_inputs"][0], batch["encoder_segment_ids"][0], batch["targets"][0]
    doc_of = lambda t: (t - 107) // 50
    # the first token of each span follows its sentinel in the targets
    span_start = {int(tgt[i]): doc_of(tgt[i + 1]) for i in range(len(tgt) - 1) if TOK.sentinel_ids[0] <= tgt[i]
                  <= TOK.sentinel_ids[-1] and tgt[i + 1] >= 107}
    want = []
    for t in enc:
        if t >= 107:
            want.append(doc_of(t))
        elif t in span_start:
            want.append(span_start[int(t)])
        else:  # eos and padding: the last document's
            want.append(want[-1])
    assert same_partition(seg, np.array(want))


def test_starts_in_agrees_with_the_document_offsets(tmp_path):
    c = tiny_config("gpt", str(tmp_path), **{"data.shard_tokens": 4096})
    one = corpus.load(c.data)
    stream = one.tokens["train"]
    assert len(stream._parts) > 1  # several parts, windows across their boundaries
    offsets = np.concatenate([np.random.default_rng(0).integers(0, len(stream) - 50, 30),
                              stream.starts[1:-1] - 7])
    got = stream.starts_in(offsets, 50)
    want = np.isin(offsets[:, None] + np.arange(50), stream.document_starts())
    np.testing.assert_array_equal(got, want)
    assert got.any()


@pytest.mark.parametrize("name", ["causal_lm", "prefix_lm", "mlm", "span_corruption"])
def test_objectives_declare_and_build_the_segment_key(name):
    c = objective_config(name, seq_len=32)
    c.data.document_mask = True
    obj = objectives.build(c, TOK)
    key = "encoder_segment_ids" if name == "span_corruption" else "segment_ids"
    assert obj.shapes[key] == ((32,), np.int32)
    w = np.random.default_rng(0).integers(107, V, (3, obj.window_len)).astype(np.int32)
    starts = np.zeros(w.shape, bool)
    starts[:, 5] = True
    w[:, 4] = TOK.eos_id
    batch = obj(w, fake_rngs(3), starts)
    assert batch[key].shape == (3, 32) and batch[key].dtype == np.int32
    assert len(np.unique(batch[key][0])) == 2
    c.data.document_mask = False
    assert key not in objectives.build(c, TOK)(w, fake_rngs(3))


def test_document_mask_refuses_nsp():
    c = objective_config("mlm", seq_len=32)
    c.data.document_mask, c.objective.nsp, c.model = True, True, {"arch": "bert"}
    with pytest.raises(objectives.DataError, match="data.document_mask=True does not apply to objective.nsp=True"):
        objectives.build(c, TOK)


# ---- end to end -------------------------------------------------------------------------------------------------

MODERN = {"model.mlp": "relu2", "model.logits_soft_cap": 15.0, "model.attention_soft_cap": 20.0,
          "model.attention_window": 8, "model.attention_pattern": "LG", "model.qk_norm": True}


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    """One small corpus (and its tokenizer and store, cached there) for the pipeline tests."""
    return str(tmp_path_factory.mktemp("documents"))


@pytest.mark.parametrize("arch", ["gpt", "bert", "t5"])
def test_the_pipelines_segment_ids_reach_the_model(arch, corpus_dir):
    import flax.linen as nn

    from data import pipeline
    from train import objectives as train_objectives
    from train import parallel

    c = tiny_config(arch, corpus_dir, **{"data.document_mask": True, **MODERN})
    data = pipeline.build(c)
    batch = data.train.batch(0)
    key = "encoder_segment_ids" if arch == "t5" else "segment_ids"
    assert key in batch and (np.diff(batch[key], axis=1) >= 0).all() and (np.diff(batch[key]) > 0).any()
    m = model.build(model.from_dict(c.model, vocab_size=data.vocab_size))
    unit = train_objectives.build(c.objective, data.layout)
    params = nn.meta.unbox(m.init(jax.random.key(0), **parallel.example_inputs(m, unit)))["params"]
    with_docs = unit.forward(m, params, batch, None, train=False)
    without = unit.forward(m, params, {k: v for k, v in batch.items() if k != key}, None, train=False)
    assert not np.allclose(with_docs, without, atol=1e-4)


@pytest.mark.slow
def test_training_t5_with_document_masks_and_modern_layers(tmp_path):
    from train import loop
    from train.workdir import load_workdir

    steps = {"train.steps": 3, "train.eval_every": 3, "train.checkpoint_every": 3}
    summary = loop.train_and_evaluate(
        tiny_config("t5", str(tmp_path / "data"), **{"data.document_mask": True, **MODERN, **steps}),
        str(tmp_path / "docs"))
    assert np.isfinite(summary["final_eval"]["eval/loss"])
    # What the document mask guarantees, with the trained weights and every modern layer of the run (local window,
    # soft caps, QK-norm): the encoder states of packed documents equal those of each document encoded alone.
    _, cfg, m, params, _ = load_workdir(str(tmp_path / "docs"))
    assert cfg.attention_window == MODERN["model.attention_window"] and cfg.qk_norm
    seg, x = segments(1), ids()
    pieces, where = alone(x, seg, cfg.pad_id)
    packed = m.apply({"params": params}, x, encoder_segment_ids=seg, method="encode")
    each = m.apply({"params": params}, pieces, method="encode")
    for i, (b, at) in enumerate(where):
        np.testing.assert_allclose(packed[b, at], each[i, :len(at)], rtol=2e-5, atol=2e-5)

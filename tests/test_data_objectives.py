"""Objectives: masking statistics, span corruption against T5's definition, shapes, row independence."""

import numpy as np
import pytest

from data import objectives, spans
from data import tokenizer as tokenizer_lib
from data.errors import DataError
from tests.helpers import objective_config

V = 2000


class FakeTok:
    """The tokenizer attributes objectives use, for a vocabulary of V ids with the standard specials."""

    pad_id, eos_id, unk_id, bos_id, mask_id, cls_id, sep_id = 0, 1, 2, 3, 4, 5, 6
    sentinel_ids = np.arange(7, 107, dtype=np.int32)
    special_ids = np.arange(107, dtype=np.int32)
    is_special = np.arange(V) < 107
    normal_ids = np.arange(107, V, dtype=np.int32)
    token_bytes = np.where(np.arange(V) < 107, 0, np.arange(V) % 7 + 1).astype(np.int32)
    vocab_size = V
    exact_bytes = True

    def require(self, *names, purpose):
        """It has every special."""


TOK = FakeTok()


def windows(B, W, seed=0, eos_every=37):
    w = np.random.default_rng(seed).integers(107, V, (B, W)).astype(np.int32)
    w[:, ::eos_every] = TOK.eos_id  # document boundaries inside windows
    return w


def rngs(B, seed=0):
    return [np.random.default_rng([seed, i]) for i in range(B)]


def test_mlm_statistics():
    B, L = 2000, 128
    w = windows(B, L - 2)
    b = objectives.mlm(w, rngs(B), TOK, 0.15, 0.8, 0.1)
    assert b["inputs"].shape == (B, L) and b["inputs"].dtype == np.int32 and b["weights"].dtype == np.float32
    assert (b["targets"][:, 0] == TOK.cls_id).all() and (b["targets"][:, -1] == TOK.sep_id).all()
    np.testing.assert_array_equal(b["targets"][:, 1:-1], w)
    sel = b["weights"] > 0
    special = TOK.is_special[b["targets"]]
    assert not (sel & special).any(), "a special token was selected"
    n = (~special).sum(1)
    np.testing.assert_array_equal(sel.sum(1), np.maximum(1, np.floor(0.15 * n + 0.5)))  # exact count per row
    assert abs(sel.sum() / (~special).sum() - 0.15) < 0.005
    inp, tgt = b["inputs"][sel], b["targets"][sel]
    masked = (inp == TOK.mask_id).mean()
    random = ((inp != TOK.mask_id) & (inp != tgt)).mean()
    kept = (inp == tgt).mean()
    assert abs(masked - 0.8) < 0.01 and abs(random - 0.1) < 0.01 and abs(kept - 0.1) < 0.01
    assert not TOK.is_special[inp[inp != TOK.mask_id]].any(), "random replacement drew a special token"
    np.testing.assert_array_equal(b["inputs"][~sel], b["targets"][~sel])
    np.testing.assert_array_equal(b["target_bytes"], TOK.token_bytes[b["targets"]])


def test_random_spans_helper_matches_t5():
    # T5 paper setting: 512 encoder tokens come from 568 raw tokens and give 114 targets.
    assert spans.random_spans_helper(512, 0.15, 3.0) == (568, 114)
    assert spans.random_spans_helper(128, 0.15, 3.0) == (141, 29)
    for L in (16, 64, 128, 256, 512):
        raw, t = spans.random_spans_helper(L, 0.15, 3.0)
        assert spans.span_lengths(raw, 0.15, 3.0)[1] == t
        assert spans.span_lengths(raw, 0.15, 3.0)[0] <= L < spans.span_lengths(raw + 1, 0.15, 3.0)[0]


def reconstruct(enc, tgt, sentinels):
    """Original tokens from T5 (inputs, targets): each sentinel in the input -> its span from the targets."""
    filled, cur = {}, None
    for t in tgt:
        if t in sentinels:
            cur = t
            filled[cur] = []
        else:
            filled[cur].append(t)
    out = []
    for t in enc:
        out.extend(filled[t] if t in sentinels else [t])
    return out


def non_eos(w, n):
    """The first n tokens of window w that are not eos (what span corruption corrupts)."""
    return [t for t in w.tolist() if t != TOK.eos_id][:n]


@pytest.mark.parametrize("L, density, span", [(128, 0.15, 3.0), (64, 0.3, 2.0), (32, 0.5, 4.0), (48, 0.15, 1.0)])
def test_span_corruption_round_trip_and_statistics(L, density, span):
    raw, T = spans.random_spans_helper(L, density, span)
    B = 400
    w = windows(B, 2 * raw + 1)
    b = spans.span_corruption(w, rngs(B), TOK, density, span, L, T)
    assert b["encoder_inputs"].shape == (B, L) and b["targets"].shape == (B, T)
    enc_len, tgt_len = spans.span_lengths(raw, density, span)
    sentinels = TOK.sentinel_ids.tolist()
    noise_tokens, n_spans, span_lengths = 0, 0, []
    for i in range(B):
        enc = b["encoder_inputs"][i, :enc_len].tolist()
        tgt = b["targets"][i, :tgt_len].tolist()
        assert enc[-1] == TOK.eos_id and tgt[-1] == TOK.eos_id
        assert (b["encoder_inputs"][i, enc_len:] == 0).all() and (b["targets"][i, tgt_len:] == 0).all()
        used = [t for t in enc if t in sentinels]
        assert used == sentinels[: len(used)], "sentinels must be <extra_id_0>, <extra_id_1>, ... in order"
        assert [t for t in tgt if t in sentinels] == used and tgt[0] == sentinels[0]
        assert reconstruct(enc[:-1], tgt[:-1], sentinels) == non_eos(w[i], raw)
        n_spans += len(used)
        noise_tokens += tgt_len - 1 - len(used)
        pos = [j for j, t in enumerate(tgt) if t in sentinels] + [tgt_len - 1]
        span_lengths.extend((np.diff(pos) - 1).tolist())
    assert abs(noise_tokens / (B * raw) - density) < 0.02
    assert abs(noise_tokens / n_spans - span) < 0.35
    assert len(set(span_lengths)) > 2 or span == 1, "span lengths should vary"
    np.testing.assert_array_equal(b["weights"], (np.arange(T) < tgt_len)[None].repeat(B, 0))
    np.testing.assert_array_equal(b["decoder_inputs"][:, 1:], b["targets"][:, :-1])
    assert (b["decoder_inputs"][:, 0] == 0).all()


def short_document_stream(n_docs, seed=0, max_len=4):
    """A token stream as data/corpus.py writes it: documents of 1..max_len tokens, each followed by eos."""
    rng = np.random.default_rng(seed)
    return np.concatenate([[*rng.integers(107, V, rng.integers(1, max_len + 1)), TOK.eos_id] for _ in range(n_docs)])


@pytest.mark.parametrize("L, density, span", [(48, 0.15, 3.0), (32, 0.5, 1.0)])
def test_span_corruption_has_eos_only_at_the_ends(L, density, span):
    """T5 reads documents with no separator: eos ends the encoder input and the targets and appears nowhere else."""
    obj = objectives.build(objective_config(seq_len=L, noise_density=density, mean_span_length=span), TOK)
    raw = spans.random_spans_helper(L, density, span)[0]
    assert obj.window_len == 2 * raw + 1
    stream = short_document_stream(3000)
    B = 300
    starts = np.random.default_rng(1).integers(0, len(stream) - obj.window_len + 1, B)
    w = stream[starts[:, None] + np.arange(obj.window_len)].astype(np.int32)
    # The tightest case: one-token documents, the window starting at an eos, so it holds exactly raw non-eos tokens.
    w[0] = np.where(np.arange(obj.window_len) % 2 == 0, TOK.eos_id, 200 + np.arange(obj.window_len))
    assert (w == TOK.eos_id).sum(1).max() == raw + 1
    b = obj(w, rngs(B))
    sentinels = TOK.sentinel_ids.tolist()
    for i in range(B):
        enc, tgt = b["encoder_inputs"][i], b["targets"][i]
        real = np.flatnonzero(enc != TOK.pad_id)
        assert np.flatnonzero(enc == TOK.eos_id).tolist() == [real[-1]], "eos only as the last encoder token"
        last = np.flatnonzero(b["weights"][i])[-1]
        assert np.flatnonzero(tgt == TOK.eos_id).tolist() == [last], "eos only at the last weighted target"
        rebuilt = reconstruct(enc[: real[-1]].tolist(), tgt[:last].tolist(), sentinels)
        assert rebuilt == non_eos(w[i], raw), "span corruption must corrupt the window's first raw non-eos tokens"


def test_span_corruption_refuses_a_window_with_too_few_tokens():
    obj = objectives.build(objective_config(), TOK)
    w = windows(4, obj.window_len)
    w[2, : obj.window_len // 2 + 2] = TOK.eos_id  # adjacent eos: fewer than raw tokens left
    with pytest.raises(DataError, match=r"span corruption needs \d+ tokens that are not eos.*row 2"):
        obj(w, rngs(4))


@pytest.mark.parametrize("density, span", [(0.9, 1.0), (0.6, 1.0), (0.7, 2.0), (0.8, 3.0), (0.95, 10.0), (0.99, 50.0)])
@pytest.mark.parametrize("L", [16, 48, 128])
def test_impossible_span_settings_fail_in_build(density, span, L):
    pattern = rf"objective\.noise_density={density} with objective\.mean_span_length={span} makes more noise spans"
    with pytest.raises(DataError, match=pattern) as e:
        objectives.build(objective_config(seq_len=L, noise_density=density, mean_span_length=span), TOK)
    assert f"mean_span_length / (mean_span_length + 1) = {span / (span + 1):.4g}" in str(e.value)
    assert f"mean_span_length >= noise_density / (1 - noise_density) = {density / (1 - density):.4g}" in str(e.value)


@pytest.mark.parametrize("span", [1.0, 1.5, 2.0, 3.0, 4.5, 7.0])
@pytest.mark.parametrize("L", [16, 33, 48, 128])
def test_span_settings_near_the_boundary(span, L):
    """Near noise_density = span / (span + 1), build refuses exactly the settings whose counts at this length give
    fewer non-noise tokens than spans; every other one builds and makes a batch."""
    edge = span / (span + 1)
    built = 0
    for density in (edge + 0.1, edge + 0.01, edge + 1e-3, edge, edge - 1e-6, edge - 1e-3, edge - 0.01, edge - 0.1):
        cfg = objective_config(seq_len=L, noise_density=density, mean_span_length=span)
        raw = spans.random_spans_helper(L, density, span)[0]
        num_noise, num_spans = spans.span_counts(raw, density, span)
        impossible = raw - num_noise < num_spans
        if abs(density - edge) >= 0.1:  # Away from the boundary the closed form decides; near it, rounding may.
            assert impossible == (density > edge)
        if impossible:
            with pytest.raises(DataError, match=r"objective\.noise_density=.* with objective\.mean_span_length="):
                objectives.build(cfg, TOK)
            continue
        obj = objectives.build(cfg, TOK)
        b = obj(windows(4, obj.window_len), rngs(4))
        assert b["encoder_inputs"].shape == (4, L) and (b["weights"].sum(1) == num_noise + num_spans + 1).all()
        built += 1
    assert built >= 2


@pytest.mark.parametrize("name", ["prefix_lm", "mlm", "span_corruption"])
def test_rows_depend_only_on_their_own_rng(name):
    obj = objectives.build(objective_config(name), TOK)
    w = windows(6, obj.window_len)
    whole = obj(w, rngs(6))
    halves = [obj(w[s], [np.random.default_rng([0, i]) for i in range(6)[s]]) for s in (slice(0, 3), slice(3, 6))]
    for k, v in whole.items():
        np.testing.assert_array_equal(v, np.concatenate([h[k] for h in halves]))
        assert v.shape[1:] == obj.shapes[k][0] and v.dtype == obj.shapes[k][1]


def test_real_tokenizer_target_bytes_cover_text(tmp_path):
    tok = tokenizer_lib.ByteTokenizer()
    text = "In the beginning God created the heaven and the earth. Ünïcode ☃."
    ids = np.array(tok.encode(text)[:41])
    c = objectives.causal_lm(ids[None], tok.token_bytes)
    assert int(c["target_bytes"].sum()) == len(tok.decode(ids[1:]).encode())

"""Objectives: masking statistics, span corruption against T5's definition, shapes, row independence."""

import numpy as np
import pytest

from data import objectives
from data import tokenizer as tokenizer_lib

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
    assert objectives.random_spans_helper(512, 0.15, 3.0) == (568, 114)
    assert objectives.random_spans_helper(128, 0.15, 3.0) == (141, 29)
    for L in (16, 64, 128, 256, 512):
        raw, t = objectives.random_spans_helper(L, 0.15, 3.0)
        assert objectives.span_lengths(raw, 0.15, 3.0)[1] == t
        assert objectives.span_lengths(raw, 0.15, 3.0)[0] <= L < objectives.span_lengths(raw + 1, 0.15, 3.0)[0]


def reconstruct(enc, tgt, sentinels):
    """Original tokens from T5 (inputs, targets): each sentinel in the input -> its span from the targets."""
    spans, cur = {}, None
    for t in tgt:
        if t in sentinels:
            cur = t
            spans[cur] = []
        else:
            spans[cur].append(t)
    out = []
    for t in enc:
        out.extend(spans[t] if t in sentinels else [t])
    return out


@pytest.mark.parametrize("L, density, span", [(128, 0.15, 3.0), (64, 0.3, 2.0), (32, 0.5, 4.0), (48, 0.15, 1.0)])
def test_span_corruption_round_trip_and_statistics(L, density, span):
    raw, T = objectives.random_spans_helper(L, density, span)
    B = 400
    w = windows(B, raw)
    b = objectives.span_corruption(w, rngs(B), TOK, density, span, L, T)
    assert b["encoder_inputs"].shape == (B, L) and b["targets"].shape == (B, T)
    enc_len, tgt_len = objectives.span_lengths(raw, density, span)
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
        assert reconstruct(enc[:-1], tgt[:-1], sentinels) == w[i].tolist()
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


def test_noise_mask_positions_are_uniform():
    B, W = 4000, 100
    mask = objectives.random_spans_noise_mask(rngs(B), W, 0.15, 3.0)
    assert (mask.sum(1) == 15).all() and not mask[:, 0].any() and mask[:, -1].all()
    # away from the ends (t5 always starts with non-noise and ends with noise) the noise is spread evenly
    freq = mask[:, 10:-10].mean(0)
    assert 0.11 < freq.mean() < 0.15 and freq.std() < 0.01
    assert abs(freq[:40].mean() - freq[40:].mean()) < 0.01


def test_causal_and_prefix_lm():
    B, L = 64, 32
    w = windows(B, L + 1)
    c = objectives.causal_lm(w, TOK.token_bytes)
    np.testing.assert_array_equal(c["inputs"], w[:, :-1])
    np.testing.assert_array_equal(c["targets"], w[:, 1:])
    assert (c["weights"] == 1).all() and c["target_bytes"].dtype == np.int32
    p = objectives.prefix_lm(w, rngs(B), TOK.token_bytes)
    assert p["prefix_len"].dtype == np.int32 and p["prefix_len"].shape == (B,)
    assert p["prefix_len"].min() >= 1 and p["prefix_len"].max() <= L - 1 and len(set(p["prefix_len"])) > 5
    for i in range(B):
        n = p["prefix_len"][i]
        assert (p["weights"][i, : n - 1] == 0).all() and (p["weights"][i, n - 1 :] == 1).all()


@pytest.mark.parametrize("name", ["prefix_lm", "mlm", "span_corruption"])
def test_rows_depend_only_on_their_own_rng(name):
    import ml_collections

    cfg = ml_collections.ConfigDict(
        dict(
            objective=dict(
                name=name,
                mask_rate=0.15,
                mask_token_frac=0.8,
                random_token_frac=0.1,
                whole_word=False,
                noise_density=0.15,
                mean_span_length=3.0,
                nsp=False,
            ),
            data=dict(seq_len=48, target_len=0),
        )
    )
    obj = objectives.build(cfg, TOK)
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

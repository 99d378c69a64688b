"""Tokenizer: fixed special ids, exact round trip, token_bytes, caching, bad models."""

import numpy as np
import pytest
import sentencepiece as spm

from data import tokenizer as tokenizer_lib
from data.errors import DataError
from tests.test_data_common import synthetic_text

TEXT = "  Héllo, wörld!\tTabs  and  spaces\n日本語 ☃ [x] 12345 "


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    lines = synthetic_text().split("\n")
    return tokenizer_lib.train(lines, 600, "unigram", str(tmp_path_factory.mktemp("tok") / "t"))


def test_specials_have_fixed_ids(tok):
    assert (tok.pad_id, tok.eos_id, tok.unk_id, tok.bos_id) == (0, 1, 2, 3)
    assert (tok.mask_id, tok.cls_id, tok.sep_id) == (4, 5, 6)
    assert [tok.id_to_piece(i) for i in (4, 5, 6)] == ["[MASK]", "[CLS]", "[SEP]"]
    assert tok.sentinel_id(0) == 7 and tok.sentinel_id(99) == 106
    assert tok.id_to_piece(tok.sentinel_id(42)) == "<extra_id_42>"
    np.testing.assert_array_equal(tok.sentinel_ids, np.arange(7, 107))
    np.testing.assert_array_equal(np.sort(tok.special_ids), np.arange(107))
    assert tok.vocab_size == 600
    assert (tok.token_bytes[tok.special_ids] == 0).all()
    assert not tok.is_special[tok.normal_ids].any() and len(tok.normal_ids) == 600 - 107


@pytest.mark.parametrize("kind", ["sentencepiece", "byte"])
def test_round_trip_and_token_bytes(tok, kind):
    t = tok if kind == "sentencepiece" else tokenizer_lib.ByteTokenizer()
    ids = t.encode(TEXT)
    assert t.decode(ids) == TEXT
    assert int(t.token_bytes[ids].sum()) == len(TEXT.encode("utf-8"))
    assert t.encode_batch([TEXT, "a b"]) == [ids, t.encode("a b")]


@pytest.mark.parametrize("kind", ["sentencepiece", "byte"])
def test_decode_shows_specials_and_drops_pad(tok, kind):
    t = tok if kind == "sentencepiece" else tokenizer_lib.ByteTokenizer()
    ids = [t.cls_id, *t.encode("a b"), t.mask_id, t.sentinel_id(3), t.pad_id, t.eos_id, t.sep_id, 0, 0]
    assert t.decode(ids) == "[CLS]a b[MASK]<extra_id_3></s>[SEP]"


def test_byte_tokenizer_has_same_specials():
    b = tokenizer_lib.ByteTokenizer()
    assert (b.pad_id, b.eos_id, b.mask_id, b.cls_id, b.sep_id, b.sentinel_id(99)) == (0, 1, 4, 5, 6, 106)
    assert b.vocab_size == 107 + 256
    assert b.token_bytes.sum() == 256


def test_training_is_deterministic_and_cached(tmp_path):
    lines = synthetic_text(400).split("\n")
    a, hit_a = tokenizer_lib.train_cached(lines, 450, "bpe", tmp_path)
    b, hit_b = tokenizer_lib.train_cached(lines, 450, "bpe", tmp_path)
    c = tokenizer_lib.train(lines, 450, "bpe", str(tmp_path / "again"))
    assert (hit_a, hit_b) == (False, True)
    assert a.sha256 == b.sha256 == c.sha256
    assert tokenizer_lib.load(a.path).encode(TEXT) == a.encode(TEXT)


def test_vocab_too_large_names_flag(tmp_path):
    with pytest.raises(DataError, match=r"data\.vocab_size=50000 is too large.*at most \d+"):
        tokenizer_lib.train(synthetic_text(200).split("\n"), 50000, "unigram", str(tmp_path / "t"))


def test_vocab_too_small_names_flag(tmp_path):
    with pytest.raises(DataError, match=r"data\.vocab_size=370 is too small.*>= \d+"):
        tokenizer_lib.train(synthetic_text(200).split("\n"), 370, "unigram", str(tmp_path / "t"))


def test_loaded_model_without_specials_is_rejected(tmp_path):
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(synthetic_text(300).split("\n")),
        model_prefix=str(tmp_path / "plain"),
        vocab_size=200,
        minloglevel=2,
    )
    with pytest.raises(DataError, match=r"data\.tokenizer: .*plain\.model.*pad id -1.*eos id 2.*\[MASK\]"):
        tokenizer_lib.load(str(tmp_path / "plain.model"))


def test_load_missing_or_invalid_file(tmp_path):
    with pytest.raises(DataError, match=r"data\.tokenizer: .*does not exist"):
        tokenizer_lib.load(str(tmp_path / "nope.model"))
    (tmp_path / "bad.model").write_bytes(b"not a model")
    with pytest.raises(DataError, match=r"data\.tokenizer: .*not a SentencePiece model"):
        tokenizer_lib.load(str(tmp_path / "bad.model"))


def test_unknown_model_type(tmp_path):
    with pytest.raises(DataError, match=r"data\.tokenizer_type: unknown 'wordpiece'"):
        tokenizer_lib.train(["a b c"], 500, "wordpiece", str(tmp_path / "t"))


@pytest.mark.parametrize("kind", ["sentencepiece", "byte"])
def test_triad_tokenizers_are_exact_and_have_every_special(tok, kind):
    t = tok if kind == "sentencepiece" else tokenizer_lib.ByteTokenizer()
    assert t.exact_bytes
    t.require("eos", "pad", "unk", "bos", "mask", "cls", "sep", "sentinels", purpose="every objective")
    with pytest.raises(DataError, match=r"has 100 sentinels .*no <extra_id_100>"):
        t.sentinel_id(100)

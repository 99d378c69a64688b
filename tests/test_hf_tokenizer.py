"""Hugging Face tokenizer.json files (data.tokenizer=path/tokenizer.json): specials by piece, exact bytes where the
tokenizer is lossless, objectives on its ids. Every file is made here with the `tokenizers` library (no network)."""

import hashlib
import json

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from data import objectives, spans
from data import tokenizer as tokenizer_lib
from data.errors import DataError
from data.hf_tokenizer import HFTokenizer
from tests import helpers
from tests.test_data_common import synthetic_text

UNICODE = [
    "  Héllo, wörld!\tTabs  and  spaces\n日本語 ☃ [x] 12345 ",
    "café — naïve 🙂🎉 über",
    " a leading space, and a trailing one ",
    "é—🙂",
]
LINES = synthetic_text(300).split("\n")[:-1] + UNICODE


def save(tok: Tokenizer, path) -> str:
    tok.save(str(path))
    return str(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """{kind: path of its tokenizer.json}."""
    d = tmp_path_factory.mktemp("hf")
    out = {}

    gpt = Tokenizer(models.BPE())
    gpt.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    gpt.decoder = decoders.ByteLevel()
    gpt.post_processor = processors.ByteLevel(trim_offsets=False)
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    gpt.train_from_iterator(
        LINES,
        trainers.BpeTrainer(
            vocab_size=500, special_tokens=["<|endoftext|>"], initial_alphabet=alphabet, show_progress=False
        ),
    )
    gpt.add_tokens(["</s>"])  # a plain added token: a piece named like an eos, but not marked special
    gpt.add_special_tokens(["<|im_start|>"])  # marked special, but none of the specials Triad maps
    out["gpt2"] = save(gpt, d / "gpt2.json")

    roberta = Tokenizer(models.BPE())  # byte-level BPE with BERT's roles under SentencePiece-style names
    roberta.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    roberta.decoder = decoders.ByteLevel()
    roberta.train_from_iterator(
        LINES,
        trainers.BpeTrainer(
            vocab_size=500,
            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
            initial_alphabet=alphabet,
            show_progress=False,
        ),
    )
    out["roberta"] = save(roberta, d / "roberta.json")

    bert = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    bert.normalizer = normalizers.BertNormalizer(lowercase=True)
    bert.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    bert.decoder = decoders.WordPiece()
    bert.train_from_iterator(
        LINES,
        trainers.WordPieceTrainer(
            vocab_size=500, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], show_progress=False
        ),
    )
    bert.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        special_tokens=[("[CLS]", bert.token_to_id("[CLS]")), ("[SEP]", bert.token_to_id("[SEP]"))],
    )
    out["bert"] = save(bert, d / "bert.json")

    for name, order in (("t5", ["<pad>", "</s>", "<unk>"]), ("t5_shuffled", ["<unk>", "</s>", "<pad>"])):
        t5 = Tokenizer(models.Unigram())
        t5.pre_tokenizer = pre_tokenizers.Metaspace()
        t5.decoder = decoders.Metaspace()
        t5.train_from_iterator(
            LINES, trainers.UnigramTrainer(vocab_size=400, special_tokens=order, unk_token="<unk>", show_progress=False)
        )
        # As in T5's own file: the sentinels come last, <extra_id_0> with the highest id.
        t5.add_special_tokens([f"<extra_id_{i}>" for i in reversed(range(10))])
        t5.post_processor = processors.TemplateProcessing(
            single="$A </s>", special_tokens=[("</s>", t5.token_to_id("</s>"))]
        )
        out[name] = save(t5, d / f"{name}.json")
    return out


@pytest.fixture(scope="module")
def toks(files):
    return {k: tokenizer_lib.load(p) for k, p in files.items()}


def raw(path) -> Tokenizer:
    return Tokenizer.from_file(path)


def edited(files, kind, tmp_path, edit) -> HFTokenizer:
    """The `kind` tokenizer with its JSON changed by `edit(cfg)`, loaded from a new file."""
    cfg = json.loads(open(files[kind]).read())
    edit(cfg)
    path = tmp_path / f"{kind}-edited.json"
    path.write_text(json.dumps(cfg))
    return tokenizer_lib.load(str(path))


def test_load_dispatches_on_suffix(files, toks):
    t = toks["gpt2"]
    assert isinstance(t, HFTokenizer) and t.path == files["gpt2"]
    assert t.sha256 == hashlib.sha256(open(files["gpt2"], "rb").read()).hexdigest()
    assert t.vocab_size == raw(files["gpt2"]).get_vocab_size(with_added_tokens=True) == 502


def test_gpt2_like_specials(files, toks):
    t, r = toks["gpt2"], raw(files["gpt2"])
    eot = r.token_to_id("<|endoftext|>")
    assert t.eos_id == t.pad_id == t.bos_id == eot
    assert (t.unk_id, t.mask_id, t.cls_id, t.sep_id, len(t.sentinel_ids)) == (-1, -1, -1, -1, 0)
    plain, marked = r.token_to_id("</s>"), r.token_to_id("<|im_start|>")
    assert not t.is_special[plain] and plain in t.normal_ids, "a plain added token is not a special"
    assert t.is_special[marked] and t.token_bytes[marked] == 0, "every token the file marks special is special"
    assert sorted(t.special_ids.tolist()) == [eot, marked]
    assert t.is_special.sum() == 2 and len(t.normal_ids) == t.vocab_size - 2
    assert t.exact_bytes


def test_roberta_like_specials(files, toks):
    t, r = toks["roberta"], raw(files["roberta"])
    got = {k: r.id_to_token(getattr(t, f"{k}_id")) for k in ("eos", "pad", "unk", "bos", "mask", "cls", "sep")}
    assert got == dict(eos="</s>", pad="<pad>", unk="<unk>", bos="<s>", mask="<mask>", cls="<s>", sep="</s>")
    assert t.exact_bytes and len(t.sentinel_ids) == 0
    assert all(
        int(t.token_bytes[ids].sum()) == len(d.encode("utf-8"))
        for d, ids in zip(UNICODE, t.encode_batch(UNICODE), strict=True)
    )


def test_gpt2_like_require_names_file_and_token(files, toks):
    t = toks["gpt2"]
    t.require("eos", "pad", "bos", purpose="objective.name='causal_lm'")
    with pytest.raises(DataError) as e:
        t.require("eos", "mask", purpose="objective.name='mlm'")
    msg = str(e.value)
    assert msg.startswith(f"data.tokenizer: {files['gpt2']} has no [MASK] token")
    assert "objective.name='mlm' needs" in msg and "BERT tokenizer" in msg and "data.tokenizer=''" in msg
    with pytest.raises(DataError, match=r"gpt2\.json has no sentinel tokens \('<extra_id_0>'.*T5 tokenizer"):
        t.require("sentinels", purpose="objective.name='span_corruption'")
    with pytest.raises(DataError, match=r"no sentinel tokens"):
        t.sentinel_id(0)
    with pytest.raises(ValueError, match="unknown special"):
        t.require("masks", purpose="x")


def test_gpt2_like_bytes_are_exact(toks):
    t = toks["gpt2"]
    docs = LINES[:200] + UNICODE + ["</s> is plain text here"]
    assert t.encode_batch(docs, num_threads=1) == t.encode_batch(docs)
    for doc, ids in zip(docs, t.encode_batch(docs), strict=True):
        assert ids == t.encode(doc)
        assert int(t.token_bytes[ids].sum()) == len(doc.encode("utf-8")), doc
        assert t.decode(ids) == doc
    # A stream as data/corpus.py writes it: eos (0 bytes) after every document; pad == eos, so decode keeps it.
    stream = [i for ids in t.encode_batch(UNICODE) for i in (*ids, t.eos_id)]
    assert int(t.token_bytes[stream].sum()) == sum(len(d.encode("utf-8")) for d in UNICODE)
    assert t.decode(stream) == "".join(d + "<|endoftext|>" for d in UNICODE)


def test_causal_lm_target_bytes_sum_to_the_text(toks):
    t = toks["gpt2"]
    stream = np.array([i for ids in t.encode_batch(UNICODE) for i in (*ids, t.eos_id)], np.int32)
    b = objectives.causal_lm(stream[None], t.token_bytes)
    assert int(b["target_bytes"].sum() + t.token_bytes[stream[0]]) == sum(len(d.encode("utf-8")) for d in UNICODE)
    assert (b["targets"] == t.eos_id).sum() == len(UNICODE)


def test_byte_level_that_adds_or_changes_text_is_not_exact(files, tmp_path):
    def prefix_space(cfg):
        cfg["pre_tokenizer"]["add_prefix_space"] = True

    def lowercase(cfg):
        cfg["normalizer"] = {"type": "Lowercase"}

    for edit in (prefix_space, lowercase):
        t = edited(files, "gpt2", tmp_path, edit)
        assert not t.exact_bytes, edit.__name__
        assert t.eos_id == t.pad_id == raw(files["gpt2"]).token_to_id("<|endoftext|>")


def test_bert_like_specials(files, toks):
    t, r = toks["bert"], raw(files["bert"])
    want = {
        k: r.token_to_id(p) for k, p in dict(pad="[PAD]", unk="[UNK]", cls="[CLS]", sep="[SEP]", mask="[MASK]").items()
    }
    assert {k: getattr(t, f"{k}_id") for k in want} == want
    assert t.eos_id == t.sep_id and t.bos_id == t.cls_id and len(t.sentinel_ids) == 0
    assert sorted(t.special_ids.tolist()) == sorted(want.values())
    t.require("mask", "cls", "sep", "eos", purpose="objective.name='mlm'")
    assert not t.exact_bytes
    ids = t.encode("Hello world")
    assert t.cls_id not in ids and t.sep_id not in ids, "no [CLS]/[SEP] from the post-processor"
    assert raw(files["bert"]).encode("Hello world").ids == [t.cls_id, *ids, t.sep_id]
    assert t.decode([t.cls_id, *ids, t.sep_id, t.pad_id, t.pad_id]) == "[CLS]hello world[SEP]"


def test_bert_like_bytes_are_an_estimate(toks):
    t = toks["bert"]
    cont = next(i for i in t.normal_ids if t.id_to_piece(i).startswith("##") and len(t.id_to_piece(i)) == 4)
    assert t.token_bytes[cont] == 2, "'##xy' continues a word: 2 bytes, no space"
    docs = LINES[:200]
    got = sum(int(t.token_bytes[ids].sum()) for ids in t.encode_batch(docs))
    true = sum(len(d.encode("utf-8")) for d in docs)
    assert abs(got / true - 1) < 0.03, (got, true)


def test_unmarked_special_is_named(files, tmp_path):
    def unmark_mask(cfg):
        for a in cfg["added_tokens"]:
            if a["content"] == "[MASK]":
                a["special"] = False

    t = edited(files, "bert", tmp_path, unmark_mask)
    assert t.mask_id == -1
    with pytest.raises(
        DataError, match=r"no \[MASK\] token .*\('\[MASK\]' is in its vocabulary but not marked special"
    ):
        t.require("mask", purpose="objective.name='mlm'")


def test_t5_like_specials(files, toks):
    t, r = toks["t5"], raw(files["t5"])
    assert (t.pad_id, t.eos_id, t.unk_id) == (r.token_to_id("<pad>"), r.token_to_id("</s>"), r.token_to_id("<unk>"))
    assert t.bos_id == t.eos_id and t.sep_id == t.eos_id and (t.mask_id, t.cls_id) == (-1, -1)
    want = [r.token_to_id(f"<extra_id_{i}>") for i in range(10)]
    assert t.sentinel_ids.tolist() == want and want == sorted(want, reverse=True)
    assert t.sentinel_id(3) == want[3] and t.id_to_piece(t.sentinel_id(3)) == "<extra_id_3>"
    with pytest.raises(DataError, match=r"has 10 sentinels .*no <extra_id_10>"):
        t.sentinel_id(10)
    assert t.sentinel_ids.dtype == np.int32 and t.is_special.shape == (t.vocab_size,)
    t.require("sentinels", "eos", "pad", purpose="objective.name='span_corruption'")
    assert not t.exact_bytes and (t.token_bytes[t.special_ids] == 0).all()
    ids = t.encode("Hello world")
    assert t.eos_id not in ids, "no </s> from the post-processor"
    shown = t.decode([*ids, t.sentinel_id(0), t.eos_id, t.pad_id, t.pad_id])
    assert shown.endswith("<extra_id_0></s>") and "<pad>" not in shown


def test_specials_are_found_by_piece_not_by_id(files, toks):
    t, r = toks["t5_shuffled"], raw(files["t5_shuffled"])
    assert (t.unk_id, t.eos_id, t.pad_id) == (0, 1, 2)
    assert r.id_to_token(t.pad_id) == "<pad>" and r.id_to_token(t.eos_id) == "</s>"
    assert t.decode([t.unk_id, t.eos_id, t.pad_id]) == "<unk></s>", "pad (id 2) dropped, not id 0"


def test_load_rejects_missing_or_invalid_json(tmp_path):
    with pytest.raises(DataError, match=r"data\.tokenizer: .*nope\.json.*does not exist"):
        tokenizer_lib.load(str(tmp_path / "nope.json"))
    for name, content in (("broken.json", b"{not json"), ("other.json", b'{"a": 1}'), ("bin.json", b"\xff\xfe")):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(DataError, match=rf"data\.tokenizer: .*{name}.* is not a Hugging Face tokenizer\.json"):
            tokenizer_lib.load(str(tmp_path / name))


def stream_windows(t, W: int, B: int) -> np.ndarray:
    """(B, W) windows at random offsets of the corpus stream (each document's ids, then eos), as data/pipeline.py
    cuts them."""
    stream = np.array([i for ids in t.encode_batch(LINES) for i in (*ids, t.eos_id)], np.int32)
    starts = np.random.default_rng(0).integers(0, len(stream) - W + 1, B)
    return stream[starts[:, None] + np.arange(W)]


def rngs(B):
    return [np.random.default_rng([0, i]) for i in range(B)]


def test_objectives_run_on_t5_like_ids(toks):
    t = toks["t5"]
    B, L = 64, 32
    lm = objectives.build(helpers.objective_config("causal_lm", L), t)
    w = stream_windows(t, lm.window_len, B)
    b = lm(w, rngs(B))
    np.testing.assert_array_equal(b["targets"] == t.eos_id, w[:, 1:] == t.eos_id)  # eos only where a document ends
    assert not t.exact_bytes and not b["target_bytes"].any()  # no bits per byte from an inexact byte count

    sc = objectives.build(helpers.objective_config("span_corruption", L), t)
    raw_len = spans.random_spans_helper(L, 0.15, 3.0)[0]
    enc_len, tgt_len = spans.span_lengths(raw_len, 0.15, 3.0)
    w = stream_windows(t, sc.window_len, B)
    b = sc(w, rngs(B))
    sentinels = t.sentinel_ids.tolist()
    for i in range(B):
        enc, tgt = b["encoder_inputs"][i].tolist(), b["targets"][i].tolist()
        assert [j for j, x in enumerate(enc) if x == t.eos_id] == [enc_len - 1], "eos only ends the encoder input"
        assert [j for j, x in enumerate(tgt) if x == t.eos_id] == [tgt_len - 1], "eos only ends the targets"
        assert set(enc[enc_len:]) <= {t.pad_id} and set(tgt[tgt_len:]) <= {t.pad_id}
        used = [x for x in enc if x in sentinels]
        assert used == sentinels[: len(used)] and [x for x in tgt if x in sentinels] == used
        filled, cur = {}, None
        for x in tgt[: tgt_len - 1]:  # <extra_id_0> span_0 <extra_id_1> span_1 ...
            if x in sentinels:
                cur = filled.setdefault(x, [])
            else:
                cur.append(x)
        rebuilt = [y for x in enc[: enc_len - 1] for y in (filled[x] if x in sentinels else [x])]
        assert rebuilt == [x for x in w[i].tolist() if x != t.eos_id][:raw_len]


def test_mlm_runs_on_bert_like_ids(toks):
    t = toks["bert"]
    B, L = 64, 32
    obj = objectives.build(helpers.objective_config("mlm", L), t)
    w = stream_windows(t, obj.window_len, B)
    b = obj(w, rngs(B))
    assert (b["targets"][:, 0] == t.cls_id).all() and (b["targets"][:, -1] == t.sep_id).all()
    assert (b["inputs"] == t.mask_id).any()
    assert not t.is_special[b["targets"][b["weights"] > 0]].any(), "a special was selected for prediction"
    changed = (b["inputs"] != b["targets"]) & (b["inputs"] != t.mask_id)
    assert not t.is_special[b["inputs"][changed]].any(), "a random replacement drew a special"

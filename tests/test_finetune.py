"""Fine-tuning: jsonl examples and their errors, probes (deterministic, balanced, validation text only), classifier
pooling, init_from into the backbone subtree, a learnable task end to end, and F1 by hand."""

import dataclasses
import json
import os
import pathlib
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from data import classify, corpus, probes
from data import tokenizer as tokenizer_lib
from data.errors import DataError
from experiments.configs import finetune
from model import classifier
from model import config as model_config
from tests import helpers
from train import errors, losses, objectives, workdir

_set = helpers.override


def ft_config(task: str, arch: str, directory: str, **overrides):
    """finetune.py's config at the tests' tiny size (d_model 32, 2 layers, length 32, vocab 512)."""
    c = finetune.get_config(f"task={task},arch={arch}")
    tiny = helpers.tiny_config(arch, directory)
    for k in ("train_files", "vocab_size", "cache_dir", "seq_len", "prefetch"):
        c.data[k] = tiny.data[k]
    c.model = tiny.model
    c.train.batch_size, c.train.steps, c.train.warmup_steps = 8, 4, 1
    c.train.log_every, c.train.eval_every, c.train.checkpoint_every = 2, 4, 4
    c.train.progress_bar = False
    return _set(c, **overrides)


def _write(path, lines):
    with open(path, "w") as f:
        f.writelines((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
    return str(path)


# ------------------------------------------------------------------------------------------------ jsonl examples


def test_jsonl_examples_labels_and_encoding(tmp_path):
    path = _write(tmp_path / "t.jsonl", [{"text": "a b", "label": "pos"}, "", {"text_a": "x", "text_b": "y z",
                                                                             "label": "neg"}])
    ex = classify.read_jsonl(pathlib.Path(path))
    assert [(e.text_a, e.text_b, e.label) for e in ex] == [("a b", None, "pos"), ("x", "y z", "neg")]
    assert ex[1].where.endswith("t.jsonl:3")
    labels = classify.label_vocabulary(ex)
    assert labels == ["neg", "pos"] and classify.label_ids(ex, labels, "t").tolist() == [1, 0]
    assert classify.label_vocabulary([classify.Example("a", None, v, "f:1") for v in (3, 1, 3)]) == [1, 3]

    tok = tokenizer_lib.ByteTokenizer()
    b = lambda s: [tok.OFFSET + c for c in s.encode()]
    pair = [classify.Example("ab", "c", 0, "f:1")]
    bert, _ = classify.encode(pair, tok, "bert", 8)
    assert bert["inputs"][0].tolist() == [tok.cls_id, *b("ab"), tok.sep_id, *b("c"), tok.sep_id, 0, 0]
    assert bert["token_types"][0].tolist() == [0, 0, 0, 0, 1, 1, 0, 0]
    gpt, _ = classify.encode(pair, tok, "gpt", 8)
    assert gpt["inputs"][0].tolist() == [*b("ab"), tok.sep_id, *b("c"), 0, 0, 0, 0]
    assert gpt["lengths"].tolist() == [4]
    t5, _ = classify.encode(pair, tok, "t5", 8)
    assert t5["encoder_inputs"][0].tolist() == [*b("ab"), tok.sep_id, *b("c"), tok.eos_id, 0, 0, 0]
    assert t5["decoder_inputs"].tolist() == [[0]]
    # Truncation keeps the end of a and the start of b, cutting the longer side first.
    long_pair = [classify.Example("abcdef", "uvwxyz", 0, "f:1")]
    cut, n = classify.encode(long_pair, tok, "t5", 8)
    assert n == 1 and cut["encoder_inputs"][0].tolist() == [*b("def"), tok.sep_id, *b("uvw"), tok.eos_id]


@pytest.mark.parametrize("lines,match", [
    ([{"text": "a"}], r"t\.jsonl:1: record has no 'label' field"),
    ([{"text": "a", "label": 0}, {"words": "b", "label": 1}], r"t\.jsonl:2: record has no text field"),
    ([{"text_b": "a", "label": 0}], r"t\.jsonl:1: record has no text field"),
    ([{"text": 3, "label": 0}], r"t\.jsonl:1: field 'text' is a int"),
    ([{"text": "a", "label": 1.5}], r"t\.jsonl:1: label 1.5 is a float"),
    (["{not json"], r"t\.jsonl:1: invalid JSON"),
    ([], r"t\.jsonl: contains no examples \(the file is empty\)"),
    ([" ", ""], r"t\.jsonl: contains no examples"),
    ([{"text": "a", "label": 0}, {"text": "b", "label": "x"}], r"t\.jsonl:2: label 'x' is a str but"),
    ([{"text": "a", "label": 0}, {"text": "b", "label": 0}], r"every training example has label 0"),
])
def test_jsonl_errors_name_file_line_and_fix(tmp_path, lines, match):
    c = ft_config("jsonl", "bert", str(tmp_path), **{"data.train_files": _write(tmp_path / "t.jsonl", lines),
                                                    "data.val_files": _write(tmp_path / "v.jsonl", [
                                                        {"text": "a", "label": 0}]),
                                                    "data.tokenizer_type": "byte"})
    with pytest.raises(DataError, match=match):
        classify.build(c)


def test_eval_label_unseen_in_training_and_missing_val_files(tmp_path):
    train = _write(tmp_path / "t.jsonl", [{"text": "a", "label": "x"}, {"text": "b", "label": "y"}])
    val = _write(tmp_path / "v.jsonl", [{"text": "a", "label": "x"}, {"text": "c", "label": "z"}])
    c = ft_config("jsonl", "gpt", str(tmp_path), **{"data.train_files": train, "data.val_files": val,
                                                   "data.tokenizer_type": "byte"})
    with pytest.raises(DataError, match=r"v\.jsonl:2: label 'z' does not occur in the training data .*'x', 'y'"):
        classify.build(c)
    c.data.val_files = ""
    with pytest.raises(DataError, match="data.val_files"):
        classify.build(c)
    c.data.val_files, c.task.num_classes = val, 3
    with pytest.raises(DataError, match="task.num_classes=3"):
        classify.build(c)


def test_batches_are_deterministic_epochs_and_eval_covers_the_set_once(tmp_path):
    train = _write(tmp_path / "t.jsonl", [{"text": f"t{i}", "label": i % 3} for i in range(10)])
    val = _write(tmp_path / "v.jsonl", [{"text": f"v{i}", "label": i % 3} for i in range(11)])
    c = ft_config("jsonl", "bert", str(tmp_path), **{"data.train_files": train, "data.val_files": val,
                                                    "data.tokenizer_type": "byte", "train.batch_size": 4})
    data = classify.build(c)
    assert data.num_classes == 3 and data.eval_steps == 3  # derived: ceil(11 / 4)
    b = data.train.batch(2)
    assert set(b) == {"inputs", "token_types", "targets", "weights"} and b["targets"].shape == (4, 1)
    np.testing.assert_array_equal(b["inputs"], classify.build(c).train.batch(2)["inputs"])
    epoch = np.concatenate([data.train.batch(s)["inputs"][:, 2] for s in range(5)])[:10]  # 'tN': N's byte
    assert sorted(epoch.tolist()) == sorted(data.train.arrays["inputs"][:, 2].tolist())  # each example once
    weights = np.concatenate([data.val.batch(i)["weights"] for i in range(3)])
    assert weights.sum() == 11 and weights[11:].sum() == 0


# ------------------------------------------------------------------------------------------------ probes


def _code(i: int) -> str:
    return "".join(chr(ord("a") + (i // 26**k) % 26) for k in range(3))


def _synthetic_corpus(path, n=600):
    """Lines whose words all carry the line's 3-letter code, so every probe word names the line it came from."""
    lines = []
    for i in range(n):
        w = [_code(i) + s for s in "abcdefghijkl"]
        lines.append(f"{' '.join(w[:3])}, {' '.join(w[3:6])}; {' '.join(w[6:9])}. {' '.join(w[9:])}")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return lines


def _ids(text: str) -> set[str]:
    return {w[:3] for w in re.findall(r"[a-z]+", text)}


@pytest.mark.parametrize("task", probes.TASKS)
def test_probes_deterministic_balanced_and_from_validation_text_only(tmp_path, task):
    lines = _synthetic_corpus(tmp_path / "c.txt")
    c = finetune.get_config(f"task={task}")
    c.data.train_files = str(tmp_path / "c.txt")
    c.data.val_fraction = 0.2
    built = probes.build(c.data, c.task)
    assert built == probes.build(c.data, c.task)
    train_docs, val_docs = corpus.split_train_val(lines, 0.2)
    val_ids = {_code(lines.index(d)) for d in val_docs}
    train_ids = {_code(lines.index(d)) for d in train_docs}
    seen = {}
    for part, records in built.items():
        assert len(records) > 40 and sum(r["label"] for r in records) * 2 == len(records)  # exactly balanced
        ids = set()
        for r in records:
            classify.parse_record(r, "probe")  # the classify example format
            ids |= set().union(*(_ids(r[k]) for k in ("text", "text_a", "text_b") if k in r))
        assert ids <= val_ids and not ids & train_ids  # validation text only
        seen[part] = ids
    assert not seen["train"] & seen["eval"]  # probe-train and probe-eval share no source line
    for r in built["train"]:
        if task == "next_sentence":  # label 1: b continues a's own line; label 0: b is another line's
            assert (_ids(r["text_a"]) == _ids(r["text_b"])) == (r["label"] == 1)
    if task == "word_order":  # pairs: intact (1), then the same words with one adjacent pair swapped (0)
        for intact, swapped in zip(built["train"][::2], built["train"][1::2], strict=True):
            a, b = intact["text"].split(), swapped["text"].split()
            diff = [k for k in range(len(a)) if a[k] != b[k]]
            assert (intact["label"], swapped["label"]) == (1, 0) and len(diff) == 2 and diff[1] == diff[0] + 1
            assert (a[diff[0]], a[diff[1]]) == (b[diff[1]], b[diff[0]])


@pytest.mark.parametrize("task", probes.TASKS)
def test_probe_train_pairs_add_distinct_negatives_and_leave_eval_alone(tmp_path, task):
    _synthetic_corpus(tmp_path / "c.txt")
    c = finetune.get_config(f"task={task}")
    c.data.train_files, c.data.val_fraction = str(tmp_path / "c.txt"), 0.2
    c.task.train_pairs = 1
    one = probes.build(c.data, c.task)
    c.task.train_pairs = 3
    three = probes.build(c.data, c.task)
    assert three["eval"] == one["eval"]  # evaluation keeps one independent pair per source
    by_source: dict[int, list[dict]] = {}
    for r in three["train"]:
        by_source.setdefault(r["source"], []).append(r)
    assert set(by_source) == {r["source"] for r in one["train"]}
    counts = []
    for records in by_source.values():
        pos, neg = records[0::2], records[1::2]
        assert [r["label"] for r in pos] == [1] * len(pos) and [r["label"] for r in neg] == [0] * len(neg)
        assert all(p == pos[0] for p in pos)  # the same positive, each time with another negative
        texts = [r.get("text") or r["text_b"] for r in neg]
        assert len(set(texts)) == len(texts) and all(t != (pos[0].get("text") or pos[0]["text_b"]) for t in texts)
        counts.append(len(pos))
    assert max(counts) == 3 and np.mean(counts) > 2.5
    c.task.train_pairs = 0
    with pytest.raises(DataError, match="task.train_pairs"):
        probes.build(c.data, c.task)


def test_probe_batches_keep_each_source_documents_pair_together(tmp_path):
    """The shuffle moves whole source documents: a positive and its negative are always in the same batch (their
    gradients differ only where the texts do), and an epoch still visits every example once."""
    _synthetic_corpus(tmp_path / "c.txt")
    c = finetune.get_config("task=word_order")
    c.data.train_files, c.data.val_fraction, c.data.tokenizer_type = str(tmp_path / "c.txt"), 0.2, "byte"
    c.train.batch_size, c.data.seq_len, c.model.max_len = 6, 96, 96  # no truncation: every text distinct
    c.task.train_pairs = 1  # (more pairs repeat the positive)
    data = classify.build(c)
    groups = data.train.groups
    assert groups is not None and len(groups) == data.train.num_examples and np.all(np.bincount(groups)[groups] == 2)
    row = {bytes(r): k for k, r in enumerate(data.train.arrays["inputs"])}  # the texts are distinct
    steps = 3 * data.train.num_examples // 6
    order = np.array([row[bytes(r)] for s in range(steps) for r in data.train.batch(s)["inputs"]])
    for start in range(0, len(order), data.train.num_examples):  # epoch by epoch
        epoch = order[start:start + data.train.num_examples]
        assert sorted(epoch.tolist()) == list(range(data.train.num_examples))
        np.testing.assert_array_equal(groups[epoch[0::2]], groups[epoch[1::2]])  # pairs adjacent, 6 | batch
    assert not np.array_equal(order[:20], order[data.train.num_examples:][:20])  # a new shuffle per epoch
    with pytest.raises(ValueError, match="nondecreasing"):
        classify.Split("train", {"targets": np.zeros((3, 1))}, 0, 2, (0, 2), np.array([0, 1, 0]))


def test_probes_from_val_files_only(tmp_path):
    _synthetic_corpus(tmp_path / "train.txt", 50)
    val = _synthetic_corpus(tmp_path / "val.txt", 80)[40:]  # lines 40..79 exist only in val.txt
    _write(tmp_path / "val.txt", val)
    c = finetune.get_config("task=next_sentence")
    c.data.train_files, c.data.val_files = str(tmp_path / "train.txt"), str(tmp_path / "val.txt")
    built = probes.build(c.data, c.task)
    ids = set().union(*(_ids(r["text_a"] + " " + r["text_b"]) for p in built.values() for r in p))
    assert ids <= {_code(i) for i in range(40, 80)}


# ------------------------------------------------------------------------------------------------ classifier


def _cfg(arch):
    return model_config.ModelConfig(arch=arch, vocab_size=64, d_model=32, n_heads=2, d_ff=64, n_layers=2,
                                    max_len=16)


@pytest.mark.parametrize("arch", ["bert", "gpt", "t5"])
def test_classifier_pools_the_documented_position(arch):
    from model import build

    cfg = _cfg(arch)
    model = classifier.Classifier(cfg, 3)
    rng = np.random.default_rng(0)
    ids = rng.integers(5, 64, (2, 10)).astype(np.int32)
    ids[:, 7:] = 0
    batch = {"inputs": ids, "token_types": np.zeros_like(ids), "lengths": np.array([7, 7], np.int32),
             "encoder_inputs": ids, "decoder_inputs": np.zeros((2, 1), np.int32)}
    inputs = {k: batch[k] for k in model.input_names}
    params = jax.jit(lambda x: model.init(jax.random.key(0), **x)["params"])(inputs)
    assert set(params) == {"backbone", "pooler", "out"} and model.pretrained_key == "backbone"
    apply = jax.jit(lambda p, x: (model.apply({"params": p}, **x), model.apply({"params": p}, **x, method="pooled")))
    logits, pooled = apply(params, inputs)
    assert logits.shape == (2, 1, 3) and logits.dtype == jnp.float32
    method = {"bert": "features", "gpt": "features", "t5": "encode"}[arch]
    h = jax.jit(lambda p, x: build(cfg).apply({"params": p}, x, method=method))(params["backbone"], ids)
    # bert: [CLS] (position 0); gpt: the last real token (6); t5: the encoder output averaged over the 7 real tokens
    want = {"bert": h[:, 0], "gpt": h[:, 6], "t5": h[:, :7].mean(1)}[arch]
    np.testing.assert_allclose(pooled, want, rtol=1e-5, atol=1e-6)
    if arch == "gpt":  # tokens after the last real one (padding) cannot change the logits; one before it does
        changed = dict(inputs, inputs=np.where(np.arange(10) >= 7, 9, ids))
        np.testing.assert_array_equal(apply(params, changed)[0], logits)
        changed = dict(inputs, inputs=np.where(np.arange(10) == 6, 9, ids))
        assert not np.allclose(apply(params, changed)[0], logits)


@pytest.mark.parametrize("arch", ["bert", "gpt", "t5"])
def test_every_pooling_matches_numpy_over_the_real_tokens(arch):
    from model import build

    cfg = _cfg(arch)
    rng = np.random.default_rng(1)
    ids = rng.integers(5, 64, (3, 10)).astype(np.int32)
    n_real = np.array([10, 4, 1])
    ids[np.arange(10)[None, :] >= n_real[:, None]] = 0
    batch = {"inputs": ids, "token_types": np.zeros_like(ids), "lengths": n_real.astype(np.int32),
             "encoder_inputs": ids}
    method = {"bert": "features", "gpt": "features", "t5": "encode"}[arch]
    want_params = None
    for pooling in classifier.POOLINGS:
        model = classifier.Classifier(cfg, 2, pooling)
        inputs = {k: batch[k] for k in model.input_names}
        if want_params is None:
            want_params = jax.jit(lambda x, m=model: m.init(jax.random.key(0), **x)["params"])(inputs)
            h = np.asarray(jax.jit(lambda p, x: build(cfg).apply({"params": p}, x, method=method))(
                want_params["backbone"], ids))
        got = np.asarray(jax.jit(lambda p, x, m=model: m.apply({"params": p}, **x, method="pooled"))(
            want_params, inputs))
        rows = [h[i, :n] for i, n in enumerate(n_real)]
        want = {"first": [r[0] for r in rows], "last": [r[-1] for r in rows], "mean": [r.mean(0) for r in rows],
                "max": [r.max(0) for r in rows]}[pooling]
        np.testing.assert_allclose(got, np.stack(want), rtol=1e-5, atol=1e-6, err_msg=pooling)
    with pytest.raises(ValueError, match="task.pooling='cls' is unknown"):
        model = classifier.Classifier(cfg, 2, "cls")
        model.init(jax.random.key(0), **{k: batch[k] for k in model.input_names})


def test_t5_decoder_states_read_the_text_after_the_start_token():
    """task.t5_states='decoder' (BART-style): the decoder gets [start] + the encoder's row, and pooling runs over its
    states at those positions; causal, so the state after the last real token has read the whole text."""
    from model import build

    tok = tokenizer_lib.ByteTokenizer()
    examples = [classify.Example("abcdef", None, 1, "x"), classify.Example("ab", "cd", 0, "y")]
    arrays, _ = classify.encode(examples, tok, "t5", 12, t5_decoder=True)
    enc, dec, lengths = arrays["encoder_inputs"], arrays["decoder_inputs"], arrays["lengths"]
    for i in range(2):
        n = int((enc[i] != tok.pad_id).sum())  # the text and </s>
        assert lengths[i] == n + 1 and dec[i, 0] == 0
        np.testing.assert_array_equal(dec[i, 1:n + 1], enc[i, :n])
        assert (dec[i, n + 1:] == tok.pad_id).all()
    assert classify.encode(examples, tok, "t5", 12)[0]["decoder_inputs"].shape == (2, 1)  # encoder states: unused
    cfg = dataclasses.replace(_cfg("t5"), vocab_size=tok.vocab_size, max_len=12)
    model = classifier.Classifier(cfg, 2, "max", "decoder")
    assert model.input_names == ("encoder_inputs", "decoder_inputs", "lengths")
    inputs = {k: arrays[k] for k in model.input_names}
    params = jax.jit(lambda x: model.init(jax.random.key(0), **x)["params"])(inputs)
    got = jax.jit(lambda p, x: model.apply({"params": p}, **x, method="pooled"))(params, inputs)
    h = np.asarray(build(cfg).apply({"params": params["backbone"]}, enc, dec, method="features"))
    want = np.stack([h[i, :lengths[i]].max(0) for i in range(2)])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="task.t5_states='both' is unknown"):
        bad = classifier.Classifier(cfg, 2, "max", "both")
        bad.init(jax.random.key(0), **{k: arrays[k] for k in ("encoder_inputs",)})


# ------------------------------------------------------------------------------------------------ metrics


def test_confusion_and_f1_by_hand():
    targets = np.array([[1], [1], [1], [0], [0], [1], [0]])
    preds = np.array([1, 0, 1, 1, 0, 1, 0])
    weights = np.array([[1], [1], [1], [1], [1], [1], [0]], np.float32)  # the last row is padding
    logits = jax.nn.one_hot(preds, 2)[:, None, :] * 5.0
    cm = jax.device_get(losses.confusion(logits, jnp.asarray(targets), jnp.asarray(weights)))
    np.testing.assert_array_equal(cm, [[1, 1], [1, 3]])  # rows: target, columns: prediction
    unit = objectives.Classification("classify", {})
    out = unit.summarize({**jax.device_get(losses.cross_entropy(logits, jnp.asarray(targets), jnp.asarray(weights))),
                          "confusion": cm}, "eval")
    tp, fp, fn = 3, 1, 1
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    assert out["eval/f1"] == pytest.approx(2 * precision * recall / (precision + recall))
    assert out["eval/accuracy"] == pytest.approx(4 / 6)
    three = losses.classification_metrics(np.array([[2, 0, 0], [0, 1, 1], [0, 0, 0]]), "eval")
    assert three["eval/macro_f1"] == pytest.approx((1 + 2 / 3 + 0) / 3) and "eval/f1" not in three


# ------------------------------------------------------------------------------------------------ end to end


def test_init_from_loads_the_backbone_exactly(tmp_path):
    from train import checkpoint, loop

    # Random parameters stand in for a pretrained run (the config as train.main would record it).
    pre = helpers.tiny_config("bert", str(tmp_path), **{"model.init_std": 0.3})
    helpers.untrained_workdir("bert", str(tmp_path), str(tmp_path / "pre"))
    ft = ft_config("next_sentence", "gpt", str(tmp_path / "elsewhere"), **{
        "init_from": str(tmp_path / "pre"), "train.steps": 1, "train.learning_rate": 0.0, "train.warmup_steps": 0,
        "train.eval_every": 1, "train.checkpoint_every": 1, "model.d_model": 64, "task.dropout": 0.1})
    summary = loop.train_and_evaluate(ft, str(tmp_path / "ft"))
    assert summary["arch"] == "bert" and "eval/f1" in summary["final_eval"]
    # The pretrained model config, but the recipe's dropout (model.* overrides give way to the pretrained run's).
    assert pre.model.dropout == 0.0 and ft.model.to_dict() == pre.model.to_dict() | {"vocab_size": 512,
                                                                                       "dropout": 0.1}
    assert ft.data.train_files == pre.data.train_files and ft.data.cache_dir == pre.data.cache_dir
    with open(tmp_path / "ft" / "config.json") as f:
        assert json.load(f)["data"]["num_classes"] == 2
    pre_abstract = loop.build(pre)[3].abstract_state().params
    ft_abstract = loop.build(ft)[3].abstract_state().params
    want = checkpoint.load_params(str(tmp_path / "pre"), pre_abstract)
    got = checkpoint.load_params(str(tmp_path / "ft"), ft_abstract)  # after one step at learning rate 0
    assert set(got) == {"backbone", "pooler", "out"}
    jax.tree.map(np.testing.assert_array_equal, got["backbone"], want)


def test_learnable_jsonl_task_reaches_high_accuracy(tmp_path):
    from train import loop

    rng = np.random.default_rng(0)
    words = ["lamb", "ram", "ox", "dove", "fig", "vine", "oil", "salt"]

    def examples(n):
        out = []
        for i in range(n):
            text = " ".join(rng.choice(words, 4))
            if i % 2:
                text = text.replace(text.split()[int(rng.integers(4))], "quail", 1)
            out.append({"text": text, "label": "yes" if "quail" in text else "no"})
        return out

    train = _write(tmp_path / "train.jsonl", examples(256))
    val = _write(tmp_path / "val.jsonl", examples(60))
    c = ft_config("jsonl", "bert", str(tmp_path), **{
        "data.train_files": train, "data.val_files": val, "data.tokenizer_type": "byte", "train.steps": 40,
        "train.batch_size": 16, "train.learning_rate": 3e-3, "train.warmup_steps": 4, "train.eval_every": 40,
        "train.checkpoint_every": 40})
    summary = loop.train_and_evaluate(c, str(tmp_path / "run"))
    ev = summary["final_eval"]
    assert ev["eval/tokens"] == 60  # the whole evaluation set once, padding rows weighted 0
    assert ev["eval/accuracy"] >= 0.9 and ev["eval/f1"] >= 0.9, ev
    with open(tmp_path / "run" / "metrics.jsonl") as f:
        assert any("eval/f1" in json.loads(line) for line in f)


def test_finetune_config_arguments():
    c = finetune.get_config("task=word_order,arch=t5")
    assert (c.task.name, c.model.arch, c.objective.name) == ("word_order", "t5", "classify")
    assert isinstance(c.task, ml_collections.ConfigDict)
    with pytest.raises(ValueError, match="arch"):
        finetune.get_config("task=word_order,arch=rnn")
    with pytest.raises(ValueError, match="expected"):
        finetune.get_config("word_order")
    c.task.name = "sentiment"
    with pytest.raises(DataError, match="task.name"):
        classify.build(c)


def test_missing_pretrained_config(tmp_path):
    c = finetune.get_config("task=next_sentence")
    c.init_from = str(tmp_path)
    os.makedirs(tmp_path / "checkpoints" / "3" / "state")
    with pytest.raises(errors.UserError, match="config.json"):
        workdir.inherit_pretrained(c)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(["a", "b.", "c?", "d", "e!", "f"]), max_size=80), st.integers(1, 12),
       st.integers(1, 9))
def test_passages_are_sentence_runs_of_at_least_min_words_evenly_spaced(words, min_words, limit):
    doc = " ".join(words)
    out = probes.passages(doc, min_words, limit)
    if not words:
        assert out == []
        return
    every = probes.passages(doc, min_words, 10**6)
    assert " ".join(every).split() == words  # all of them, in order, are the document
    assert all(len(p.split()) >= min_words for p in every) or len(every) == 1
    assert all(probes._sentence_end(p.split()[-1]) for p in every[:-1])  # each ends a sentence but the last
    assert len(out) == min(limit, len(every)) and out[0] == every[0]
    assert out[-1] == every[-1] or limit == 1  # evenly spaced from the first to the last
    assert all(p in every for p in out)

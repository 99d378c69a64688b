"""Minimal-pair evaluation (experiments/blimp.py, data/minimal_pairs.py) against hand-written references."""

import gzip
import json
import os
import random
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from data import minimal_pairs
from data.errors import DataError
from experiments import blimp, probes
from model import build, scoring
from model import config as model_config
from tests.helpers import ROOT, tiny_config
from train import loop

V = 64


class WordTokenizer:
    """Each word a token (ids 10 ..), with the specials the three objectives need."""

    eos_id, mask_id, cls_id, sep_id = 1, 4, 5, 6

    def __init__(self):
        self.vocab = {}

    def encode(self, text):
        return [self.vocab.setdefault(w, 10 + len(self.vocab) % (V - 10)) for w in text.split()]

    def sentinel_id(self, i):
        return 7 + i


def _model(arch):
    cfg = model_config.ModelConfig(arch=arch, vocab_size=V, d_model=32, n_heads=2, d_ff=64, n_layers=2, max_len=16)
    model = build(cfg)
    dummy = jnp.zeros((1, 4), jnp.int32)
    return model, model.init(jax.random.key(3), *((dummy, dummy) if arch == "t5" else (dummy,)))["params"]


def _log_softmax(x):
    x = np.asarray(x, np.float64)
    return x - x.max() - np.log(np.exp(x - x.max()).sum())


def _pairs(n=4, seed=0, longest=5):
    rng = random.Random(seed)
    words = "the a cat cats dog dogs runs run sees see who what".split()
    out = []
    for i in range(n):
        good = " ".join(rng.choice(words) for _ in range(rng.randint(3, longest)))
        bad = " ".join(rng.choice(words) for _ in range(rng.randint(3, longest)))
        out.append({"sentence_good": good, "sentence_bad": bad, "UID": f"p{i % 3}", "field": f"f{i % 2}"})
    return out


def _slow_sentence_score(arch, model, params, ids, tok):
    """The sentence's score by hand, no batching or padding: GPT's chain rule from one forward pass over exactly the
    sentence after eos (prefix by prefix in tests/test_scoring.py); BERT and T5 one masked copy per token."""
    apply = jax.jit(lambda p, *x: model.apply({"params": p}, *x))
    if arch == "gpt":
        logits = apply(params, jnp.asarray([[tok.eos_id, *ids]], jnp.int32))[0]
        return sum(_log_softmax(logits[j])[token] for j, token in enumerate(ids))
    total = 0.0
    for j, token in enumerate(ids):
        if arch == "bert":
            row = [tok.cls_id, *ids[:j], tok.mask_id, *ids[j + 1:], tok.sep_id]
            logits = apply(params, jnp.asarray([row], jnp.int32))[0, 1 + j]
        else:
            row = [*ids[:j], tok.sentinel_id(0), *ids[j + 1:], tok.eos_id]
            logits = apply(params, jnp.asarray([row], jnp.int32),
                           jnp.asarray([[0, tok.sentinel_id(0)]], jnp.int32))[0, 1]
        total += _log_softmax(logits)[token]
    return total


@pytest.mark.parametrize("arch", ["gpt", "bert", "t5"])
def test_each_family_scores_a_sentence_as_a_hand_written_unbatched_loop(arch, monkeypatch):
    monkeypatch.setattr(scoring, "_TOKENS", 64)  # calls of 8 rows of 8 tokens: several for BERT and T5
    model, params = _model(arch)
    tok = WordTokenizer()
    pairs = _pairs()
    good, bad, kept = blimp.score_pairs(probes.scorer(model, params, tok, "w", "test"), tok, pairs, 16)
    assert kept == list(range(len(pairs)))
    for i, p in enumerate(pairs):
        for got, text in ((good[i], p["sentence_good"]), (bad[i], p["sentence_bad"])):
            assert got == pytest.approx(_slow_sentence_score(arch, model, params, tok.encode(text), tok), abs=1e-4)


@pytest.mark.parametrize("arch", ["gpt", "bert"])
def test_batching_and_padding_change_no_score(arch, monkeypatch):
    model, params = _model(arch)
    tok = WordTokenizer()
    pairs = _pairs(10, seed=1, longest=7)
    score = probes.scorer(model, params, tok, "w", "test")
    together = blimp.score_pairs(score, tok, pairs, 16)
    monkeypatch.setattr(scoring, "_TOKENS", 8)  # one row per call, each padded only to its own length
    alone = [blimp.score_pairs(score, tok, [p], 16) for p in pairs]
    np.testing.assert_allclose(together[0], [a[0][0] for a in alone], atol=1e-5)
    np.testing.assert_allclose(together[1], [a[1][0] for a in alone], atol=1e-5)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(-3, 3), st.integers(-3, 3)), min_size=1, max_size=40))
def test_swapping_good_and_bad_turns_accuracy_a_into_one_minus_a(scores):
    good, bad = (np.array(x, float) for x in zip(*scores, strict=True))
    a = blimp.pair_results(good, bad).mean()
    assert blimp.pair_results(bad, good).mean() == pytest.approx(1 - a)
    assert blimp.pair_results(good, good).tolist() == [0.5] * len(good)  # a tie counts half


def test_levels_average_paradigms_and_their_errors_by_hand():
    pairs = [{"UID": u, "field": f} for u, f, n in (("a", "x", 4), ("b", "x", 2), ("c", "y", 3)) for _ in range(n)]
    results = np.array([1, 1, 0, 1, 0, 0.5, 1, 1, 1], float)
    s = blimp.summarize(pairs, results, ("UID", "field"))
    se_a = np.std([1, 1, 0, 1], ddof=1) / 2
    se_b = np.std([0, 0.5], ddof=1) / np.sqrt(2)
    assert s["UID"]["a"] == pytest.approx({"accuracy": 0.75, "se": se_a, "pairs": 4})
    assert s["UID"]["c"]["se"] == 0.0
    assert s["field"]["x"]["accuracy"] == pytest.approx((0.75 + 0.25) / 2)  # the mean of paradigms, not of pairs
    assert s["field"]["x"]["se"] == pytest.approx(np.sqrt(se_a**2 + se_b**2) / 2)
    assert s["overall"]["accuracy"] == pytest.approx((0.75 + 0.25 + 1) / 3)
    assert s["overall"]["groups"] == 3 and s["overall"]["pairs"] == 9


def test_blimp_ships_67_paradigms_in_the_published_12_phenomena_and_4_fields():
    pairs = minimal_pairs.blimp()
    assert len(pairs) == 67_000
    assert len({p["UID"] for p in pairs}) == 67
    assert {p["field"] for p in pairs} == set(blimp.FIELDS)
    assert len({p["linguistics_term"] for p in pairs}) == 12
    published = minimal_pairs.published()
    assert published["gpt2"]["overall"] == pytest.approx(0.830, abs=1e-3)
    assert len(published["gpt2"]) == 67 + 12 + 1


def test_the_subset_is_fixed_stratified_and_independent_of_file_order():
    pairs = minimal_pairs.blimp()
    sub = minimal_pairs.subset(pairs, 30, "UID")
    assert len(sub) == 67 * 30
    assert all(n == 30 for n in np.unique([p["UID"] for p in sub], return_counts=True)[1])
    shuffled = list(pairs)
    random.Random(0).shuffle(shuffled)
    key = lambda p: p["source"]  # noqa: E731
    assert sorted(map(key, minimal_pairs.subset(shuffled, 30, "UID"))) == sorted(map(key, sub))


def test_a_malformed_pairs_file_names_the_file_the_line_and_the_field(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text('{"sentence_good": "a b", "sentence_bad": "b a"}\n{"sentence_good": "c d"}\n')
    with pytest.raises(DataError, match=r"mine.jsonl:2: missing field 'sentence_bad'"):
        minimal_pairs.read(str(path))
    path.write_text('{"sentence_good": "a b", "sentence_bad": ""}\n')
    with pytest.raises(DataError, match=r"mine.jsonl:1: field 'sentence_bad' must be a non-empty string"):
        minimal_pairs.read(str(path))
    path.write_text('{"sentence_good": "a b", "sentence_bad": "b a"}\n')
    with pytest.raises(DataError, match=r"mine.jsonl:1: no field 'phenomenon' to group by"):
        minimal_pairs.require(minimal_pairs.read(str(path)), "phenomenon")
    with pytest.raises(DataError, match=r"--pairs_files: 'nope.jsonl' does not exist"):
        minimal_pairs.read("nope.jsonl")


def _cli(*args):
    r = subprocess.run([sys.executable, "-m", "experiments.blimp", *args], capture_output=True, text=True, cwd=ROOT)
    return r.returncode, r.stderr.strip().splitlines()


def test_bad_input_gets_one_line_and_writes_nothing(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"sentence_good": "a"}\n')
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    for args, want in ((["--workdir=" + str(tmp_path / "none")], "does not exist"),
                       (["--workdir=" + str(empty), f"--pairs_files={bad}"], "bad.jsonl:1: missing field"),
                       ([], "--workdir is required")):
        code, err = _cli(*args)
        assert code != 0 and len(err) == 1 and want in err[0], (args, err)
    assert not os.path.exists(empty / "blimp")


# Singular and plural as whole words (one token each, equally frequent): only the agreement tells them apart.
RULE_NOUNS = [("man", "men"), ("child", "children"), ("mouse", "mice"), ("goose", "geese"), ("person", "people")]
RULE_VERBS = [("is", "are"), ("was", "were"), ("has", "have")]


def _rule_sentence(rng, plural, verb_agrees=True):
    noun = rng.choice(RULE_NOUNS)[plural]
    verb = rng.choice(RULE_VERBS)[plural if verb_agrees else 1 - plural]
    return f"the {noun} {verb} here ."


@pytest.fixture(scope="module")
def rule_run(tmp_path_factory):
    """A tiny GPT trained a few hundred steps on sentences where the verb agrees with its subject."""
    d = tmp_path_factory.mktemp("rule")
    rng = random.Random(0)
    with open(d / "rule.txt", "w") as f:
        for _ in range(3000):
            f.write(" ".join(_rule_sentence(rng, rng.random() < 0.5) for _ in range(4)) + "\n")
    c = tiny_config("gpt", str(d), **{"data.train_files": str(d / "rule.txt"), "data.vocab_size": 390,
                                      "train.steps": 300, "train.eval_every": 300, "train.checkpoint_every": 300,
                                      "train.learning_rate": 1e-2, "train.log_every": 50})
    loop.train_and_evaluate(c, str(d / "run"))
    return str(d / "run")


def test_a_model_trained_on_a_planted_rule_scores_above_chance_and_its_swap_below(rule_run, tmp_path):
    rng = random.Random(1)
    lines = []
    for i in range(60):
        plural = i % 2 == 0  # as many singular as plural pairs: a preference for shorter text scores exactly chance
        seed = rng.random()
        good = _rule_sentence(random.Random(seed), plural)[:-2]
        bad = _rule_sentence(random.Random(seed), plural, verb_agrees=False)[:-2]
        lines.append(json.dumps({"sentence_good": good, "sentence_bad": bad, "number": "pl" if plural else "sg"}))
    path = tmp_path / "agreement.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.write("\n".join(lines) + "\n")
    rec = blimp.evaluate(rule_run, minimal_pairs.read(str(path)), ("number",), "agreement", log=lambda *_: None)
    assert rec["overall"]["accuracy"] > 0.8, rec["overall"]
    assert rec["ties"] == 0 and rec["left_out"] == 0
    saved = json.load(open(os.path.join(rule_run, "blimp", "agreement.json")))
    assert saved["correct"] == rec["correct"] and len(saved["pair"]) == 60
    swapped = [{**p, "sentence_good": p["sentence_bad"], "sentence_bad": p["sentence_good"]}
               for p in minimal_pairs.read(str(path))]
    rec2 = blimp.evaluate(rule_run, swapped, ("number",), "swapped", log=lambda *_: None)
    assert rec2["overall"]["accuracy"] == pytest.approx(1 - rec["overall"]["accuracy"])


def _compare_with_blimp(tmp_path, archs: tuple[str, ...]) -> str:
    """Runs compare on tiny contenders of `archs` with BLiMP's 2 pairs per paradigm; checks what each contender
    records, the report's BLiMP lines and pictures, and that a second run scores nothing. Returns report.md."""
    from experiments import compare, planning
    from tests.test_experiments import _tiny_base

    base = {**_tiny_base(tmp_path), "model.max_len": 96}  # every BLiMP sentence fits with this tokenizer
    contenders = {arch: dict(config=f"experiments/configs/{arch}.py:tiny", overrides=base) for arch in archs}
    suite = tmp_path / "blimp_suite.py"
    suite.write_text(f"def get_suite():\n    return dict(description='blimp plumbing', contenders={contenders!r}, "
                     f"budget=('steps', 4), param_tolerance=0.5, evals=1, blimp=2)\n")
    work = tmp_path / "runs"
    with pytest.raises(planning.SweepError, match=r"--blimp=1001: give the BLiMP pairs per paradigm"):
        compare.compare(str(work), str(suite), blimp=1001)
    compare.compare(str(work), str(suite), log=lambda m: None)
    records = {}
    for name in contenders:
        summary = json.loads((work / name / "summary.json").read_text())
        record = records[name] = json.loads((work / name / "blimp" / "blimp-2-per-paradigm.json").read_text())
        assert len(record["pair"]) == 134 and record["overall"]["groups"] == 67
        assert summary["probes"]["blimp (zero-shot)"] == record["overall"]["accuracy"]
        for field in blimp.FIELDS:
            per_pair = json.loads((work / name / planning.PER_PAIR_DIR / f"blimp_{field}.json").read_text())
            assert np.mean(per_pair["correct"]) == pytest.approx(record["field"][field]["accuracy"])
            assert summary["probes"][f"blimp_{field} (zero-shot)"] == record["field"][field]["accuracy"]
        assert set(summary["blimp"]["linguistics_term"]) == {p["linguistics_term"] for p in minimal_pairs.blimp()}
    md = (work / "report.md").read_text()
    assert "| blimp 0-shot |" in md and "![yardsticks](yardsticks.png)" in md
    published = md[md.index("## BLiMP beside published models"):]
    assert f"| BLiMP | {' | '.join(archs)} | 5-gram* | LSTM* | Transformer-XL* | GPT-2* |" in published
    assert "| **overall** | " in published and "| 61.2 | 69.8 | 69.6 | 83.0 |" in published
    assert published.count("\n| ") >= 1 + 1 + 12  # header, overall, the 12 phenomena
    assert (work / "yardsticks.png").stat().st_size > 10_000 and (work / "blimp_phenomena.png").stat().st_size > 10_000
    for row in json.loads((work / "report.json").read_text())["rows"]:
        assert row["eval_se/probe/blimp (zero-shot)"] == pytest.approx(records[row["group"]]["overall"]["se"])
    logs = []
    compare.compare(str(work), str(suite), log=logs.append)  # finished and scored: nothing is scored again
    assert not any("[blimp]" in m for m in logs)
    return md


def test_compare_scores_blimp_and_reports_it_with_pictures(tmp_path):
    md = _compare_with_blimp(tmp_path, ("gpt",))
    assert "- **probe: blimp (zero-shot)**: only gpt has it: " in md


@pytest.mark.slow
def test_compare_scores_blimp_for_every_contender_and_reports_it_with_pictures(tmp_path):
    """Two families (BERT scores by pseudo-log-likelihood) and the paired test between them."""
    md = _compare_with_blimp(tmp_path, ("gpt", "bert"))
    assert "- **probe: blimp (zero-shot)**: " in md and "paired bootstrap over 134 pairs" in md

"""data.show: runs for the gpt, bert and t5 configs, --json parses, a DataError is one line on stderr."""

import json
import os
import subprocess
import sys

import pytest

from tests.test_data_common import write_corpus

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return {**os.environ, "TRIAD_CACHE": str(tmp_path_factory.mktemp("cache"))}


@pytest.fixture(scope="module")
def small_flags(tmp_path_factory):
    path = write_corpus(tmp_path_factory.mktemp("corpus"))
    return [
        f"--config.data.train_files={path}",
        "--config.data.vocab_size=512",
        "--config.data.seq_len=32",
        "--config.data.val_fraction=0.1",
        "--config.train.batch_size=8",
    ]


def show(args, env):
    return subprocess.run(
        [sys.executable, "-m", "data.show", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    "arch, keys",
    [
        ("gpt", {"inputs_ids", "targets_ids", "weights", "target_bytes"}),
        ("bert", {"inputs_ids", "targets_ids", "weights", "target_bytes"}),
        ("t5", {"encoder_inputs", "targets_ids", "decoder_inputs", "weights", "target_bytes"}),
    ],
)
def test_show_json(arch, keys, env, small_flags):
    r = show([f"--config=experiments/configs/{arch}.py:tiny", "--step=3", "--json", "--examples=3", *small_flags], env)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["step"] == 3 and out["objective"] == {"gpt": "causal_lm", "bert": "mlm", "t5": "span_corruption"}[arch]
    assert len(out["examples"]) == 3
    ex = out["examples"][0]
    assert set(ex) == {"inputs", "targets"} | keys and isinstance(ex["inputs"], str)
    marker = {"gpt": "", "bert": "[MASK]", "t5": "<extra_id_0>"}[arch]
    assert marker in ex["inputs"] and len(ex["targets"]) > 0


def _show_text_on_bundled_corpus(env, *flags):
    r = show(["--config=experiments/configs/bert.py:tiny", "--split=val", "--step=1", *flags], env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("mlm | val step 1") and "[MASK]" in r.stdout and "positions weighted" in r.stdout
    assert r.stdout.count("--- example") == 2


def test_show_text_on_bundled_corpus(env):
    """The bundled corpus (no data flag) in byte tokens: training its SentencePiece model takes 20 s (slow test
    below)."""
    _show_text_on_bundled_corpus(env, "--config.data.tokenizer_type=byte")


@pytest.mark.slow
def test_show_text_on_bundled_corpus_as_first_run(env):
    """The command exactly as a first run has it: trains the bundled corpus's tokenizer."""
    _show_text_on_bundled_corpus(env)


def test_show_data_error_is_one_line(env):
    r = show(["--config=experiments/configs/gpt.py:tiny", "--config.data.train_files=no/such/*.txt"], env)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    assert "data.train_files: 'no/such/*.txt' matched no files" in r.stderr
    assert [line for line in r.stderr.splitlines() if line.startswith("error:")] == [
        "error: data.train_files: 'no/such/*.txt' matched no files; pass existing paths or globs (comma-separated)"
    ]


def test_show_next_sentence_pairs(env, small_flags):
    args = ["--config=experiments/configs/bert.py:tiny", "--config.objective.nsp=True", "--examples=8", *small_flags]
    r = show([*args, "--json"], env)
    assert r.returncode == 0, r.stderr
    examples = json.loads(r.stdout)["examples"]
    assert {"segment_a", "segment_b", "token_types", "nsp_labels"} <= set(examples[0])
    assert {ex["nsp_labels"] for ex in examples} == {0, 1}
    text = show(args, env).stdout
    assert "nsp_label: 1 IsNext (B follows A)" in text and "nsp_label: 0 NotNext" in text
    assert "\nA: '" in text and "\nB: '" in text

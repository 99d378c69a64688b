"""train/sample.py end to end: gpt, t5 and bert parameters-only workdirs (random init, the format
experiments.hf_import writes), a tokenizer-less workdir, and the one-line errors; trained t5 and bert: slow."""

import json
import os
import re
import shutil
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from tests import helpers
from train import errors, loop
from train import sample as sample_lib

ROOT = helpers.ROOT
SHORT = {"train.steps": 4, "train.eval_every": 4, "train.checkpoint_every": 4, "train.eval_steps": 1}


@pytest.fixture(scope="module")
def workdirs(tmp_path_factory):
    """Random parameters (what these tests check holds for any parameters: the KV cache against none, shapes,
    seeds, errors), in config.json and checkpoint as train.main writes them; reading the checkpoint of a trained
    run is tests/test_train.py's init_from test, sampling after training test_trained_t5_and_bert (slow)."""
    root = tmp_path_factory.mktemp("sample")
    out = {arch: helpers.untrained_workdir(arch, str(root), str(root / arch), **SHORT)
           for arch in ("gpt", "t5", "bert")}
    # An imported-model workdir: config.json without a data section (no tokenizer), same checkpoint.
    out["no_tok"] = str(root / "no_tok")
    os.makedirs(out["no_tok"])
    with open(os.path.join(out["gpt"], "config.json")) as f:
        record = json.load(f)
    del record["data"]
    with open(os.path.join(out["no_tok"], "config.json"), "w") as f:
        json.dump(record, f)
    shutil.copytree(os.path.join(out["gpt"], "checkpoints"), os.path.join(out["no_tok"], "checkpoints"))
    return out


def run(workdir, **opts) -> list[str]:
    lines = []
    sample_lib.sample(workdir, out=lines.append, **opts)
    return lines


def samples(lines):
    return [x for x in lines if x.startswith("  sample ")]


def test_load_workdir(workdirs):
    config, mcfg, m, params, tok = sample_lib.load_workdir(workdirs["gpt"])
    assert mcfg.arch == "gpt" and config.train.steps == 4 and tok.vocab_size == mcfg.vocab_size == 512
    assert jax.tree.map(lambda x: (x.shape, x.dtype), params) == jax.tree.map(lambda x: (x.shape, x.dtype),
        nn.meta.unbox(jax.eval_shape(m.init, jax.random.key(0), jnp.zeros((1, 1), jnp.int32))["params"]))
    assert sample_lib.load_workdir(workdirs["no_tok"])[4] is None


def test_gpt_prompt_cache_and_no_cache_agree(workdirs):
    lines = run(workdirs["gpt"], prompt="And God said", max_new_tokens=8)
    assert lines[0] == "prompt 1: And God said"
    assert len(samples(lines)) == 1 and lines[-1].startswith("tokens/s: ")
    assert "KV cache" in lines[-1]
    no_cache = run(workdirs["gpt"], prompt="And God said", max_new_tokens=8, no_cache=True)
    assert samples(no_cache) == samples(lines) and "no cache" in no_cache[-1]


def test_gpt_prompts_file_and_num_samples(workdirs, tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("In the beginning\n\nAnd the LORD spake unto Moses, saying\n")
    lines = run(workdirs["gpt"], prompts_file=str(path), max_new_tokens=6, temperature=1.0, top_p=0.9,
                num_samples=2, seed=3)
    assert [x for x in lines if x.startswith("prompt ")] == [
        "prompt 1: In the beginning", "prompt 2: And the LORD spake unto Moses, saying"]
    assert [x.split(":")[0] for x in samples(lines)] == ["  sample 1", "  sample 2"] * 2
    assert "batch 4" in lines[-1]


def test_t5_fills_sentinels(workdirs):
    prompt = "In the <extra_id_0> God created <extra_id_1> earth"
    lines = run(workdirs["t5"], prompt=prompt, max_new_tokens=8)
    assert lines[0] == f"prompt 1: {prompt}"
    assert lines[1].startswith("  sample 1: ")
    assert lines[2].startswith("    <extra_id_0> = ") and lines[3].startswith("    <extra_id_1> = ")
    assert lines[4].startswith("    filled: In the")
    assert lines[-1].startswith("tokens/s: ")
    assert samples(run(workdirs["t5"], prompt=prompt, max_new_tokens=8, no_cache=True)) == samples(lines)


def test_fill_spans_and_encode_text(workdirs):
    tok = sample_lib.load_workdir(workdirs["t5"])[4]
    s0, s1 = tok.sentinel_id(0), tok.sentinel_id(1)
    prompt = sample_lib.encode_text(tok, "In the <extra_id_0> God <extra_id_1>")
    assert prompt == tok.encode("In the") + [s0] + tok.encode(" God") + [s1]  # the space goes with the span
    output = [s0] + tok.encode(" beginning") + [s1, tok.eos_id]
    spans, filled = sample_lib.fill_spans(tok, prompt, output)
    assert spans == {s0: tok.encode(" beginning"), s1: []}
    assert tok.decode(filled) == "In the beginning God"
    assert sample_lib.encode_text(tok, "the [MASK] of")[len(tok.encode("the"))] == tok.mask_id


def test_bert_fill_mask(workdirs):
    lines = run(workdirs["bert"], text="the [MASK] of the [MASK]", top_k=3)
    assert lines[0] == "text: the [MASK] of the [MASK]"
    for n, line in enumerate(lines[1:3]):
        assert line.startswith(f"  [MASK] {n + 1}: ")
        probs = [float(p) for p in re.findall(r" (\d\.\d{3})(?:,|$)", line)]
        assert len(probs) == 3 and probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1
    assert lines[3].startswith("  filled: the") and "[MASK]" not in lines[3]


def test_ids_on_a_workdir_without_tokenizer(workdirs):
    tok = sample_lib.load_workdir(workdirs["gpt"])[4]
    ids = [tok.eos_id] + tok.encode("And God said")  # what --prompt="And God said" feeds the model
    lines = run(workdirs["no_tok"], ids=",".join(map(str, ids)), max_new_tokens=8)
    assert lines[0] == f"prompt 1: {' '.join(map(str, ids))}"
    got = [int(i) for i in samples(lines)[0].split(": ", 1)[1].split()]
    text = samples(run(workdirs["gpt"], prompt="And God said", max_new_tokens=8))[0].split(": ", 1)[1]
    assert tok.decode(got) == text
    with pytest.raises(errors.UserError, match="has no tokenizer.*--ids"):
        run(workdirs["no_tok"], prompt="And God said")


@pytest.mark.parametrize("key, opts, match", [
    ("gpt", dict(text="the [MASK]"), "--text is fill-mask for bert"),
    ("bert", dict(prompt="the"), "bert model .* --text"),
    ("bert", dict(text="no mask here"), "has no \\[MASK\\]"),
    ("gpt", dict(prompt="And God said " * 20), "longer than model.max_len=32"),
    ("gpt", dict(prompt="And God said", max_new_tokens=40), "lower --max_new_tokens to at most"),
    ("gpt", dict(prompt="x", num_samples=2), "--temperature > 0"),
    ("gpt", {}, "pass --prompt, --prompts_file or --ids"),
    ("gpt", dict(prompt="x", ids="1"), "only one of"),
    ("gpt", dict(ids="1,b"), "not comma-separated integers"),
])
def test_user_errors(workdirs, key, opts, match):
    with pytest.raises(errors.UserError, match=match):
        run(workdirs[key], **opts)


def test_workdir_errors(workdirs, tmp_path):
    with pytest.raises(errors.UserError, match="does not exist"):
        run(str(tmp_path / "missing"), prompt="x")
    with pytest.raises(errors.UserError, match="has no config.json"):
        run(str(tmp_path), prompt="x")
    shutil.copy(os.path.join(workdirs["gpt"], "config.json"), tmp_path / "config.json")
    with pytest.raises(errors.UserError, match="has no checkpoint yet"):
        run(str(tmp_path), prompt="x")


def cli(*args):
    return subprocess.run([sys.executable, "-m", "train.sample", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def test_cli(workdirs):
    ok = cli(f"--workdir={workdirs['gpt']}", "--prompt=And God said", "--max_new_tokens=5")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.splitlines()[0] == "prompt 1: And God said" and "tokens/s: " in ok.stdout
    bad = cli(f"--workdir={workdirs['gpt']}", "--text=the [MASK]")
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.strip().splitlines()[-1].startswith("error: --text is fill-mask for bert workdirs")
    assert "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1, bad.stderr


@pytest.mark.slow
@pytest.mark.parametrize("arch, opts", [("t5", dict(prompt="In the <extra_id_0> God created")),
                                        ("bert", dict(text="the [MASK] of the lord"))])
def test_trained_t5_and_bert(tmp_path, arch, opts):
    workdir = str(tmp_path / arch)
    loop.train_and_evaluate(helpers.tiny_config(arch, str(tmp_path), **SHORT), workdir)
    lines = run(workdir, max_new_tokens=6, **opts)
    assert lines[0].endswith(next(iter(opts.values())))
    assert any(x.startswith("    filled: ") or x.startswith("  filled: ") for x in lines)
    if arch == "t5":
        assert samples(run(workdir, max_new_tokens=6, no_cache=True, **opts)) == samples(lines)

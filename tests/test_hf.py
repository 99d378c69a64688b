"""Hugging Face interop: imported GPT-2 / BERT / T5 checkpoints reproduce transformers' logits (fixtures made by
tests/make_hf_fixtures.py), the import CLI writes a workdir that loads back, bad files fail with one message
naming the tensor, and export(import(x)) round-trips."""

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from model import abstract_params, build
from model.config import from_dict, preset
from model.hf_convert import HFExportError, export_hf, hf_tensors, import_hf
from model.hf_layouts import FAMILIES, HFImportError
from train.workdir import load_workdir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures", "hf")
NAMES = ("gpt2", "bert", "t5", "t5_v1_1")


def _reference(name):
    return dict(np.load(os.path.join(FIXTURES, name, "reference.npz")))


def _logits(cfg, params, ref):
    apply = jax.jit(build(cfg).apply)  # One compile is faster than op-by-op dispatch here.
    if cfg.arch == "gpt":
        return np.asarray(apply({"params": params}, ref["inputs"]))
    if cfg.arch == "bert":
        return np.asarray(apply({"params": params}, ref["inputs"], token_types=ref["token_types"]))
    return np.asarray(apply({"params": params}, ref["encoder_inputs"], ref["decoder_inputs"]))


def _max_diff(cfg, params, ref):
    return float(np.abs(_logits(cfg, params, ref) - ref["logits"])[ref["valid"]].max())


def _equal_trees(a, b):
    return jax.tree.structure(a) == jax.tree.structure(b) and all(
        x.shape == y.shape and np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b),
                                                                     strict=True))


def _rewrite(tmp_path, name, edit):
    """A copy of fixture `name` whose tensors went through edit(dict) -> dict."""
    out = tmp_path / name
    shutil.copytree(os.path.join(FIXTURES, name), out)
    tensors = edit(load_file(str(out / "model.safetensors")))
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    return str(out)


@pytest.mark.parametrize("name", NAMES)
def test_imported_logits_match_transformers(name):
    cfg, params = import_hf(os.path.join(FIXTURES, name))
    ref = _reference(name)
    assert _max_diff(cfg, params, ref) < 1e-4
    # The fixtures exercise what they claim: padding, both T5 versions, a head width != d_model / heads.
    if name == "bert":
        assert (ref["inputs"] == 0).any() and not ref["valid"].all()
    if name.startswith("t5"):
        assert (ref["encoder_inputs"] == 0).any() and (ref["decoder_inputs"][:, 0] == 0).all()
    expect = {"gpt2": dict(arch="gpt", position="learned", mlp="gelu", tie_embeddings=True),
              "bert": dict(arch="bert", norm_position="post", mlm_transform=True, type_vocab_size=2),
              "t5": dict(mlp="relu", tie_embeddings=True, scale_tied_logits=True),
              "t5_v1_1": dict(mlp="geglu", tie_embeddings=False, scale_tied_logits=False, head_dim=12,
                              n_decoder_layers=1)}[name]
    assert {k: getattr(cfg, k) for k in expect} == expect


def test_cli_writes_a_workdir_that_loads_back_and_exports(tmp_path):
    src = os.path.join(FIXTURES, "bert")
    workdir, out = str(tmp_path / "wd"), str(tmp_path / "hf")
    for cmd in (["experiments.hf_import", f"--hf_dir={src}", f"--workdir={workdir}"],
                ["experiments.hf_export", f"--workdir={workdir}", f"--hf_dir={out}"]):
        r = subprocess.run([sys.executable, "-m", *cmd], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr[-2000:]
    with open(os.path.join(workdir, "config.json")) as f:
        record = json.load(f)
    cfg, params = import_hf(src)
    assert from_dict(record["model_config"]) == cfg and record["config"]["model"] == record["model_config"]
    _, cfg_back, _, loaded, _ = load_workdir(workdir)  # train.checkpoint.load_params with the workdir's model_config.
    assert cfg_back == cfg and _equal_trees(loaded, params)
    assert _max_diff(cfg, loaded, _reference("bert")) < 1e-4
    cfg2, params2 = import_hf(out)
    assert cfg2 == cfg and _equal_trees(params2, params)


def test_cli_names_a_missing_tensor_without_traceback(tmp_path):
    def rename(t):
        t["transformer.h.1.attn.c_atn.weight"] = t.pop("transformer.h.1.attn.c_attn.weight")
        return t

    src = _rewrite(tmp_path, "gpt2", rename)
    r = subprocess.run([sys.executable, "-m", "experiments.hf_import", f"--hf_dir={src}", f"--workdir={tmp_path}/wd"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith("error: ") and "'h.1.attn.c_attn.weight' is missing" in line
    assert "transformer.h.1.attn.c_atn.weight" in line  # The likely culprit is named too.
    assert not os.path.exists(tmp_path / "wd")


def test_wrong_shape_and_unknown_tensors_are_named(tmp_path):
    name = "encoder.block.1.layer.1.DenseReluDense.wo.weight"
    src = _rewrite(tmp_path, "t5", lambda t: {**t, name: t[name][:, :-1]})
    with pytest.raises(HFImportError, match=rf"'{name}' has shape \(32, 63\), but config.json implies \(32, 64\)"):
        import_hf(src)
    src = _rewrite(tmp_path / "x", "bert", lambda t: {**t, "bert.encoder.layer.0.attention.self.extra": t[
        "cls.predictions.bias"]})
    with pytest.raises(ValueError, match="'bert.encoder.layer.0.attention.self.extra' is not a BertForMaskedLM"):
        import_hf(src)


def test_hub_layouts_buffers_and_tied_copies_are_read(tmp_path):
    """Older files (the ones on the Hub): no 'transformer.' prefix, causal-mask buffers, LayerNorm gamma/beta,
    pooler and NSP head, tied copies of the embedding; sharded and bfloat16 files."""
    def gpt2(t):
        t = {k.removeprefix("transformer."): v for k, v in t.items()}
        return {**t, "h.0.attn.bias": np.tril(np.ones((1, 1, 32, 32), np.float32)),
                "h.1.attn.masked_bias": np.float32([-1e4]), "lm_head.weight": t["wte.weight"]}

    def bert(t):
        t = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
             for k, v in t.items()}
        return {**t, "bert.pooler.dense.weight": np.zeros((32, 32), np.float32),
                "cls.seq_relationship.bias": np.zeros(2, np.float32),
                "bert.embeddings.position_ids": np.arange(32)[None],
                "cls.predictions.decoder.weight": t["bert.embeddings.word_embeddings.weight"],
                "cls.predictions.decoder.bias": t.pop("cls.predictions.bias")}

    for name, edit in (("gpt2", gpt2), ("bert", bert)):
        assert _equal_trees(import_hf(_rewrite(tmp_path, name, edit))[1], import_hf(os.path.join(FIXTURES, name))[1])

    def t5_copies(t):
        shared = t.pop("shared.weight")
        return {**t, "encoder.embed_tokens.weight": shared, "decoder.embed_tokens.weight": shared,
                "lm_head.weight": shared,
                "decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight": np.zeros((8, 4),
                                                                                                   np.float32)}

    assert _equal_trees(import_hf(_rewrite(tmp_path / "c", "t5", t5_copies))[1],
                        import_hf(os.path.join(FIXTURES, "t5"))[1])

    # An untied BERT head adds the decoder's own bias (transformers 5 then leaves predictions.bias unused).
    def bert_untied(t):
        emb = t["bert.embeddings.word_embeddings.weight"]
        return {**t, "cls.predictions.decoder.weight": emb[::-1].copy(), "cls.predictions.decoder.bias":
                t["cls.predictions.bias"] + 1}

    cfg, params = import_hf(_rewrite(tmp_path / "u", "bert", bert_untied))
    bias = load_file(os.path.join(FIXTURES, "bert", "model.safetensors"))["cls.predictions.bias"]
    assert not cfg.tie_embeddings and np.array_equal(params["head"]["bias"], bias + 1)


def test_t5_v1_1_saved_by_transformers_5_is_tied_and_unscaled(tmp_path):
    """transformers 5 ties every T5 head and writes scale_decoder_outputs=false for v1.1 (no lm_head in the file)."""
    src = _rewrite(tmp_path, "t5_v1_1", lambda t: {k: v for k, v in t.items() if k != "lm_head.weight"})
    with open(os.path.join(src, "config.json")) as f:
        c = json.load(f)
    with open(os.path.join(src, "config.json"), "w") as f:
        json.dump({**c, "tie_word_embeddings": True, "scale_decoder_outputs": False}, f)
    cfg, params = import_hf(src)
    assert cfg.mlp == "geglu" and cfg.tie_embeddings and not cfg.scale_tied_logits and "head" not in params
    assert cfg == import_hf(os.path.join(FIXTURES, "t5_v1_1"))[0].replace(tie_embeddings=True)


@pytest.mark.parametrize("name", NAMES)
def test_export_round_trips(tmp_path, name):
    src = os.path.join(FIXTURES, name)
    cfg, params = import_hf(src)
    export_hf(cfg, params, str(tmp_path))
    cfg2, params2 = import_hf(str(tmp_path))
    assert cfg2 == cfg and _equal_trees(params2, params)
    # The same tensors as the transformers-saved file (names up to prefixes and tied copies).
    family = FAMILIES[json.load(open(os.path.join(src, "config.json")))["model_type"]]
    canonical = lambda n: family.aliases.get(family.normalise(n), family.normalise(n))
    names = lambda d: set(map(canonical, load_file(os.path.join(d, "model.safetensors"))))
    assert names(str(tmp_path)) == names(src)


def test_export_of_scanned_layers_and_of_triad_only_configs():
    cfg, params = import_hf(os.path.join(FIXTURES, "bert"))
    enc = dict(params["encoder"])
    layers = [enc.pop(f"layer_{i}") for i in range(cfg.n_layers)]
    scanned = {**params, "encoder": {**enc, "layers": jax.tree.map(lambda *xs: np.stack(xs), *layers)}}
    scan_cfg = cfg.replace(scan_layers=True)
    assert jax.tree.structure(abstract_params(scan_cfg)) == jax.tree.structure(scanned)
    a, b = hf_tensors(scan_cfg, scanned), hf_tensors(cfg, params)
    assert sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)

    with pytest.raises(HFExportError, match="model.position='rope' has no Hugging Face GPT2LMHeadModel"):
        export_hf(preset("tiny", arch="gpt"), {}, "/nonexistent")

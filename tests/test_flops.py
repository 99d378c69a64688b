"""model/flops.py against the real parameter trees (jax.eval_shape) and XLA's cost analysis of the forward pass."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import model
from model import flops
from model.config import ModelConfig, preset


def _inputs(cfg: ModelConfig, batch: int, seq_len: int, target_len: int = 0):
    """Abstract model inputs (positional, in the order of the model's __call__)."""
    ids = lambda n: jax.ShapeDtypeStruct((batch, n), jnp.int32)
    return (ids(seq_len), ids(target_len)) if cfg.arch == "t5" else (ids(seq_len),)


def _abstract_params(cfg: ModelConfig, seq_len: int = 8, target_len: int = 4):
    m = model.build(cfg)
    args = _inputs(cfg, 1, seq_len, target_len)
    init = lambda: m.init(jax.random.PRNGKey(0), *(jnp.ones(a.shape, a.dtype) for a in args))
    return nn.unbox(jax.eval_shape(init)["params"])


def _leaves(params) -> dict[str, int]:
    """'decoder/layer_0/mlp/wi/kernel' -> size."""
    out = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        out["/".join(str(p.key) for p in path)] = int(np.prod(leaf.shape))
    return out


def _check_tree(cfg: ModelConfig) -> None:
    """param_count equals the real tree; every breakdown row equals the leaves under its path; nothing uncounted."""
    leaves = _leaves(_abstract_params(cfg))
    assert flops.param_count(cfg) == sum(leaves.values())
    for per_layer in (False, True):
        rows = flops.param_breakdown(cfg, per_layer=per_layer)
        assert sum(n for _, n in rows) == flops.param_count(cfg)
        claimed = set()
        for path, n in rows:
            pattern = re.compile(re.escape(path).replace(r"\*", r"\d+") + "(/|$)")
            under = {k for k in leaves if pattern.match(k)}
            assert sum(leaves[k] for k in under) == n, (path, n, {k: leaves[k] for k in under})
            assert not under & claimed, f"{path} overlaps another row"
            claimed |= under
        assert claimed == set(leaves), set(leaves) - claimed


_BASE = dict(vocab_size=97, d_model=24, n_heads=4, d_ff=40, n_layers=2, max_len=16, position="rope")
_VARIANTS = {
    "default": {},
    "gqa_head_dim": dict(n_kv_heads=2, head_dim=10),
    "mqa_qk_norm": dict(n_kv_heads=1, qk_norm=True),
    "rms_nobias": dict(norm="rmsnorm", use_bias=False, qk_norm=True),
    "swiglu_untied": dict(mlp="swiglu", tie_embeddings=False, output_bias=True),
    "geglu_learned_post": dict(mlp="geglu", position="learned", norm_position="post", final_norm=False),
    "t5rel_embed_norm": dict(position="t5_relative", rel_buckets=8, rel_max_distance=20, embed_norm=True),
    "alibi_relu_scan": dict(position="alibi", mlp="relu", scan_layers=True),
    "sinusoidal_layernorm_nobias": dict(position="sinusoidal", use_bias=False, tie_embeddings=False),
}
_ARCH_EXTRA = {"gpt": {}, "bert": dict(type_vocab_size=3, mlm_transform=True, output_bias=True),
               "t5": dict(n_decoder_layers=3)}


@pytest.mark.parametrize("arch", ["gpt", "bert", "t5"])
@pytest.mark.parametrize("variant", list(_VARIANTS))
def test_param_count_matches_tree(arch, variant):
    _check_tree(ModelConfig(**{**_BASE, "arch": arch, **_ARCH_EXTRA[arch], **_VARIANTS[variant]}))


def test_bert_without_head_extras():
    _check_tree(ModelConfig(**_BASE, arch="bert"))  # No token types, no transform, no output bias.


# Published totals (Hugging Face): GPT2LMHeadModel gpt2 (tied head); BertForMaskedLM bert-base-uncased, i.e. the
# encoder without pooler (108,891,648) plus the MLM head (transform 768*768 + 768, its LayerNorm 2*768, output bias
# 30,522 = 622,650); T5ForConditionalGeneration t5-small (tied) and google/t5-v1_1-small (untied lm_head).
PUBLISHED = {"gpt2": 124_439_808, "bert-base": 108_891_648 + 622_650, "t5-small": 60_506_624,
             "t5.1.1-small": 76_961_152}
BERT_PRETRAINING = 110_106_428  # BertForPreTraining: + pooler 768*768 + 768 and NSP 768*2 + 2 (objective.nsp).


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_published_param_counts(name):
    cfg = preset(name)
    assert flops.param_count(cfg) == PUBLISHED[name]
    _check_tree(cfg)


def test_bert_base_encoder_without_head():
    head = dict(flops.param_breakdown(preset("bert-base")))
    assert head["head/transform"] + head["head/transform_norm"] + head["head/bias"] == 622_650
    assert flops.param_count(preset("bert-base")) - 622_650 == 108_891_648


def _xla_forward_flops(cfg: ModelConfig, batch: int, seq_len: int, target_len: int = 0) -> float:
    m = model.build(cfg)
    params = _abstract_params(cfg, seq_len, target_len or 4)
    fwd = jax.jit(lambda p, *x: m.apply({"params": p}, *x))
    cost = fwd.lower(params, *_inputs(cfg, batch, seq_len, target_len)).compile().cost_analysis()
    if isinstance(cost, (list, tuple)):  # Older jax: one dict per computation.
        cost = cost[0]
    return float(cost["flops"])


_XLA = dict(vocab_size=2000, d_model=256, n_heads=4, d_ff=1024, n_layers=2, max_len=128, position="rope")
XLA_CASES = {  # name -> (config fields, S or L, T)
    "gpt": (dict(arch="gpt"), 128, 0),
    "gpt_gqa": (dict(arch="gpt", n_heads=8, n_kv_heads=2), 128, 0),
    "gpt_swiglu_untied": (dict(arch="gpt", mlp="swiglu", tie_embeddings=False), 128, 0),
    "bert_mlm_head": (dict(arch="bert", position="learned", type_vocab_size=2, mlm_transform=True,
                           output_bias=True, embed_norm=True, norm_position="post"), 128, 0),
    "t5_s_ne_t": (dict(arch="t5", position="t5_relative", norm="rmsnorm", use_bias=False, mlp="geglu",
                       n_kv_heads=2, n_decoder_layers=3), 128, 48),
}
TOLERANCE = 0.03  # XLA also counts elementwise work (softmax, norms, gelu, masks, rope): 0.7-1.3% here.


@pytest.mark.parametrize("case", list(XLA_CASES))
def test_forward_flops_match_xla(case):
    fields, S, T = XLA_CASES[case]
    cfg = ModelConfig(**{**_XLA, **fields})
    batch = 2
    ours = flops.flops_per_example(cfg, S, T)["forward"] * batch
    xla = _xla_forward_flops(cfg, batch, S, T)
    print(f"{case}: xla/ours = {xla / ours:.4f}")
    assert ours <= xla <= ours * (1 + TOLERANCE), (case, xla / ours)


def test_gpt_rule_of_thumb():
    """Training FLOPs per token = 6 N + 12 n_layers L d (N: matmul weights incl. the head; full causal square)."""
    cfg = ModelConfig(**{**_XLA, "arch": "gpt", "n_layers": 3})
    L = 128
    leaves = _leaves(_abstract_params(cfg))
    n_matmul = sum(v for k, v in leaves.items() if k.endswith("kernel")) + leaves["embed/embedding"]  # tied head
    assert flops.matmul_param_count(cfg) == n_matmul
    per_token = flops.flops_per_token(cfg, L)
    assert per_token["train"] == 6 * n_matmul + 12 * cfg.n_layers * L * cfg.d_model
    # Kaplan et al. count only the causal half: 2 n_layers (L + 1) d per token forward with the diagonal.
    assert per_token["attention_causal"] == 2 * cfg.n_layers * (L + 1) * cfg.d_model
    # GPT-2 at 1024 tokens: 6 x params is within 1% of the dense part, attention adds 12 * 12 * 1024 * 768.
    g = preset("gpt2")
    dense = flops.flops_per_token(g, 1024)
    assert dense["train"] == pytest.approx(6 * flops.param_count(g) + 12 * 12 * 1024 * 768, rel=0.01)


def test_t5_per_token_and_step():
    cfg = preset("t5-small")
    S, T = 512, 114
    ex = flops.flops_per_example(cfg, S, T)
    tok = flops.flops_per_token(cfg, S, T)
    assert tok["tokens"] == S + T and tok["forward"] * (S + T) == pytest.approx(ex["forward"])
    assert flops.training_flops_per_step(cfg, 8, S, T) == 3 * ex["forward"] * 8
    # The decoder's cross-attention reads S keys: more encoder tokens cost decoder FLOPs too.
    assert flops.flops_per_example(cfg, S + 64, T)["attention"] > ex["attention"]
    with pytest.raises(ValueError, match="target_len"):
        flops.flops_per_example(cfg, S)
    with pytest.raises(ValueError, match="only applies"):
        flops.flops_per_example(preset("gpt2"), 128, 16)



@pytest.mark.parametrize("arch", ["gpt", "bert", "t5"])
def test_summary_matches_flops(arch):
    from experiments import summary
    from experiments.configs import base

    config = base.base_config(arch, "small")
    s = summary.summarize(config)
    cfg = model.from_dict(config.model, vocab_size=config.data.vocab_size)  # The run's tokenizer size.
    assert s["params"] == flops.param_count(cfg) == sum(s["breakdown"].values())
    T = s["target_len"]
    if arch == "t5":  # Derived as the pipeline does: the span-corruption target length of 256 encoder tokens.
        from data.spans import random_spans_helper

        assert T == random_spans_helper(256, 0.15, 3.0)[1] == 58
    assert s["flops_per_step"] == flops.training_flops_per_step(cfg, config.train.batch_size, 256, T)
    assert s["flops_per_token"] * s["tokens_per_example"] * config.train.batch_size == pytest.approx(
        s["flops_per_step"])
    assert "total" in summary.table(s)
    assert s["published"] is None and summary.table(s).startswith("module")  # Our sizes are no published model.


def test_summary_cli():
    import json
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    run = lambda *a: subprocess.run([sys.executable, "-m", "experiments.summary", *a], cwd=root, capture_output=True,
                                    text=True, timeout=120)
    out = run("--config=experiments/configs/gpt.py:gpt2", "--config.model.n_layers=2", "--json")
    assert out.returncode == 0, out.stderr
    s = json.loads(out.stdout)
    assert s["params"] == flops.param_count(preset("gpt2").replace(n_layers=2, vocab_size=8000, max_len=1024))
    assert {"params", "flops_per_token", "flops_per_step", "breakdown"} <= set(s)
    assert s["published"] is None  # Two layers are not GPT-2.
    run8k = flops.param_count(preset("gpt2").replace(vocab_size=8000))
    out = run("--config=experiments/configs/gpt.py:gpt2", "--json")
    assert out.returncode == 0, out.stderr
    s = json.loads(out.stdout)
    assert (s["params"], s["published"]) == (run8k, {"name": "gpt2", "vocab_size": 50257, "max_len": 1024,
                                                      "params": PUBLISHED["gpt2"]})
    out = run("--config=experiments/configs/gpt.py:gpt2")
    assert out.returncode == 0, out.stderr
    first, second = out.stdout.splitlines()[:2]
    assert first.split() == ["gpt2", "as", "published", "124,439,808", "parameters", "(vocab_size", "50,257,",
                             "max_len", "1,024)"], first
    assert second.startswith("this run") and f"{run8k:,} parameters  (vocab_size 8,000, max_len 1,024" in second
    bad = run("--config=experiments/configs/gpt.py:tiny", "--config.model.mlp=nope")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "model.mlp" in bad.stderr, bad.stderr


def test_published_match():
    from model.config import published_match

    for name in PUBLISHED:
        p = preset(name)
        assert published_match(p) == name
        # What a run sets for itself leaves it the published architecture.
        run = p.replace(vocab_size=8000, max_len=2048, dropout=0.0, attention_dropout=0.0, init_std=0.01, pad_id=3,
                        dtype="bfloat16", param_dtype="bfloat16", remat="full", scan_layers=True,
                        n_kv_heads=p.n_heads)  # = the default 0.
        assert published_match(run) == name
        # Any change of the architecture does not, whether or not it changes the size.
        for change in (dict(d_model=2 * p.d_model), dict(n_layers=p.n_layers + 1), dict(d_ff=p.d_ff + 64),
                       dict(n_kv_heads=p.n_heads // 2), dict(position="rope"), dict(mlp="swiglu"),
                       dict(tie_embeddings=not p.tie_embeddings, scale_tied_logits=False),
                       dict(norm_position="post" if p.norm_position == "pre" else "pre"),
                       dict(attention_scale=not p.attention_scale), dict(attention_window=64)):
            assert published_match(p.replace(**change)) is None, (name, change)
    assert published_match(preset("bert-base").replace(nsp_head=True)) == "bert-base"
    for size in ("tiny", "small"):
        for arch in ("gpt", "bert", "t5"):
            assert published_match(preset(size, arch)) is None


def test_run_fields_leave_the_published_count():
    """Of the fields published_match ignores, only vocab_size, max_len and nsp_head change the parameter count,
    and the published count is taken at the preset's values of those."""
    from model.config import RUN_FIELDS

    neutral = dict(pad_id=3, dropout=0.0, attention_dropout=0.0, init_std=0.01, dtype="bfloat16",
                   param_dtype="bfloat16", attention_impl="cudnn", remat="dots", scan_layers=True)
    assert set(neutral) == set(RUN_FIELDS) - {"vocab_size", "max_len", "nsp_head"}
    for name in PUBLISHED:
        for field, value in neutral.items():
            assert flops.param_count(preset(name).replace(**{field: value})) == PUBLISHED[name], (name, field)


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_summary_shows_published_count_first(name):
    from experiments import summary
    from experiments.configs import base

    arch = {"g": "gpt", "b": "bert", "t": "t5"}[name[0]]
    config = base.get_config(arch, name)
    s = summary.summarize(config)
    run = flops.param_count(model.from_dict(config.model, vocab_size=config.data.vocab_size))
    p = preset(name)
    assert s["published"] == {"name": name, "vocab_size": p.vocab_size, "max_len": p.max_len,
                              "params": PUBLISHED[name]}
    assert s["params"] == run == sum(s["breakdown"].values()) < PUBLISHED[name]  # 8,000 tokens, not 30-50k.
    lines = summary.table(s).splitlines()
    assert lines[0].startswith(f"{name} as published ") and f" {PUBLISHED[name]:,} parameters" in lines[0]
    assert lines[1].startswith("this run ") and f" {run:,} parameters" in lines[1]
    assert lines[0].index(" parameters") == lines[1].index(" parameters")  # The two counts right-aligned.
    assert lines[3].startswith("module") and f"{run:,}" in next(ln for ln in lines if ln.startswith("total"))
    if arch == "bert":  # objective.nsp adds the pooler and NSP head: BertForPreTraining's count.
        config.objective.nsp = True
        s = summary.summarize(config)
        assert s["published"]["params"] == BERT_PRETRAINING
        assert s["params"] == run + BERT_PRETRAINING - PUBLISHED[name]
        assert summary.table(s).startswith(f"{name} as published (with the NSP head)   {BERT_PRETRAINING:,}")

"""ModelConfig validation, presets, from_dict and exact parameter counts of the published architectures."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import model
from model import config


@pytest.mark.parametrize("changes, field", [
    (dict(d_model=100, n_heads=3), "model.d_model"),
    (dict(n_kv_heads=3), "model.n_kv_heads"),
    (dict(position="rotary"), "model.position"),
    (dict(norm="batchnorm"), "model.norm"),
    (dict(mlp="swish"), "model.mlp"),
    (dict(dropout=1.5), "model.dropout"),
    (dict(arch="gpt", n_decoder_layers=2), "model.n_decoder_layers"),
    (dict(arch="gpt", mlm_transform=True), "model.mlm_transform"),
    (dict(tie_embeddings=False, scale_tied_logits=True), "model.scale_tied_logits"),
    (dict(position="rope", head_dim=7), "model.position"),
    (dict(position="t5_relative", rel_buckets=5), "model.rel_buckets"),
    (dict(d_model=128.0), "model.d_model"),
    (dict(use_bias=1), "model.use_bias"),
    (dict(pad_id=9000), "model.pad_id"),
])
def test_bad_configs_name_the_field(changes, field):
    with pytest.raises(config.ConfigError, match=field.replace(".", r"\.")):
        config.ModelConfig(**changes)


def test_config_fields_are_plain_and_commented():
    cfg = config.preset("tiny", "gpt")
    for v in dataclasses.asdict(cfg).values():
        assert type(v) in (int, float, str, bool)
    src = open(config.__file__).read()
    for f in dataclasses.fields(cfg):
        line = next(ln for ln in src.splitlines() if ln.strip().startswith(f"{f.name}: "))
        assert "#" in line, f.name
    assert config.ModelConfig(dropout=0).dropout == 0.0 and isinstance(config.ModelConfig(dropout=0).dropout, float)
    assert cfg.replace(n_kv_heads=2).kv_heads == 2 and cfg.dh == 32


def test_presets():
    for name in ("gpt2", "bert-base", "t5-small", "t5.1.1-small"):
        assert config.preset(name).arch == {"g": "gpt", "b": "bert", "t": "t5"}[name[0]]
    with pytest.raises(config.ConfigError, match="gpt2"):
        config.preset("gpt2", arch="bert")
    with pytest.raises(config.ConfigError, match="model.arch"):
        config.preset("tiny")
    with pytest.raises(config.ConfigError, match="unknown model preset"):
        config.preset("huge", "gpt")
    tiny = {a: config.preset("tiny", a) for a in ("gpt", "bert", "t5")}
    layer_fields = ("position", "norm", "norm_position", "norm_eps", "mlp", "gelu_approximate", "use_bias",
                    "tie_embeddings", "final_norm", "dropout", "d_model", "n_heads", "d_ff", "dtype")
    for f in layer_fields:
        assert len({getattr(c, f) for c in tiny.values()}) == 1, f
    assert tiny["t5"].n_layers + tiny["t5"].decoder_layers == tiny["gpt"].n_layers == 4
    assert config.preset("small", "t5").n_layers == 3


def test_from_dict():
    d = ml_collections.ConfigDict(dataclasses.asdict(config.preset("tiny", "bert")))
    d.dtype = "auto"
    cfg = config.from_dict(d, vocab_size=123)
    assert cfg.vocab_size == 123 and cfg.arch == "bert"
    assert cfg.dtype == ("float32" if jax.default_backend() == "cpu" else "bfloat16")
    with pytest.raises(config.ConfigError, match="model.d_modle.*valid fields"):
        config.from_dict({**dataclasses.asdict(cfg), "d_modle": 3})


def n_params(name: str, drop: tuple[str, ...] = ()) -> int:
    cfg = config.preset(name)
    m = model.build(cfg)
    x = jnp.zeros((1, 4), jnp.int32)
    args = (x, x) if cfg.arch == "t5" else (x,)
    params = nn.meta.unbox(jax.eval_shape(m.init, jax.random.key(0), *args)["params"])
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    return sum(int(np.prod(v.shape)) for path, v in flat if not any(getattr(k, "key", "") in drop for k in path))


def test_parameter_counts():
    assert n_params("gpt2") == 124_439_808
    # bert-base MLM head (not part of the 108,891,648 encoder): transform dense D*D + D, its LayerNorm 2D, and
    # the output bias V (the output matrix is the tied embedding).
    d, v = 768, 30522
    assert n_params("bert-base") == 108_891_648 + d * d + d + 2 * d + v
    assert n_params("bert-base", drop=("head",)) == 108_891_648
    assert n_params("t5-small") == 60_506_624
    assert n_params("t5.1.1-small") == 76_961_152  # Untied lm_head included.

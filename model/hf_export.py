"""Triad -> Hugging Face: a GPT-2, BERT or T5 (v1.0 / v1.1) with the published layer choices written as a
transformers model directory (config.json + model.safetensors), the inverse of model/hf_import.py. A BERT with
model.nsp_head is written as BertForPreTraining (pooler and next-sentence head included).

  python -m model.hf_export --workdir=runs/gpt2-hf --hf_dir=OUT

`export_hf(cfg, params, hf_dir)` does the same from memory. The tensor layouts are model/hf_import.py's, run
backwards; a model whose config has no Hugging Face equivalent (rope, rmsnorm in a GPT, ...) stops with an
HFExportError naming the model.* field. Dropout rates and init_std are written but not required to round-trip.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys

import numpy as np

from model import hf_import as hf
from model.config import ModelConfig, from_dict

# Fields that do not change what the weights compute (or that HF cannot hold), or that the tensors rather than
# config.json carry (nsp_head: the pooler and seq_relationship tensors): not checked on export.
_NOT_CHECKED = ("dtype", "param_dtype", "attention_impl", "remat", "scan_layers", "init_std", "dropout",
                "attention_dropout", "nsp_head")


class HFExportError(ValueError):
    """A model or workdir that cannot be written as a Hugging Face checkpoint; the message names the field."""


def _activation(cfg: ModelConfig, table: dict) -> str:
    for name, fields in table.items():
        if all(getattr(cfg, k) == v for k, v in fields.items()):
            return name
    raise HFExportError(f"model.mlp={cfg.mlp!r} (gelu_approximate={cfg.gelu_approximate}) has no Hugging Face "
                        f"{hf.FAMILY_OF_ARCH[cfg.arch].model_type} equivalent")


def _t5_proj(cfg: ModelConfig) -> str:
    if cfg.mlp == "geglu" and cfg.gelu_approximate:
        return "gated-gelu"  # transformers' name for gated gelu_new.
    if cfg.mlp == "swiglu":
        return "gated-silu"
    return _activation(cfg, hf.ACTIVATIONS)


def hf_config(cfg: ModelConfig) -> dict:
    """The transformers config.json describing cfg (not checked: see `check`)."""
    family = hf.FAMILY_OF_ARCH[cfg.arch]
    architecture = "BertForPreTraining" if cfg.nsp_head else family.architecture  # MLM + next-sentence heads.
    c = {"model_type": family.model_type, "architectures": [architecture], "vocab_size": cfg.vocab_size,
         "dtype": "float32", "torch_dtype": "float32"}
    if cfg.arch == "gpt":
        c.update(n_embd=cfg.d_model, n_head=cfg.n_heads, n_inner=cfg.d_ff, n_layer=cfg.n_layers,
                 n_positions=cfg.max_len, layer_norm_epsilon=cfg.norm_eps, resid_pdrop=cfg.dropout,
                 embd_pdrop=cfg.dropout, attn_pdrop=cfg.attention_dropout, scale_attn_weights=cfg.attention_scale,
                 initializer_range=cfg.init_std, pad_token_id=cfg.pad_id, tie_word_embeddings=cfg.tie_embeddings,
                 activation_function=_activation(cfg, hf.ACTIVATIONS),
                 bos_token_id=50256 if cfg.vocab_size > 50256 else None,  # GPT-2's <|endoftext|>, if it exists.
                 eos_token_id=50256 if cfg.vocab_size > 50256 else None)
    elif cfg.arch == "bert":
        c.update(hidden_size=cfg.d_model, num_attention_heads=cfg.n_heads, intermediate_size=cfg.d_ff,
                 num_hidden_layers=cfg.n_layers, max_position_embeddings=cfg.max_len,
                 type_vocab_size=cfg.type_vocab_size, layer_norm_eps=cfg.norm_eps,
                 hidden_dropout_prob=cfg.dropout, attention_probs_dropout_prob=cfg.attention_dropout,
                 initializer_range=cfg.init_std, pad_token_id=cfg.pad_id, position_embedding_type="absolute",
                 tie_word_embeddings=cfg.tie_embeddings, hidden_act=_activation(cfg, hf.ACTIVATIONS))
    else:
        # transformers 5 reads scale_decoder_outputs; 4 scales iff tie_word_embeddings (and then ties the head:
        # a tied, unscaled Triad model is written with tie_word_embeddings=false and a copied lm_head).
        c.update(d_model=cfg.d_model, d_kv=cfg.dh, num_heads=cfg.n_heads, d_ff=cfg.d_ff, num_layers=cfg.n_layers,
                 num_decoder_layers=cfg.decoder_layers, n_positions=cfg.max_len,
                 relative_attention_num_buckets=cfg.rel_buckets,
                 relative_attention_max_distance=cfg.rel_max_distance, layer_norm_epsilon=cfg.norm_eps,
                 dropout_rate=cfg.dropout, feed_forward_proj=_t5_proj(cfg), is_encoder_decoder=True,
                 pad_token_id=cfg.pad_id, decoder_start_token_id=cfg.pad_id,
                 tie_word_embeddings=cfg.scale_tied_logits, scale_decoder_outputs=cfg.scale_tied_logits)
    return c


def check(cfg: ModelConfig, c: dict) -> None:
    """Raises HFExportError unless importing config.json `c` gives back cfg (up to _NOT_CHECKED)."""
    family = hf.FAMILY_OF_ARCH[cfg.arch]
    try:
        back = hf.config_from_hf(c, cfg.tie_embeddings)
    except ValueError as e:
        raise HFExportError(f"this model cannot be written as a Hugging Face {family.architecture}: {e}") from None
    for f in dataclasses.fields(ModelConfig):
        if f.name not in _NOT_CHECKED and getattr(cfg, f.name) != getattr(back, f.name):
            raise HFExportError(
                f"model.{f.name}={getattr(cfg, f.name)!r} has no Hugging Face {family.architecture} equivalent "
                f"(it has {getattr(back, f.name)!r}): only models with the published {family.model_type} layer "
                f"choices can be exported")


def _unscan(cfg: ModelConfig, params: dict) -> tuple[ModelConfig, dict]:
    """Params of a scan_layers model (blocks stacked on a leading axis) as per-layer ones."""
    if not cfg.scan_layers:
        return cfg, params
    params = dict(params)
    stacks = {"encoder": cfg.n_layers, "decoder": cfg.decoder_layers if cfg.arch == "t5" else cfg.n_layers}
    for stack, n in stacks.items():
        if stack in params and "layers" in params[stack]:
            s = dict(params[stack])
            layers = s.pop("layers")
            for i in range(n):
                s[f"layer_{i}"] = _tree_map(lambda a, i=i: np.asarray(a)[i], layers)
            params[stack] = s
    return cfg.replace(scan_layers=False), params


def _tree_map(fn, tree):
    return {k: _tree_map(fn, v) for k, v in tree.items()} if isinstance(tree, dict) else fn(tree)


def hf_tensors(cfg: ModelConfig, params: dict) -> dict[str, np.ndarray]:
    """{HF name: float32 array} of the model's parameters."""
    from flax import traverse_util

    cfg, params = _unscan(cfg, params)
    flat = traverse_util.flatten_dict(params, sep="/")
    family = hf.FAMILY_OF_ARCH[cfg.arch]
    out = {t.hf: hf.to_hf(t, flat) for t in family.layout(cfg)}
    if cfg.arch == "t5" and cfg.tie_embeddings and not cfg.scale_tied_logits:
        out[family.head] = out[family.embedding]  # See hf_config: transformers 4 then ties it back.
    if cfg.arch == "bert":  # Both copies of the output bias, as transformers 4 wrote them.
        out["cls.predictions.bias"] = out["cls.predictions.decoder.bias"]
    return out


def export_hf(cfg: ModelConfig, params: dict, hf_dir: str) -> None:
    """Writes hf_dir/config.json and hf_dir/model.safetensors for cfg and its params."""
    from safetensors.numpy import save_file

    c = hf_config(cfg)
    check(cfg, c)
    tensors = hf_tensors(cfg, params)
    os.makedirs(hf_dir, exist_ok=True)
    with open(os.path.join(hf_dir, "config.json"), "w") as fh:
        json.dump(c, fh, indent=2, sort_keys=True)
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, os.path.join(hf_dir, "model.safetensors"),
              metadata={"format": "pt"})


def load_workdir(workdir: str) -> tuple[ModelConfig, dict]:
    """(ModelConfig, params as numpy) of a Triad workdir: its config.json and newest checkpoint."""
    import jax

    from train import checkpoint

    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        raise HFExportError(f"--workdir={workdir} has no config.json: pass a Triad workdir (a training run or "
                            "python -m model.hf_import)")
    with open(path) as fh:
        cfg = from_dict(json.load(fh)["model_config"])
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device),
                            hf.abstract_params(cfg))
    params = checkpoint.load_params(workdir, abstract)
    return cfg, jax.tree.map(np.asarray, params)


def main(argv):
    from absl import app, logging

    from train import errors

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # Orbax logs every step of a restore at INFO.
    target = os.path.join(_HF_DIR.value, "model.safetensors")
    try:
        if os.path.exists(target):
            raise HFExportError(f"--hf_dir={_HF_DIR.value} already has model.safetensors: choose a new directory")
        cfg, params = load_workdir(_WORKDIR.value)
        export_hf(cfg, params, _HF_DIR.value)
    except (HFExportError, *errors.user_error_types()) as e:
        sys.stderr.write(f"error: {e}\n")
        sys.exit(2)
    print(f"exported {_WORKDIR.value} -> {_HF_DIR.value} ({hf.FAMILY_OF_ARCH[cfg.arch].architecture})")


if __name__ == "__main__":
    from absl import flags

    from train import errors

    _WORKDIR = flags.DEFINE_string("workdir", None, "Triad workdir (config.json + checkpoints/).")
    _HF_DIR = flags.DEFINE_string("hf_dir", None, "Directory to write config.json and model.safetensors into.")
    flags.mark_flags_as_required(["workdir", "hf_dir"])
    sys.exit(errors.run_app(main))

"""Hugging Face model directories <-> Triad (ModelConfig, params), through the layouts of model/hf_layouts.py.

`import_hf(hf_dir) -> (ModelConfig, params)` reads config.json and model.safetensors (or its shards) with numpy, no
torch: every tensor of the file becomes a Triad parameter or is ignored by a name its family lists; an unknown,
missing or misshapen tensor is an HFImportError naming it. `export_hf(cfg, params, hf_dir)` writes a transformers
model directory (config.json + model.safetensors) by running the layouts backwards; a BERT with model.nsp_head is
written as BertForPreTraining. A model whose config has no Hugging Face equivalent (rope, rmsnorm in a GPT, ...)
stops with an HFExportError naming the model.* field. Dropout rates and init_std are written but not required to
round-trip. The commands that read and write workdirs are experiments/hf_import.py and experiments/hf_export.py.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re

import numpy as np
from flax import traverse_util
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from model import abstract_params
from model import hf_layouts as layouts
from model.config import ConfigError, ModelConfig
from model.hf_layouts import Family, HFImportError


def abstract_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """{'/'-joined path: shape} of the parameters of build(cfg)."""
    return {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(abstract_params(cfg), sep="/").items()}


# ---- Import: a HF model directory -> (ModelConfig, params). ----

def read_config(hf_dir: str) -> tuple[dict, Family]:
    """config.json of a HF model directory and its Family."""
    path = os.path.join(hf_dir, "config.json")
    if not os.path.isfile(path):
        raise HFImportError(f"{hf_dir!r} has no config.json: pass a Hugging Face model directory (e.g. one made by "
                            "`hf download gpt2 --local-dir DIR`)")
    try:
        with open(path) as fh:
            c = json.load(fh)
    except (OSError, ValueError) as e:
        raise HFImportError(f"{path}: cannot read it as JSON ({e})") from None
    return c, layouts.family_of(c, path)


def read_tensors(hf_dir: str) -> tuple[dict[str, np.ndarray], str]:
    """All tensors of model.safetensors (or of the shards listed in model.safetensors.index.json); the file name."""
    single, index = os.path.join(hf_dir, "model.safetensors"), os.path.join(hf_dir, "model.safetensors.index.json")
    if os.path.isfile(single):
        files = [single]
    elif os.path.isfile(index):
        with open(index) as fh:
            files = [os.path.join(hf_dir, s) for s in sorted(set(json.load(fh)["weight_map"].values()))]
    else:
        other = [n for n in ("pytorch_model.bin", "tf_model.h5", "flax_model.msgpack")
                 if os.path.exists(os.path.join(hf_dir, n))]
        raise HFImportError(f"{hf_dir!r} has no model.safetensors" + (
            f" (only {', '.join(other)}; Triad reads safetensors only: download model.safetensors)" if other else ""))
    tensors = {}
    for path in files:
        try:
            tensors.update(load_file(path))
        except TypeError:  # bfloat16, which numpy cannot name: read through JAX instead.
            with safe_open(path, framework="flax") as fh:
                tensors.update({k: np.asarray(fh.get_tensor(k), np.float32) for k in fh.keys()})  # noqa: SIM118
        except (OSError, ValueError) as e:
            raise HFImportError(f"{path}: cannot read it as safetensors ({e})") from None
    return tensors, os.path.basename(single if len(files) == 1 else index)


def convert(c: dict, family: Family, tensors: dict[str, np.ndarray], where: str = "checkpoint"
            ) -> tuple[ModelConfig, dict, list[str]]:
    """(ModelConfig, nested float32 params, names of the file's tensors that were ignored) from config.json's
    contents and the file's tensors; `where` names the files in error messages."""
    names = {}  # Normalised name -> name in the file.
    for n in tensors:
        names.setdefault(family.normalise(n), n)
    found = {k: tensors[v] for k, v in names.items()}
    ignored = []
    for alias, canonical in family.aliases.items():
        if alias in found:
            if canonical in found:
                ignored.append(alias)
                found.pop(alias)
            else:
                found[canonical] = found.pop(alias)
    emb, head = found.get(family.embedding), found.get(family.head)
    # Tied unless the file has an output projection that differs from the embedding (transformers 5's rule;
    # transformers 4 read tie_word_embeddings, and its tied files have no head or an identical one).
    tie = c.get("tie_word_embeddings", True) if head is None else (
        emb is not None and head.shape == emb.shape and np.array_equal(head, emb))
    if tie and head is not None:
        ignored.append(family.head)
        found.pop(family.head)
    cfg = layouts.config_from_hf(c, bool(tie), os.path.join(os.path.dirname(where), "config.json"))
    if family.nsp_head and all(n in found for n in family.nsp_head):  # BertForPreTraining: read its NSP head too.
        cfg = cfg.replace(nsp_head=True)

    layout = family.layout(cfg)
    shapes = abstract_shapes(cfg)
    covered = sorted(p for t in layout for p in t.ours)
    if covered != sorted(shapes):  # A bug in a layout, not in the file.
        raise AssertionError(f"{family.model_type} layout does not cover the model: {set(covered) ^ set(shapes)}")
    wanted = {t.hf for t in layout}
    for n in found:
        if n not in wanted and any(re.fullmatch(p, n) for p in family.ignored):
            ignored.append(n)
    unknown = [n for n in found if n not in wanted and n not in ignored]
    missing = [t for t in layout if t.hf not in found]
    if missing:
        t = missing[0]
        msg = f"{where}: tensor {t.hf!r} is missing (it holds Triad's {', '.join(t.ours)})"
        if len(missing) > 1:
            msg += f"; {len(missing) - 1} more are missing"
        if unknown:
            msg += f"; the file has {names.get(unknown[0], unknown[0])!r}, which Triad does not know: renamed?"
        archs = c.get("architectures") or []
        if archs and family.architecture not in archs:
            msg += f" (Triad imports {family.architecture}; config.json says {', '.join(archs)})"
        raise HFImportError(msg)
    if unknown:
        more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
        raise HFImportError(f"{where}: tensor {names.get(unknown[0], unknown[0])!r}{more} is not a "
                            f"{family.architecture} parameter Triad knows or ignores (see FAMILIES in "
                            f"model/hf_layouts.py)")
    flat = {}
    for t in layout:
        x, want = found[t.hf], layouts.hf_shape(t, shapes)
        if tuple(x.shape) != want:
            raise HFImportError(f"{where}: tensor {names.get(t.hf, t.hf)!r} has shape {tuple(x.shape)}, but "
                                f"config.json implies {want} (for Triad's {', '.join(t.ours)})")
        flat.update(layouts.to_ours(t, x, shapes))
    return cfg, traverse_util.unflatten_dict(flat, sep="/"), sorted(names.get(n, n) for n in ignored)


def read_hf(hf_dir: str) -> tuple[dict, ModelConfig, dict, list[str]]:
    """(config.json's contents, ModelConfig, params, names of the file's tensors that were ignored) of a HF model
    directory; see `import_hf`."""
    c, family = read_config(hf_dir)
    tensors, file = read_tensors(hf_dir)
    return (c, *convert(c, family, tensors, where=os.path.join(hf_dir, file)))


def import_hf(hf_dir: str) -> tuple[ModelConfig, dict]:
    """(ModelConfig, params) of a HF model directory: params is the nested dict of float32 numpy arrays that
    `model.build(cfg).apply({'params': params}, ...)` takes."""
    _, cfg, params, _ = read_hf(hf_dir)
    return cfg, params


# ---- Export: (ModelConfig, params) -> a HF model directory. ----

# Fields that do not change what the weights compute (or that HF cannot hold), or that the tensors rather than
# config.json carry (nsp_head: the pooler and seq_relationship tensors): not checked on export.
_NOT_CHECKED = ("dtype", "param_dtype", "attention_impl", "remat", "scan_layers", "init_std", "dropout",
                "attention_dropout", "nsp_head")


class HFExportError(ConfigError):
    """A model that cannot be written as a Hugging Face checkpoint; the message names the model.* field."""


def _activation(cfg: ModelConfig, table: dict) -> str:
    for name, fields in table.items():
        if all(getattr(cfg, k) == v for k, v in fields.items()):
            return name
    raise HFExportError(f"model.mlp={cfg.mlp!r} (gelu_approximate={cfg.gelu_approximate}) has no Hugging Face "
                        f"{layouts.FAMILY_OF_ARCH[cfg.arch].model_type} equivalent")


def _t5_proj(cfg: ModelConfig) -> str:
    if cfg.mlp == "geglu" and cfg.gelu_approximate:
        return "gated-gelu"  # transformers' name for gated gelu_new.
    if cfg.mlp == "swiglu":
        return "gated-silu"
    return _activation(cfg, layouts.ACTIVATIONS)


def hf_config(cfg: ModelConfig) -> dict:
    """The transformers config.json describing cfg (not checked: see `check`)."""
    family = layouts.FAMILY_OF_ARCH[cfg.arch]
    architecture = "BertForPreTraining" if cfg.nsp_head else family.architecture  # MLM + next-sentence heads.
    c = {"model_type": family.model_type, "architectures": [architecture], "vocab_size": cfg.vocab_size,
         "dtype": "float32", "torch_dtype": "float32"}
    if cfg.arch == "gpt":
        c.update(n_embd=cfg.d_model, n_head=cfg.n_heads, n_inner=cfg.d_ff, n_layer=cfg.n_layers,
                 n_positions=cfg.max_len, layer_norm_epsilon=cfg.norm_eps, resid_pdrop=cfg.dropout,
                 embd_pdrop=cfg.dropout, attn_pdrop=cfg.attention_dropout, scale_attn_weights=cfg.attention_scale,
                 initializer_range=cfg.init_std, pad_token_id=cfg.pad_id, tie_word_embeddings=cfg.tie_embeddings,
                 activation_function=_activation(cfg, layouts.ACTIVATIONS),
                 bos_token_id=50256 if cfg.vocab_size > 50256 else None,  # GPT-2's <|endoftext|>, if it exists.
                 eos_token_id=50256 if cfg.vocab_size > 50256 else None)
    elif cfg.arch == "bert":
        c.update(hidden_size=cfg.d_model, num_attention_heads=cfg.n_heads, intermediate_size=cfg.d_ff,
                 num_hidden_layers=cfg.n_layers, max_position_embeddings=cfg.max_len,
                 type_vocab_size=cfg.type_vocab_size, layer_norm_eps=cfg.norm_eps,
                 hidden_dropout_prob=cfg.dropout, attention_probs_dropout_prob=cfg.attention_dropout,
                 initializer_range=cfg.init_std, pad_token_id=cfg.pad_id, position_embedding_type="absolute",
                 tie_word_embeddings=cfg.tie_embeddings, hidden_act=_activation(cfg, layouts.ACTIVATIONS))
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
    family = layouts.FAMILY_OF_ARCH[cfg.arch]
    try:
        back = layouts.config_from_hf(c, cfg.tie_embeddings)
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
    cfg, params = _unscan(cfg, params)
    flat = traverse_util.flatten_dict(params, sep="/")
    family = layouts.FAMILY_OF_ARCH[cfg.arch]
    out = {t.hf: layouts.to_hf(t, flat) for t in family.layout(cfg)}
    if cfg.arch == "t5" and cfg.tie_embeddings and not cfg.scale_tied_logits:
        out[family.head] = out[family.embedding]  # See hf_config: transformers 4 then ties it back.
    if cfg.arch == "bert":  # Both copies of the output bias, as transformers 4 wrote them.
        out["cls.predictions.bias"] = out["cls.predictions.decoder.bias"]
    return out


def export_hf(cfg: ModelConfig, params: dict, hf_dir: str) -> None:
    """Writes hf_dir/config.json and hf_dir/model.safetensors for cfg and its params."""
    c = hf_config(cfg)
    check(cfg, c)
    tensors = hf_tensors(cfg, params)
    os.makedirs(hf_dir, exist_ok=True)
    with open(os.path.join(hf_dir, "config.json"), "w") as fh:
        json.dump(c, fh, indent=2, sort_keys=True)
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, os.path.join(hf_dir, "model.safetensors"),
              metadata={"format": "pt"})


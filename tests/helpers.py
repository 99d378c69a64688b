"""Small configs and corpora shared by the training tests (tiny enough for 2 CPU cores)."""

import gzip
import os

import jax
import jax.numpy as jnp
import ml_collections

from experiments.configs import base

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KJV = os.path.join(ROOT, "data", "corpora", "kjv.txt.gz")


def small_corpus(directory: str, lines: int = 3000) -> str:
    """The first `lines` verses of the bundled corpus as a .txt file in `directory`."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "corpus.txt")
    if not os.path.exists(path):
        with gzip.open(KJV, "rt", encoding="utf-8") as f:
            text = [next(f) for _ in range(lines)]
        with open(path, "w", encoding="utf-8") as f:
            f.writelines(text)
    return path


def tiny_config(arch: str, directory: str, **overrides):
    """A config small enough to train a few steps in seconds: d_model 32, 2 layers, vocab 512, length 32."""
    c = base.base_config(arch, "tiny")
    c.data.train_files = small_corpus(directory)
    c.data.vocab_size = 512
    c.data.cache_dir = os.path.join(directory, "cache")
    c.data.seq_len = 32
    c.data.prefetch = 1
    c.model.d_model = 32
    c.model.n_heads = 2
    c.model.d_ff = 64
    c.model.n_layers = 2
    if arch == "t5":
        c.model.n_decoder_layers = 2
    c.model.max_len = 32
    c.train.batch_size = 8
    c.train.steps = 6
    c.train.warmup_steps = 2
    c.train.log_every = 1
    c.train.eval_every = 6
    c.train.eval_steps = 2
    c.train.checkpoint_every = 3
    c.train.progress_bar = False
    return override(c, **overrides)


def untrained_workdir(arch: str, directory: str, workdir: str, init_std: float = 0.3, **overrides) -> str:
    """A workdir of tiny_config(arch, directory, **overrides) as train.main writes it (config.json, a checkpoint),
    holding random parameters: for tests of what reads a workdir, with no training step to compile."""
    import flax.linen as nn

    import model as model_lib
    from data import pipeline
    from model import config as model_config
    from train import checkpoint, loop
    from train import workdir as workdir_lib

    config = tiny_config(arch, directory, **overrides)
    data = pipeline.build(config)
    mcfg = model_config.from_dict(config.model, vocab_size=data.vocab_size, init_std=init_std)
    dummy = jnp.zeros((1, 1), jnp.int32)
    variables = jax.jit(model_lib.build(mcfg).init)(jax.random.key(0), *((dummy, dummy) if arch == "t5" else (dummy,)))
    os.makedirs(workdir)
    workdir_lib.write_record(workdir, loop.run_record(config, mcfg, data))
    checkpoint.save_params(workdir, nn.meta.unbox(variables["params"]))
    return workdir


def override(c, **overrides):
    """Sets dotted fields, e.g. override(config, **{"train.steps": 4}); returns the config."""
    for key, value in overrides.items():
        node = c
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return c


def to_scanned(params, n_layers):
    """Loop layout {'layer_i': tree} -> scan layout {'layers': tree stacked on axis 0}, in every stack."""
    out = {}
    for k, sub in params.items():
        if isinstance(sub, dict) and "layer_0" in sub:
            rest = {kk: vv for kk, vv in sub.items() if not kk.startswith("layer_")}
            layers = [sub[f"layer_{i}"] for i in range(n_layers)]
            out[k] = {**rest, "layers": jax.tree.map(lambda *xs: jnp.stack(xs), *layers)}
        else:
            out[k] = sub
    return out


def objective_config(name="span_corruption", seq_len=48, noise_density=0.15, mean_span_length=3.0):
    """The objective + data fields data.objectives.build reads, at the published defaults."""
    return ml_collections.ConfigDict(dict(
        objective=dict(name=name, mask_rate=0.15, mask_token_frac=0.8, random_token_frac=0.1, whole_word=False,
                       noise_density=noise_density, mean_span_length=mean_span_length, nsp=False),
        data=dict(seq_len=seq_len, target_len=0, document_mask=False)))


def parse_command(line: str):
    """(workdir, config) of a printed `python -m train.main --config=... --workdir=...` command, parsed by absl."""
    import shlex

    from absl import flags
    from ml_collections import config_flags

    words = shlex.split(line)
    assert words[:3] == ["python", "-m", "train.main"]
    argv = ["train.main", *words[3:]]
    fv = flags.FlagValues()
    flags.DEFINE_string("workdir", None, "", flag_values=fv)
    config_flags.DEFINE_config_file("config", None, "", flag_values=fv, sys_argv=argv)
    fv(argv)
    return fv.workdir, fv.config

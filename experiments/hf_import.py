"""Imports a Hugging Face GPT-2, BERT or T5 model directory (config.json + model.safetensors) as a Triad workdir:

  python -m experiments.hf_import --hf_dir=PATH --workdir=runs/gpt2-hf

writes config.json (through train/workdir.py, with the experiment config of the matching published variant) and a
step-0 parameters-only checkpoint, which --config.init_from, train.sample and experiments.hf_export read, then
prints the train.main flags that start a run from it. The conversion is model/hf_convert.py's (`import_hf` does it
in memory); an unknown, missing or misshapen tensor ends the command with one line naming it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys

import flax
import jax
import ml_collections
import numpy as np
from absl import app, flags, logging

from experiments.configs import base
from model.config import ModelConfig
from model.hf_convert import read_hf
from model.hf_layouts import FAMILY_OF_ARCH
from train import checkpoint, errors
from train import workdir as workdir_lib


def experiment_config(cfg: ModelConfig) -> ml_collections.ConfigDict:
    """The experiment ConfigDict of the matching published variant with config.model = cfg (and the data sizes
    made consistent with it)."""
    config = base.get_config(cfg.arch, FAMILY_OF_ARCH[cfg.arch].variant(cfg))
    config.model = ml_collections.ConfigDict(dataclasses.asdict(cfg))
    config.data.vocab_size = cfg.vocab_size
    if cfg.arch != "t5":  # Learned positions: the training length must fit.
        config.data.seq_len = min(config.data.seq_len, cfg.max_len)
    return config


def train_flags(cfg: ModelConfig, workdir: str) -> list[str]:
    """train.main flags that start a run from the imported workdir: the matching config variant, every
    config.model / config.data field that differs from it, and --config.init_from."""
    variant = FAMILY_OF_ARCH[cfg.arch].variant(cfg)
    default, mine = base.get_config(cfg.arch, variant), experiment_config(cfg)
    out = [f"--config=experiments/configs/{cfg.arch}.py:{variant}"]
    for section in ("model", "data"):
        out += [f"--config.{section}.{k}={v}" for k, v in mine[section].items() if default[section][k] != v]
    return out + [f"--config.init_from={workdir}"]


def write_workdir(hf_dir: str, workdir: str) -> tuple[ModelConfig, str, list[str]]:
    """Imports hf_dir into workdir (config.json + a step-0 parameters-only checkpoint); returns the ModelConfig,
    the checkpoint directory and the file's tensors that were ignored. Nothing is written if the import fails."""
    ckpts = workdir_lib.checkpoint_dir(workdir)
    if os.path.isdir(ckpts) and os.listdir(ckpts):
        raise errors.UserError(f"--workdir={workdir} already has checkpoints: choose a new workdir or delete it")
    c, cfg, params, ignored = read_hf(hf_dir)
    source = {"hf_dir": os.path.abspath(hf_dir), "model_type": c["model_type"],
              "architectures": c.get("architectures"), "ignored_tensors": ignored}
    record = {"config": json.loads(experiment_config(cfg).to_json_best_effort()),
              "model_config": dataclasses.asdict(cfg), "hf_import": source,
              "versions": {"jax": jax.__version__, "flax": flax.__version__, "numpy": np.__version__}}
    with workdir_lib.claim(workdir):  # Creates the workdir; refused while a run writes it.
        workdir_lib.write_record(workdir, record)
        path = checkpoint.save_params(workdir, jax.tree.map(jax.numpy.asarray, params), {"hf_import": source})
    return cfg, path, ignored


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # Orbax logs every step of a save at INFO.
    with errors.one_line():
        cfg, path, ignored = write_workdir(_HF_DIR.value, _WORKDIR.value)
    print(f"imported {_HF_DIR.value} as a {cfg.arch} model into {path}"
          + (f" (ignored: {', '.join(ignored)})" if ignored else ""))
    print("start a run from it with:\n  python -m train.main " + " ".join(train_flags(cfg, _WORKDIR.value))
          + " --workdir=runs/NAME")


if __name__ == "__main__":  # Flags only for the command, so that importing this module defines none.
    _HF_DIR = flags.DEFINE_string("hf_dir", None, "Hugging Face model directory (config.json + model.safetensors).")
    _WORKDIR = flags.DEFINE_string("workdir", None, "Workdir to write (config.json + checkpoints/0).")
    flags.mark_flags_as_required(["hf_dir", "workdir"])
    sys.exit(errors.run_app(main))

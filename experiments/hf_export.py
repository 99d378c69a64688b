"""Exports a Triad workdir (a training run or experiments.hf_import) as a Hugging Face model directory:

  python -m experiments.hf_export --workdir=runs/gpt2-hf --hf_dir=OUT

loads the workdir's model config and newest parameters (train/workdir.py's `load_workdir`) and writes
config.json + model.safetensors with model/hf_convert.py's `export_hf`. A GPT-2, BERT or T5 (v1.0 / v1.1) with the
published layer choices can be written; any other model ends the command with one line naming the model.* field.
"""

from __future__ import annotations

import os
import sys

import jax
import numpy as np
from absl import app, flags, logging

from model.hf_convert import export_hf
from model.hf_layouts import FAMILY_OF_ARCH
from train import errors, workdir


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # Orbax logs every step of a restore at INFO.
    with errors.one_line():
        if os.path.exists(os.path.join(_HF_DIR.value, "model.safetensors")):
            raise errors.UserError(f"--hf_dir={_HF_DIR.value} already has model.safetensors: choose a new directory")
        _, cfg, _, params, _ = workdir.load_workdir(_WORKDIR.value)
        export_hf(cfg, jax.tree.map(np.asarray, params), _HF_DIR.value)
    print(f"exported {_WORKDIR.value} -> {_HF_DIR.value} ({FAMILY_OF_ARCH[cfg.arch].architecture})")


if __name__ == "__main__":  # Flags only for the command, so that importing this module defines none.
    _WORKDIR = flags.DEFINE_string("workdir", None, "Triad workdir (config.json + checkpoints/).")
    _HF_DIR = flags.DEFINE_string("hf_dir", None, "Directory to write config.json and model.safetensors into.")
    flags.mark_flags_as_required(["workdir", "hf_dir"])
    sys.exit(errors.run_app(main))

"""Loads a workdir written by train.main or model.hf_import: its config, model, newest parameters and tokenizer.

`load_workdir` is the one place that turns a workdir into (config, model config, model, params, tokenizer); it
defines no flags, so sampling, evaluation and the probes (experiments/probes.py) can all import it. `claim` is how a
training run holds its workdir, so that a second run on the same one is refused.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket

from absl import logging

from train import errors

LOCK_FILE = ".lock"  # In the workdir; flock(2)-ed by the run that writes it, holds "pid <pid> on <host>".


def _fail(msg: str):
    raise errors.UserError(msg)


@contextlib.contextmanager
def claim(workdir: str, lock: bool = True):
    """Creates `workdir` and, with `lock`, holds it for the block: another process that claims it meanwhile gets a
    UserError naming the holder (pid and host). Only process 0 of a multi-process run locks (the others share its
    workdir). The lock is an flock(2) on <workdir>/.lock, which the OS drops when its holder exits (kill -9 too),
    so the file left behind never blocks a later run."""
    if not workdir:
        _fail("--workdir is empty: pass the directory to write the run into")
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        _fail(f"--workdir={workdir} is a file, not a directory: choose a directory")
    try:
        os.makedirs(workdir, exist_ok=True)
        fd = os.open(os.path.join(workdir, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644) if lock else None
    except OSError as e:
        _fail(f"--workdir={workdir} cannot be created ({e.strerror or e}): choose a writable directory")
    if fd is None:
        yield
        return
    try:
        path = os.path.join(workdir, LOCK_FILE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "a process that is starting"
            _fail(f"--workdir={workdir} is in use by another run ({holder}, holding {path}): wait for that run to "
                  "end or stop it, or choose another --workdir")
        except OSError as e:  # a filesystem without flock: run unprotected rather than not at all
            logging.warning("cannot lock %s (%s): nothing stops a second run on this workdir", path, e.strerror)
        else:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def _with_current_defaults(saved: dict, arch: str) -> ml_collections.ConfigDict:  # noqa: F821
    """The saved experiment config on top of today's defaults, so that a workdir written before a config field
    was added still loads (the new field takes its default, which keeps the old behaviour)."""
    import ml_collections

    from experiments.configs import base

    config = base.base_config(arch, "tiny") if arch in base.OBJECTIVES else ml_collections.ConfigDict()

    def merge(node, values):
        for key, value in values.items():
            if isinstance(value, dict) and key in node and isinstance(node[key], ml_collections.ConfigDict):
                merge(node[key], value)
            elif isinstance(value, dict):
                node[key] = ml_collections.ConfigDict(value)
            else:
                with node.ignore_type():
                    node[key] = value

    merge(config, saved)
    return config


def load_workdir(workdir: str):
    """(config, model_cfg, model, params, tokenizer) of a workdir written by train.main or model.hf_import.

    config is the experiment ConfigDict from config.json; params the newest checkpoint's parameters on the first
    device; tokenizer the one recorded in config.json (rebuilt through data.pipeline if its file is gone), or None
    when the workdir has none (an imported Hugging Face model: pass token ids). Raises UserError for a workdir
    that is not one, has no checkpoint yet, or whose tokenizer does not fit the model.
    """
    if not os.path.isdir(workdir):
        _fail(f"--workdir={workdir} does not exist: pass a directory written by train.main or model.hf_import")
    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        _fail(f"--workdir={workdir} has no config.json: pass a directory written by train.main or "
              "model.hf_import")
    with open(path) as f:
        record = json.load(f)
    import flax.linen as nn  # Imported here so that a wrong --workdir fails fast.
    import jax
    import jax.numpy as jnp

    import model as model_lib
    from train import checkpoint

    if "model_config" not in record:
        _fail(f"{path} has no 'model_config': it was not written by train.main or model.hf_import")
    config = _with_current_defaults(record.get("config", {}), record["model_config"].get("arch", "gpt"))
    model_cfg = model_lib.from_dict(record["model_config"])
    model = model_lib.build(model_cfg)
    ckpt_dir = os.path.join(workdir, "checkpoints")
    if not (os.path.isdir(ckpt_dir) and any(n.isdigit() and os.path.exists(os.path.join(ckpt_dir, n, "state"))
                                            for n in os.listdir(ckpt_dir))):
        _fail(f"--workdir={workdir} has no checkpoint yet (checkpoints/<step>/state): train it first, or wait "
              "for its first checkpoint (train.checkpoint_every)")

    dummy = jnp.zeros((1, 1), jnp.int32)
    args = (dummy, dummy) if model_cfg.arch == "t5" else (dummy,)
    boxed = jax.eval_shape(model.init, jax.random.key(0), *args)["params"]
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device),
                            nn.meta.unbox(boxed))
    try:
        params = checkpoint.load_params(workdir, abstract)
    except checkpoint.CheckpointError as e:
        _fail(f"--workdir={workdir}: {str(e).removeprefix('init_from: ')}")
    tokenizer = _load_tokenizer(record, config, workdir)
    if tokenizer is not None and tokenizer.vocab_size != model_cfg.vocab_size:
        _fail(f"--workdir={workdir}: the tokenizer {tokenizer.path or 'byte'} has {tokenizer.vocab_size} tokens "
              f"but the model has model.vocab_size={model_cfg.vocab_size}")
    return config, model_cfg, model, params, tokenizer


def _load_tokenizer(record: dict, config, workdir: str):
    """The workdir's tokenizer, or None if config.json records none (an imported model)."""
    from data import pipeline
    from data import tokenizer as tokenizer_lib
    from data.errors import DataError

    recorded = record.get("data", {}).get("tokenizer")
    if recorded is None:
        return None
    if recorded == "byte":
        return tokenizer_lib.ByteTokenizer()
    if os.path.isfile(recorded):
        return tokenizer_lib.load(recorded)
    try:  # The cached file is gone: rebuild it from the recorded data config (a tokenizer-cache hit if possible).
        return pipeline.build(config).tokenizer
    except DataError as e:
        raise DataError(f"--workdir={workdir}: its tokenizer {recorded} is gone and rebuilding it from config.json "
                        f"failed: {e}") from None

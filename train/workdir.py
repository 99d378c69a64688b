"""The workdir, owned here: what its files are called, and the one reader and writer of each.

  config.json   `write_record` / `read_record`: the resolved experiment config, the model config, data facts
  summary.json  `write_summary` / `read_summary`: the final numbers of a run
  checkpoints/  `checkpoint_dir` (train/checkpoint.py reads and writes what is inside)
  .lock         `claim`: held by the run that writes the workdir

`load_workdir` turns a workdir into (config, model config, model, params, tokenizer) for sampling, evaluation,
export and the probes; `inherit_pretrained` is fine-tuning's one explicit step that takes a pretrained workdir's
model and data settings into a config, before anything is built.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import socket

import jax
import ml_collections
from absl import logging

import model as model_lib
from data import pipeline, probes
from data import tokenizer as tokenizer_lib
from data.errors import DataError
from train import checkpoint
from train.errors import fail

CONFIG_FILE = "config.json"
SUMMARY_FILE = "summary.json"
CHECKPOINTS = "checkpoints"
LOCK_FILE = ".lock"  # flock(2)-ed by the run that writes the workdir; holds "pid <pid> on <host>".
# Fields of config.data a fine-tuning run takes from the pretrained run: the tokenizer (same ids as the model) and,
# for the probe tasks (built from the pretraining corpus's validation text), the corpus and its split.
TOKENIZER_FIELDS = ("tokenizer", "tokenizer_type", "vocab_size", "cache_dir")
CORPUS_FIELDS = ("corpus", "train_files", "val_files", "val_fraction", "txt_documents", "jsonl_field")



@contextlib.contextmanager
def claim(workdir: str, lock: bool = True):
    """Creates `workdir` and, with `lock`, holds it for the block: another process that claims it meanwhile gets a
    UserError naming the holder (pid and host). Only process 0 of a multi-process run locks (the others share its
    workdir). The lock is an flock(2) on <workdir>/.lock, which the OS drops when its holder exits (kill -9 too),
    so the file left behind never blocks a later run."""
    if not workdir:
        fail("--workdir is empty: pass the directory to write the run into")
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        fail(f"--workdir={workdir} is a file, not a directory: choose a directory")
    try:
        os.makedirs(workdir, exist_ok=True)
        fd = os.open(os.path.join(workdir, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644) if lock else None
    except OSError as e:
        fail(f"--workdir={workdir} cannot be created ({e.strerror or e}): choose a writable directory")
    if fd is None:
        yield
        return
    try:
        path = os.path.join(workdir, LOCK_FILE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "a process that is starting"
            fail(f"--workdir={workdir} is in use by another run ({holder}, holding {path}): wait for that run to "
                 "end or stop it, or choose another --workdir")
        except OSError as e:  # a filesystem without flock: run unprotected rather than not at all
            logging.warning("cannot lock %s (%s): nothing stops a second run on this workdir", path, e.strerror)
        else:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def write_json(path: str, obj) -> None:
    """Writes JSON under a temporary name, then renames it: the file is whole or absent."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, default=_json_default)
    os.replace(tmp, path)


def _json_default(x):
    return None if isinstance(x, float) and math.isnan(x) else str(x)


def checkpoint_dir(workdir: str) -> str:
    return os.path.join(workdir, CHECKPOINTS)


def write_record(workdir: str, record: dict) -> None:
    """config.json: {'config': the experiment config, 'model_config': ..., 'data': data facts, ...}."""
    write_json(os.path.join(workdir, CONFIG_FILE), record)


def write_summary(workdir: str, summary: dict) -> None:
    write_json(os.path.join(workdir, SUMMARY_FILE), summary)


def read_summary(workdir: str) -> dict | None:
    """summary.json of a finished run, or None if there is none yet."""
    path = os.path.join(workdir, SUMMARY_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def record_path(path: str, flag: str = "--workdir") -> str:
    """config.json of the workdir that `path` is, or holds (its checkpoints/ folder or a step folder in it); `flag`
    names where the path came from in the error."""
    p = os.path.abspath(path)
    for _ in range(3):
        if os.path.isfile(os.path.join(p, CONFIG_FILE)):
            return os.path.join(p, CONFIG_FILE)
        p = os.path.dirname(p)
    fail(f"{flag}={path} has no {CONFIG_FILE} (nor has the workdir above it): pass a directory written by "
         "train.main or experiments.hf_import")


def read_record(workdir: str, flag: str = "--workdir") -> dict:
    """The contents of config.json of `workdir` (or of the workdir a checkpoint path belongs to); `flag` names the
    flag the path came from in errors (--config.init_from=..., --pretrained=...)."""
    if not os.path.exists(workdir):
        fail(f"{flag}={workdir} does not exist: pass a directory written by train.main or experiments.hf_import")
    path = record_path(workdir, flag)
    with open(path) as f:
        record = json.load(f)
    for key in ("config", "model_config"):
        if key not in record:
            fail(f"{path} has no {key!r}: it was not written by train.main or experiments.hf_import")
    return record


def saved_config(record: dict) -> ml_collections.ConfigDict:
    """The experiment config a record holds, unlocked (every writer records the whole config)."""
    return ml_collections.ConfigDict(record["config"])


def inherit_pretrained(config: ml_collections.ConfigDict) -> None:
    """Fine-tuning from config.init_from (or a baseline shaped like config.task.model_from): overwrites, in place,
    config.model with that workdir's model config and config.data's tokenizer settings with its run's, and for the
    probe tasks its corpus settings too. Called on the config before anything is built (train/main.py, probes)."""
    if config.objective.name != "classify":
        return
    source = config.init_from or config.task.model_from
    if not source:
        return
    if config.init_from and config.task.model_from and config.init_from != config.task.model_from:
        fail(f"init_from={config.init_from!r} and task.model_from={config.task.model_from!r} differ; set only one "
             "(model_from is for a random-init model shaped like a pretrained one)")
    record = read_record(source, "--config.init_from" if config.init_from else "--config.task.model_from")
    for k, v in record["model_config"].items():
        config.model[k] = v
    probe = config.task.name in probes.TASKS
    for k in TOKENIZER_FIELDS + (CORPUS_FIELDS if probe else ()):
        if k in record["config"]["data"]:  # a run older than a field had the field's default meaning
            config.data[k] = record["config"]["data"][k]
    trained = (record.get("data") or {}).get("tokenizer", "")  # the tokenizer file the run trained, if any
    if not config.data.tokenizer and trained not in ("", "byte") and os.path.isfile(trained):
        config.data.tokenizer = trained
    if config.model.position == "learned" and config.data.seq_len > config.model.max_len:
        fail(f"data.seq_len={config.data.seq_len} exceeds the pretrained model's max_len={config.model.max_len} "
             "(learned positions); lower data.seq_len")
    if config.task.dropout >= 0:  # the recipe's dropout, over whatever the model was pretrained with
        config.model.dropout = config.task.dropout
    logging.info("fine-tuning %s (%s, %s): model config and tokenizer%s from %s", config.model.arch,
                 config.task.name, "pretrained" if config.init_from else "random init",
                 " and corpus" if probe else "", record_path(source))


def load_workdir(workdir: str, flag: str = "--workdir"):
    """(config, model_cfg, model, params, tokenizer) of a workdir written by train.main or experiments.hf_import.

    config is the experiment ConfigDict from config.json; params the newest checkpoint's parameters on the first
    device; tokenizer the one recorded in config.json (rebuilt through data.pipeline if its file is gone), or None
    when the workdir has none (an imported Hugging Face model: pass token ids). Raises UserError for a workdir
    that is not one, has no checkpoint yet, or whose tokenizer does not fit the model, naming `flag` (the flag the
    path came from).
    """
    if not os.path.isdir(workdir):
        fail(f"{flag}={workdir} does not exist: pass a directory written by train.main or experiments.hf_import")
    record = read_record(workdir, flag)
    config = saved_config(record)
    model_cfg = model_lib.from_dict(record["model_config"])
    model = model_lib.build(model_cfg)
    ckpt_dir = checkpoint_dir(workdir)
    if not (os.path.isdir(ckpt_dir) and any(n.isdigit() and os.path.exists(os.path.join(ckpt_dir, n, "state"))
                                            for n in os.listdir(ckpt_dir))):
        fail(f"{flag}={workdir} has no checkpoint yet (checkpoints/<step>/state): train it first, or wait "
             "for its first checkpoint (train.checkpoint_every)")
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device),
                            model_lib.abstract_params(model_cfg))
    try:
        params = checkpoint.load_params(workdir, abstract)
    except checkpoint.CheckpointError as e:
        fail(f"{flag}={workdir}: {str(e).removeprefix('init_from: ')}")
    tokenizer = _load_tokenizer(record, config, workdir, flag)
    if tokenizer is not None and tokenizer.vocab_size > model_cfg.vocab_size:
        fail(f"{flag}={workdir}: the tokenizer {tokenizer.path or 'byte'} has {tokenizer.vocab_size} tokens "
             f"but the model has model.vocab_size={model_cfg.vocab_size}")
    return config, model_cfg, model, params, tokenizer


def _load_tokenizer(record: dict, config, workdir: str, flag: str):
    """The workdir's tokenizer, or None if config.json records none (an imported model)."""
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
        raise DataError(f"{flag}={workdir}: its tokenizer {recorded} is gone and rebuilding it from config.json "
                        f"failed: {e}") from None

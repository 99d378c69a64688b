"""`train_and_evaluate(config, workdir)`: the one training loop, the same for every architecture and objective.

Per step the host takes the next prepared batch, dispatches the compiled step, and only then reads the previous
step's metrics, so it never makes the device wait. Metrics arrive as sums and are divided here, once.
"""

import dataclasses
import json
import math
import os
import platform
import signal
import subprocess
import time

import flax
import jax
import ml_collections
import numpy as np
import optax
from absl import logging

import model as model_lib
from data import classify as classify_data
from data import pipeline
from model import classifier, flops
from model import config as model_config
from train import checkpoint as ckpt_lib
from train import losses, optim, parallel, validate
from train import metrics as metrics_lib
from train import workdir as workdir_lib


def sequence_lengths(batch: dict) -> tuple[int, int]:
    """(seq_len, target_len) of a batch: (L, 0) for gpt/bert, (S, T) for an encoder-decoder."""
    if "encoder_inputs" in batch:
        return batch["encoder_inputs"].shape[1], batch["decoder_inputs"].shape[1]
    return batch["inputs"].shape[1], 0


def peak_memory_bytes(runner) -> int:
    """Peak device memory: the allocator's high-water mark where the backend reports one (GPU, TPU), otherwise
    (CPU) what XLA's memory analysis of the compiled step says it needs (arguments + outputs + temporaries)."""
    stats = jax.local_devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return int(stats["peak_bytes_in_use"])
    compiled = runner.compiled_train()
    if compiled is None:
        return 0
    m = compiled.memory_analysis()
    if m is None:
        return 0
    return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes)


def tokens_per_example(batch: dict, model) -> int:
    """Token positions one example feeds the model (encoder + decoder positions for an encoder-decoder)."""
    return int(sum(v.shape[1] for k, v in batch.items()
                   if k in model.input_names and v.ndim == 2 and k != "token_types"))  # types: same positions


def build(config: ml_collections.ConfigDict, devices=None):
    """Data, model config, model and runner for `config`, validated before anything compiles.

    `devices` defaults to all devices (the mesh must cover them); tests pass a subset.
    """
    validate.validate(config)
    # Fine-tuning: objective "classify" reads labelled examples and wraps the model in a Classifier.
    classify = config.objective.name == "classify"
    builder = classify_data.build if classify else pipeline.build
    data = builder(config, jax.process_index(), jax.process_count())
    mcfg = model_config.from_dict(config.model, vocab_size=data.vocab_size)
    model = (classifier.Classifier(mcfg, data.num_classes, config.task.pooling, config.task.t5_states) if classify
             else model_lib.build(mcfg))
    tx, lr = optim.make(config.train)
    if config.parallel not in ("jit", "pmap"):
        raise parallel.ParallelError(f"parallel={config.parallel!r} is unknown: choose 'jit' or 'pmap'")
    runner_cls = parallel.JitRunner if config.parallel == "jit" else parallel.PmapRunner
    runner = runner_cls(model, tx, lr, config, example_batch=data.train.batch(0), devices=devices)
    return data, mcfg, model, runner


def _git_commit() -> str:
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                              timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def write_config(workdir: str, config: ml_collections.ConfigDict, mcfg, data) -> None:
    """config.json: the resolved experiment config, the model config, versions, devices and git commit."""
    record = {
        "config": json.loads(config.to_json_best_effort()),
        "model_config": dataclasses.asdict(mcfg),
        "data": data.summary(),
        "versions": {"python": platform.python_version(), "jax": jax.__version__, "flax": flax.__version__,
                     "optax": optax.__version__, "numpy": np.__version__},
        "devices": {"backend": jax.default_backend(), "count": jax.device_count(),
                    "kind": jax.devices()[0].device_kind, "processes": jax.process_count()},
        "git_commit": _git_commit(),
    }
    with open(os.path.join(workdir, "config.json"), "w") as f:
        json.dump(record, f, indent=2, default=str)


class _StopFlag:
    """Turns SIGTERM / SIGINT into a request to checkpoint and stop after the current step."""

    def __init__(self):
        self.requested = None
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum, frame):
        if self.requested is not None:  # a second signal: stop now
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name
        logging.warning("%s received: saving a checkpoint after this step, then stopping", self.requested)

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def evaluate(runner, state, data, eval_steps: int) -> dict[str, float]:
    """Loss, accuracy, perplexity and bits per byte on the first `eval_steps` validation batches."""
    sums = None
    for i in range(eval_steps):
        s = runner.evaluate(state, data.val.batch(i))
        sums = s if sums is None else jax.tree.map(lambda a, b: a + b, sums, s)
    return losses.summarize(jax.device_get(sums), "eval")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains `config` in `workdir` (resuming from its newest checkpoint) and returns the final summary.

    The run holds its workdir throughout (train/workdir.py `claim`): a second run on it is refused at once."""
    with workdir_lib.claim(workdir, lock=jax.process_index() == 0):
        return _train_and_evaluate(config, workdir)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    t_start = time.perf_counter()
    metrics_lib.quiet_libraries()
    parallel.enable_compile_cache()
    data, mcfg, model, runner = build(config)
    tc = config.train
    lead = jax.process_index() == 0
    if lead:
        write_config(workdir, config, mcfg, data)

    checkpoints = ckpt_lib.Checkpoints(os.path.join(workdir, "checkpoints"), keep=tc.keep_checkpoints)
    restored = checkpoints.restore_latest(runner.abstract_state()) if checkpoints.steps() else None
    if restored is not None:
        state, meta = restored
        start = int(jax.device_get(state.step))
        logging.info("resumed from %s at step %d", checkpoints.directory, start)
        if config.parallel == "pmap":
            state = runner.replicate(state)
    else:
        state = runner.init(jax.random.key(config.seed))
        start = 0
        if config.init_from:
            # A model with a `pretrained_key` (model/classifier.py) takes the checkpoint's
            # parameters as that subtree; the rest of its parameters (the new head) keep their initialisation.
            key = getattr(model, "pretrained_key", None)
            abstract = runner.abstract_state().params
            if key is None:
                params = ckpt_lib.load_params(config.init_from, abstract)
            else:
                params = {**runner.host_state(state).params, key: ckpt_lib.load_params(config.init_from, abstract[key])}
            state = state.replace(params=runner.shard_params(params))
            logging.info("parameters initialised from %s", config.init_from)
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(runner.abstract_state().params))
    last_ckpt = checkpoints.steps()[-1] if checkpoints.steps() else None

    writer = metrics_lib.Writer(workdir, enabled=lead, resume_step=start, total_steps=tc.steps,
                                progress_bar=tc.progress_bar)
    first = data.train.batch(0)
    tokens_per_step = tc.batch_size * tokens_per_example(first, model)
    flops_per_step = flops.training_flops_per_step(mcfg, tc.batch_size, *sequence_lengths(first))
    if lead:
        logging.info("%s: %s parameters, %d tokens per step, %d devices (%s), data: %s", mcfg.arch,
                     f"{n_params:,}", tokens_per_step, jax.device_count(), config.parallel, data.summary())

    def meta(step):
        return {"step": int(step), "arch": mcfg.arch, "params": n_params}

    history = {"train": [], "eval": []}
    step_times = []  # mean step time of each log window (the first window, which compiles, is not timed)
    window = None  # summed train metrics since the last log line
    window_steps, window_t0 = 0, None
    pending = None  # (step, metrics on device) of the step dispatched last
    last_train, last_eval = {}, {}
    stopped_by = None

    def consume(step, metrics):
        nonlocal window, window_steps, window_t0, last_train
        m = jax.device_get(metrics)
        sums = {k: m[k] for k in (*losses.SUM_KEYS, *losses.NSP_KEYS) if k in m}
        if tc.nonfinite == "stop":
            metrics_lib.check_finite(step, {"train/loss": float(sums["loss"]) / max(float(sums["weight"]), 1e-9),
                                            "opt/grad_norm": float(m["grad_norm"])}, last_ckpt)
        window = sums if window is None else {k: window[k] + sums[k] for k in sums}
        window_steps += 1
        done = step + 1
        if done % tc.log_every == 0 or done == tc.steps:
            now = time.perf_counter()
            scalars = losses.summarize(window, "train")
            scalars.update({"opt/lr": float(m["lr"]), "opt/grad_norm": float(m["grad_norm"]),
                            "opt/nonfinite_skipped": float(m["nonfinite"])})
            if window_t0 is not None:
                dt = (now - window_t0) / window_steps
                step_times.append(dt)
                scalars.update({"perf/step_time": dt, "perf/tokens_per_sec": tokens_per_step / dt})
            window_t0, window, window_steps = now, None, 0
            scalars.pop("train/tokens", None)
            last_train = scalars
            history["train"].append({"step": done, **scalars})
            writer.write(done, scalars)

    t_loop = time.perf_counter()
    with _StopFlag() as stop:
        step = start
        for step, batch in data.train.iterate(start, tc.steps - start):
            state, metrics = runner.train(state, batch)
            if pending is not None:
                consume(*pending)
            elif window_t0 is None:
                jax.block_until_ready(metrics)  # the first step carries the compile; time from its end
                window_t0 = time.perf_counter()
            pending = (step, metrics)
            done = step + 1
            if done % tc.eval_every == 0 or done == tc.steps:
                consume(*pending)
                pending = None
                last_eval = evaluate(runner, state, data, tc.eval_steps)
                history["eval"].append({"step": done, **last_eval})
                writer.write(done, last_eval)
                window_t0 = time.perf_counter()
            if done % tc.checkpoint_every == 0 or done == tc.steps or stop.requested:
                checkpoints.save(done, runner.host_state(state), meta(done))
                last_ckpt = done
            if stop.requested:
                stopped_by = stop.requested
                break
        if pending is not None:
            consume(*pending)
    checkpoints.close()
    if start >= tc.steps and not last_eval:
        last_eval = evaluate(runner, state, data, tc.eval_steps)
    writer.close()

    summary = {
        "arch": mcfg.arch,
        "objective": config.objective.name,
        "params": n_params,
        "steps": tc.steps if stopped_by is None else int(jax.device_get(runner.host_state(state).step)),
        "start_step": start,
        "tokens_per_step": tokens_per_step,
        "flops_per_step": flops_per_step,
        "step_time_s": float(np.median(step_times)) if step_times else None,
        "tokens_per_sec": tokens_per_step / float(np.median(step_times)) if step_times else None,
        "peak_memory_bytes": peak_memory_bytes(runner),
        "compile_s": runner.compile_seconds,
        "loop_s": time.perf_counter() - t_loop,
        "wall_s": time.perf_counter() - t_start,
        "final_train": last_train,
        "final_eval": last_eval,
        "history": history,
        "stopped_by": stopped_by,
    }
    if lead:
        with open(os.path.join(workdir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2, default=lambda x: None if isinstance(x, float) and math.isnan(x)
                      else str(x))
    return summary

"""`train_and_evaluate(config, workdir)`: the one training loop, the same for every architecture and objective.

Per step the host takes the next prepared batch, dispatches the compiled step, and only then reads the previous
step's metrics, so it never makes the device wait. Metrics arrive as sums and are divided once, by the objective.
"""

import dataclasses
import json
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
from model import classifier
from model import config as model_config
from train import checkpoint as ckpt_lib
from train import metrics as metrics_lib
from train import objectives, optim, parallel, validate
from train import workdir as workdir_lib


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


def vocab_size(config: ml_collections.ConfigDict, data) -> int:
    """The model's vocabulary: the tokenizer's, or, starting from a pretrained model whose table is that padded to a
    multiple of 128 rows (Hugging Face's t5-small: 32,128 for its tokenizer's 32,100 ids), the table's."""
    if config.init_from:
        table = workdir_lib.read_record(config.init_from, "--config.init_from")["model_config"]["vocab_size"]
        if 0 <= table - data.vocab_size < 128 and table % 128 == 0:
            return table
    return data.vocab_size


def build(config: ml_collections.ConfigDict, devices=None):
    """(data, model config, model, runner) for `config`, validated before anything compiles; `runner.objective`
    is the objective's unit (train/objectives.py). Fine-tuning configs are built after
    `workdir.inherit_pretrained` (train_and_evaluate does it). `devices` defaults to all devices."""
    validate.validate(config)
    classify = config.objective.name == "classify"  # fine-tuning: labelled examples, a Classifier around the model
    data = (classify_data.build if classify else pipeline.build)(config, jax.process_index(), jax.process_count())
    model_cfg = model_config.from_dict(config.model, vocab_size=vocab_size(config, data))
    model = (classifier.Classifier(model_cfg, data.num_classes, config.task.pooling, config.task.t5_states) if classify
             else model_lib.build(model_cfg))
    objective = objectives.build(config.objective, data.layout)
    tx, lr = optim.make(config.train)
    if config.parallel not in ("jit", "pmap"):
        raise parallel.ParallelError(f"parallel={config.parallel!r} is unknown: choose 'jit' or 'pmap'")
    runner_cls = parallel.JitRunner if config.parallel == "jit" else parallel.PmapRunner
    runner = runner_cls(model, objective, tx, lr, config, devices=devices)
    return data, model_cfg, model, runner


def _git_commit() -> str:
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                              timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def run_record(config: ml_collections.ConfigDict, model_cfg, data) -> dict:
    """What config.json holds: the resolved experiment config, the model config, data facts, versions, devices and
    the git commit."""
    return {
        "config": json.loads(config.to_json_best_effort()),
        "model_config": dataclasses.asdict(model_cfg),
        "data": data.summary(),
        "versions": {"python": platform.python_version(), "jax": jax.__version__, "flax": flax.__version__,
                     "optax": optax.__version__, "numpy": np.__version__},
        "devices": {"backend": jax.default_backend(), "count": jax.device_count(),
                    "kind": jax.devices()[0].device_kind, "processes": jax.process_count()},
        "git_commit": _git_commit(),
    }


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
    """The objective's metrics (loss, accuracy, perplexity, bits per byte, ...) on the first `eval_steps`
    validation batches."""
    sums = None
    for i in range(eval_steps):
        s = runner.evaluate(state, data.val.batch(i))
        sums = s if sums is None else jax.tree.map(lambda a, b: a + b, sums, s)
    return runner.objective.summarize(jax.device_get(sums), "eval")


class _TrainLog:
    """Train metrics summed over the steps since the last log line, divided and written at each log step, with
    the mean step time of each window (the first window, which carries the compile, is not timed)."""

    def __init__(self, objective, writer, tc, tokens_per_step: int, last_checkpoint: int | None):
        self.objective, self.writer, self.tc, self.tokens_per_step = objective, writer, tc, tokens_per_step
        self.last_checkpoint = last_checkpoint
        self.window, self.steps, self.t0 = None, 0, None
        self.step_times, self.rows, self.last = [], [], {}

    def start_clock(self) -> None:
        self.t0 = time.perf_counter()

    def add(self, step: int, metrics) -> None:
        """Step `step`'s metrics (still on the device until now)."""
        m = jax.device_get(metrics)
        sums = {k: m[k] for k in self.objective.sum_keys}
        if self.tc.nonfinite == "stop":
            metrics_lib.check_finite(step, {"train/loss": float(sums["loss"]) / max(float(sums["weight"]), 1e-9),
                                            "opt/grad_norm": float(m["grad_norm"])}, self.last_checkpoint)
        self.window = sums if self.window is None else {k: self.window[k] + sums[k] for k in sums}
        self.steps += 1
        done = step + 1
        if done % self.tc.log_every and done != self.tc.steps:
            return
        now = time.perf_counter()
        scalars = self.objective.summarize(self.window, "train")
        scalars.pop("train/tokens", None)
        scalars.update({"opt/lr": float(m["lr"]), "opt/grad_norm": float(m["grad_norm"]),
                        "opt/nonfinite_skipped": float(m["nonfinite"])})
        if self.t0 is not None:
            dt = (now - self.t0) / self.steps
            self.step_times.append(dt)
            scalars.update({"perf/step_time": dt, "perf/tokens_per_sec": self.tokens_per_step / dt})
        self.t0, self.window, self.steps = now, None, 0
        self.last = scalars
        self.rows.append({"step": done, **scalars})
        self.writer.write(done, scalars)


def _start_state(runner, model, checkpoints, config):
    """(state, first step): the newest readable checkpoint, or a fresh init (from config.init_from's parameters)."""
    restored = checkpoints.restore_latest(runner.abstract_state()) if checkpoints.steps() else None
    if restored is not None:
        state = runner.place(restored[0])
        start = int(jax.device_get(state.step))
        logging.info("resumed from %s at step %d", checkpoints.directory, start)
        return state, start
    state = runner.init(jax.random.key(config.seed))
    if config.init_from:
        # A model with a `pretrained_key` (model/classifier.py) takes the checkpoint's parameters as that subtree;
        # the rest of its parameters (the new head) keep their initialisation.
        key = getattr(model, "pretrained_key", None)
        abstract = runner.abstract_state().params
        if key is None:
            params = ckpt_lib.load_params(config.init_from, abstract)
        else:
            params = {**runner.host_state(state).params, key: ckpt_lib.load_params(config.init_from, abstract[key])}
        state = state.replace(params=runner.shard_params(params))
        logging.info("parameters initialised from %s", config.init_from)
    return state, 0


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains `config` in `workdir` (resuming from its newest checkpoint) and returns the final summary.

    Fine-tuning first takes the pretrained run's model and data settings into `config` (workdir.inherit_pretrained);
    the run holds its workdir throughout (workdir.claim): a second run on it is refused at once."""
    workdir_lib.inherit_pretrained(config)
    config.lock()
    with workdir_lib.claim(workdir, lock=jax.process_index() == 0):
        return _train(config, workdir)


def _train(config: ml_collections.ConfigDict, workdir: str) -> dict:
    t_start = time.perf_counter()
    metrics_lib.quiet_libraries()
    parallel.enable_compile_cache()
    data, model_cfg, model, runner = build(config)
    objective, tc = runner.objective, config.train
    lead = jax.process_index() == 0
    if lead:
        workdir_lib.write_record(workdir, run_record(config, model_cfg, data))

    checkpoints = ckpt_lib.Checkpoints(workdir_lib.checkpoint_dir(workdir), keep=tc.keep_checkpoints)
    state, start = _start_state(runner, model, checkpoints, config)
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(runner.abstract_state().params))
    writer = metrics_lib.Writer(workdir, enabled=lead, resume_step=start, total_steps=tc.steps,
                                progress_bar=tc.progress_bar, shown=objective.shown)
    tokens_per_step = tc.batch_size * objective.tokens_per_example
    step_flops = optim.executed_flops_per_step(model_cfg, tc, objective.lengths, objective.predicted)
    log = _TrainLog(objective, writer, tc, tokens_per_step, checkpoints.steps()[-1] if checkpoints.steps() else None)
    if lead:
        logging.info("%s: %s parameters, %d tokens per step, %d devices (%s), data: %s", model_cfg.arch,
                     f"{n_params:,}", tokens_per_step, jax.device_count(), config.parallel, data.summary())

    eval_rows, last_eval, stopped_by = [], {}, None
    pending = None  # (step, metrics on device) of the step dispatched last
    t_loop = time.perf_counter()
    with _StopFlag() as stop:
        for step, batch in data.train.iterate(start, tc.steps - start):
            state, metrics = runner.train(state, batch)
            if pending is not None:
                log.add(*pending)
            elif log.t0 is None:
                jax.block_until_ready(metrics)  # the first step carries the compile; time from its end
                log.start_clock()
            pending = (step, metrics)
            done = step + 1
            if done % tc.eval_every == 0 or done == tc.steps:
                log.add(*pending)
                pending = None
                last_eval = evaluate(runner, state, data, data.eval_steps)
                eval_rows.append({"step": done, **last_eval})
                writer.write(done, last_eval)
                log.start_clock()
            if done % tc.checkpoint_every == 0 or done == tc.steps or stop.requested:
                checkpoints.save(done, runner.host_state(state),
                                 {"step": done, "arch": model_cfg.arch, "params": n_params})
                log.last_checkpoint = done
            if stop.requested:
                stopped_by = stop.requested
                break
        if pending is not None:
            log.add(*pending)
    checkpoints.close()
    if start >= tc.steps and not last_eval:
        last_eval = evaluate(runner, state, data, data.eval_steps)
    writer.close()

    median = float(np.median(log.step_times)) if log.step_times else None
    summary = {
        "arch": model_cfg.arch,
        "objective": config.objective.name,
        "params": n_params,
        "steps": tc.steps if stopped_by is None else int(jax.device_get(runner.host_state(state).step)),
        "start_step": start,
        "tokens_per_step": tokens_per_step,
        # What the step computes (train/optim.py executed_flops_per_step): what budgets charge, MFU's numerator.
        "flops_per_step": step_flops["executed"], "executed_flops_per_step": step_flops["executed"],
        "optimizer_flops_per_step": step_flops["optimizer"],  # of which the optimizer's matrices (Muon)
        "model_flops_per_step": step_flops["model_6n"],  # 6N + attention, head everywhere: MaxText's, nanoGPT's count
        "step_time_s": median,
        "tokens_per_sec": tokens_per_step / median if median else None,
        "peak_memory_bytes": peak_memory_bytes(runner),
        "compile_s": runner.compile_seconds,
        "loop_s": time.perf_counter() - t_loop,
        "wall_s": time.perf_counter() - t_start,
        "final_train": log.last,
        "final_eval": last_eval,
        "history": {"train": log.rows, "eval": eval_rows},
        "stopped_by": stopped_by,
    }
    if lead:
        workdir_lib.write_summary(workdir, summary)
    return summary

"""Runs for compare and sweep: a config file plus overrides, resolved and hashed; the steps a budget buys; training
them one after another, finished runs skipped and interrupted ones resumed; the files they leave in a workdir.

  run = make_run('experiments/configs/gpt.py:tiny', {'model.position': 'alibi'}, group='gpt-alibi')
  runs = plan_budget([run], 'flops', 4e12, evals=5)     # steps = round(budget / training FLOPs per step)
  execute(runs, 'runs/x')                               # <workdir>/<run.name>, skip / resume / record divergence

A run's config is its config file's `get_config(arg)` with the overrides applied in order; its hash (6 hex digits of
the resolved config) names its workdir in a sweep, so a changed config never reuses a stale run. experiments/sweep.py
(ablation grids) and experiments/compare.py (suites) build their runs here; experiments/report.py reads the files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import math
import os
import shlex
import time
import types
from typing import Any

import jax
import ml_collections

from data import objectives, tokenizer
from experiments import hardware
from model import flops
from model.config import from_dict, resolve_dtype
from train import objectives as train_objectives
from train import optim
from train.errors import UserError
from train.metrics import NonFiniteError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUDGETS = ("flops", "tokens", "seconds", "steps")
RUN_FILE = "run.json"  # What compare/sweep write into each run's workdir: name, group, seed, overrides.
PLAN_FILE = "plan.json"  # What compare/sweep write into the top workdir: the request, the budget, the runs.
FAILED_FILE = "failed.json"  # Written into a run's workdir when its training diverged.
PER_PAIR_DIR = "zero_shot"  # In a run's workdir: <task>.json, each zero-shot pair's result (experiments/probes.py).


class SweepError(UserError):
    """A sweep or suite definition, or a flag, that cannot work; the message says what to change."""


# ---------------------------------------------------------------------------------------------- configs


def check_command_line(argv: list[str], workdir: str | None, example: str) -> None:
    """A tool's command line: no positional arguments, and --workdir given (one line naming an example if not)."""
    if len(argv) > 1:
        raise SweepError(f"unexpected arguments {argv[1:]}")
    if not workdir:
        raise SweepError(f"--workdir is required, e.g. {example}")


def load_module(path: str, missing: str) -> types.ModuleType:
    """The Python file `path` (relative to the cwd, else to the repository root) run as a fresh module: a config,
    suite or ablation file. SweepError(missing) if there is no such file."""
    full = path if os.path.exists(path) else os.path.join(ROOT, path)
    if not os.path.exists(full):
        raise SweepError(missing)
    spec = importlib.util.spec_from_file_location(f"_triad_file_{abs(hash(full))}", full)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_config(spec: str) -> ml_collections.ConfigDict:
    """`get_config(arg)` of a config file 'path.py:arg' (path relative to the cwd or the repository root)."""
    path, _, arg = spec.partition(":")
    module = load_module(path, f"config file {path!r} not found (from {spec!r})")
    return module.get_config(arg) if arg else module.get_config()


def apply_overrides(config: ml_collections.ConfigDict, overrides: dict[str, Any]) -> ml_collections.ConfigDict:
    """Sets each 'a.b.c' path of `config`; a path the config does not have is an error, never a new field."""
    for path, value in overrides.items():
        node, parts = config, path.split(".")
        for i, part in enumerate(parts):
            if not isinstance(node, ml_collections.ConfigDict) or part not in node:
                raise SweepError(f"config has no field {'.'.join(parts[:i + 1])!r} (override {path}={value!r}); "
                                 f"see experiments/configs/base.py for the fields that exist")
            if i < len(parts) - 1:
                node = node[part]
        try:
            node[parts[-1]] = value
        except TypeError as e:
            raise SweepError(f"override {path}={value!r}: {e}") from None
    return config


def config_json(config) -> dict:
    """The config as config.json stores it (JSON types), from a ConfigDict or that stored dict."""
    if isinstance(config, ml_collections.ConfigDict):
        config = json.loads(config.to_json_best_effort())
    return json.loads(json.dumps(config, sort_keys=True, default=str))


def config_hash(config) -> str:
    """6 hex digits identifying a resolved config (a ConfigDict or the 'config' of a run's config.json)."""
    text = json.dumps(config_json(config), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:6]


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_diff(a, b) -> list[str]:
    """'path: a -> b' for every field where two configs differ."""
    fa, fb = _flat(config_json(a)), _flat(config_json(b))
    return [f"{k}: {fa.get(k)!r} -> {fb.get(k)!r}" for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)]


def format_value(value: Any) -> str:
    """An override value as `--config.x=<this>` parses it back (bools True/False, floats by repr)."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    return str(value)


# ---------------------------------------------------------------------------------------------- runs


@dataclasses.dataclass
class Run:
    """One training run: a config file plus ordered overrides, and the name of its workdir."""

    name: str  # workdir basename
    group: str  # runs with the same group differ only in seed and are aggregated in the report
    config_file: str  # 'experiments/configs/gpt.py:tiny'
    overrides: dict[str, Any]  # final value of every overridden path, in the order first set
    variant: str = ""  # human description for the report ('position=alibi'; a suite contender's variant)
    seed: int = 0
    config: ml_collections.ConfigDict = dataclasses.field(default=None, repr=False)
    measured_step_s: float | None = None  # seconds budgets: the step time the steps were planned from

    @property
    def hash(self) -> str:
        return config_hash(self.config)

    def command(self, workdir: str) -> str:
        """The equivalent `python -m train.main` command line."""
        parts = ["python", "-m", "train.main", f"--config={self.config_file}",
                 f"--workdir={os.path.join(workdir, self.name)}"]
        parts += [f"--config.{k}={format_value(v)}" for k, v in self.overrides.items()]
        return " ".join(shlex.quote(p) for p in parts)

    def record(self) -> dict:
        return {"name": self.name, "group": self.group, "variant": self.variant, "seed": self.seed,
                "config_file": self.config_file, "overrides": self.overrides, "config_hash": self.hash,
                "measured_step_s": self.measured_step_s}


def make_run(config_file: str, overrides: dict[str, Any], *, group: str, variant: str = "",
             hashed: bool = True) -> Run:
    """A Run with its resolved config; the name is `group-seed=S-hash` (hashed) or `group`."""
    config = apply_overrides(load_config(config_file), overrides)
    run = Run(name=group, group=group, config_file=config_file, overrides=dict(overrides), variant=variant,
              seed=int(config.seed), config=config)
    if hashed:
        run.name = f"{group}-seed={run.seed}-{run.hash}"
    return run


# The overrides `with_steps` sets: what planning a budget adds to a run's own.
PLANNED_KEYS = ("train.steps", "train.warmup_steps", "train.eval_every", "train.checkpoint_every", "train.log_every")


def with_steps(run: Run, steps: int, evals: int) -> Run:
    """`run` trained for `steps`, warmup kept at the config's fraction, `evals` evaluations and checkpoints."""
    tc = run.config.train
    every = max(1, math.ceil(steps / max(1, evals)))
    extra = {"train.steps": int(steps),
             "train.warmup_steps": int(round(tc.warmup_steps / max(1, tc.steps) * steps)),
             "train.eval_every": every, "train.checkpoint_every": every,
             "train.log_every": max(1, min(tc.log_every, every // 2))}
    assert tuple(extra) == PLANNED_KEYS  # compare.plan tells a run's own overrides from these by the list
    hashed = run.name != run.group
    return make_run(run.config_file, {**run.overrides, **extra}, group=run.group, variant=run.variant,
                    hashed=hashed)


# ---------------------------------------------------------------------------------------------- budgets


def shape_facts(config) -> dict:
    """Parameters, lengths and training FLOPs of a config without building it (vocab = config.data.vocab_size
    for a trained tokenizer; lengths from the batch shapes data.objectives.build makes, as experiments/summary.py)."""
    byte = tokenizer.ByteTokenizer()
    if config.data.tokenizer:
        tok = tokenizer.load(config.data.tokenizer)
        vocab = tok.vocab_size
    else:
        tok, vocab = byte, (byte.vocab_size if config.data.tokenizer_type == "byte" else config.data.vocab_size)
    model_cfg = from_dict(config.model, vocab_size=vocab)
    shapes = objectives.build(config, tok).shapes
    if "encoder_inputs" in shapes:
        seq_len, target_len = shapes["encoder_inputs"][0][0], shapes["decoder_inputs"][0][0]
    else:
        seq_len, target_len = shapes["inputs"][0][0], 0
    if (model_cfg.arch == "t5") != (target_len > 0):
        raise SweepError(f"model.arch={model_cfg.arch!r} does not fit objective.name={config.objective.name!r}")
    B = config.train.batch_size
    unit = train_objectives.build(config.objective, shapes)  # an MLM head's positions
    step = optim.executed_flops_per_step(model_cfg, config.train, (seq_len, target_len), unit.predicted)
    per_step = step["executed"]
    return {"arch": model_cfg.arch, "params": flops.param_count(model_cfg), "vocab_size": vocab, "seq_len": seq_len,
            "target_len": target_len, "tokens_per_step": B * (seq_len + target_len), "flops_per_step": per_step,
            "flops_per_token": per_step / (B * (seq_len + target_len)), "optimizer_flops_per_step": step["optimizer"],
            "model_flops_per_step": step["model_6n"]}


def measure_step_seconds(config, steps: int = 8, warmup: int = 2) -> float:
    """Seconds per training step of `config` on this machine: compile, `warmup` steps, then `steps` timed.

    Batches are built beforehand (the loop prepares them on a background thread), so on a busy machine or for tiny
    steps the loop's realised step time can be longer; the report shows the realised training time."""
    # Imported here, not at the top: train.loop brings orbax and optax, slow to import, which experiments.report
    # (importing this module for its file names and read_plan) never needs.
    from train import loop

    data, _, _, runner = loop.build(config)
    batches = [data.train.batch(i) for i in range(warmup + steps)]
    state = runner.init(jax.random.key(config.seed))
    for b in batches[:warmup]:
        state, metrics = runner.train(state, b)
    jax.block_until_ready(metrics)
    t0 = time.perf_counter()
    for b in batches[warmup:]:  # as the loop does: dispatch a step, then read the previous step's metrics
        state, new = runner.train(state, b)
        jax.device_get(metrics)
        metrics = new
    jax.device_get(metrics)
    return (time.perf_counter() - t0) / steps


def steps_for_budget(config, kind: str, value: float, step_seconds: float | None = None) -> int:
    """Optimizer steps that spend `value` of `kind` ('flops', 'tokens', 'seconds' or 'steps') on `config`."""
    if kind not in BUDGETS or value <= 0:
        raise SweepError(f"budget {kind}={value}: choose a positive budget of {BUDGETS}")
    if kind == "steps":
        return int(value)
    if kind == "seconds":
        if not step_seconds:
            raise SweepError("a seconds budget needs the measured step time")
        return max(1, int(value // step_seconds))
    facts = shape_facts(config)
    per_step = facts["flops_per_step"] if kind == "flops" else facts["tokens_per_step"]
    return max(1, round(value / per_step))


def plan_budget(runs: list[Run], kind: str, value: float, evals: int, log=print) -> list[Run]:
    """Each run with the steps its budget buys (seconds: measured once per group, see `measure_step_seconds`, so
    that the seeds of a group train the same steps)."""
    out, measured = [], {}
    for run in runs:
        seconds = None
        if kind == "seconds":
            if run.group not in measured:
                log(f"[plan] {run.group}: measuring the step time (compile, 2 warm-up steps, 8 timed)")
                measured[run.group] = measure_step_seconds(run.config)
                log(f"[plan] {run.group}: {measured[run.group]:.3f} s per step")
            seconds = measured[run.group]
        steps = steps_for_budget(run.config, kind, value, seconds)
        planned = with_steps(run, steps, evals)
        planned.measured_step_s = seconds
        out.append(planned)
    return out


# ---------------------------------------------------------------------------------------------- executing


def run_state(run: Run, workdir: str) -> str:
    """'done' (summary.json of this exact config, all steps), 'failed' (diverged: failed.json), 'partial' (resume
    it) or 'new'.

    A workdir holding a different config raises SweepError naming the differing fields."""
    rundir = os.path.join(workdir, run.name)
    cfg_path = os.path.join(rundir, "config.json")
    if not os.path.exists(cfg_path):
        return "new"
    with open(cfg_path) as f:
        stored = json.load(f)["config"]
    if config_hash(stored) != run.hash:
        diff = config_diff(stored, run.config)
        raise SweepError(f"{rundir} holds a run of a different config ({'; '.join(diff[:6])}"
                         f"{' ...' if len(diff) > 6 else ''}): use another --workdir or delete {rundir}")
    path = os.path.join(rundir, "summary.json")
    if os.path.exists(path):
        with open(path) as f:
            s = json.load(f)
        if s.get("steps") == run.config.train.steps and not s.get("stopped_by"):
            return "done"
    if os.path.exists(os.path.join(rundir, FAILED_FILE)):
        return "failed"
    return "partial"


def execute(runs: list[Run], workdir: str, log=print) -> bool:
    """Trains the runs one after another in `<workdir>/<name>`; False if one was stopped (SIGINT/SIGTERM).

    A run whose loss or gradient becomes non-finite is recorded in its `failed.json` and the others go on."""
    from train import loop  # Here, not at the top: see measure_step_seconds.

    states = [run_state(r, workdir) for r in runs]  # every conflict is reported before anything trains
    n = len(runs)
    for i, (run, state) in enumerate(zip(runs, states, strict=True)):
        tag = f"[{i + 1}/{n}] {run.name}"
        if state in ("done", "failed"):
            log(f"{tag}: {'finished' if state == 'done' else 'diverged'} earlier, skipped")
            continue
        rundir = os.path.join(workdir, run.name)
        os.makedirs(rundir, exist_ok=True)
        with open(os.path.join(rundir, RUN_FILE), "w") as f:
            json.dump(run.record(), f, indent=2)
        log(f"{tag}: {'resuming' if state == 'partial' else 'starting'} ({run.config.model.arch}, "
            f"{run.config.train.steps} steps{', ' + run.variant if run.variant else ''})")
        t0 = time.perf_counter()
        try:
            s = loop.train_and_evaluate(run.config, rundir)
        except NonFiniteError as e:
            log(f"{tag}: FAILED: {e}")
            with open(os.path.join(rundir, FAILED_FILE), "w") as f:
                json.dump({"name": run.name, "group": run.group, "error": str(e)}, f, indent=2)
            continue
        if s.get("stopped_by"):
            log(f"{tag}: stopped by {s['stopped_by']} at step {s['steps']}; run the same command again to resume")
            return False
        ev = s["final_eval"]
        log(f"{tag}: done in {time.perf_counter() - t0:.0f} s, eval loss {ev.get('eval/loss', float('nan')):.4f} "
            f"({s['objective']}), {s['tokens_per_sec'] or 0:,.0f} tokens/s")
    return True


def write_plan(workdir: str, plan: dict) -> None:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, PLAN_FILE), "w") as f:
        json.dump(plan, f, indent=2, default=str)


def read_plan(workdir: str) -> dict | None:
    path = os.path.join(workdir, PLAN_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def hardware_record(plan: dict | None) -> dict:
    """The device and its peak FLOP/s (reused from an earlier plan on the same kind of device)."""
    dev = jax.devices()[0]
    old = (plan or {}).get("hardware") or {}
    if old.get("device_kind") == dev.device_kind and old.get("peak_flops"):
        return old
    dtype = resolve_dtype("auto")
    peak, source = hardware.peak_flops(dev, dtype)
    return {"backend": jax.default_backend(), "device_kind": dev.device_kind, "n_devices": jax.device_count(),
            "dtype": dtype, "peak_flops": peak, "peak_source": source}

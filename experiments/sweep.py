"""Runs an ablation grid: one workdir per (point, seed); finished runs are skipped, interrupted ones resumed.

  python -m experiments.sweep --sweep=experiments/ablations/position.py --workdir=runs/pos
  python -m experiments.sweep --sweep=experiments/ablations/mlp.py --workdir=runs/mlp --steps=50 --dry_run
  python -m experiments.sweep --sweep=... --workdir=... --budget_flops=2e12 --config.train.batch_size=8

An ablation file defines `get_sweep()` returning a dict:
  config  config file and variant, '{arch}' filled in from the grid: 'experiments/configs/{arch}.py:tiny'
  base    {config path: value} applied to every run (e.g. a cheap model size)
  grid    {axis: values}, the runs are the product of the axes:
            'arch'              -> ['gpt', 'bert', 't5'] (picks the config file)
            a config path       -> values of that field: 'model.position': ['rope', 'alibi']
            any other label     -> {value label: {config path: value, ...}}: a named setting of several fields
  seeds   [0, 1, ...] (sets config.seed); runs that differ only in seed are aggregated (mean and spread)
  exclude (optional) [{axis: value label, ...}]: points matching every item are skipped

A run's workdir is `<workdir>/<arch>-<axis>=<value>-...-seed=<s>-<hash>`, hash = 6 hex digits of the resolved config,
so a changed base config never reuses a stale run. Overrides apply in this order: base, --config.* flags, the
point's axes, seed, then the steps a budget flag implies. The report (report.md/json, PNGs) is written at the end;
`python -m experiments.report <workdir>` rebuilds it. The machinery here (configs, hashes, budgets, skip/resume)
is shared with experiments/compare.py.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import itertools
import json
import math
import os
import re
import shlex
import sys
import time
from typing import Any

import ml_collections

from train.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUDGETS = ("flops", "tokens", "seconds", "steps")
RUN_FILE = "run.json"  # What compare/sweep write into each run's workdir: name, group, seed, overrides.
PLAN_FILE = "plan.json"  # What compare/sweep write into the top workdir: the request, the budget, the runs.
FAILED_FILE = "failed.json"  # Written into a run's workdir when its training diverged.


class SweepError(UserError):
    """A sweep or suite definition, or a flag, that cannot work; the message says what to change."""


# A model and schedule cheap enough for ablations on 2 CPU cores (20-45 s per run, compile included, depending on
# how busy the cores are): the `tiny` layer choices at d_model 64, vocabulary 2000, sequences of 64, batch 16, 150
# steps. Ablation files start from it (`base=CHEAP`).
CHEAP = {
    "data.seq_len": 64, "data.vocab_size": 2000, "model.max_len": 64, "model.d_model": 64, "model.n_heads": 4,
    "model.d_ff": 256, "train.batch_size": 16, "train.steps": 150, "train.warmup_steps": 15, "train.log_every": 10,
    "train.eval_every": 50, "train.eval_steps": 4, "train.checkpoint_every": 50, "train.progress_bar": False,
}


# ---------------------------------------------------------------------------------------------- configs


def load_config(spec: str) -> ml_collections.ConfigDict:
    """`get_config(arg)` of a config file 'path.py:arg' (path relative to the cwd or the repository root)."""
    path, _, arg = spec.partition(":")
    full = path if os.path.exists(path) else os.path.join(ROOT, path)
    if not os.path.exists(full):
        raise SweepError(f"config file {path!r} not found (from {spec!r})")
    mod_spec = importlib.util.spec_from_file_location(f"_triad_config_{abs(hash(full))}", full)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
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
    for a trained tokenizer; lengths from the batch shapes data.objectives.build makes, as model/summary.py)."""
    from data import objectives, tokenizer
    from model import flops
    from model.config import from_dict

    byte = tokenizer.ByteTokenizer()
    if config.data.tokenizer:
        tok = tokenizer.load(config.data.tokenizer)
        vocab = tok.vocab_size
    else:
        tok, vocab = byte, (byte.vocab_size if config.data.tokenizer_type == "byte" else config.data.vocab_size)
    mcfg = from_dict(config.model, vocab_size=vocab)
    shapes = objectives.build(config, tok).shapes
    if "encoder_inputs" in shapes:
        seq_len, target_len = shapes["encoder_inputs"][0][0], shapes["decoder_inputs"][0][0]
    else:
        seq_len, target_len = shapes["inputs"][0][0], 0
    if (mcfg.arch == "t5") != (target_len > 0):
        raise SweepError(f"model.arch={mcfg.arch!r} does not fit objective.name={config.objective.name!r}")
    B = config.train.batch_size
    per_step = flops.training_flops_per_step(mcfg, B, seq_len, target_len)
    return {"arch": mcfg.arch, "params": flops.param_count(mcfg), "vocab_size": vocab, "seq_len": seq_len,
            "target_len": target_len, "tokens_per_step": B * (seq_len + target_len), "flops_per_step": per_step,
            "flops_per_token": per_step / (B * (seq_len + target_len))}


def measure_step_seconds(config, steps: int = 8, warmup: int = 2) -> float:
    """Seconds per training step of `config` on this machine: compile, `warmup` steps, then `steps` timed.

    Batches are built beforehand (the loop prepares them on a background thread), so on a busy machine or for tiny
    steps the loop's realised step time can be longer; the report shows the realised training time."""
    import jax

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
    """Each run with the steps its budget buys (seconds: measured per run, see `measure_step_seconds`)."""
    out = []
    for run in runs:
        seconds = None
        if kind == "seconds":
            log(f"[plan] {run.group}: measuring the step time (compile, 2 warm-up steps, 8 timed)")
            seconds = measure_step_seconds(run.config)
            log(f"[plan] {run.group}: {seconds:.3f} s per step")
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
    from train import loop
    from train.metrics import NonFiniteError

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
    import jax

    from experiments import hardware

    dev = jax.devices()[0]
    old = (plan or {}).get("hardware") or {}
    if old.get("device_kind") == dev.device_kind and old.get("peak_flops"):
        return old
    from model.config import resolve_dtype

    dtype = resolve_dtype("auto")
    peak, source = hardware.peak_flops(dev, dtype)
    return {"backend": jax.default_backend(), "device_kind": dev.device_kind, "n_devices": jax.device_count(),
            "dtype": dtype, "peak_flops": peak, "peak_source": source}


# ---------------------------------------------------------------------------------------------- grids


def _label(value: Any) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]", "_", format_value(value))


def load_sweep(path: str) -> dict:
    """`get_sweep()` of an ablation file, checked."""
    full = path if os.path.exists(path) else os.path.join(ROOT, path)
    if not os.path.exists(full):
        raise SweepError(f"--sweep={path}: file not found")
    spec = importlib.util.spec_from_file_location("_triad_sweep", full)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sweep = module.get_sweep()
    known = {"config", "base", "grid", "seeds", "exclude", "description"}
    if set(sweep) - known or not {"config", "grid"} <= set(sweep):
        raise SweepError(f"{path}: get_sweep() must return config and grid (and optionally base, seeds, exclude, "
                         f"description); got {sorted(sweep)}")
    return sweep


def expand(sweep: dict, cli_overrides: dict[str, Any] | None = None) -> list[Run]:
    """The runs of a sweep dict (see the module docstring), in grid order, seeds innermost."""
    grid, seeds = sweep["grid"], sweep.get("seeds", [0])
    axes = []  # (axis name, [(label, overrides), ...])
    for axis, values in grid.items():
        if axis == "arch":
            axes.append((axis, [(v, {}) for v in values]))
        elif isinstance(values, dict):
            axes.append((axis, [(label, dict(ov)) for label, ov in values.items()]))
        elif "." in axis:
            axes.append((axis, [(v, {axis: v}) for v in values]))
        else:
            raise SweepError(f"grid axis {axis!r}: give a config path ('model.position') with a list of values, "
                             f"'arch', or a label with a dict {{value label: {{path: value}}}}")
    runs = []
    for combo in itertools.product(*[vals for _, vals in axes]):
        chosen = {axis: label for (axis, _), (label, _) in zip(axes, combo, strict=True)}
        if any(all(_label(chosen.get(k)) == _label(v) for k, v in ex.items()) for ex in sweep.get("exclude", [])):
            continue
        arch = chosen.get("arch")
        if arch is None and "{arch}" in sweep["config"]:
            raise SweepError("config has '{arch}' but the grid has no 'arch' axis")
        config_file = sweep["config"].format(arch=arch)
        parts = [f"{axis.rsplit('.', 1)[-1]}={_label(label)}" for axis, label in chosen.items() if axis != "arch"]
        group = "-".join(([arch] if arch else []) + parts) or "base"
        point = {}
        for _, ov in combo:
            point.update(ov)
        for seed in seeds:
            overrides = {**sweep.get("base", {}), **(cli_overrides or {}), **point, "seed": seed}
            runs.append(make_run(config_file, overrides, group=group, variant=" ".join(parts)))
    return runs


# ---------------------------------------------------------------------------------------------- CLI


def define_budget_flags(fv, argv: list[str] | None = None) -> None:
    """Flags shared by sweep and compare: budgets, evaluations, --config.* overrides, --dry_run.

    config_flags reads the --config.* overrides when the flag is defined, from `argv` (default sys.argv)."""
    from absl import flags
    from ml_collections import config_flags

    from experiments.configs import base

    flags.DEFINE_string("workdir", None, "Directory holding one workdir per run, plan.json and the report.",
                        flag_values=fv)
    flags.DEFINE_float("budget_flops", 0, "Training FLOPs per run (model FLOPs, model/flops.py).", flag_values=fv)
    flags.DEFINE_float("budget_tokens", 0, "Token positions per run (L for gpt/bert, S + T for t5).", flag_values=fv)
    flags.DEFINE_float("budget_seconds", 0, "Seconds of training steps per run (measured step time x steps; "
                       "compile and evaluation not included).", flag_values=fv)
    flags.DEFINE_integer("steps", 0, "Training steps per run (warmup scaled to keep its fraction).", flag_values=fv)
    flags.DEFINE_integer("evals", 5, "Evaluations (and checkpoints) per run, evenly spaced (compare: 0 = the "
                         "suite's).", flag_values=fv)
    flags.DEFINE_bool("dry_run", False, "Print one `python -m train.main` command per run and exit.", flag_values=fv)
    argv = sys.argv if argv is None else argv
    try:
        config_flags.DEFINE_config_dict("config", base.base_config("gpt", "tiny"),
                                        "Overrides for every run: --config.train.batch_size=16 (any field of "
                                        "experiments/configs/base.py).", flag_values=fv, sys_argv=argv)
    except (KeyError, AttributeError) as e:
        bad = [a.split("=")[0] for a in argv[1:] if a.startswith("--config.")
               and str(e).strip("\"'") in a.split("=")[0].split(".")]
        sys.stderr.write(f"error: {(bad or ['--config.*'])[0]} is not a config field; see "
                         f"experiments/configs/base.py for the fields that exist\n")
        sys.exit(2)


def budget_from_flags(fv, default: tuple[str, float] | None = None) -> tuple[str, float] | None:
    """('flops'|'tokens'|'seconds'|'steps', value) from the flags; at most one may be set."""
    chosen = [(k, fv[f"budget_{k}" if k != "steps" else k].value) for k in BUDGETS]
    chosen = [(k, v) for k, v in chosen if v]
    if len(chosen) > 1:
        raise SweepError(f"give at most one of --budget_flops, --budget_tokens, --budget_seconds, --steps; "
                         f"got {', '.join(k for k, _ in chosen)}")
    return chosen[0] if chosen else default


def cli_overrides(fv) -> dict[str, Any]:
    from ml_collections import config_flags

    return dict(config_flags.get_override_values(fv["config"]))


def run_sweep(sweep_path: str, workdir: str, budget: tuple[str, float] | None, evals: int,
              overrides: dict[str, Any], dry_run: bool, log=print) -> list[Run]:
    """Plans (and unless dry_run trains) every run of an ablation file, then writes the report."""
    sweep = load_sweep(sweep_path)
    runs = expand(sweep, overrides)
    if budget is not None:
        if dry_run and budget[0] == "seconds":
            raise SweepError("--budget_seconds measures step times on this machine: not with --dry_run")
        runs = plan_budget(runs, *budget, evals=evals, log=log)
    if dry_run:
        for r in runs:
            print(r.command(workdir))
        return runs
    plan = read_plan(workdir)
    write_plan(workdir, {"kind": "sweep", "sweep": sweep_path, "description": sweep.get("description", ""),
                         "budget": {"kind": budget[0], "value": budget[1]} if budget else None,
                         "overrides": overrides, "runs": [r.record() for r in runs],
                         "hardware": hardware_record(plan)})
    log(f"[sweep] {len(runs)} runs of {sweep_path} in {workdir}")
    finished = execute(runs, workdir, log=log)
    from experiments import report

    text = report.build(workdir)
    if finished:
        print(text)
    return runs


def main(argv: list[str]) -> None:
    from absl import flags

    if len(argv) > 1:
        raise SweepError(f"unexpected arguments {argv[1:]}")
    from train import errors

    fv = flags.FLAGS
    with errors.one_line():
        if not fv.sweep or not fv.workdir:
            raise SweepError("--sweep=experiments/ablations/<name>.py and --workdir=<dir> are required")
        run_sweep(fv.sweep, fv.workdir, budget_from_flags(fv), fv.evals, cli_overrides(fv), fv.dry_run)


if __name__ == "__main__":
    from absl import flags

    from train import errors

    flags.DEFINE_string("sweep", None, "Ablation file defining get_sweep(), e.g. experiments/ablations/position.py.")
    define_budget_flags(flags.FLAGS)
    sys.exit(errors.run_app(main))

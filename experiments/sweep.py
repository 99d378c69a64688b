"""Runs an ablation grid: one workdir per (point, seed); finished runs are skipped, interrupted ones resumed.

  python -m experiments.sweep --sweep=experiments/ablations/position.py --workdir=runs/pos
  python -m experiments.sweep --sweep=experiments/ablations/mlp.py --workdir=runs/mlp --steps=50 --dry_run
  python -m experiments.sweep --sweep=... --workdir=... --budget_flops=2e12 --config.train.batch_size=8
  python -m experiments.sweep --sweep=experiments/ablations/position.py --workdir=runs/pos3 --seeds=3

An ablation file defines `get_sweep()` returning a dict:
  config  config file and variant, '{arch}' filled in from the grid: 'experiments/configs/{arch}.py:tiny'
  base    {config path: value} applied to every run (e.g. a cheap model size)
  grid    {axis: values}, the runs are the product of the axes:
            'arch'              -> ['gpt', 'bert', 't5'] (picks the config file)
            a config path       -> values of that field: 'model.position': ['rope', 'alibi']
            any other label     -> {value label: {config path: value, ...}}: a named setting of several fields
  seeds   [0, 1, ...] (sets config.seed); runs that differ only in seed are aggregated (mean ± standard error,
          and paired t-tests between points, pairs = the same seed); `--seeds=N` replaces the list by 0 .. N-1
  exclude (optional) [{axis: value label, ...}]: points matching every item are skipped

A run's workdir is `<workdir>/<arch>-<axis>=<value>-...-seed=<s>-<hash>`, hash = 6 hex digits of the resolved config,
so a changed base config never reuses a stale run. Overrides apply in this order: base, --config.* flags, the
point's axes, seed, then the steps a budget flag implies. The report (report.md/json, PNGs) is written at the end;
`python -m experiments.report <workdir>` rebuilds it. The runs themselves (configs, hashes, budgets, skip/resume)
are experiments/planning.py's, shared with experiments/compare.py; the budget flags here are compare's too.
"""

from __future__ import annotations

import itertools
import re
import sys
from typing import Any

from absl import flags
from ml_collections import config_flags

from experiments import planning, report
from experiments.configs import base
from experiments.planning import Run, SweepError
from train import errors

# A model and schedule cheap enough for ablations on 2 CPU cores (well under a minute a run, compile included;
# docs/results.md): the `tiny` layer choices at d_model 64, vocabulary 2000, sequences of 64, batch 16, 150 steps.
# Ablation files start from it (`base=CHEAP`).
CHEAP = {
    "data.seq_len": 64, "data.vocab_size": 2000, "model.max_len": 64, "model.d_model": 64, "model.n_heads": 4,
    "model.d_ff": 256, "train.batch_size": 16, "train.steps": 150, "train.warmup_steps": 15, "train.log_every": 10,
    "train.eval_every": 50, "train.eval_steps": 4, "train.checkpoint_every": 50, "train.progress_bar": False,
}


# ---------------------------------------------------------------------------------------------- grids


def _label(value: Any) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]", "_", planning.format_value(value))


def load_sweep(path: str) -> dict:
    """`get_sweep()` of an ablation file, checked."""
    sweep = planning.load_module(path, f"--sweep={path}: file not found").get_sweep()
    known = {"config", "base", "grid", "seeds", "exclude", "description"}
    if set(sweep) - known or not {"config", "grid"} <= set(sweep):
        raise SweepError(f"{path}: get_sweep() must return config and grid (and optionally base, seeds, exclude, "
                         f"description); got {sorted(sweep)}")
    return sweep


def expand(sweep: dict, cli_overrides: dict[str, Any] | None = None, seeds: int | None = None) -> list[Run]:
    """The runs of a sweep dict (see the module docstring), in grid order, seeds innermost; seeds N: seeds 0 ..
    N-1 instead of the sweep's list (None: the list)."""
    if seeds is not None and seeds < 1:
        raise SweepError(f"--seeds={seeds}: give N >= 1 (seeds 0 .. N-1), or leave --seeds out for the sweep file's "
                         "seeds list")
    grid = sweep["grid"]
    seeds = list(range(seeds)) if seeds else sweep.get("seeds", [0])
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
            runs.append(planning.make_run(config_file, overrides, group=group, variant=" ".join(parts)))
    return runs


# ---------------------------------------------------------------------------------------------- CLI


def define_budget_flags(fv, argv: list[str] | None = None) -> None:
    """Flags shared by sweep and compare: budgets, evaluations, --config.* overrides, --dry_run.

    config_flags reads the --config.* overrides when the flag is defined, from `argv` (default sys.argv)."""
    flags.DEFINE_string("workdir", None, "Directory holding one workdir per run, plan.json and the report.",
                        flag_values=fv)
    flags.DEFINE_float("budget_flops", 0, "Training FLOPs per run, as the steps execute them (train/optim.py).",
                       flag_values=fv)
    flags.DEFINE_float("budget_tokens", 0, "Token positions per run (L for gpt/bert, S + T for t5).", flag_values=fv)
    flags.DEFINE_float("budget_seconds", 0, "Seconds of training steps per run (measured step time x steps; "
                       "compile and evaluation not included).", flag_values=fv)
    flags.DEFINE_integer("steps", 0, "Training steps per run (warmup scaled to keep its fraction).", flag_values=fv)
    flags.DEFINE_integer("evals", 5, "Evaluations (and checkpoints) per run, evenly spaced (compare: 0 = the "
                         "suite's).", flag_values=fv)
    flags.DEFINE_bool("dry_run", False, "Print one `python -m train.main` command per run and exit.", flag_values=fv)
    define_config_flag(fv, argv)


def define_config_flag(fv, argv: list[str] | None = None) -> None:
    """--config.* overrides for every run; config_flags reads them when the flag is defined, from `argv` (default
    sys.argv)."""
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
    chosen = [(k, fv[f"budget_{k}" if k != "steps" else k].value) for k in planning.BUDGETS]
    chosen = [(k, v) for k, v in chosen if v]
    if len(chosen) > 1:
        raise SweepError(f"give at most one of --budget_flops, --budget_tokens, --budget_seconds, --steps; "
                         f"got {', '.join(k for k, _ in chosen)}")
    return chosen[0] if chosen else default


def cli_overrides(fv) -> dict[str, Any]:
    """The --config.* overrides given on the command line, {path: value}."""
    return dict(config_flags.get_override_values(fv["config"]))


def run_sweep(sweep_path: str, workdir: str, budget: tuple[str, float] | None, evals: int,
              overrides: dict[str, Any], dry_run: bool, log=print, seeds: int | None = None) -> list[Run]:
    """Plans (and unless dry_run trains) every run of an ablation file, then writes the report; seeds N replaces
    the file's seeds list by 0 .. N-1."""
    sweep = load_sweep(sweep_path)
    runs = expand(sweep, overrides, seeds)
    if budget is not None:
        if dry_run and budget[0] == "seconds":
            raise SweepError("--budget_seconds measures step times on this machine: not with --dry_run")
        runs = planning.plan_budget(runs, *budget, evals=evals, log=log)
    if dry_run:
        for r in runs:
            print(r.command(workdir))
        return runs
    plan = planning.read_plan(workdir)
    planning.write_plan(workdir, {"kind": "sweep", "sweep": sweep_path, "description": sweep.get("description", ""),
                                  "budget": {"kind": budget[0], "value": budget[1]} if budget else None,
                                  "overrides": overrides, "runs": [r.record() for r in runs],
                                  "hardware": planning.hardware_record(plan)})
    log(f"[sweep] {len(runs)} runs of {sweep_path} in {workdir}")
    finished = planning.execute(runs, workdir, log=log)
    text = report.build(workdir)
    if finished:
        print(text)
    return runs


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise SweepError(f"unexpected arguments {argv[1:]}")
    fv = flags.FLAGS
    with errors.one_line():
        if not fv.sweep or not fv.workdir:
            raise SweepError("--sweep=experiments/ablations/<name>.py and --workdir=<dir> are required")
        run_sweep(fv.sweep, fv.workdir, budget_from_flags(fv), fv.evals, cli_overrides(fv), fv.dry_run,
                  seeds=fv.seeds)


if __name__ == "__main__":
    flags.DEFINE_string("sweep", None, "Ablation file defining get_sweep(), e.g. experiments/ablations/position.py.")
    flags.DEFINE_integer("seeds", None, "Seeds per point: N >= 1 = config.seed 0 .. N-1 (3 or more for the report "
                         "to test the differences); left out: the sweep file's seeds list.")
    define_budget_flags(flags.FLAGS)
    sys.exit(errors.run_app(main))

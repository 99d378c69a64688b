"""Trains the contenders of a suite one after another, on one corpus and tokenizer, at a matched budget; writes
the report (report.md, report.json, PNG plots) into the workdir.

  python -m experiments.compare --workdir=runs/compare                  # default suite: bert, gpt, t5, FLOPs matched
  python -m experiments.compare --workdir=runs/c --contenders=gpt,t5 --budget_tokens=1e6
  python -m experiments.compare --workdir=runs/c --budget_seconds=60 --config.train.weight_decay=0
  python -m experiments.compare --workdir=runs/c --suite=experiments/suites/mine.py --dry_run

What is matched (one flag; default: the suite's budget):
  --budget_flops    steps = round(budget / FLOPs a step executes): train/optim.py executed_flops_per_step, the
                    matmuls of model/flops.py with the batch's real lengths (L, or S and T for t5) and an MLM head
                    at its predicted positions alone, plus Muon's Newton-Schulz matmuls
  --budget_tokens   steps = round(budget / token positions per step) (batch x L, or batch x (S + T) for t5)
  --budget_seconds  every contender's step time is measured first (compile, 2 warm-up steps, 8 timed steps) and
                    steps = floor(budget / step time): the budget is time spent in training steps, not compile,
                    evaluation or checkpoints (the report shows the realised loop and wall times)
  --steps           the same number of steps for every contender
Warmup keeps the config's fraction of the steps; `--evals` evaluations (and checkpoints) are spread evenly, so the
curves of all contenders are sampled at the same fractions of the budget.

Zero-shot probes (`--zero_shot=next_sentence,word_order`, default: the suite's, both for the default suite): after
training, each contender scores the probe pairs with its own objective, no training (experiments/probes.py).
BLiMP (`--blimp=N`, default: the suite's, 90 for the default suite): after training, each contender scores the
fixed subset of N minimal pairs per BLiMP paradigm (experiments/blimp.py; N = 1000 is all of BLiMP) with its own
objective, as the BabyLM pipeline scores each family; the report gains the overall and per-field BLiMP columns.
Probes (`--probes=next_sentence,word_order`, default: the suite's, both for the default suite; `--probes=` skips
them): after training, every contender is fine-tuned on each probe task with one recipe
(experiments/configs/finetune.py), and so is the same model from a random init, the baseline; the report gains a
column per task and per baseline (experiments/probes.py; 4 short fine-tuning runs per contender for the two tasks,
their cost in docs/results.md).

Seeds (`--seeds=N`, default 1): with 1, each contender trains once, with its config's seed, in `<workdir>/<name>`;
with N >= 2, each trains with config.seed = 0, 1, ..., N-1 in `<workdir>/<name>-seed=<s>` (every contender's seed 0
first), and is probed (fine-tuned with the same seed) and scored zero-shot every time. config.seed seeds init,
dropout and every batch, so contender A and contender B with the same seed see the same batches: the report pairs
them by seed, shows mean ± standard error and says which differences a paired t-test finds significant (3 or more
seeds advised; with one seed only the zero-shot columns are tested, by a paired bootstrap over their pairs).

  python -m experiments.compare --workdir=runs/compare3 --seeds=3

Each contender (each seed of it) trains in its own workdir. Re-running the command skips finished runs
(summary.json of the same config) and resumes an interrupted one from its last checkpoint; the planned steps are
kept in plan.json, so a seconds budget is measured once (per contender: its seeds share its steps, also when --seeds
grows). `--config.*` overrides apply to every contender, except where a contender's own overrides set the same
field (the default suite's learning rates, T5's d_ff): those win, and compare says so.
"""

from __future__ import annotations

import json
import os
import sys

from absl import flags

from data.probes import TASKS as PROBE_TASKS
from experiments import blimp as blimp_lib
from experiments import planning, report, suites, sweep
from experiments import probes as probes_lib
from experiments.planning import Run, SweepError
from train import errors


def suite_runs(suite: dict, names: list[str] | None = None, overrides: dict | None = None) -> list[Run]:
    """One Run per selected contender (all of them by default): the suite's shared overrides, then `overrides`
    (the command line's), then the contender's own."""
    contenders = suite["contenders"]
    names = names or list(contenders)
    unknown = [n for n in names if n not in contenders]
    if unknown:
        raise SweepError(f"--contenders: unknown {unknown}; this suite has {list(contenders)}")
    shared = {**suite.get("overrides", {}), **(overrides or {})}
    return [planning.make_run(contenders[n]["config"], {**shared, **contenders[n]["overrides"]}, group=n, hashed=False)
            for n in names]


def check_params(runs: list[Run], tolerance: float) -> dict[str, int]:
    """Parameter counts (model/flops.py, tokenizer vocabulary = data.vocab_size); raises if they differ by more
    than `tolerance` (max / min - 1)."""
    params = {r.name: planning.shape_facts(r.config)["params"] for r in runs}
    spread = max(params.values()) / min(params.values()) - 1
    if spread > tolerance:
        listing = ", ".join(f"{n} {p:,}" for n, p in params.items())
        raise SweepError(f"parameter counts differ by {spread:.1%} > {tolerance:.0%} ({listing}): adjust the suite "
                         f"or the --config overrides, or pass --param_tolerance={spread:.2f} to compare anyway")
    return params


def _as_stored(value):
    return json.loads(json.dumps(value, default=str))  # as plan.json stores it


def _defined(overrides: dict) -> dict:
    """A run's overrides without those its budget plan added (steps, warmup, evaluation spacing) and its seed (the
    steps a budget buys do not depend on it), as stored."""
    return _as_stored({k: v for k, v in overrides.items() if k not in (*planning.PLANNED_KEYS, "seed")})


def _request(suite_name: str, budget, evals: int, overrides: dict) -> dict:
    return _as_stored({"suite": suite_name, "budget": {"kind": budget[0], "value": float(budget[1])},
                       "evals": evals, "overrides": overrides})


def plan(workdir: str, suite_name: str, runs: list[Run], budget, evals: int, overrides: dict,
         log=print) -> list[Run]:
    """The contenders' runs with their steps; contenders planned earlier under the same request (with any number of
    seeds), with the same config file and overrides (the suite's may have changed since), keep their plan."""
    request = _request(suite_name, budget, evals, overrides)
    old = planning.read_plan(workdir) or {}
    reuse = {}
    for rec in old.get("runs", []) if old.get("request") == request else []:
        reuse.setdefault(rec.get("group") or rec["name"], rec)
    out, todo = [], []
    for run in runs:
        rec = reuse.get(run.group)
        if rec and rec["config_file"] == run.config_file and _defined(rec["overrides"]) == _defined(run.overrides):
            planned = {k: rec["overrides"][k] for k in planning.PLANNED_KEYS if k in rec["overrides"]}
            again = planning.make_run(run.config_file, {**run.overrides, **planned}, group=run.group,
                                      variant=run.variant, hashed=False)
            again.measured_step_s = rec.get("measured_step_s")
            out.append(again)
        else:
            out.append(None)
            todo.append(run)
    fresh = iter(planning.plan_budget(todo, budget[0], budget[1], evals, log=log))
    return [r if r is not None else next(fresh) for r in out]


def seed_name(contender: str, seed: int) -> str:
    """The workdir name of one seed of a contender (experiments.report.group_of maps it back)."""
    return f"{contender}-seed={seed}"


def seed_runs(runs: list[Run], seeds: int) -> list[Run]:
    """The runs to train: with seeds=1 the contenders' runs as they are (their config's seed, their own names);
    else each with config.seed = 0 .. seeds-1, named seed_name(contender, s), every contender's seed 0 first."""
    if seeds == 1:
        return runs
    out = []
    for s in range(seeds):
        for r in runs:
            run = planning.make_run(r.config_file, {**r.overrides, "seed": s}, group=r.group, variant=r.variant,
                                    hashed=False)
            run.name, run.measured_step_s = seed_name(r.group, s), r.measured_step_s
            out.append(run)
    return out


def compare(workdir: str, suite_name: str = "default", contenders: list[str] | None = None,
            budget: tuple[str, float] | None = None, evals: int = 0, overrides: dict | None = None,
            param_tolerance: float | None = None, dry_run: bool = False, probes: tuple[str, ...] | None = None,
            probe_overrides: dict | None = None, zero_shot: tuple[str, ...] | None = None, seeds: int = 1,
            blimp: int | None = None, log=print) -> list[Run]:
    """Plans, trains (unless dry_run), probes and reports a suite; returns the planned runs (every seed's).

    probes, zero_shot: probe tasks to fine-tune on and to score zero-shot (None = the suite's); blimp: BLiMP pairs
    per paradigm to score (None = the suite's, 0 = none); probe_overrides:
    {'train.steps': 50, ...} for every fine-tuning run; seeds: 1 (each contender once, its config's seed) or N
    (seeds 0 .. N-1 each; see the module docstring)."""
    suite = suites.load(suite_name)
    probes = tuple(suite["probes"] if probes is None else probes)
    zero_shot = tuple(suite["zero_shot"] if zero_shot is None else zero_shot)
    blimp = suite["blimp"] if blimp is None else blimp
    if not 0 <= blimp <= 1000:
        raise SweepError(f"--blimp={blimp}: give the BLiMP pairs per paradigm to score, 1 to 1000 (all), or 0 for none")
    for flag, tasks in (("--probes", probes), ("--zero_shot", zero_shot)):
        unknown = [t for t in tasks if t not in PROBE_TASKS]
        if unknown:
            raise SweepError(f"{flag}: unknown {unknown}; choose from {list(PROBE_TASKS)}")
    overrides = overrides or {}
    if seeds < 1:
        raise SweepError(f"--seeds={seeds}: give 1 (each contender once, with its config's seed) or more (seeds "
                         f"0 .. N-1 each; 3 or more for the report to test the differences)")
    if seeds > 1 and "seed" in overrides:
        raise SweepError(f"--seeds={seeds} sets config.seed to 0 .. {seeds - 1} itself: drop --config.seed="
                         f"{overrides['seed']}, or pass --seeds=1 to train that one seed")
    budget = budget or tuple(suite["budget"])
    evals = evals or suite["evals"]
    runs = suite_runs(suite, contenders, overrides)
    for r in runs:  # say so where a contender's own setting wins over the command line's
        own = suite["contenders"][r.name]["overrides"]
        for key in sorted(set(own) & set(overrides)):
            if own[key] != overrides[key]:
                log(f"[compare] {r.name}: its own {key}={own[key]} (the suite's) replaces --config.{key}="
                    f"{overrides[key]}")
    params = check_params(runs, suite["param_tolerance"] if param_tolerance is None else param_tolerance)
    runs = plan(workdir, suite_name, runs, budget, evals, overrides, log=log)
    for r in runs:
        f = planning.shape_facts(r.config)
        steps = r.config.train.steps
        log(f"[compare] {r.name:>6}: {params[r.name]:,} params, {f['flops_per_step'] / 1e9:.2f} GFLOP and "
            f"{f['tokens_per_step']:,} tokens per step, {steps} steps = {steps * f['flops_per_step']:.3e} FLOPs, "
            f"{steps * f['tokens_per_step']:,} tokens" + (f", x {seeds} seeds" if seeds > 1 else ""))
    runs = seed_runs(runs, seeds)

    def probe_overrides_of(run: Run) -> dict | None:  # with several seeds, fine-tuning runs with the run's seed
        return {**(probe_overrides or {}), "seed": run.seed} if seeds > 1 else probe_overrides

    if dry_run:
        for r in runs:
            print(r.command(workdir))
        return runs
    for r in runs:  # a workdir holding another config (or probe run) is refused before plan.json is rewritten
        planning.run_state(r, workdir)
        if probes:
            probes_lib.check_contender(os.path.join(workdir, r.name), probes, probe_overrides_of(r))
    old = planning.read_plan(workdir) or {}
    request = _request(suite_name, budget, evals, overrides)
    records = [r.record() for r in runs]
    if old.get("request") == request:  # keep the plan of contenders left out this time (--contenders)
        records += [r for r in old["runs"] if (r.get("group") or r["name"]) not in {x.group for x in runs}]
    planning.write_plan(workdir, {"kind": "compare", "request": request, "suite": suite_name, "seeds": seeds,
                                  "description": suite["description"],
                                  "budget": {"kind": budget[0], "value": float(budget[1])},
                                  "runs": records, "hardware": planning.hardware_record(old)})
    if not planning.execute(runs, workdir, log=log):
        return runs
    for r in runs:
        rundir = os.path.join(workdir, r.name)
        if zero_shot:
            probes_lib.zero_shot_contender(rundir, tasks=zero_shot, log=log)
        if blimp:
            blimp_lib.blimp_contender(rundir, blimp, log=log)
        if probes:
            probes_lib.probe_contender(rundir, tasks=probes, overrides=probe_overrides_of(r), log=log)

    print(report.build(workdir))
    return runs


def main(argv: list[str]) -> None:
    fv = flags.FLAGS
    with errors.one_line():
        planning.check_command_line(argv, fv.workdir, "--workdir=runs/compare")
        names = [n.strip() for n in fv.contenders.split(",") if n.strip()] or None
        def tasks(value):
            return None if value is None else tuple(t.strip() for t in value.split(",") if t.strip())

        compare(fv.workdir, fv.suite, names, sweep.budget_from_flags(fv), fv.evals, sweep.cli_overrides(fv),
                fv.param_tolerance if fv.param_tolerance >= 0 else None, fv.dry_run, tasks(fv.probes),
                {"train.steps": fv.probe_steps} if fv.probe_steps else None, tasks(fv.zero_shot), fv.seeds,
                fv.blimp if fv.blimp >= 0 else None)


if __name__ == "__main__":
    flags.DEFINE_string("suite", "default", "Suite: a module of experiments/suites ('default') or a .py path.")
    flags.DEFINE_string("contenders", "", "Comma-separated subset of the suite's contenders ('' = all).")
    flags.DEFINE_string("probes", None, "Comma-separated probe tasks to fine-tune every contender on after training "
                        "('' = none; unset = the suite's).")
    flags.DEFINE_integer("probe_steps", 0, "Fine-tuning steps per probe run (0 = the recipe's).")
    flags.DEFINE_string("zero_shot", None, "Comma-separated probe tasks every contender scores zero-shot after "
                        "training ('' = none; unset = the suite's).")
    flags.DEFINE_integer("blimp", -1, "BLiMP pairs per paradigm every contender scores zero-shot after training "
                         "(the fixed subset; 1000 = all 67,000 pairs; 0 = none; -1 = the suite's).")
    flags.DEFINE_integer("seeds", 1, "Seeds per contender: 1 = once, with the config's seed, in <workdir>/<name>; "
                         "N = config.seed 0 .. N-1, each in <workdir>/<name>-seed=<s> (3 or more to test the "
                         "differences).")
    flags.DEFINE_float("param_tolerance", -1, "Allowed parameter-count spread (max/min - 1); -1 = the suite's.")
    sweep.define_budget_flags(flags.FLAGS)
    flags.FLAGS.set_default("evals", 0)
    sys.exit(errors.run_app(main))

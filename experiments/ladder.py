"""Scaling ladders: every contender of a suite at several model sizes at each of several training budgets (an
isoFLOP set of sizes per budget), then scaling-law fits with intervals and a held-out check (experiments/scaling/).

  python -m experiments.ladder --workdir=runs/ladder                      # the default suite's ladder
  python -m experiments.ladder --workdir=runs/ladder --budgets=1e12,3e12,1e13 --widths=64,96,128,192
  python -m experiments.ladder --workdir=runs/ladder --dry_run            # one train.main command per run
  python -m experiments.ladder --workdir=runs/ladder --report_only        # the report of the runs finished so far
  python -m experiments.ladder --workdir=runs/ml --suite=modern           # each family's modern recipe over its own

Sizes: a family of widths. Each contender keeps its suite shape: its depth (T5: its encoder/decoder split), its
head width as nearly as the width allows (round(w / head width) heads, at least one), its d_ff / d_model ratio
(T5's narrowed MLP stays narrowed by the same ratio, so the contenders stay matched in parameters at every width)
and its key/value-head ratio; d_model is the width. At each budget the ladder trains `--sizes_per_budget`
consecutive widths, a window that slides up the family as the budget grows (budget i of n, ascending, starts at
width round(i (W - k) / (n - 1))), since the compute-optimal size grows with compute.

Learning rates across sizes: lr(w) = lr_suite * (w_suite / w) ** lr_exponent, every peak rate of the contender
(AdamW's and, for Muon, Muon's) from the rate the suite chose at its own width w_suite (times the suite ladder's
lr_scale for that contender, where the check below asked for it); lr_exponent 1 is the rule muP gives Adam's
hidden matrices. The rule is checked (`--lr_check`, on by default): at the smallest budget,
at the smallest and the largest width of its window, every contender also trains at 0.5x and 2x the rule, and at
the rule with seed 1 for the seed noise; the report says per contender and width whether a neighbour beats the
rule by more than that noise (then the rule should change).

Budgets are training FLOPs as the steps execute them (train/optim.py executed_flops_per_step), so every run at
a budget does the same work. Seeds (`--seeds=N`): config.seed 0 .. N-1 for every run. After training, each ladder
run scores BLiMP's fixed subset (`--blimp` pairs per paradigm) and the zero-shot probes, the shared yardsticks.
Runs train in order of budget, so an interrupted ladder has its small budgets whole; re-running the command skips
finished runs, resumes an interrupted one from its checkpoint, and writes the report (ladder_report.md, .json
and the pictures) of whatever has finished.
"""

from __future__ import annotations

import os
import sys

from absl import flags

from data.probes import TASKS as PROBE_TASKS
from experiments import blimp as blimp_lib
from experiments import planning, suites, sweep
from experiments import probes as probes_lib
from experiments.compare import suite_runs
from experiments.planning import Run, SweepError
from train import errors
from train import workdir as workdir_lib

PLAN_FILE = "ladder.json"
MIN_STEPS = 20  # Fewer optimizer steps than this at a budget is a size the budget cannot train: refused.
LR_CHECK_FACTORS = (0.5, 2.0)  # Multiples of the rule the check trains next to it.
RATE_KEYS = ("train.learning_rate", "train.muon_learning_rate")
# The ladder a suite runs when it names none (get_suite()["ladder"] replaces any of these).
# A vocabulary of 1024, not the suite's 8000: at widths 16-64 an 8000-row table is 80-95% of the parameters and its
# output layer most of the FLOPs, so the narrowest width had the lowest loss at every budget up to 1e12 (nothing
# bracketed); with 1024 the widths span about 30k-260k parameters, around the compute-optimal sizes these budgets
# should have (Chinchilla's 20 tokens per parameter: 46k at 2.5e11, 91k at 1e12). Width 16 still had the lowest
# loss of 16-64 at 2.5e11, so the family reaches down to 8 (11k parameters); 5 sizes per budget also let most of
# approach 2's bootstrap resamples keep the 3 sizes a parabola needs. Batch 16, not 8: the narrowest runs are bound
# by the per-step overhead, not by FLOPs.
DEFAULT = dict(budgets=(2.5e11, 5e11, 1e12), widths=(8, 16, 32, 48, 64), sizes_per_budget=5,
               lr_exponent=1.0, blimp=20, zero_shot=("next_sentence", "word_order"), evals=2, eval_steps=32,
               overrides={"data.vocab_size": 1024, "train.batch_size": 16}, lr_scale={})


def settings(suite: dict, **given) -> dict:
    """The suite's ladder settings (DEFAULT, then the suite's "ladder", then the non-None `given`)."""
    out = {**DEFAULT, **suite.get("ladder", {}), **{k: v for k, v in given.items() if v is not None}}
    out["budgets"] = sorted(float(b) for b in out["budgets"])
    out["widths"] = sorted(int(w) for w in out["widths"])
    k, widths = out["sizes_per_budget"], out["widths"]
    if not out["budgets"] or min(out["budgets"]) <= 0:
        raise SweepError(f"--budgets={out['budgets']}: give one or more positive training-FLOPs budgets")
    if not 1 <= k <= len(widths):
        raise SweepError(f"--sizes_per_budget={k}: give 1 to {len(widths)} (the --widths given); 3 or more for "
                         f"approach 2's parabolas")
    if out["blimp"] < 0 or out["blimp"] > 1000:
        raise SweepError(f"--blimp={out['blimp']}: give 0 (none) to 1000 (all of BLiMP) pairs per paradigm")
    strange = sorted(set(out["lr_scale"]) - set(suite["contenders"]))
    if strange:
        raise SweepError(f"the suite's ladder lr_scale names {strange}, not contenders of the suite "
                         f"({list(suite['contenders'])})")
    unknown = [t for t in out["zero_shot"] if t not in PROBE_TASKS]
    if unknown:
        raise SweepError(f"--zero_shot: unknown {unknown}; choose from {list(PROBE_TASKS)}")
    return out


def windows(budgets: list[float], widths: list[int], k: int) -> dict[float, list[int]]:
    """The widths each budget trains: k consecutive ones, the window sliding up with the budget."""
    n, spare = len(budgets), len(widths) - k
    return {c: widths[round(i * spare / (n - 1)) if n > 1 else spare // 2:][:k] for i, c in enumerate(budgets)}


def size_overrides(config, width: int) -> dict:
    """The overrides that make a contender's config `width` wide, keeping its shape (module docstring)."""
    m = config.model
    dh = m.head_dim or m.d_model // m.n_heads
    heads = max(1, round(width / dh))
    if width % heads:
        raise SweepError(f"--widths: {width} does not split into {heads} heads of about the suite's head width {dh}; "
                         f"give multiples of {dh} (or of {dh // 2} up to {dh})")
    out = {"model.d_model": width, "model.n_heads": heads, "model.d_ff": round(m.d_ff * width / m.d_model)}
    if m.head_dim:
        out["model.head_dim"] = width // heads
    if m.n_kv_heads:
        group = m.n_heads // m.n_kv_heads
        if heads % group:
            raise SweepError(f"--widths: {width} gives {heads} heads, not a multiple of the {group} query heads "
                             f"per key/value head")
        out["model.n_kv_heads"] = heads // group
    return out


def rates(config, width: int, exponent: float, factor: float = 1.0) -> dict:
    """Every peak learning rate of the config under the rule (module docstring), times `factor`."""
    scale = (config.model.d_model / width) ** exponent * factor
    keys = [k for k in RATE_KEYS if k != "train.muon_learning_rate" or config.train.optimizer == "muon"]
    return {k: float(f"{_get(config, k) * scale:.6g}") for k in keys}


def _get(config, path: str):
    node = config
    for part in path.split("."):
        node = node[part]
    return node


def budget_label(c: float) -> str:
    return f"{c:.3g}".replace("e+", "e")


def ladder_runs(suite: dict, names: list[str] | None, overrides: dict, s: dict, seeds: int,
                lr_check: bool) -> list[tuple[Run, dict]]:
    """(run, its record in ladder.json) for every run, in training order: budget by budget, the LR check's runs
    after the smallest budget's."""
    base = {r.group: r for r in suite_runs(suite, names, {**s["overrides"], **overrides})}
    plan = windows(s["budgets"], s["widths"], s["sizes_per_budget"])
    out = []

    def add(name: str, width: int, budget: float, seed: int, role: str, factor: float) -> None:
        b = base[name]
        scaled = factor * s["lr_scale"].get(name, 1.0)
        extra = {**size_overrides(b.config, width), **rates(b.config, width, s["lr_exponent"], scaled),
                 "train.eval_steps": s["eval_steps"], "seed": seed}
        run = planning.make_run(b.config_file, {**b.overrides, **extra}, group=name, hashed=False)
        steps = planning.steps_for_budget(run.config, "flops", budget)
        if steps < MIN_STEPS:
            raise SweepError(f"{name} at width {width} gets {steps} steps of budget {budget:.3g}: fewer than "
                             f"{MIN_STEPS}; raise the smallest --budgets or lower the --widths")
        run = planning.with_steps(run, steps, s["evals"])
        tag = f"-lr{factor:g}x" if factor != 1 else ""
        run.name = f"{name}-w{width}-{budget_label(budget)}{tag}-seed={seed}"
        out.append((run, {"name": run.name, "contender": name, "size": f"w{width}", "d_model": width,
                          "budget": budget, "seed": seed, "role": role, "lr_factor": factor,
                          "lr": _get(run.config, "train.learning_rate"), "steps": steps,
                          "config_file": run.config_file, "overrides": run.overrides}))

    for i, c in enumerate(s["budgets"]):
        for w in plan[c]:
            for name in base:
                for seed in range(seeds):
                    add(name, w, c, seed, "ladder", 1.0)
        if i == 0 and lr_check:
            for w in sorted({plan[c][0], plan[c][-1]}):
                for name in base:
                    for factor in LR_CHECK_FACTORS:
                        add(name, w, c, 0, "lr_check", factor)
                    if seeds < 2:
                        add(name, w, c, 1, "lr_check", 1.0)
    return out


def modern_of(contenders: list[str]) -> dict[str, str]:
    """A family's modern recipe -> its classic contender, by name ('gpt-modern' -> 'gpt'), where both run."""
    return {n: n.removesuffix("-modern") for n in contenders if n.endswith("-modern")
            and n.removesuffix("-modern") in contenders}


def ladder(workdir: str, suite_name: str = "default", contenders: list[str] | None = None,
           overrides: dict | None = None, seeds: int = 1, lr_check: bool = True, dry_run: bool = False,
           report_only: bool = False, resamples: int = 200, command: str = "", log=print, **given) -> str | None:
    """Plans, trains (unless dry_run or report_only), scores and reports a ladder; returns the report's lead."""
    if seeds < 1:
        raise SweepError(f"--seeds={seeds}: give 1 or more seeds per run")
    overrides = overrides or {}
    if "seed" in overrides:
        raise SweepError("--seeds sets config.seed itself: drop --config.seed")
    suite = suites.load(suite_name)
    s = settings(suite, **given)
    planned = ladder_runs(suite, contenders, overrides, s, seeds, lr_check)
    if dry_run:
        for run, _ in planned:
            print(run.command(workdir))
        return None
    names = list(dict.fromkeys(rec["contender"] for _, rec in planned))
    meta = {"kind": "ladder", "suite": suite_name, "description": suite["description"], "contenders": names,
            "budgets": s["budgets"], "widths": s["widths"],
            "sizes": {f"w{w}": {"d_model": w} for w in s["widths"]},
            "windows": {budget_label(c): ws for c, ws in windows(s["budgets"], s["widths"],
                                                                 s["sizes_per_budget"]).items()},
            "lr_rule": f"lr(w) = lr_suite * (w_suite / w) ** {s['lr_exponent']:g} (w_suite: the suite's width)"
                       + "".join(f"; {n}: lr_suite x {x:g}" for n, x in s["lr_scale"].items()),
            "lr_exponent": s["lr_exponent"], "seeds": seeds, "blimp": s["blimp"], "zero_shot": list(s["zero_shot"]),
            "yardsticks": ({"blimp": 0.5} if s["blimp"] else {}) | {f"zero_shot/{t}": 0.5 for t in s["zero_shot"]},
            "modern_of": modern_of(names), "predict": [1e15, 1e18, 1e21], "overrides": {**s["overrides"], **overrides},
            "command": command, "runs": [rec for _, rec in planned]}
    if not report_only:
        for run, _ in planned:  # a workdir holding another config is refused before anything is written
            planning.run_state(run, workdir)
        os.makedirs(workdir, exist_ok=True)
        workdir_lib.write_json(os.path.join(workdir, PLAN_FILE), meta)
        log(f"[ladder] {len(planned)} runs of {len(names)} contenders at {len(s['budgets'])} budgets in {workdir}")
        done = 0
        for c in s["budgets"]:
            batch = [(r, rec) for r, rec in planned if rec["budget"] == c]
            if not planning.execute([r for r, _ in batch], workdir, log=log):
                return None
            for run, rec in batch:
                done += 1
                if rec["role"] != "ladder":
                    continue
                rundir = os.path.join(workdir, run.name)
                if s["zero_shot"]:
                    probes_lib.zero_shot_contender(rundir, tasks=tuple(s["zero_shot"]), log=log)
                if s["blimp"]:
                    blimp_lib.blimp_contender(rundir, s["blimp"], log=log)
            log(f"[ladder] budget {c:.3g} finished ({done}/{len(planned)} runs)")
    elif not os.path.isfile(os.path.join(workdir, PLAN_FILE)):
        raise SweepError(f"--report_only: {workdir} has no {PLAN_FILE}; run the ladder first")
    from experiments.scaling import records, report  # the analysis: scipy and matplotlib, loaded when needed

    return report.build(workdir, *records.load(workdir), resamples=resamples)


def main(argv: list[str]) -> None:
    fv = flags.FLAGS
    with errors.one_line():
        planning.check_command_line(argv, fv.workdir, "--workdir=runs/ladder")

        def listed(value, kind):
            if value is None:
                return None
            try:
                return tuple(kind(v) for v in value.split(",") if v.strip())
            except ValueError:
                raise SweepError(f"cannot read {value!r} as a comma-separated list of numbers") from None

        names = [n.strip() for n in fv.contenders.split(",") if n.strip()] or None
        zero_shot = None if fv.zero_shot is None else tuple(t.strip() for t in fv.zero_shot.split(",") if t.strip())
        lead = ladder(fv.workdir, fv.suite, names, sweep.cli_overrides(fv), fv.seeds, fv.lr_check, fv.dry_run,
                      fv.report_only, fv.resamples, " ".join(["python -m experiments.ladder", *sys.argv[1:]]),
                      budgets=listed(fv.budgets, float),
                      widths=listed(fv.widths, int), sizes_per_budget=fv.sizes_per_budget, blimp=fv.blimp,
                      zero_shot=zero_shot, lr_exponent=fv.lr_exponent)
        if lead:
            print(lead)


if __name__ == "__main__":
    flags.DEFINE_string("workdir", None, "Directory of the ladder: one workdir per run, ladder.json, the report.")
    flags.DEFINE_string("suite", "default", "Suite: a module of experiments/suites ('default') or a .py path.")
    flags.DEFINE_string("contenders", "", "Comma-separated subset of the suite's contenders ('' = all).")
    flags.DEFINE_string("budgets", None, "Comma-separated training-FLOPs budgets (unset = the suite's ladder).")
    flags.DEFINE_string("widths", None, "Comma-separated model widths d_model, the size family (unset = the "
                        "suite's ladder).")
    flags.DEFINE_integer("sizes_per_budget", None, "Widths trained at each budget (unset = the suite's ladder).")
    flags.DEFINE_float("lr_exponent", None, "p in lr(w) = lr_suite (w_suite / w)^p (unset = the suite's ladder).")
    flags.DEFINE_integer("seeds", 1, "Seeds per run: config.seed 0 .. N-1.")
    flags.DEFINE_bool("lr_check", True, "Check the learning-rate rule at the smallest budget (module docstring).")
    flags.DEFINE_integer("blimp", None, "BLiMP pairs per paradigm each run scores (0 = none; unset = the suite's "
                         "ladder).")
    flags.DEFINE_string("zero_shot", None, "Comma-separated probe tasks each run scores zero-shot ('' = none; "
                        "unset = the suite's ladder).")
    flags.DEFINE_integer("resamples", 200, "Bootstrap refits per interval in the report.")
    flags.DEFINE_bool("dry_run", False, "Print one `python -m train.main` command per run and exit.")
    flags.DEFINE_bool("report_only", False, "Write the report of the finished runs; train nothing.")
    sweep.define_config_flag(flags.FLAGS)
    sys.exit(errors.run_app(main))

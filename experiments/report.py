"""Run workdirs -> report.md, report.json and PNG plots; one row per contender (or sweep point, seeds aggregated).

  python -m experiments.report runs/compare      # rebuild the report of a compare or a sweep from its workdirs

Reads every `<workdir>/*/summary.json` (with config.json, metrics.jsonl, run.json and the zero-shot per-pair files
beside it) and the plan.json compare/sweep wrote (a run it does not list is left out, and named). Losses of
different objectives measure different things, so the tables name each row's objective, eval losses are compared
only within an objective, and the plots (drawn by experiments/plots.py) give each objective its own panel.

report.md leads with the answer: one line per shared yardstick (each probe column; the eval loss of each objective
that several contenders train) naming the leader, its margin over the runner-up and whether that difference is
significant (experiments/stats.py: a paired t-test over seeds, or with one seed a paired bootstrap over the zero-shot
pairs). Then a cost table and a quality table (probe columns in tables of their own when they would make it wider
than MAX_COLUMNS), mean ± standard error over seeds, the tested pairs, the notes, failures and plots. report.json
holds every number: rows with `<key>_se` and `<key>_std`, the runs, the lead records and the significance records.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys

import jax
import numpy as np

from data import minimal_pairs
from experiments import hardware, plots, stats
from experiments.planning import FAILED_FILE, PER_PAIR_DIR, RUN_FILE, read_plan
from experiments.report_text import budget_line, notes, objective_names, objective_of, published_table
from experiments.significance import lead, lead_line, significance, significance_table, yardsticks
from experiments.tables import markdown_table, si, tables
from train.objectives import TokenObjective

OBJECTIVES = TokenObjective.DESCRIPTIONS  # name -> (short name, what its loss is)
BPB_OBJECTIVES = TokenObjective.COMPRESSES  # where nats per byte of predicted text are a compression rate
PLOTS = ("eval_loss_vs_flops.png", "eval_loss_vs_time.png", "throughput.png")
YARDSTICK_PLOTS = ("yardsticks.png", "blimp_phenomena.png")  # drawn when some contender has the columns


_TEXT_KEYS = {"group", "architecture", "objective", "objective_id", "objective_name", "name", "arch", "n",
              "peak_source", "stopped_by"}


def _read(path: str):
    with open(path) as f:
        return json.load(f)


def group_of(name: str) -> str:
    """A run's group: its name without '-seed=S-hash' (a sweep's) or '-seed=S' (a compare contender's seed)."""
    return re.sub(r"-seed=\d+(-[0-9a-f]{6})?$", "", name)


def _metrics_rows(rundir: str, summary: dict) -> list[dict]:
    path = os.path.join(rundir, "metrics.jsonl")
    if os.path.exists(path):  # all rows, also from before a resume (summary.history has only the last part)
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]
    h = summary.get("history") or {}
    return sorted(h.get("train", []) + h.get("eval", []), key=lambda r: r["step"])


def curve(rows: list[dict], flops_per_step: float) -> dict[str, list[float]]:
    """Eval loss against training FLOPs and training seconds (sum of measured step times; a window without a
    timing, the compiling first one, counts at the median step time)."""
    timed = [(r["step"], r.get("perf/step_time")) for r in rows if "train/loss" in r]
    known = [t for _, t in timed if t]
    median = float(np.median(known)) if known else 0.0
    steps, seconds, prev, total = [0], [0.0], 0, 0.0
    for step, t in timed:
        if step <= prev:
            continue
        total += (step - prev) * (t or median)
        steps.append(step)
        seconds.append(total)
        prev = step
    evals = sorted({r["step"]: r.get("eval/nll", r["eval/loss"]) for r in rows if "eval/loss" in r}.items())
    return {"step": [s for s, _ in evals], "flops": [s * flops_per_step for s, _ in evals],
            "seconds": [float(np.interp(s, steps, seconds)) for s, _ in evals], "loss": [v for _, v in evals]}


def _peak(config: dict, plan_hw: dict | None) -> tuple[float | None, str]:
    dev = config.get("devices") or {}
    dtype = (config.get("model_config") or {}).get("dtype", "float32")
    if plan_hw and plan_hw.get("device_kind") == dev.get("kind"):
        return plan_hw["peak_flops"], plan_hw["peak_source"]
    if dev.get("backend") not in (None, "cpu"):
        try:
            return hardware.table_peak(dev["kind"], dtype)
        except hardware.UnknownDeviceError:
            return None, f"unknown peak for {dev['kind']}"
    if jax.default_backend() == "cpu":
        peak, source = hardware.peak_flops(jax.devices()[0], dtype)
        return peak, source + " (measured while building this report)"
    return None, "CPU peak unknown (the report was built on another machine)"


def describe_model(mc: dict) -> str:
    """'decoder, 4 blocks, d 128, d_ff 512, rope, gelu' from a run's model config."""
    if mc["arch"] == "t5":
        blocks = f"{mc['n_layers']} enc + {mc['n_decoder_layers'] or mc['n_layers']} dec blocks"
    else:
        blocks = f"{'decoder' if mc['arch'] == 'gpt' else 'encoder'}, {mc['n_layers']} blocks"
    return f"{blocks}, d {mc['d_model']}, d_ff {mc['d_ff']}, {mc['position']}, {mc['mlp']}"


def run_row(name: str, summary: dict, config: dict, meta: dict, plan_hw: dict | None = None) -> dict:
    """The numbers of one run (None where a run does not have them)."""
    s = summary
    steps, fps, tps = s["steps"], s["flops_per_step"], s["tokens_per_step"]
    peak, source = _peak(config, plan_hw)
    n_dev = (config.get("devices") or {}).get("count", 1)
    st = s.get("step_time_s")
    ev, tr = s.get("final_eval") or {}, s.get("final_train") or {}
    mc = config.get("model_config")
    objective_id, objective = objective_of(s["objective"], config)
    row = {
        "name": name, "group": meta.get("group") or group_of(name), "seed": meta.get("seed"), "arch": s["arch"],
        "architecture": s["arch"] + (f": {describe_model(mc)}" if mc else ""),
        "objective": objective, "objective_id": objective_id, "objective_name": s["objective"],
        "params": s["params"], "flops_per_token": fps / tps, "tokens": steps * tps, "steps": steps,
        "flops": steps * fps, "wall_s": s.get("wall_s"), "compile_s": s.get("compile_s"), "loop_s": s.get("loop_s"),
        "train_seconds": steps * st if st else None, "tokens_per_sec": s.get("tokens_per_sec"),
        "mfu": hardware.mfu(s.get("executed_flops_per_step", fps), st, peak, n_dev) if st and peak else None,
        "peak_source": source,
        "peak_flops": peak, "n_devices": n_dev,
        "peak_memory_bytes": s.get("peak_memory_bytes"), "train_loss": tr.get("train/loss"),
        # The objective's cross-entropy alone (eval/nll): eval/loss adds z-loss and, for MLM + NSP, the NSP term.
        "eval_loss": ev.get("eval/nll", ev.get("eval/loss")), "eval_accuracy": ev.get("eval/accuracy"),
        "eval_bpb": ev.get("eval/bits_per_byte") if s["objective"] in BPB_OBJECTIVES else None,
        "resumed": bool(s.get("start_step")), "stopped_by": s.get("stopped_by"),
    }
    for task, acc in (s.get("probes") or {}).items():
        row[f"probe/{task}"] = acc
        row[f"eval_se/probe/{task}"] = _eval_se(s, task, acc)
    for term, r in ((s.get("blimp") or {}).get("linguistics_term") or {}).items():  # the phenomena, for a plot
        row[f"blimp/{term}"], row[f"eval_se/blimp/{term}"] = r["accuracy"], r["se"]
    # Evaluation sizes behind the probe columns (for their standard errors): examples, and zero-shot pairs.
    sizes = [r.get("examples") for r in ((s.get("probe_results") or {}).get("pretrained") or {}).values()]
    pairs = [r.get("pairs") for r in (s.get("zero_shot_results") or {}).values()]
    row["probe_examples"] = min((n for n in sizes if n), default=None)
    row["zero_shot_pairs"] = min((n for n in pairs if n), default=None)
    return row


def _eval_se(summary: dict, column: str, acc: float) -> float | None:
    """The standard error of one run's probe column from its evaluation examples alone (what a single seed's
    interval can show): BLiMP's from its paradigms (experiments/blimp.py), a probe's binomial sqrt(p (1 - p) / n)."""
    blimp = summary.get("blimp") or {}
    task = column.removesuffix(" (zero-shot)")
    if task == "blimp" and blimp:
        return blimp["overall"]["se"]
    if task.startswith("blimp_") and task[6:] in (blimp.get("field") or {}):
        return blimp["field"][task[6:]]["se"]
    if column.endswith(" (zero-shot)"):
        n = ((summary.get("zero_shot_results") or {}).get(task) or {}).get("pairs")
    else:
        kind = "random_init" if task.endswith(" (random init)") else "pretrained"
        n = (((summary.get("probe_results") or {}).get(kind) or {}).get(task.removesuffix(" (random init)"))
             or {}).get("examples")
    return math.sqrt(acc * (1 - acc) / n) if n else None


def _per_pair(rundir: str, summary: dict) -> dict:
    """{'probe/<task> (zero-shot)': (pair ids, per-pair results)} from the files experiments/probes.py keeps beside
    the summary, where they agree with its accuracy (ids are (which pairs, index): equal only for the same pairs)."""
    out = {}
    for task, res in (summary.get("zero_shot_results") or {}).items():
        path = os.path.join(rundir, PER_PAIR_DIR, f"{task}.json")
        if not os.path.isfile(path):
            continue
        rec = _read(path)
        correct = rec.get("correct") or []
        if len(correct) == len(rec.get("pair") or []) and correct and \
                abs(float(np.mean(correct)) - res.get("accuracy", math.nan)) < 1e-9:
            out[f"probe/{task} (zero-shot)"] = ([(rec.get("examples_sha"), i) for i in rec["pair"]], correct)
    return out


def load(workdir: str) -> tuple[list[dict], dict | None]:
    """(one row per run with a summary.json, in plan order; with its eval curve and per-example results), plan.json
    or None. With a plan that lists runs, a run it does not list (another request's) has row['in_plan'] False."""
    plan = read_plan(workdir)
    order = [r["name"] for r in (plan or {}).get("runs", [])]
    names = [d for d in os.listdir(workdir) if os.path.isfile(os.path.join(workdir, d, "summary.json"))]
    names.sort(key=lambda d: (order.index(d) if d in order else len(order), d))
    rows = []
    for name in names:
        rundir = os.path.join(workdir, name)
        summary = _read(os.path.join(rundir, "summary.json"))
        config = _read(os.path.join(rundir, "config.json")) if os.path.exists(os.path.join(rundir, "config.json")) \
            else {}
        meta = _read(os.path.join(rundir, RUN_FILE)) if os.path.exists(os.path.join(rundir, RUN_FILE)) else {}
        row = run_row(name, summary, config, meta, (plan or {}).get("hardware"))
        row["curve"] = curve(_metrics_rows(rundir, summary), summary["flops_per_step"])
        row["examples"] = _per_pair(rundir, summary)
        row["in_plan"] = not order or name in order
        rows.append(row)
    return rows, plan


def aggregate(rows: list[dict]) -> list[dict]:
    """One row per group: numbers as mean, plus `<key>_se` (standard error of the mean), `<key>_std` and `n`
    (seeds; `<key>_n` where fewer runs have the number); groups in order of appearance; 'members' holds the rows."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["group"], []).append(r)
    out = []
    for g, rs in groups.items():
        agg = {"group": g, "n": len(rs), "runs": [r["name"] for r in rs], "seeds": [r["seed"] for r in rs]}
        for key in dict.fromkeys(k for r in rs for k in r):
            if key in ("curve", "examples", "in_plan", "runs", "seeds", "name", "seed"):
                continue
            vals = [r.get(key) for r in rs]
            present = [v for v in vals if v is not None]  # a probe column a seed's run lacks: the others' mean
            if key in _TEXT_KEYS or not present or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                           for v in present):
                agg.setdefault(key, vals[0])
                continue
            if len(present) < len(vals):
                agg[f"{key}_n"] = len(present)
            vals = present
            agg[key] = stats.mean(vals)
            agg[f"{key}_std"] = float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
            agg[f"{key}_se"] = stats.standard_error(vals) if len(vals) > 1 else None
        agg["curves"] = [r["curve"] for r in rs]
        agg["members"] = rs
        out.append(agg)
    return out


def _peak_label(groups: list[dict]) -> str:
    """What the MFU of every group is relative to ('2.70 TFLOP/s x 1 device'); 'peak' when the groups differ."""
    peaks = {(g.get("peak_flops"), g.get("n_devices")) for g in groups}
    peak, n_dev = next(iter(peaks)) if len(peaks) == 1 else (None, None)
    return f"{si(peak, 'FLOP/s')} x {int(n_dev)} device{'s' if n_dev > 1 else ''}" if peak else "peak"


def _clean(x):
    """NaN and infinities -> None, so report.json is valid JSON."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


def failures(workdir: str) -> list[dict]:
    """The failed.json of runs that diverged."""
    out = []
    for d in sorted(os.listdir(workdir)):
        path = os.path.join(workdir, d, FAILED_FILE)
        if os.path.isfile(path) and not os.path.exists(os.path.join(workdir, d, "summary.json")):
            out.append(_read(path))
    return out


def build(workdir: str) -> str:
    """Writes report.md, report.json and the plots into `workdir`; returns the report's lead lines and tables."""
    rows, plan = load(workdir)
    left_out = [r["name"] for r in rows if not r["in_plan"]]
    rows = [r for r in rows if r["in_plan"]]
    if not rows:
        raise FileNotFoundError(f"{workdir}: no run with a summary.json in its subdirectories")
    groups = aggregate(rows)
    records = significance(groups)
    leads = lead(groups, records)
    head = [f"# Triad {(plan or {}).get('kind', 'runs')}: {workdir}", ""]
    head += [lead_line(r) for r in leads]
    objectives = list(dict.fromkeys(g["objective"] for g in groups))
    if len(groups) > 1 and not any(r["key"] == "eval_loss" for r in leads):
        head.append(f"- **eval loss**: each contender has its own objective ({', '.join(objectives)}): their losses "
                    "measure different tasks and do not compare")
    if len(groups) == 1:
        head.append(f"- One contender ({groups[0]['group']}): nothing to compare.")
    head += [""]
    if plan and plan.get("description"):
        head += [plan["description"], ""]
    head += [budget_line(plan, groups), ""]
    layout = tables(groups)
    body = list(head)
    for title, cols in layout:
        body += [f"## {title}", "", markdown_table(groups, cols), ""]
    body += significance_table(records)
    published = published_table(groups)
    if published:
        body += ["## BLiMP beside published models (accuracy %)", ""] + published
    shown = body[2:]
    body += ["## Notes", ""] + [f"- {n}" for n in notes(groups, records)] + [""]
    failed = failures(workdir)
    if failed:
        body += ["Runs that diverged (not in the tables):", ""]
        body += [f"- {f['name']}: {f['error']}" for f in failed] + [""]
    if left_out:
        body += [f"Runs in {workdir} that plan.json does not list (another request's), left out: "
                 + ", ".join(left_out), ""]
    pictures = list(PLOTS)
    sticks = [y["key"] for y in yardsticks(groups) if y["key"].startswith("probe/")]
    if sticks:
        plots.plot_yardsticks(groups, sticks, os.path.join(workdir, YARDSTICK_PLOTS[0]))
        pictures.append(YARDSTICK_PLOTS[0])
    if any(k.startswith("blimp/") for g in groups for k in g):
        plots.plot_blimp_phenomena(groups, os.path.join(workdir, YARDSTICK_PLOTS[1]), minimal_pairs.published())
        pictures.append(YARDSTICK_PLOTS[1])
    body += [f"![{p[:-4]}]({p})" for p in pictures]
    with open(os.path.join(workdir, "report.md"), "w") as f:
        f.write("\n".join(body) + "\n")
    plots.plot_loss(groups, "flops", os.path.join(workdir, PLOTS[0]), objective_names(groups))
    plots.plot_loss(groups, "seconds", os.path.join(workdir, PLOTS[1]), objective_names(groups))
    plots.plot_throughput(groups, os.path.join(workdir, PLOTS[2]), _peak_label(groups))
    columns = list({c[0]: [c[0], c[1]] for _, cols in layout for c in cols}.values())
    record = {"workdir": workdir, "kind": (plan or {}).get("kind"), "budget": (plan or {}).get("budget"),
              "hardware": (plan or {}).get("hardware"), "columns": columns,
              "tables": [{"title": t, "columns": [[c[0], c[1]] for c in cols]} for t, cols in layout],
              "rows": [{k: v for k, v in g.items() if k not in ("curves", "members")} for g in groups],
              "lead": [{k: v for k, v in r.items() if k != "test"} | {"line": lead_line(r)} for r in leads],
              "significance": records, "alpha": stats.ALPHA,
              "runs": [{k: v for k, v in r.items() if k != "examples"} | {"per_example": sorted(r["examples"])}
                       for r in rows],
              "failed": failed, "left_out": left_out, "plots": pictures}
    with open(os.path.join(workdir, "report.json"), "w") as f:
        json.dump(_clean(record), f, indent=2, default=str)
    return "\n".join(shown).rstrip()


def main(argv: list[str]) -> None:
    if len(argv) != 2:
        sys.stderr.write("usage: python -m experiments.report <workdir of a compare or sweep>\n")
        sys.exit(2)
    try:
        print(build(argv[1]))
    except FileNotFoundError as e:
        sys.stderr.write(f"error: {e}\n")
        sys.exit(2)


if __name__ == "__main__":
    main(sys.argv)

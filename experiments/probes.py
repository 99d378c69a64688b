"""Downstream probes of pretrained workdirs: one fixed fine-tuning recipe (experiments/configs/finetune.py) per probe
task, for every contender alike, and the same model from a random init as the baseline; and the same probe pairs
scored zero-shot by each model's own objective.

  python -m experiments.probes --pretrained=runs/bert --workdir=runs/bert/probes
  python -m experiments.probes --pretrained=runs/bert --workdir=runs/bert/probes-baseline --baseline
  python -m experiments.probes --arch=gpt --workdir=runs/gpt0-probes           # random-init tiny GPT
  python -m experiments.probes --pretrained=runs/bert --workdir=runs/p --override=train.steps=300
  python -m experiments.probes --pretrained=runs/bert --zero_shot                # no training, seconds

Zero-shot: the probe-eval examples come in pairs (intact text and its swapped copy; a with its own continuation
and with another document's), and a pair counts as right when the model scores the true member higher (ties
count half; chance 0.5). Scores (model/scoring.py): GPT the log-likelihood of the text, BERT and T5 its
pseudo-log-likelihood (each token masked in turn). next_sentence scores how much a raises the likelihood of b,
score(b | a) - score(b), so that the two b's own likelihoods cancel. This asks the pretraining objective
directly, with no training: the same numbers on every rerun.

experiments/compare.py runs probe_contender for every contender when its suite (or --probes) names probe tasks.

The recipe (max pooling, T5 through its decoder, 4 pairs per probe-train source kept in one batch, 600 steps) and
what it measures for the default comparison's contenders at each budget tried: docs/results.md.

Each task trains in `<workdir>/<task>` with train.main's loop; a task whose run finished under the same request
(the resolved fine-tuning config included) is read back, not trained again, and a rundir holding another
request's run is refused, not reused. Accuracy is on the probe-eval part (disjoint source documents, balanced: chance
is 0.5); F1 is that of the positive class (label 1: 'b follows a', 'intact').
"""

from __future__ import annotations

import hashlib
import json
import os
import time

import numpy as np
from absl import app, flags, logging

from data import probes as probe_data
from experiments import planning
from experiments.configs import finetune
from experiments.planning import SweepError
from model import scoring
from train import errors, loop
from train.workdir import load_workdir, read_record

TASKS = probe_data.TASKS
REQUEST_FILE = "probe.json"


def probe_config(task: str, pretrained: str | None, arch: str | None = None, baseline: bool = False,
                 overrides: dict | None = None):
    """The fine-tuning config of one probe run: from `pretrained` (or, with baseline, its shape at random init),
    or a random-init tiny `arch` when pretrained is None."""
    if pretrained is None and arch is None:
        raise SweepError("run_probes: pass a pretrained workdir or an arch for the random-init tiny model")
    config = finetune.get_config(f"task={task}" + (f",arch={arch}" if arch else ""))
    if pretrained is not None:
        if baseline:
            config.task.model_from = pretrained
        else:
            config.init_from = pretrained
    return planning.apply_overrides(config, dict(overrides or {}))


def _chance(summary: dict) -> float | None:
    counts = (summary.get("data") or {}).get("val_label_counts")
    return max(counts) / sum(counts) if counts else None


def run_probes(pretrained: str | None, arch: str | None = None, tasks=TASKS, workdir: str = "runs/probes",
               overrides: dict | None = None, baseline: bool = False, log=print) -> dict[str, dict]:
    """{task: {'accuracy', 'f1', 'chance', 'steps', 'wall_s'}} after fine-tuning with the same recipe per task.

    pretrained: a workdir (fine-tuned from its parameters, or with baseline=True the same model and tokenizer from
    a random init); None: a random-init `tiny` model of `arch`. overrides: {'train.steps': 300, ...} for every task.
    """
    if pretrained is not None:
        pretrained = os.path.abspath(pretrained)
        if arch is not None:
            with open(os.path.join(pretrained, "config.json")) as f:
                have = json.load(f)["model_config"]["arch"]
            if have != arch:
                raise SweepError(f"run_probes: {pretrained} is a {have} model, not arch={arch!r}")
    results = {}
    for task in tasks:
        rundir = os.path.join(workdir, task)
        config, request = _request(task, pretrained, arch, baseline, overrides)
        summary = _finished(rundir, request)
        what = f"{os.path.basename(pretrained or '') or arch}{' random init' if baseline or not pretrained else ''}"
        if summary is None:
            os.makedirs(rundir, exist_ok=True)
            _write(os.path.join(rundir, REQUEST_FILE), {"request": request})  # before training: a resume knows it
            t0 = time.perf_counter()
            summary = loop.train_and_evaluate(config, rundir)
            summary["data"] = _read(os.path.join(rundir, "config.json")).get("data")
            _write(os.path.join(rundir, REQUEST_FILE), {"request": request, "wall_s": time.perf_counter() - t0})
        ev = summary["final_eval"]
        results[task] = {"accuracy": ev["eval/accuracy"], "f1": ev.get("eval/f1"), "chance": _chance(summary),
                         "examples": (summary.get("data") or {}).get("val_examples"), "steps": summary["steps"],
                         "wall_s": summary["wall_s"]}
        log(f"[probes] {what} {task}: accuracy {ev['eval/accuracy']:.3f}, f1 {ev.get('eval/f1', float('nan')):.3f} "
            f"({summary['steps']} steps, {summary['wall_s']:.0f} s)")
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "probes.json"), "w") as f:
        json.dump(results, f, indent=2)
    return results


def _read(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def _request(task: str, pretrained: str | None, arch: str | None, baseline: bool, overrides: dict | None):
    """(fine-tuning config, the request a finished run of it records)."""
    config = probe_config(task, pretrained, arch, baseline, overrides)
    return config, {"task": task, "pretrained": pretrained, "arch": arch, "baseline": baseline,
                    "overrides": planning.config_json(dict(overrides or {})), "config": planning.config_json(config)}


def check_contender(rundir: str, tasks=TASKS, overrides: dict | None = None, baseline: bool = True) -> None:
    """Raises SweepError if a probe rundir of `rundir` holds another request's run (what probe_contender would
    refuse), so that compare can refuse before anything trains."""
    pretrained = os.path.abspath(rundir)
    for sub, base in (("", False), ("random_init", True))[:2 if baseline else 1]:
        for task in tasks:
            _finished(os.path.join(rundir, "probes", sub, task), _request(task, pretrained, None, base, overrides)[1],
                      delete=os.path.join(rundir, "probes"))  # a changed recipe makes all of them stale


def _write(path: str, record: dict) -> None:
    with open(path, "w") as f:
        json.dump(record, f, indent=2)


def _finished(rundir: str, request: dict, delete: str | None = None) -> dict | None:
    """The summary of a finished run of the same request, with its config.json data section; None when there is
    none yet (or an interrupted one to resume). A rundir holding a run of another request (another recipe, say,
    after experiments/configs/finetune.py changed) raises SweepError rather than being reused or overwritten; its
    message names `delete` (default: rundir) as the directory to delete."""
    delete = delete or rundir
    paths = [os.path.join(rundir, n) for n in (REQUEST_FILE, "summary.json", "config.json")]
    if not os.path.isfile(paths[0]):
        if os.path.isdir(rundir) and os.listdir(rundir):
            raise SweepError(f"{rundir} holds files but no {REQUEST_FILE}, so what made them is unknown: "
                             f"delete {delete} or use another --workdir")
        return None
    stored = _read(paths[0]).get("request") or {}
    if stored != request:
        if "config" not in stored:
            diff = ["the fine-tuning config (not recorded by the version that made it)"]
        else:
            diff = [f"{k}: {stored.get(k)!r} -> {request[k]!r}" for k in request if k != "config"
                    and stored.get(k) != request[k]] + planning.config_diff(stored["config"], request["config"])
        raise SweepError(f"{rundir} holds a probe run of another request ({'; '.join(diff[:6])}"
                         f"{' ...' if len(diff) > 6 else ''}): delete {delete} or use another --workdir")
    if not all(os.path.isfile(p) for p in paths[1:]):
        return None
    summary = _read(paths[1])
    if summary.get("stopped_by") or "eval/accuracy" not in (summary.get("final_eval") or {}):
        return None
    summary["data"] = _read(paths[2]).get("data")
    return summary


def probe_contender(rundir: str, tasks=TASKS, overrides: dict | None = None, baseline: bool = True,
                    log=print) -> dict[str, dict]:
    """Probes a finished contender workdir (in `<rundir>/probes`) and, with baseline, the same model from a random
    init (in `<rundir>/probes/random_init`); records accuracies in `<rundir>/summary.json` under "probes" as
    {task: acc, '<task> (random init)': acc} (one report column each) and the details under "probe_results"."""
    out = {"pretrained": run_probes(rundir, tasks=tasks, workdir=os.path.join(rundir, "probes"),
                                    overrides=overrides, log=log)}
    if baseline:
        out["random_init"] = run_probes(rundir, tasks=tasks, workdir=os.path.join(rundir, "probes", "random_init"),
                                        overrides=overrides, baseline=True, log=log)
    columns = {t: r["accuracy"] for t, r in out["pretrained"].items()}
    columns.update({f"{t} (random init)": r["accuracy"] for t, r in out.get("random_init", {}).items()})
    _record(rundir, columns, "probe_results", out)
    return out


def pair_correct(scores) -> list[float]:
    """Per consecutive (true, false) pair: 1 if the true member scores higher, 0 if lower, 0.5 for a tie."""
    true, false = np.asarray(scores[0::2]), np.asarray(scores[1::2])
    if len(true) != len(false) or not len(true):
        raise ValueError(f"pair_accuracy: {len(scores)} scores are not a non-empty list of pairs")
    return ((true > false) + 0.5 * (true == false)).astype(float).tolist()


def pair_accuracy(scores) -> float:
    """Fraction of consecutive (true, false) pairs whose true member scores higher; ties count half."""
    return float(np.mean(pair_correct(scores)))


def _fingerprint(records: list[dict]) -> str:
    """12 hex digits of a task's evaluation records: two runs' pair ids name the same pairs when these agree."""
    return hashlib.sha256(json.dumps(records, sort_keys=True, default=str).encode()).hexdigest()[:12]


def per_pair_path(rundir: str, task: str) -> str:
    """Where zero_shot_contender keeps each pair's result of `task` (the report's paired bootstrap reads it)."""
    return os.path.join(rundir, planning.PER_PAIR_DIR, f"{task}.json")


def scorer(model, params, tok, workdir: str, what: str):
    """score(contexts, targets) -> (N,) log-likelihoods of each target given its context under the workdir's own
    objective (model/scoring.py): GPT after its start token (eos), BERT and T5 as pseudo-log-likelihoods."""
    if tok is None:
        raise SweepError(f"{what}: {workdir} has no tokenizer to encode the texts with (an imported model)")
    arch = model.cfg.arch
    if arch == "gpt":
        def score(contexts, targets):
            return scoring.causal_scores(model, params, contexts, targets, start_id=tok.eos_id)
    elif arch in ("bert", "t5"):
        mask = (dict(mask_id=tok.mask_id, end_id=tok.sep_id, cls_id=tok.cls_id) if arch == "bert"
                else dict(mask_id=tok.sentinel_id(0), end_id=tok.eos_id))

        def score(contexts, targets):
            return scoring.pseudo_scores(model, params, contexts, targets, **mask)
    else:
        raise SweepError(f"{what}: {workdir} is a {arch} model; texts are scored by gpt, bert and t5 models")
    return score


def zero_shot(workdir: str, tasks=TASKS, log=print) -> dict[str, dict]:
    """{task: {'accuracy', 'pairs', 'left_out', 'wall_s', 'per_pair'}}: the probe-eval pairs of each task scored by
    the pretrained model in `workdir` (see the module docstring); per_pair: {'pair': index of each scored pair
    among the task's evaluation pairs, 'correct': its result (pair_correct), 'examples_sha': which pairs those are}."""
    config, _, model, params, tok = load_workdir(workdir)
    score = scorer(model, params, tok, workdir, "zero-shot probes")
    results = {}
    for task in tasks:
        t0 = time.perf_counter()
        task_config = finetune.get_config(f"task={task}").task  # the fine-tuning probes' examples, eval part
        records = probe_data.build(config.data, task_config)["eval"]
        # b continues a's text: its first word carries its leading space, as it does inside a document.
        contexts = [tok.encode(r["text_a"]) if "text_a" in r else [] for r in records]
        targets = [tok.encode(" " + r["text_b"]) if "text_b" in r else tok.encode(r["text"]) for r in records]
        # Pairs that do not fit the model (with [CLS]/[SEP], start or eos) are left out, both members together.
        fits = [len(c) + len(t) + 2 <= model.cfg.max_len for c, t in zip(contexts, targets, strict=True)]
        keep = [j for i in range(0, len(records), 2) if fits[i] and fits[i + 1] for j in (i, i + 1)]
        if not keep:
            raise SweepError(f"zero-shot {task}: no probe pair fits model.max_len={model.cfg.max_len} of {workdir}")
        contexts, targets = [contexts[i] for i in keep], [targets[i] for i in keep]
        scores = score(contexts, targets)
        if task == "next_sentence":  # each b is scored alone once (most are both a true and a false b)
            alone = sorted(set(map(tuple, targets)))
            by_text = dict(zip(alone, score([[]] * len(alone), [list(t) for t in alone]), strict=True))
            scores = scores - np.array([by_text[tuple(t)] for t in targets])
        r = results[task] = {"accuracy": pair_accuracy(scores), "pairs": len(keep) // 2,
                             "left_out": (len(records) - len(keep)) // 2, "wall_s": time.perf_counter() - t0,
                             "per_pair": {"pair": [i // 2 for i in keep[0::2]], "correct": pair_correct(scores),
                                          "examples_sha": _fingerprint(records)}}
        left_out = f", {r['left_out']} too long for the model left out" if r["left_out"] else ""
        log(f"[probes] {os.path.basename(os.path.abspath(workdir))} {task} zero-shot: accuracy {r['accuracy']:.3f} "
            f"({r['pairs']} pairs{left_out}, {r['wall_s']:.0f} s)")
    return results


def zero_shot_contender(rundir: str, tasks=TASKS, log=print) -> dict[str, dict]:
    """zero_shot of a finished contender, recorded in `<rundir>/summary.json` under "probes" as
    {'<task> (zero-shot)': accuracy} (one report column each) and the details under "zero_shot_results". Tasks
    recorded there already (same checkpoint: a retrained contender writes a new summary) are not scored again.
    Each pair's result goes to `<rundir>/zero_shot/<task>.json` ({'pair': ids, 'correct': 1, 0 or 0.5 each,
    'examples_sha': which pairs}), for the report's paired bootstrap."""
    done = _read(os.path.join(rundir, "summary.json")).get("zero_shot_results", {})
    # A task scored by an older version (no per-pair file) is scored again: the numbers are the same, and the
    # file lets the report test a single seed's difference.
    todo = [t for t in tasks if t not in done or not os.path.isfile(per_pair_path(rundir, t))]
    if not todo:
        return {t: done[t] for t in tasks}
    new = zero_shot(rundir, todo, log=log)
    for task, r in new.items():
        os.makedirs(os.path.dirname(per_pair_path(rundir, task)), exist_ok=True)
        _write(per_pair_path(rundir, task), {"task": task, "accuracy": r["accuracy"], **r.pop("per_pair")})
    out = {**done, **new}
    _record(rundir, {f"{t} (zero-shot)": r["accuracy"] for t, r in out.items()}, "zero_shot_results", out)
    return {t: out[t] for t in tasks}


def _record(rundir: str, columns: dict[str, float], key: str, details: dict) -> None:
    path = os.path.join(rundir, "summary.json")
    summary = _read(path)
    summary["probes"] = {**summary.get("probes", {}), **columns}
    summary[key] = details
    with open(path, "w") as f:
        json.dump(summary, f, indent=2)


def main(argv: list[str]) -> None:
    fv = flags.FLAGS
    overrides = {}
    for item in fv.override:
        key, sep, value = item.partition("=")
        if not sep:
            raise SweepError(f"--override={item!r}: expected key=value")
        try:
            overrides[key] = json.loads(value)  # numbers, true/false
        except ValueError:
            overrides[key] = value
    with errors.one_line():
        logging.set_verbosity(logging.WARNING)
        if fv.pretrained:  # a bad path is named by the flag it came from, not the --config.init_from it becomes
            read_record(fv.pretrained, "--pretrained")
        if fv.zero_shot:
            if not fv.pretrained:
                raise SweepError("--zero_shot scores a pretrained model: pass --pretrained=<workdir>")
            zero_shot(fv.pretrained, tuple(fv.tasks))
            return
        if not fv.workdir:
            raise SweepError("--workdir is required for fine-tuning probes, e.g. --workdir=runs/bert/probes")
        run_probes(fv.pretrained or None, fv.arch or None, tuple(fv.tasks), fv.workdir, overrides, fv.baseline)


if __name__ == "__main__":
    flags.DEFINE_string("pretrained", "", "Pretrained workdir ('' = random-init tiny --arch).")
    flags.DEFINE_string("arch", "", "Architecture of the random-init model when --pretrained is ''.")
    flags.DEFINE_list("tasks", list(TASKS), "Probe tasks.")
    flags.DEFINE_string("workdir", "", "Directory for one fine-tuning run per task.")
    flags.DEFINE_bool("zero_shot", False, "Score the probe pairs with --pretrained's own objective; no training.")
    flags.DEFINE_bool("baseline", False, "With --pretrained: the same model and tokenizer from a random init.")
    flags.DEFINE_multi_string("override", [], "key=value for the fine-tuning config, e.g. train.steps=300.")
    app.run(main)

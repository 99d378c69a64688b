"""experiments/: suites at matched parameters and budgets, sweeps (names, dry-run commands, skip and resume),
the report builder on synthetic summaries, and hardware peaks / MFU."""

import json
import os
import re
import shlex
import types

import numpy as np
import pytest
from absl import flags

from experiments import compare, hardware, planning, report, suites, sweep
from experiments import tables as report_tables
from model import config as model_config
from tests import helpers

ABLATIONS = sorted(f[:-3] for f in os.listdir(os.path.join(helpers.ROOT, "experiments", "ablations"))
                   if f.endswith(".py") and not f.startswith("_"))


# ---------------------------------------------------------------------------------------------- suites, budgets


def test_default_suite_matches_parameters_within_5_percent(tmp_path):
    suite = suites.load("default")
    runs = compare.suite_runs(suite)
    assert [r.name for r in runs] == ["bert", "gpt", "t5"]
    params = compare.check_params(runs, 0.05)
    assert max(params.values()) / min(params.values()) - 1 < 0.05
    # The vocabulary is the tokenizer's: config.data.vocab_size, the same for all contenders.
    assert {planning.shape_facts(r.config)["vocab_size"] for r in runs} == {runs[0].config.data.vocab_size}
    with pytest.raises(planning.SweepError, match="parameter counts differ"):
        compare.check_params(runs, 1e-6)
    # The suite's shared batch of 8; a --config override replaces it; a contender's own overrides come last.
    assert {r.config.train.batch_size for r in runs} == {8}
    runs = compare.suite_runs(suite, overrides={"train.batch_size": 16, "model.d_ff": 256})
    assert {r.config.train.batch_size for r in runs} == {16}
    assert [r.config.model.d_ff for r in runs] == [256, 256, 384]
    # Each contender's own peak learning rate (experiments/suites/learning_rate.py); compare names the ones it keeps.
    assert [r.config.train.learning_rate for r in compare.suite_runs(suite)] == [2e-3, 2e-3, 1e-3]
    logs = []
    compare.compare(str(tmp_path), "default", overrides={"train.learning_rate": 3e-3}, dry_run=True, log=logs.append)
    assert [m for m in logs if "replaces" in m] == [
        "[compare] bert: its own train.learning_rate=0.002 (the suite's) replaces --config.train.learning_rate=0.003",
        "[compare] gpt: its own train.learning_rate=0.002 (the suite's) replaces --config.train.learning_rate=0.003",
        "[compare] t5: its own train.learning_rate=0.001 (the suite's) replaces --config.train.learning_rate=0.003"]
    lr_suite = suites.load("learning_rate")
    grid = {(r.name, r.config.train.learning_rate, r.config.model.d_ff) for r in compare.suite_runs(lr_suite)}
    assert len(grid) == 15 and ("t5@0.0005", 5e-4, 384) in grid and ("bert@0.005", 5e-3, 512) in grid


def test_flops_budget_gives_equal_flops_across_contenders():
    suite = suites.load("default")
    kind, budget = suite["budget"]
    assert kind == "flops"
    runs = planning.plan_budget(compare.suite_runs(suite), "flops", budget, evals=5)
    flops = {r.name: r.config.train.steps * planning.shape_facts(r.config)["flops_per_step"] for r in runs}
    assert all(abs(f / budget - 1) < 0.05 for f in flops.values()), flops
    assert max(flops.values()) / min(flops.values()) - 1 < 0.05
    t5 = next(r for r in runs if r.name == "t5")
    facts = planning.shape_facts(t5.config)
    assert facts["target_len"] > 0 and facts["tokens_per_step"] == t5.config.train.batch_size * (
        facts["seq_len"] + facts["target_len"])
    for r in runs:  # warmup keeps the config's fraction (tiny: 10%), evaluations spread evenly
        tc = r.config.train
        assert tc.warmup_steps == round(0.1 * tc.steps) and tc.eval_every == -(-tc.steps // 5)
    tokens = planning.plan_budget(compare.suite_runs(suite, ["gpt", "t5"]), "tokens", 1e6, evals=5)
    for r in tokens:
        assert abs(r.config.train.steps * planning.shape_facts(r.config)["tokens_per_step"] / 1e6 - 1) < 0.05


def test_compare_replans_a_contender_whose_suite_overrides_changed(tmp_path):
    """A re-run under the same request keeps the earlier plan only for contenders defined the same way: after the
    suite's shared batch changes, the contenders are planned again (and train.main would refuse the old workdir)."""
    suite = suites.load("default")
    w = str(tmp_path)
    runs = compare.plan(w, "default", compare.suite_runs(suite), ("flops", 4e12), 5, {}, log=lambda *_: None)
    records = [{**r.record(), "measured_step_s": 0.125} for r in runs]  # marks a plan that was kept
    planning.write_plan(w, {"kind": "compare", "request": compare._request("default", ("flops", 4e12), 5, {}),
                            "runs": records})
    again = compare.plan(w, "default", compare.suite_runs(suite), ("flops", 4e12), 5, {}, log=lambda *_: None)
    # BERT's steps execute its head at 19 of 128 positions: more of them for the same FLOPs.
    assert [r.config.train.steps for r in again] == [r.config.train.steps for r in runs] == [609, 335, 816]
    assert [r.measured_step_s for r in again] == [0.125] * 3
    changed = {**suite, "overrides": {"train.batch_size": 16}}
    replanned = compare.plan(w, "default", compare.suite_runs(changed), ("flops", 4e12), 5, {}, log=lambda *_: None)
    assert [r.config.train.steps for r in replanned] == [304, 168, 408]
    assert [r.measured_step_s for r in replanned] == [None] * 3


def test_compare_refuses_a_workdir_of_another_config_before_rewriting_its_plan(tmp_path):
    os.makedirs(tmp_path / "bert")
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"config": {"train": {"batch_size": 32}}}))
    (tmp_path / "plan.json").write_text('{"kind": "compare", "runs": []}')
    with pytest.raises(planning.SweepError, match="holds a run of a different config"):
        compare.compare(str(tmp_path), "default", log=lambda *_: None)
    assert (tmp_path / "plan.json").read_text() == '{"kind": "compare", "runs": []}'


def test_suite_and_flag_errors_are_one_clear_message():
    with pytest.raises(planning.SweepError, match="no such suite"):
        suites.load("nope")
    with pytest.raises(planning.SweepError, match="unknown"):
        compare.suite_runs(suites.load("default"), ["gpt", "xlnet"])
    with pytest.raises(planning.SweepError, match="no field 'train.nope'"):
        planning.make_run("experiments/configs/gpt.py:tiny", {"train.nope": 1}, group="g")
    argv = ["prog", "--workdir=w", "--config.train.batch_size=16", "--budget_flops=1e12"]
    fv = flags.FlagValues()
    sweep.define_budget_flags(fv, argv)
    fv(argv)
    assert sweep.cli_overrides(fv) == {"train.batch_size": 16}
    assert sweep.budget_from_flags(fv) == ("flops", 1e12)
    fv.steps = 3
    with pytest.raises(planning.SweepError, match="at most one"):
        sweep.budget_from_flags(fv)


# ---------------------------------------------------------------------------------------------- sweeps


def test_sweep_names_and_hashes_are_stable():
    spec = {"config": "experiments/configs/{arch}.py:tiny", "base": {"train.steps": 10},
            "grid": {"arch": ["gpt", "t5"], "model.position": ["rope", "alibi"],
                     "heads": {"mqa": {"model.n_kv_heads": 1}}},
            "seeds": [0, 1], "exclude": [{"arch": "t5", "model.position": "alibi"}]}
    runs = sweep.expand(spec)
    names = [r.name for r in runs]
    assert len(runs) == 6 and len(set(names)) == 6
    assert all(re.fullmatch(r"(gpt|t5)-position=(rope|alibi)-heads=mqa-seed=[01]-[0-9a-f]{6}", n) for n in names)
    assert not any(n.startswith("t5-position=alibi") for n in names)
    assert names == [r.name for r in sweep.expand(spec)]  # deterministic
    assert runs[0].group == runs[1].group == "gpt-position=rope-heads=mqa" and runs[0].hash != runs[1].hash
    # The hash is of the resolved config: override order does not matter, the stored config.json form agrees.
    a = planning.make_run("experiments/configs/gpt.py:tiny", {"seed": 1, "model.position": "alibi"}, group="g")
    b = planning.make_run("experiments/configs/gpt.py:tiny", {"model.position": "alibi", "seed": 1}, group="g")
    assert a.name == b.name and planning.config_hash(json.loads(a.config.to_json_best_effort())) == a.hash


@pytest.mark.parametrize("name", ABLATIONS)
def test_dry_run_commands_parse_with_absl_flags(name, monkeypatch, capsys):
    monkeypatch.chdir(helpers.ROOT)
    path = f"experiments/ablations/{name}.py"
    runs = sweep.run_sweep(path, "runs/x", None, 5, {}, dry_run=True, log=lambda *_: None)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == len(runs) >= 12 and len({r.name for r in runs}) == len(runs)
    for run, line in [(runs[0], lines[0]), (runs[-1], lines[-1])]:
        workdir, config = helpers.parse_command(line)
        assert workdir == os.path.join("runs/x", run.name)
        assert planning.config_json(config) == planning.config_json(run.config)
        model_config.from_dict(config.model)  # a valid model


def test_run_state_skips_resumes_and_refuses_other_configs(tmp_path):
    run = planning.make_run("experiments/configs/gpt.py:tiny", {"train.steps": 4}, group="g")
    rundir = tmp_path / run.name
    assert planning.run_state(run, str(tmp_path)) == "new"
    rundir.mkdir()
    (rundir / "config.json").write_text(json.dumps({"config": json.loads(run.config.to_json_best_effort())}))
    assert planning.run_state(run, str(tmp_path)) == "partial"
    (rundir / "summary.json").write_text(json.dumps({"steps": 2, "stopped_by": "SIGTERM"}))
    assert planning.run_state(run, str(tmp_path)) == "partial"
    (rundir / "summary.json").write_text(json.dumps({"steps": 4, "stopped_by": None}))
    assert planning.run_state(run, str(tmp_path)) == "done"
    other = planning.make_run("experiments/configs/gpt.py:tiny", {"train.steps": 5}, group="g", hashed=False)
    other.name = run.name
    with pytest.raises(planning.SweepError, match=r"different config \(train.steps: 4 -> 5"):
        planning.run_state(other, str(tmp_path))


def _tiny_base(directory) -> dict:
    c = helpers.tiny_config("gpt", str(directory))
    keys = ["data.train_files", "data.vocab_size", "data.cache_dir", "data.seq_len", "data.prefetch",
            "model.d_model", "model.n_heads", "model.d_ff", "model.n_layers", "model.max_len", "train.batch_size",
            "train.eval_steps", "train.progress_bar"]
    out = {}
    for k in keys:
        node = c
        for p in k.split("."):
            node = node[p]
        out[k] = node
    return out


@pytest.mark.slow
def test_sweep_skips_finished_points_and_resumes_an_interrupted_one(tmp_path):
    path = tmp_path / "tiny_sweep.py"
    path.write_text(f"def get_sweep():\n    return dict(config='experiments/configs/{{arch}}.py:tiny', "
                    f"base={_tiny_base(tmp_path)!r}, grid={{'arch': ['gpt'], 'model.position': ['rope', 'alibi']}}, "
                    f"seeds=[0])\n")
    work = tmp_path / "runs"
    logs = []
    runs = sweep.run_sweep(str(path), str(work), ("steps", 4), 2, {}, dry_run=False, log=logs.append)
    assert len(runs) == 2 and sum("starting" in m for m in logs) == 2
    first = json.loads((work / runs[0].name / "summary.json").read_text())
    assert first["steps"] == 4 and os.path.exists(work / "report.md")

    logs.clear()
    sweep.run_sweep(str(path), str(work), ("steps", 4), 2, {}, dry_run=False, log=logs.append)
    assert sum("skipped" in m for m in logs) == 2 and not any("starting" in m for m in logs)

    # Interrupt the first point after its step-2 checkpoint: no summary, no step-4 checkpoint.
    os.remove(work / runs[0].name / "summary.json")
    import shutil

    shutil.rmtree(work / runs[0].name / "checkpoints" / "4")
    logs.clear()
    sweep.run_sweep(str(path), str(work), ("steps", 4), 2, {}, dry_run=False, log=logs.append)
    assert any("resuming" in m for m in logs) and sum("skipped" in m for m in logs) == 1
    resumed = json.loads((work / runs[0].name / "summary.json").read_text())
    assert resumed["start_step"] == 2 and resumed["steps"] == 4
    assert resumed["final_eval"]["eval/loss"] == pytest.approx(first["final_eval"]["eval/loss"], rel=1e-6)
    rows = json.loads((work / "report.json").read_text())["rows"]
    assert [r["group"] for r in rows] == ["gpt-position=rope", "gpt-position=alibi"]


def test_compare_fine_tunes_every_contender_on_the_probes_with_a_random_init_baseline(tmp_path):
    suite = tmp_path / "probe_suite.py"
    overrides = {**_tiny_base(tmp_path), "model.max_len": 96}  # room for zero-shot texts (fine-tuning truncates)
    suite.write_text(f"def get_suite():\n    return dict(description='probe plumbing', contenders={{'gpt': dict("
                     f"config='experiments/configs/gpt.py:tiny', overrides={overrides!r})}}, "
                     f"budget=('steps', 4), param_tolerance=0.05, evals=1, probes=('word_order',), "
                     f"zero_shot=('word_order', 'next_sentence'))\n")
    work = tmp_path / "runs"
    with pytest.raises(planning.SweepError, match="--probes: unknown \\['nli'\\]"):
        compare.compare(str(work), str(suite), probes=("nli",))
    assert not work.exists()  # refused before anything trained
    quick = {"train.steps": 4, "train.eval_every": 4, "train.batch_size": 8}
    compare.compare(str(work), str(suite), probe_overrides=quick, log=lambda m: None)
    summary = json.loads((work / "gpt" / "summary.json").read_text())
    got = summary["probe_results"]
    assert set(got) == {"pretrained", "random_init"} and all(set(r) == {"word_order"} for r in got.values())
    zero = summary["zero_shot_results"]
    assert summary["probes"] == {"word_order": got["pretrained"]["word_order"]["accuracy"],
                                 "word_order (random init)": got["random_init"]["word_order"]["accuracy"],
                                 "word_order (zero-shot)": zero["word_order"]["accuracy"],
                                 "next_sentence (zero-shot)": zero["next_sentence"]["accuracy"]}
    assert all(0 <= r["accuracy"] <= 1 and r["pairs"] > 10 for r in zero.values())
    assert got["pretrained"]["word_order"]["steps"] == 4 and got["pretrained"]["word_order"]["chance"] == 0.5
    ft_config = json.loads((work / "gpt" / "probes" / "word_order" / "config.json").read_text())["config"]
    assert ft_config["init_from"] == str(work / "gpt") and ft_config["task"]["pooling"] == "max"
    base_config = json.loads((work / "gpt" / "probes" / "random_init" / "word_order" / "config.json").read_text())
    assert base_config["config"]["init_from"] == "" and base_config["config"]["task"]["model_from"] == str(work / "gpt")
    for task, r in zero.items():  # each pair's result kept for the report's bootstrap, agreeing with the summary
        per_pair = json.loads((work / "gpt" / planning.PER_PAIR_DIR / f"{task}.json").read_text())
        assert len(per_pair["pair"]) == len(per_pair["correct"]) == r["pairs"] and "per_pair" not in r
        assert sum(per_pair["correct"]) / r["pairs"] == pytest.approx(r["accuracy"])
        assert set(per_pair["correct"]) <= {0.0, 0.5, 1.0} and len(per_pair["examples_sha"]) == 12
    report_md = (work / "report.md").read_text()
    assert "| word_order | word_order rand-init | word_order 0-shot |" in report_md
    assert "- **probe: next_sentence (zero-shot)**: only gpt has it: " in report_md
    assert "**<task> 0-shot** (probe: <task> (zero-shot) above)" in report_md
    runs_json = json.loads((work / "report.json").read_text())["runs"]
    assert runs_json[0]["per_example"] == ["probe/next_sentence (zero-shot)", "probe/word_order (zero-shot)"]
    metrics = work / "gpt" / "probes" / "word_order" / "metrics.jsonl"
    before = metrics.stat().st_mtime_ns
    logs = []
    compare.compare(str(work), str(suite), probe_overrides=quick, log=logs.append)  # finished: nothing re-runs
    assert metrics.stat().st_mtime_ns == before and not any("zero-shot" in m for m in logs)
    assert json.loads((work / "gpt" / "summary.json").read_text())["zero_shot_results"] == zero
    # Another recipe (here one more pair per source) is refused before plan.json is rewritten, naming the field,
    # and the finished run is kept.
    plan_time = (work / "plan.json").stat().st_mtime_ns
    with pytest.raises(planning.SweepError, match=r"word_order holds a probe run of another request .*"
                                                  r"task.train_pairs: 4 -> 5.*delete"):
        compare.compare(str(work), str(suite), probe_overrides={**quick, "task.train_pairs": 5}, log=logs.append)
    assert metrics.stat().st_mtime_ns == before and (work / "plan.json").stat().st_mtime_ns == plan_time
    # A contender scored zero-shot by an older version (no per-pair file) is scored again for that task alone.
    os.remove(work / "gpt" / planning.PER_PAIR_DIR / "word_order.json")
    logs.clear()
    compare.compare(str(work), str(suite), probe_overrides=quick, log=logs.append)
    assert [m.split(":")[0] for m in logs if "zero-shot" in m] == ["[probes] gpt word_order zero-shot"]
    assert (work / "gpt" / planning.PER_PAIR_DIR / "word_order.json").is_file()
    assert json.loads((work / "gpt" / "summary.json").read_text())["zero_shot_results"]["word_order"][
        "accuracy"] == zero["word_order"]["accuracy"]


@pytest.mark.slow
def test_compare_with_two_seeds_trains_probes_and_tests_each_seed(tmp_path):
    suite = tmp_path / "seed_suite.py"
    overrides = {**_tiny_base(tmp_path), "model.max_len": 96}
    contenders = {n: dict(config="experiments/configs/gpt.py:tiny", overrides={**overrides, "train.learning_rate": lr})
                  for n, lr in (("gpt", 3e-3), ("gpt-slow", 3e-4))}
    suite.write_text(f"def get_suite():\n    return dict(description='seeds', contenders={contenders!r}, "
                     f"budget=('steps', 4), param_tolerance=0.05, evals=1, probes=('word_order',), "
                     f"zero_shot=('word_order',))\n")
    work = tmp_path / "runs"
    quick = {"train.steps": 4, "train.eval_every": 4, "train.batch_size": 8}
    runs = compare.compare(str(work), str(suite), probe_overrides=quick, seeds=2, log=lambda m: None)
    assert [r.name for r in runs] == ["gpt-seed=0", "gpt-slow-seed=0", "gpt-seed=1", "gpt-slow-seed=1"]
    for r in runs:
        assert json.loads((work / r.name / "run.json").read_text())["seed"] == r.seed
        ft = json.loads((work / r.name / "probes" / "word_order" / "config.json").read_text())["config"]
        assert ft["seed"] == r.seed and ft["task"]["seed"] == 0  # fine-tuned with the run's seed, same probe data
        assert (work / r.name / planning.PER_PAIR_DIR / "word_order.json").is_file()
    plan = json.loads((work / "plan.json").read_text())
    assert plan["seeds"] == 2 and [r["name"] for r in plan["runs"]] == [r.name for r in runs]
    md = (work / "report.md").read_text()
    assert "paired t-test over 2 seeds" in md and "## Significance of the differences" in md
    logs = []
    compare.compare(str(work), str(suite), probe_overrides=quick, seeds=2, log=logs.append)  # all finished
    assert sum("finished earlier, skipped" in m for m in logs) == 4 and not any("starting" in m for m in logs)


# ---------------------------------------------------------------------------------------------- report


def _fake_run(workdir, name, arch, objective, *, seed=0, eval_loss=4.0, probes=None, group=None, extra_loss=0.0,
              zero_shot=None):
    """extra_loss: what eval/loss adds to eval/nll (an auxiliary term such as NSP's); zero_shot: {task: each pair's
    result}, kept as experiments/probes.py keeps them (summary columns and <run>/zero_shot/<task>.json)."""
    fps, tps, steps, st = 4.0e10, 4096, 40, 0.5
    train = [{"step": s, "train/loss": 6.0 - s / 20, **({"perf/step_time": st} if s > 10 else {})}
             for s in (10, 20, 30, 40)]
    evals = [{"step": s, "eval/loss": eval_loss + extra_loss + (40 - s) / 20, "eval/nll": eval_loss + (40 - s) / 20,
              "eval/accuracy": 0.3} for s in (20, 40)]
    summary = {"arch": arch, "objective": objective, "params": 1_800_000, "steps": steps, "start_step": 0,
               "tokens_per_step": tps, "flops_per_step": fps, "step_time_s": st, "tokens_per_sec": tps / st,
               "peak_memory_bytes": 600 * 2**20, "compile_s": 3.0, "loop_s": 25.0, "wall_s": 30.0,
               "final_train": {"train/loss": 4.2}, "stopped_by": None,
               "final_eval": {"eval/loss": eval_loss + extra_loss, "eval/nll": eval_loss, "eval/accuracy": 0.3,
                              "eval/bits_per_byte": 1.7},
               "history": {"train": train, "eval": evals}}
    if probes:
        summary["probes"] = dict(probes)
        summary["probe_results"] = {"pretrained": {t: {"accuracy": a, "examples": 400} for t, a in probes.items()}}
    for task, correct in (zero_shot or {}).items():
        summary.setdefault("probes", {})[f"{task} (zero-shot)"] = sum(correct) / len(correct)
        summary.setdefault("zero_shot_results", {})[task] = {"accuracy": sum(correct) / len(correct),
                                                             "pairs": len(correct)}
    model = {"arch": arch, "n_layers": 4 if arch != "t5" else 2, "n_decoder_layers": 2 if arch == "t5" else 0,
             "d_model": 128, "d_ff": 512, "position": "rope", "mlp": "gelu", "dtype": "float32"}
    d = os.path.join(workdir, name)
    os.makedirs(d)
    for fname, obj in [("summary.json", summary), ("run.json", {"name": name, "group": group or name,
                                                                 "seed": seed}),
                       ("config.json", {"config": {}, "model_config": model,
                                        "devices": {"backend": "gpu", "count": 1, "kind": "NVIDIA H100 80GB HBM3"}})]:
        with open(os.path.join(d, fname), "w") as f:
            json.dump(obj, f)
    for task, correct in (zero_shot or {}).items():
        os.makedirs(os.path.join(d, planning.PER_PAIR_DIR), exist_ok=True)
        with open(os.path.join(d, planning.PER_PAIR_DIR, f"{task}.json"), "w") as f:
            json.dump({"task": task, "accuracy": sum(correct) / len(correct), "pair": list(range(len(correct))),
                       "correct": correct, "examples_sha": "0123456789ab"}, f)
    return summary


def _tables(md: str) -> dict[str, list[list[str]]]:
    """{section title: rows of cells, the header first (no separator line)} of every markdown table in a report."""
    out, title = {}, None
    for line in md.splitlines():
        if line.startswith("## "):
            title = line[3:]
        elif line.startswith("| ") and title:
            out.setdefault(title, []).append([c.strip() for c in line.strip("|").split(" | ")])
    return out


def test_report_from_synthetic_summaries(tmp_path):
    w = str(tmp_path)
    b = _fake_run(w, "bert", "bert", "mlm", eval_loss=5.0, extra_loss=0.69)  # e.g. MLM + NSP: the column is the MLM's
    s = _fake_run(w, "gpt", "gpt", "causal_lm", eval_loss=4.0, probes={"sst2": 0.75})
    _fake_run(w, "t5-seed=0", "t5", "span_corruption", eval_loss=3.0, group="t5")
    _fake_run(w, "t5-seed=1", "t5", "span_corruption", seed=1, eval_loss=3.2, group="t5")
    planning.write_plan(w, {"kind": "compare", "budget": {"kind": "flops", "value": 1.6e12},
                            "runs": [{"name": n} for n in ("bert", "gpt", "t5-seed=0", "t5-seed=1")]})
    text = report.build(w)
    md = open(os.path.join(w, "report.md")).read()
    assert text in md and md.index("- **probe: sst2**: only gpt has it: 75.0%") < md.index("## Cost")
    assert "- **eval loss**: each contender has its own objective (masked LM, causal LM, span corruption)" in md
    tables = _tables(md)
    assert list(tables) == ["Cost", "Quality (mean ± standard error over seeds)"]
    cost, quality = tables["Cost"], tables["Quality (mean ± standard error over seeds)"]
    assert cost[0] == ["contender", "architecture", "params", "train FLOPs", "steps", "tokens", "wall (s)",
                       "tokens/s", "MFU", "memory"]
    assert quality[0] == ["contender", "seeds", "objective", "train loss", "eval loss", "acc", "bits/byte", "sst2"]
    assert all(len(r) == len(t[0]) <= report_tables.MAX_COLUMNS for t in tables.values() for r in t)
    rows = {r[0]: dict(zip(quality[0], r, strict=True)) for r in quality[1:]}
    assert rows["bert"]["objective"] == "masked LM" and rows["gpt"]["objective"] == "causal LM"
    assert rows["t5"]["objective"] == "span corruption"
    assert rows["gpt"]["bits/byte"] == "1.700" and rows["bert"]["bits/byte"] == "-"  # bits/byte only for causal LM
    assert rows["gpt"]["sst2"] == "75.0%"  # probe column
    # Seeds aggregated: 3.0 and 3.2 -> mean 3.1 ± SE 0.1 (std / sqrt(2); the std would be 0.141).
    assert rows["t5"]["eval loss"] == "3.100 ± 0.100" and rows["t5"]["seeds"] == "2"
    assert "different tasks" in md and "Matched: **training FLOPs" in md and "deviation" in md
    assert "near 50% on 400 examples is 2.5 points" in md  # 50 / sqrt(400)
    assert "## Significance" not in md  # nothing shared was tested: one seed, no per-example results

    rec = json.loads(open(os.path.join(w, "report.json")).read())
    by_group = {r["group"]: r for r in rec["rows"]}
    assert set(by_group) == {"bert", "gpt", "t5"} and by_group["t5"]["n"] == 2
    want_mfu = s["flops_per_step"] / s["step_time_s"] / 494.5e12  # H100, float32 -> TF32 dense peak
    assert by_group["gpt"]["mfu"] == pytest.approx(want_mfu)
    assert by_group["gpt"]["flops"] == 40 * 4.0e10 and by_group["gpt"]["tokens"] == 40 * 4096
    assert by_group["bert"]["eval_bpb"] is None and by_group["gpt"]["probe/sst2"] == 0.75
    assert by_group["t5"]["eval_loss_se"] == pytest.approx(0.1) and by_group["t5"]["eval_loss_std"] == pytest.approx(
        0.2 / 2 ** 0.5)
    assert by_group["bert"]["eval_loss"] == 5.0 and rows["bert"]["eval loss"] == "5.000"  # eval/nll, not eval/loss
    assert rec["significance"] == [] and rec["lead"][0]["leader"] == "gpt"
    assert report.curve(b["history"]["train"] + b["history"]["eval"], 1.0)["loss"] == [6.0, 5.0]  # plots too
    for png in report.PLOTS:
        with open(os.path.join(w, png), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    # Time axis: steps x measured step time (the untimed first window at the median).
    assert report.curve(s["history"]["train"] + s["history"]["eval"], 1.0)["seconds"] == [10.0, 20.0]


def _correct(n_right: int, n: int = 100) -> list[float]:
    return [1.0] * n_right + [0.0] * (n - n_right)


def _p_two_df(differences) -> float:
    """Two-sided p of a paired t-test over 3 seeds by hand: t = mean / (sd / sqrt 3), and for 2 degrees of freedom
    P(|T| >= t) = 1 - t / sqrt(2 + t^2)."""
    d = np.asarray(differences)
    t = abs(d.mean() / (d.std(ddof=1) / np.sqrt(len(d))))
    return 1 - t / np.sqrt(2 + t * t)


def test_report_leads_with_the_answer_over_three_seeds(tmp_path):
    """3 seeds x 2 contenders of one objective: the lead lines name the leader, its margin and whether it is
    significant by a paired t-test; the tables stay narrow; a run plan.json does not list is left out."""
    w = str(tmp_path)
    numbers = {  # per seed 0, 1, 2
        "gpt": dict(loss=[4.00, 4.10, 4.20], wo=[0.71, 0.73, 0.72], wo_rand=[0.55, 0.56, 0.54],
                    ns=[0.58, 0.60, 0.59], wo_zero=[90, 92, 91], ns_zero=[60, 55, 58]),
        "gpt-alibi": dict(loss=[3.95, 4.06, 4.14], wo=[0.66, 0.69, 0.67], wo_rand=[0.57, 0.55, 0.56],
                          ns=[0.58, 0.61, 0.57], wo_zero=[80, 85, 83], ns_zero=[57, 59, 56]),
    }
    names = []
    for seed in range(3):
        for group, v in numbers.items():
            name = compare.seed_name(group, seed)
            names.append(name)
            _fake_run(w, name, "gpt", "causal_lm", seed=seed, group=group, eval_loss=v["loss"][seed],
                      probes={"word_order": v["wo"][seed], "word_order (random init)": v["wo_rand"][seed],
                              "next_sentence": v["ns"][seed]},
                      zero_shot={"word_order": _correct(v["wo_zero"][seed]),
                                 "next_sentence": _correct(v["ns_zero"][seed])})
    _fake_run(w, "gpt", "gpt", "causal_lm", eval_loss=1.0)  # a --seeds=1 run of the same workdir: not planned now
    planning.write_plan(w, {"kind": "compare", "budget": {"kind": "steps", "value": 40},
                            "runs": [{"name": n} for n in names]})
    text = report.build(w)
    md = open(os.path.join(w, "report.md")).read()
    assert text in md
    leads = [line for line in md.split("## Cost")[0].splitlines() if line.startswith("- **")]
    assert [line.split("**")[1] for line in leads] == [
        "probe: next_sentence", "probe: word_order", "probe: next_sentence (zero-shot)",
        "probe: word_order (zero-shot)", "probe: word_order (random init)", "eval loss, causal LM"]
    g, a = numbers["gpt"], numbers["gpt-alibi"]
    p_wo = _p_two_df(np.subtract(g["wo"], a["wo"]))  # d = 0.05, 0.04, 0.05: t = 14.0, p = 0.005
    assert leads[1] == (f"- **probe: word_order**: gpt leads with 72.0% ± 0.6, +4.7 points over gpt-alibi (paired "
                        f"t-test over 3 seeds, p = {p_wo:.3f}: significant)")
    # Zero-shot next_sentence: 57.7% vs 57.3%, d = +3, -4, +2 points: no significant difference.
    p_ns = _p_two_df(np.subtract(g["ns_zero"], a["ns_zero"]) / 100)
    assert p_ns > 0.5 and leads[2] == (
        f"- **probe: next_sentence (zero-shot)**: gpt leads with 57.7% ± 1.5, +0.3 points over gpt-alibi (paired "
        f"t-test over 3 seeds, p = {p_ns:.3f}: not significant)")
    # Lower loss leads: gpt-alibi by 0.05 on every seed but one (d = 0.05, 0.04, 0.06: t = 8.66, p = 0.013).
    p_loss = _p_two_df(np.subtract(g["loss"], a["loss"]))
    assert leads[5] == (f"- **eval loss, causal LM**: gpt-alibi leads with 4.050 ± 0.055, 0.050 lower than gpt "
                        f"(paired t-test over 3 seeds, p = {p_loss:.3f}: significant)")
    assert p_loss == pytest.approx(0.0131, abs=1e-4)

    tables = _tables(md)
    spread = " (mean ± standard error over seeds)"
    assert list(tables) == ["Cost", f"Quality{spread}", f"Probes: accuracy{spread}",
                            "Significance of the differences"]
    assert [len(t[0]) for t in tables.values()] == [10, 7, 6, 7]  # 7 + 5 probe columns would be 12 > 10
    assert all(len(r) == len(t[0]) for t in tables.values() for r in t)
    assert tables[f"Probes: accuracy{spread}"][0] == [
        "contender", "next_sentence", "next_sentence 0-shot", "word_order", "word_order rand-init",
        "word_order 0-shot"]
    quality = {r[0]: r for r in tables[f"Quality{spread}"][1:]}
    assert quality["gpt"][1] == "3" and quality["gpt"][4] == "4.100 ± 0.058"  # SE = 0.1 / sqrt(3), not std 0.1
    sig = tables["Significance of the differences"]
    assert sig[0] == ["yardstick", "better", "worse", "difference", "p", "p < 0.05", "test"]
    assert ["probe: word_order", "gpt", "gpt-alibi", "+4.7 points", f"{p_wo:.3f}", "yes", "t-test, 3 seeds"] in sig
    assert ["eval loss, causal LM", "gpt-alibi", "gpt", "-0.050", f"{p_loss:.3f}", "yes", "t-test, 3 seeds"] in sig
    assert "Runs in " in md and "left out: gpt" in md  # the stray single-seed run

    rec = json.loads(open(os.path.join(w, "report.json")).read())
    assert [r["group"] for r in rec["rows"]] == ["gpt", "gpt-alibi"] and rec["rows"][0]["seeds"] == [0, 1, 2]
    assert rec["rows"][0]["eval_loss_se"] == pytest.approx(0.1 / np.sqrt(3))
    assert rec["left_out"] == ["gpt"] and len(rec["runs"]) == 6
    by = {(r["yardstick"], r["better"]): r for r in rec["significance"]}
    wo = by[("probe: word_order", "gpt")]
    assert wo["method"] == "paired t-test" and wo["n"] == 3 and wo["p"] == pytest.approx(p_wo) and wo["significant"]
    assert wo["difference"] == pytest.approx(0.04667, abs=1e-5) and wo["seeds"] == [0, 1, 2]
    assert [t["title"] for t in rec["tables"]] == list(tables)[:3]


def test_report_one_seed_bootstraps_the_zero_shot_columns_and_tests_nothing_else(tmp_path):
    w = str(tmp_path)
    # word_order zero-shot: gpt right on pairs 0-69, t5 on 0-59: they differ on 10 pairs of 100, all for gpt.
    _fake_run(w, "gpt", "gpt", "causal_lm", probes={"word_order": 0.75},
              zero_shot={"word_order": _correct(70), "next_sentence": _correct(55)})
    _fake_run(w, "t5", "t5", "span_corruption", probes={"word_order": 0.70},
              zero_shot={"word_order": _correct(60), "next_sentence": _correct(55)})
    report.build(w)
    md = open(os.path.join(w, "report.md")).read()
    leads = {line.split("**")[1]: line for line in md.split("## Cost")[0].splitlines() if line.startswith("- **")}
    assert leads["probe: word_order"] == (
        "- **probe: word_order**: gpt leads with 75.0%, +5.0 points over t5 (one seed: no test; --seeds=N, N >= 2 "
        "(3 or more advised), for a paired t-test)")
    assert re.fullmatch(r"- \*\*probe: word_order \(zero-shot\)\*\*: gpt leads with 70\.0%, \+10\.0 points over t5 "
                        r"\(paired bootstrap over 100 pairs, 10,000 resamples, p = 0\.00\d: significant\)",
                        leads["probe: word_order (zero-shot)"])
    # The same results on the same pairs: p = 1.
    assert leads["probe: next_sentence (zero-shot)"] == (
        "- **probe: next_sentence (zero-shot)**: gpt and t5 tie at 55.0% (paired bootstrap over 100 pairs, 10,000 "
        "resamples, p = 1.000: not significant)")
    assert "With one seed some differences above were not tested" in md
    sig = _tables(md)["Significance of the differences"]
    assert len(sig) == 3 and all(r[-1] == "bootstrap, 100 pairs" for r in sig[1:])
    # A per-pair file that does not match the summary (left from an earlier checkpoint) is not used.
    path = os.path.join(w, "t5", planning.PER_PAIR_DIR, "word_order.json")
    with open(path) as f:
        stale = json.load(f)
    with open(path, "w") as f:
        json.dump({**stale, "correct": _correct(50)}, f)
    report.build(w)
    rec = json.loads(open(os.path.join(w, "report.json")).read())
    zero = next(r for r in rec["significance"] if r["yardstick"] == "probe: word_order (zero-shot)")
    assert zero["method"] is None and zero["p"] is None
    assert [r["per_example"] for r in rec["runs"]] == [
        ["probe/next_sentence (zero-shot)", "probe/word_order (zero-shot)"], ["probe/next_sentence (zero-shot)"]]


def test_aggregate_averages_the_seeds_that_have_a_number():
    rows = [{"name": f"g-seed={s}", "group": "g", "seed": s, "curve": {}, "examples": {}, "eval_loss": v,
             **({"probe/x": p} if p is not None else {})}
            for s, v, p in ((0, 3.0, None), (1, 3.3, 0.6), (2, 3.6, 0.7))]  # seed 0 lacks the probe
    (g,) = report.aggregate(rows)
    assert g["n"] == 3 and g["eval_loss"] == pytest.approx(3.3) and g["eval_loss_se"] == pytest.approx(0.3 / 3 ** 0.5)
    assert g["probe/x"] == pytest.approx(0.65) and g["probe/x_n"] == 2 and g["probe/x_se"] == pytest.approx(0.05)
    assert report_tables.probe_keys([g]) == ["probe/x"]


def test_compare_seeds_plans_every_contender_once_per_seed(tmp_path, capsys):
    w = str(tmp_path)
    one = compare.compare(w, "default", dry_run=True, log=lambda *_: None)
    assert [r.name for r in one] == ["bert", "gpt", "t5"]  # --seeds=1: today's names and seed
    capsys.readouterr()
    logs = []
    runs = compare.compare(w, "default", seeds=2, dry_run=True, log=logs.append)
    lines = capsys.readouterr().out.strip().splitlines()
    assert [r.name for r in runs] == ["bert-seed=0", "gpt-seed=0", "t5-seed=0", "bert-seed=1", "gpt-seed=1",
                                      "t5-seed=1"]
    assert [report.group_of(r.name) for r in runs] == [r.group for r in runs] == ["bert", "gpt", "t5"] * 2
    assert [r.config.seed for r in runs] == [r.seed for r in runs] == [0, 0, 0, 1, 1, 1]
    steps = {r.name: r.config.train.steps for r in one}
    assert [r.config.train.steps for r in runs] == [steps[r.group] for r in runs]  # seeds share their steps
    assert planning.config_diff(runs[0].config, runs[3].config) == ["seed: 0 -> 1"]
    assert len(lines) == 6 and sum("x 2 seeds" in m for m in logs) == 3
    for run, line in zip(runs, lines, strict=True):
        words = shlex.split(line)
        assert f"--workdir={os.path.join(w, run.name)}" in words and f"--config.seed={run.seed}" in words
    with pytest.raises(planning.SweepError, match=r"--seeds=0: give 1"):
        compare.compare(w, "default", seeds=0, dry_run=True, log=lambda *_: None)
    with pytest.raises(planning.SweepError, match=r"--seeds=2 sets config.seed .* drop --config.seed=3"):
        compare.compare(w, "default", seeds=2, overrides={"seed": 3}, dry_run=True, log=lambda *_: None)


def test_compare_keeps_a_contenders_plan_when_its_seeds_change(tmp_path):
    """Steps planned for one seed count serve another: plan.json records are matched by contender, not seed."""
    suite = suites.load("default")
    w = str(tmp_path)
    runs = compare.plan(w, "default", compare.suite_runs(suite), ("flops", 4e12), 5, {}, log=lambda *_: None)
    records = [{**r.record(), "measured_step_s": 0.125} for r in compare.seed_runs(runs, 3)]
    assert [r["name"] for r in records[:3]] == ["bert-seed=0", "gpt-seed=0", "t5-seed=0"]
    planning.write_plan(w, {"kind": "compare", "request": compare._request("default", ("flops", 4e12), 5, {}),
                            "runs": records})
    again = compare.plan(w, "default", compare.suite_runs(suite), ("flops", 4e12), 5, {}, log=lambda *_: None)
    assert [r.name for r in again] == ["bert", "gpt", "t5"] and [r.measured_step_s for r in again] == [0.125] * 3
    assert [r.config.train.steps for r in again] == [609, 335, 816] and "seed" not in again[0].overrides
    assert [r.hash for r in again] == [r.hash for r in runs]


def test_sweep_seeds_flag_replaces_the_files_seeds(monkeypatch):
    spec = {"config": "experiments/configs/{arch}.py:tiny", "grid": {"arch": ["gpt"],
                                                                     "model.position": ["rope", "alibi"]},
            "seeds": [0]}
    runs = sweep.expand(spec, seeds=3)
    assert [(r.group, r.seed) for r in runs] == [(g, s) for g in ("gpt-position=rope", "gpt-position=alibi")
                                                 for s in (0, 1, 2)]
    assert all(report.group_of(r.name) == r.group for r in runs)
    assert [r.seed for r in sweep.expand(spec)] == [0, 0]  # 0: the file's list
    with pytest.raises(planning.SweepError, match="--seeds=-1"):
        sweep.expand(spec, seeds=-1)
    monkeypatch.chdir(helpers.ROOT)
    path = "experiments/ablations/position.py"
    default = sweep.run_sweep(path, "runs/x", None, 5, {}, dry_run=True, log=lambda *_: None)
    three = sweep.run_sweep(path, "runs/x", None, 5, {}, dry_run=True, log=lambda *_: None, seeds=3)
    assert len(three) == len(default) // 2 * 3  # the file has seeds [0, 1]


# ---------------------------------------------------------------------------------------------- hardware


@pytest.mark.parametrize("kind,dtype,peak", [
    ("NVIDIA H100 80GB HBM3", "bfloat16", 989e12), ("NVIDIA H100 80GB HBM3", "float32", 494.5e12),
    ("NVIDIA H100 80GB HBM3", "float32_highest", 67e12), ("NVIDIA H200", "bfloat16", 989e12),
    ("NVIDIA H100 PCIe", "bfloat16", 756e12), ("NVIDIA A100-SXM4-40GB", "bfloat16", 312e12),
    ("TPU v4", "bfloat16", 275e12), ("TPU v5 lite", "bfloat16", 197e12), ("TPU v5", "float32", 459e12),
    ("TPU v5p", "bfloat16", 459e12), ("TPU v6 lite", "bfloat16", 918e12),
])
def test_peak_flops_table(kind, dtype, peak):
    got, source = hardware.peak_flops(types.SimpleNamespace(platform="gpu", device_kind=kind), dtype)
    assert got == peak and kind in source


def test_peak_flops_unknown_and_cpu(monkeypatch):
    with pytest.raises(hardware.UnknownDeviceError):
        hardware.table_peak("Some NPU")
    with pytest.raises(ValueError):
        hardware.table_peak("TPU v4", "int8")
    monkeypatch.setattr(hardware, "_measured", lambda dtype: 2.5e11)
    cpu = types.SimpleNamespace(platform="cpu", device_kind="cpu")
    monkeypatch.delenv("TRIAD_CPU_PEAK_FLOPS", raising=False)  # tests/conftest.py pins it
    got, source = hardware.peak_flops(cpu)
    assert got == 2.5e11 and source.startswith("measured")
    monkeypatch.setenv("TRIAD_CPU_PEAK_FLOPS", "3e11")
    assert hardware.peak_flops(cpu) == (3e11, "TRIAD_CPU_PEAK_FLOPS")
    assert hardware.measure_matmul_flops(n=128, repeats=2) > 1e6


def test_mfu_formula():
    # 47.7 GFLOP per step in 0.5 s = 95.4 GFLOP/s; against 250 GFLOP/s on one device: 38.16%.
    assert hardware.mfu(47.7e9, 0.5, 250e9) == pytest.approx(0.3816)
    assert hardware.mfu(47.7e9, 0.5, 250e9, n_devices=2) == pytest.approx(0.1908)
    with pytest.raises(ValueError):
        hardware.mfu(1.0, 0.0, 1.0)

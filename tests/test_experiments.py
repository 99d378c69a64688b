"""experiments/: suites at matched parameters and budgets, sweeps (names, dry-run commands, skip and resume),
the report builder on synthetic summaries, and hardware peaks / MFU."""

import json
import os
import re
import shlex
import types

import pytest
from absl import flags
from ml_collections import config_flags

from experiments import compare, hardware, planning, report, suites, sweep
from tests import helpers

ABLATIONS = ["position", "norm", "mlp", "attention", "size", "nsp"]


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
    assert [r.config.train.learning_rate for r in compare.suite_runs(suite)] == [1e-3, 3e-3, 2e-3]
    logs = []
    compare.compare(str(tmp_path), "default", overrides={"train.learning_rate": 3e-3}, dry_run=True, log=logs.append)
    assert [m for m in logs if "replaces" in m] == [
        "[compare] bert: its own train.learning_rate=0.001 (the suite's) replaces --config.train.learning_rate=0.003",
        "[compare] t5: its own train.learning_rate=0.002 (the suite's) replaces --config.train.learning_rate=0.003"]
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
    assert [r.config.train.steps for r in again] == [r.config.train.steps for r in runs] == [335, 335, 816]
    assert [r.measured_step_s for r in again] == [0.125] * 3
    changed = {**suite, "overrides": {"train.batch_size": 16}}
    replanned = compare.plan(w, "default", compare.suite_runs(changed), ("flops", 4e12), 5, {}, log=lambda *_: None)
    assert [r.config.train.steps for r in replanned] == [168, 168, 408]
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
        words = shlex.split(line)
        assert words[:3] == ["python", "-m", "train.main"]
        argv = ["train.main", *words[3:]]
        fv = flags.FlagValues()
        flags.DEFINE_string("workdir", None, "", flag_values=fv)
        config_flags.DEFINE_config_file("config", None, "", flag_values=fv, sys_argv=argv)
        fv(argv)
        assert fv.workdir == os.path.join("runs/x", run.name)
        assert planning.config_json(fv.config) == planning.config_json(run.config)


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
    report_md = (work / "report.md").read_text()
    assert "probe: word_order |" in report_md and "probe: word_order (random init)" in report_md
    assert "probe: next_sentence (zero-shot)" in report_md and "**probe: <task> (zero-shot)**" in report_md
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


# ---------------------------------------------------------------------------------------------- report


def _fake_run(workdir, name, arch, objective, *, seed=0, eval_loss=4.0, probes=None, group=None, extra_loss=0.0):
    """extra_loss: what eval/loss adds to eval/nll (an auxiliary term such as NSP's)."""
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
        summary["probes"] = probes
        summary["probe_results"] = {"pretrained": {t: {"accuracy": a, "examples": 400} for t, a in probes.items()}}
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
    return summary


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
    assert text in md
    header = md.split("\n| ")[1]
    for col in ["contender", "objective", "params", "train FLOPs/token", "tokens seen", "steps", "wall (s)",
                "compile (s)", "tokens/s", "MFU", "peak memory", "final train loss", "eval loss (own objective)",
                "eval accuracy", "eval bits/byte", "probe: sst2"]:
        assert col in header, col
    rows = {line.split(" | ")[0][2:]: line for line in md.splitlines() if line.startswith("| ") and "---" not in line}
    assert "masked LM" in rows["bert"] and "causal LM" in rows["gpt"] and "span corruption" in rows["t5"]
    assert "| 1.700 |" in rows["gpt"] and "| 1.700 |" not in rows["bert"]  # bits/byte only for causal LM
    assert "75.0%" in rows["gpt"] and "3.100 ± 0.141" in rows["t5"]  # probe column; seeds aggregated
    assert "different tasks" in md and "Matched: **training FLOPs" in md and "deviation" in md
    assert "near 50% on 400 examples is 2.5 points" in md  # 50 / sqrt(400)

    rec = json.loads(open(os.path.join(w, "report.json")).read())
    by_group = {r["group"]: r for r in rec["rows"]}
    assert set(by_group) == {"bert", "gpt", "t5"} and by_group["t5"]["n"] == 2
    want_mfu = s["flops_per_step"] / s["step_time_s"] / 494.5e12  # H100, float32 -> TF32 dense peak
    assert by_group["gpt"]["mfu"] == pytest.approx(want_mfu)
    assert by_group["gpt"]["flops"] == 40 * 4.0e10 and by_group["gpt"]["tokens"] == 40 * 4096
    assert by_group["bert"]["eval_bpb"] is None and by_group["gpt"]["probe/sst2"] == 0.75
    assert by_group["bert"]["eval_loss"] == 5.0 and "| 5.000 |" in rows["bert"]  # eval/nll, not eval/loss (5.69)
    assert report.curve(b["history"]["train"] + b["history"]["eval"], 1.0)["loss"] == [6.0, 5.0]  # plots too
    for png in report.PLOTS:
        with open(os.path.join(w, png), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    # Time axis: steps x measured step time (the untimed first window at the median).
    assert report.curve(s["history"]["train"] + s["history"]["eval"], 1.0)["seconds"] == [10.0, 20.0]


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
    got, source = hardware.peak_flops(types.SimpleNamespace(platform="cpu", device_kind="cpu"))
    assert got == 2.5e11 and source.startswith("measured")
    assert hardware.measure_matmul_flops(n=128, repeats=2) > 1e6


def test_mfu_formula():
    # 47.7 GFLOP per step in 0.5 s = 95.4 GFLOP/s; against 250 GFLOP/s on one device: 38.16%.
    assert hardware.mfu(47.7e9, 0.5, 250e9) == pytest.approx(0.3816)
    assert hardware.mfu(47.7e9, 0.5, 250e9, n_devices=2) == pytest.approx(0.1908)
    with pytest.raises(ValueError):
        hardware.mfu(1.0, 0.0, 1.0)

"""experiments/ladder.py: the sizes, rates and budgets a ladder plans, its bad input, and (slow) a whole tiny
ladder trained, skipped on a second call, and reported when partial. experiments/scaling/records.py reads it."""

import json
import os

import pytest

from experiments import compare, ladder, planning, suites
from experiments.planning import SweepError
from experiments.scaling import records
from tests import helpers

WIDTHS = (16, 32, 48, 64, 96, 128, 192, 256)


def _plan(suite="default", **given):
    s = ladder.settings(suites.load(suite), **given)
    return ladder.ladder_runs(suites.load(suite), None, {}, s, seeds=1, lr_check=True), s


@pytest.mark.parametrize("n", [1, 2, 3, 4, 6])
@pytest.mark.parametrize("W,k", [(3, 3), (4, 3), (6, 3), (6, 1), (7, 4)])
def test_windows_are_consecutive_widths_sliding_up_from_the_smallest_to_the_largest(n, W, k):
    widths = [32 * (i + 1) for i in range(W)]
    got = ladder.windows([10.0 ** i for i in range(n)], widths, k)
    starts = [widths.index(ws[0]) for ws in got.values()]
    for ws in got.values():
        i = widths.index(ws[0])
        assert ws == widths[i:i + k]
    assert starts == sorted(starts)
    if n > 1:
        assert starts[0] == 0 and starts[-1] == W - k


@pytest.mark.parametrize("width", WIDTHS)
def test_every_width_keeps_the_default_suite_matched_in_parameters(width):
    suite = suites.load("default")
    runs = compare.suite_runs(suite, None, ladder.DEFAULT["overrides"])  # the ladder's vocabulary: tighter
    sized = [planning.make_run(r.config_file, {**r.overrides, **ladder.size_overrides(r.config, width)},
                               group=r.group, hashed=False) for r in runs]
    params = compare.check_params(sized, suite["param_tolerance"])  # raises past the suite's tolerance
    assert len(params) == 3
    for r in sized:
        m = r.config.model
        assert m.d_model == width and m.n_heads == max(1, round(width / 32))  # about the suite's head width
        assert m.d_model % m.n_heads == 0 and (width % 32 or m.d_model // m.n_heads == 32)
        assert m.d_ff == (3 if r.group == "t5" else 4) * width  # T5's MLP stays narrowed by the same ratio
        assert (m.n_layers, m.n_decoder_layers) == ((2, 2) if r.group == "t5" else (4, 0))


def test_the_suite_width_reproduces_the_suite_and_the_rule_scales_every_rate():
    for r in compare.suite_runs(suites.load("modern")):
        c = r.config
        assert ladder.size_overrides(c, c.model.d_model) == {
            "model.d_model": c.model.d_model, "model.n_heads": c.model.n_heads, "model.d_ff": c.model.d_ff,
            **({"model.n_kv_heads": c.model.n_kv_heads} if c.model.n_kv_heads else {})}
        same, half = ladder.rates(c, c.model.d_model, 1.0), ladder.rates(c, 2 * c.model.d_model, 1.0)
        assert same["train.learning_rate"] == pytest.approx(c.train.learning_rate)
        assert half["train.learning_rate"] == pytest.approx(c.train.learning_rate / 2)
        assert ("train.muon_learning_rate" in same) == (c.train.optimizer == "muon")
        if c.train.optimizer == "muon":
            assert half["train.muon_learning_rate"] == pytest.approx(c.train.muon_learning_rate / 2)
        sqrt = ladder.rates(c, 4 * c.model.d_model, 0.5, factor=2.0)
        assert sqrt["train.learning_rate"] == pytest.approx(c.train.learning_rate)


def test_every_run_spends_its_budget_and_the_check_sits_at_the_smallest_budget():
    planned, s = _plan()
    names = [r.name for r, _ in planned]
    assert len(names) == len(set(names))
    for run, rec in planned:
        per_step = planning.shape_facts(run.config)["flops_per_step"]
        assert abs(rec["steps"] * per_step - rec["budget"]) <= per_step / 2  # the steps the budget buys
        assert run.config.train.learning_rate == pytest.approx(rec["lr"])
        suite_rate = {"bert": 2e-3, "gpt": 2e-3, "t5": 1e-3 * 2}[rec["contender"]]  # the suite's lr_scale: T5 x 2
        assert rec["lr"] == pytest.approx(suite_rate * 128 / rec["d_model"] * rec["lr_factor"])
    ladder_recs = [rec for _, rec in planned if rec["role"] == "ladder"]
    assert len(ladder_recs) == len(s["budgets"]) * s["sizes_per_budget"] * 3
    check = [rec for _, rec in planned if rec["role"] == "lr_check"]
    smallest = windows = ladder.windows(s["budgets"], s["widths"], s["sizes_per_budget"])[s["budgets"][0]]
    assert {rec["budget"] for rec in check} == {s["budgets"][0]}
    assert {rec["d_model"] for rec in check} == {smallest[0], windows[-1]}
    assert sorted((rec["lr_factor"], rec["seed"]) for rec in check if rec["contender"] == "gpt") == \
        [(0.5, 0), (0.5, 0), (1.0, 1), (1.0, 1), (2.0, 0), (2.0, 0)]
    order = [rec["budget"] for _, rec in planned]
    assert order == sorted(order)  # a partial ladder has its small budgets whole


@pytest.mark.parametrize("given,match", [
    (dict(widths=(64, 96, 100), sizes_per_budget=3), "--widths: 100 does not split into 3 heads of about the"),
    (dict(budgets=(1e9,)), "fewer than 20; raise the smallest --budgets"),
    (dict(sizes_per_budget=9), "--sizes_per_budget=9: give 1 to 5"),
    (dict(blimp=1001), "--blimp=1001"),
    (dict(zero_shot=("nli",)), "--zero_shot: unknown \\['nli'\\]"),
    (dict(lr_scale={"t6": 2.0}), "lr_scale names \\['t6'\\], not contenders of the suite"),
])
def test_bad_settings_are_one_line_errors_naming_the_flag(given, match, tmp_path):
    with pytest.raises(SweepError, match=match):
        ladder.ladder(str(tmp_path / "l"), dry_run=True, **given)
    assert not (tmp_path / "l").exists()


def test_seeds_and_report_only_refusals(tmp_path):
    with pytest.raises(SweepError, match="--seeds=0"):
        ladder.ladder(str(tmp_path), seeds=0, dry_run=True)
    with pytest.raises(SweepError, match="drop --config.seed"):
        ladder.ladder(str(tmp_path), overrides={"seed": 3}, dry_run=True)
    with pytest.raises(SweepError, match="no ladder.json; run the ladder first"):
        ladder.ladder(str(tmp_path), report_only=True)


def _summary(steps, params=1000, loss=3.0, **extra):
    return {"steps": steps, "flops_per_step": 2e6, "tokens_per_step": 100, "params": params,
            "final_eval": {"eval/nll": loss, "eval/loss": loss + 0.1, "eval/tokens": 4096}, **extra}


def test_records_read_finished_runs_and_name_the_missing_ones(tmp_path):
    runs = [{"name": n, "contender": "gpt", "size": "w32", "d_model": 32, "budget": 1e9, "seed": 0,
             "role": "ladder", "lr": 1e-3, "lr_factor": 1.0, "steps": 5} for n in ("a", "b", "c", "d")]
    (tmp_path / "ladder.json").write_text(json.dumps({"kind": "ladder", "yardsticks": {"blimp": 0.5,
                                                                                     "zero_shot/word_order": 0.5},
                                                      "runs": runs}))
    for name, summary in [("a", _summary(5, blimp={"overall": {"accuracy": 0.6, "se": 0.01}},
                                         zero_shot_results={"word_order": {"accuracy": 0.7}, "blimp": {}})),
                          ("b", _summary(5)), ("c", _summary(3)), ("d", _summary(5, stopped_by="SIGTERM"))]:
        os.makedirs(tmp_path / name)
        (tmp_path / name / "summary.json").write_text(json.dumps(summary))
    got, meta = records.load(str(tmp_path))
    assert [r["name"] for r in got] == ["a", "b"] and meta["missing"] == ["c", "d"] and meta["finished"] == 2
    a, b = got
    assert (a["flops"], a["tokens"], a["flops_per_token"], a["loss"]) == (1e7, 500, 2e4, 3.0)
    assert (a["blimp"], a["blimp_se"], a["zero_shot/word_order"]) == (0.6, 0.01, 0.7) and "zero_shot/blimp" not in a
    assert b["blimp"] is None and b["zero_shot/word_order"] is None
    with pytest.raises(FileNotFoundError, match="not a ladder's workdir"):
        records.load(str(tmp_path / "a"))


@pytest.mark.slow
def test_a_tiny_ladder_trains_skips_what_finished_and_reports_what_it_has(tmp_path):
    base = helpers.tiny_config("gpt", str(tmp_path))
    shared = {k: ladder._get(base, k) for k in ("data.train_files", "data.vocab_size", "data.cache_dir",
                                                "data.seq_len", "data.prefetch", "model.max_len",
                                                "train.progress_bar")} | {"model.max_len": 96}
    shape = {"model.d_model": 32, "model.n_heads": 2, "model.d_ff": 64, "model.n_layers": 2, "train.batch_size": 8}
    suite = tmp_path / "suite.py"
    suite.write_text(
        "def get_suite():\n    return dict(description='tiny ladder', contenders={"
        f"'gpt': dict(config='experiments/configs/gpt.py:tiny', overrides={shape!r}), "
        f"'bert': dict(config='experiments/configs/bert.py:tiny', overrides={shape!r})}}, "
        f"overrides={shared!r}, budget=('steps', 4), param_tolerance=0.05, evals=1, "
        "ladder=dict(widths=(16, 32, 48), sizes_per_budget=3, blimp=1, zero_shot=(), eval_steps=2, overrides={}))\n")
    s = ladder.settings(suites.load(str(suite)))
    biggest = compare.suite_runs(suites.load(str(suite)), ["gpt"])[0]
    sized = planning.make_run(biggest.config_file, {**biggest.overrides,
                                                    **ladder.size_overrides(biggest.config, 48)},
                              group="gpt", hashed=False)
    step = planning.shape_facts(sized.config)["flops_per_step"]
    budgets = (21 * step, 42 * step, 84 * step)
    work, logs = str(tmp_path / "ladder"), []
    ladder.ladder(work, str(suite), budgets=budgets, lr_check=False, resamples=10, log=logs.append)
    recs, meta = records.load(work)
    assert len(recs) == 3 * 3 * 2 and not meta["missing"] and s["widths"] == [16, 32, 48]
    assert all(r["blimp"] is not None for r in recs) and meta["yardsticks"] == {"blimp": 0.5}
    assert all(abs(r["flops"] - r["budget"]) <= r["flops"] / r["steps"] for r in recs)
    report = open(os.path.join(work, "ladder_report.md")).read()
    assert "held-out" in report.lower() and os.path.isfile(os.path.join(work, "isoflop.png"))

    logs.clear()
    ladder.ladder(work, str(suite), budgets=budgets, lr_check=False, resamples=10, log=logs.append)
    assert sum("skipped" in m for m in logs) == 18 and not any("starting" in m for m in logs)

    os.remove(os.path.join(work, recs[-1]["name"], "summary.json"))  # a partial ladder still reports
    ladder.ladder(work, str(suite), budgets=budgets, lr_check=False, resamples=10, report_only=True)
    assert records.load(work)[1]["missing"] == [recs[-1]["name"]]
    assert os.path.isfile(os.path.join(work, "ladder_report.json"))

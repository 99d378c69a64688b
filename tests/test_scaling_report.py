"""experiments/scaling/analysis.py, report.py and plots.py on synthetic ladders drawn from known laws: each
contender's loss from L = E + A / N^alpha + B / D^beta with C = f(N) D for an affine f (its optimum found here by a
grid search along the isoFLOP line), each yardstick from chance + (1 - chance) sigmoid(k (log10 C - c0)) with chance
0.5. Planted: gpt needs exactly 2x bert's compute on BLiMP (its c0 is log10 2 later), t5's steeper BLiMP curve crosses
bert's at 10^12.8 FLOPs, inside the runs' budgets."""

import os

# Before scipy loads its OpenBLAS: threaded, it makes L-BFGS-B many times slower on 2 busy cores.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import json  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from scipy import special  # noqa: E402

from experiments.scaling import analysis, plots, report  # noqa: E402

BUDGETS = (1e12, 4e12, 1.6e13, 6.4e13)
RATIOS = (1 / 4, 1 / 2, 1, 2, 4)  # sizes at a budget, times its true optimal N
NOISE = 0.004  # lognormal sigma of a run's loss
ACC_NOISE = 0.002  # normal sigma of a run's accuracy
LAWS = {  # E, A, B, alpha, beta: each contender's own objective, so their losses differ in scale
    "bert": {"E": 2.2, "A": 300.0, "B": 500.0, "alpha": 0.36, "beta": 0.30},
    "gpt": {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28},
    "t5": {"E": 1.9, "A": 350.0, "B": 450.0, "alpha": 0.32, "beta": 0.30},
}
LAWS["gpt-modern"] = LAWS["gpt"]
# f(N) = slope N + intercept, FLOPs per token
FPT = {"bert": (5.0, 2e4), "gpt": (6.0, 6e4), "t5": (4.5, 3e4), "gpt-modern": (6.0, 6e4)}
CROSS = 12.8  # log10 C where t5's BLiMP curve meets bert's
STICKS = {  # (k, c0) of each yardstick per contender; None: not scored. gpt-modern reaches gpt's BLiMP at C / 2.
    "blimp": {"bert": (0.8, 14.0), "gpt": (0.8, 14.0 + np.log10(2)), "t5": (1.6, CROSS - 0.8 * (CROSS - 14) / 1.6),
              "gpt-modern": (0.8, 14.0)},
    "zero_shot/word_order": {"bert": (0.6, 13.5), "gpt": (0.9, 13.0), "t5": (0.5, 14.5), "gpt-modern": None},
    "zero_shot/next_sentence": {"bert": (0.5, 14.0), "gpt": (0.5, 14.2), "t5": None, "gpt-modern": None},
}
META = {"suite": "synthetic", "contenders": ["bert", "gpt", "t5"], "budgets": list(BUDGETS), "sizes": {},
        "lr_rule": "synthetic", "yardsticks": dict.fromkeys(STICKS, 0.5), "modern_of": {},
        "predict": [1e15, 1e18, 1e21], "seeds": 1, "command": "pytest"}
R = 25  # bootstrap resamples


def fpt(contender, N):
    slope, intercept = FPT[contender]
    return slope * N + intercept


def true_loss(law, N, D):
    return law["E"] + law["A"] / N ** law["alpha"] + law["B"] / D ** law["beta"]


def true_n_opt(contender, C):
    u = np.arange(np.log(C) / 2 - 10, np.log(C) / 2 + 4, 1e-4)
    return float(np.exp(u[true_loss(LAWS[contender], np.exp(u), C / fpt(contender, np.exp(u))).argmin()]))


def accuracy(key, contender, C):
    k, c0 = STICKS[key][contender]
    return 0.5 + 0.5 * special.expit(k * (np.log10(C) - c0))


def ladder(contenders=("bert", "gpt", "t5"), budgets=BUDGETS, ratios=RATIOS, seed=0, loss_at=None):
    """Runs of each contender at each budget and size; loss_at(contender, budget, loss) may move a loss off its law."""
    rng = np.random.default_rng(seed)
    runs = []
    for name in contenders:
        for C in budgets:
            n_opt = true_n_opt(name, C)
            for i, r in enumerate(ratios):
                N = n_opt * r
                D = C / fpt(name, N)
                loss = true_loss(LAWS[name], N, D) * np.exp(NOISE * rng.normal())
                run = {"name": f"{name}-{C:.0e}-{i}", "contender": name, "size": f"d{32 * (i + 1)}",
                       "d_model": 32 * (i + 1), "budget": C, "flops": C * (1 + 1e-3 * rng.normal()), "params": N,
                       "tokens": D, "flops_per_token": fpt(name, N), "seed": 0, "role": "ladder", "lr": 1e-3,
                       "lr_factor": 1, "loss": loss_at(name, C, loss) if loss_at else loss}
                for key, per in STICKS.items():
                    run[key] = None if per[name] is None else accuracy(key, name, C) + ACC_NOISE * rng.normal()
                run["blimp_se"] = 0.006
                runs.append(run)
    return runs


@pytest.fixture(scope="module")
def full():
    runs = ladder()
    return runs, analysis.analyse(runs, META, resamples=R)


def pair(out, a, b, key):
    return next(p for p in out["pairwise"] if (p["a"], p["b"], p["yardstick"]) == (a, b, key))


def test_a_planted_2x_compute_multiplier_on_a_yardstick_is_recovered(full):
    _, out = full
    gpt_bert = pair(out, "bert", "gpt", "blimp")
    for m in gpt_bert["multipliers"][:len(BUDGETS) + 1]:  # the budgets run and 1e15
        assert m["low"] < m["point"] < m["high"] and m["point"] == pytest.approx(2, rel=0.15), m
    # The 90% intervals under-cover on ladders like this one (5 runs per budget): in 40 draws at 200 resamples they
    # held 2 in 75%, 72%, 85% and 90% of draws at the 4 budgets run. Checked where they come closest to 90%.
    for m in gpt_bert["multipliers"][2:4]:
        assert m["low"] <= 2 <= m["high"], m
    assert gpt_bert["crossing"] is None and gpt_bert["crossing_fraction"] < 0.2
    assert [m["budget"] for m in gpt_bert["multipliers"]] == [*BUDGETS, 1e15, 1e18, 1e21]


def test_a_planted_crossing_is_reported(full):
    _, out = full
    t5_bert = pair(out, "bert", "t5", "blimp")
    assert t5_bert["crossing"] == pytest.approx(10 ** CROSS, rel=0.5) and not t5_bert["crossing_beyond_data"]
    assert t5_bert["crossing_fraction"] > 0.8
    first, last = t5_bert["multipliers"][0], t5_bert["multipliers"][-1]
    assert first["point"] > 1 > last["point"]  # bert ahead at the smallest budget, t5 beyond the crossing
    assert not any(p["yardstick"] == "zero_shot/next_sentence" and "t5" in (p["a"], p["b"]) for p in out["pairwise"])


def test_fits_on_the_full_ladder(full):
    _, out = full
    for name, c in out["contenders"].items():
        slope, intercept = FPT[name]
        assert c["flops_per_token"]["slope"] == pytest.approx(slope) and c["flops_per_token"]["form"] == "affine"
        assert c["flops_per_token"]["intercept"] == pytest.approx(intercept, rel=1e-6)
        a3 = c["approach3"]
        assert a3["verdict"] == "trustworthy", a3["verdict"]
        assert [p["budget"] for p in a3["predictions"]] == [1e15, 1e18, 1e21]
        n_opt = a3["predictions"][0]["N_opt"]
        assert n_opt["low"] <= n_opt["point"] <= n_opt["high"]
        assert n_opt["point"] == pytest.approx(true_n_opt(name, 1e15), rel=0.25)
        assert c["extrapolation"][-1]["factor"] == pytest.approx(1e21 / BUDGETS[-1])
        assert c["yardsticks"]["blimp"]["verdict"] == "trustworthy"
    assert out["contenders"]["t5"]["yardsticks"]["zero_shot/next_sentence"] == {"skipped": "not scored"}


def test_report_files_lead_and_json(full, tmp_path):
    runs, _ = full
    lead = report.build(str(tmp_path), runs, META, resamples=R)
    text = (tmp_path / report.REPORT).read_text()
    assert text.startswith(lead) and "1e21" in lead
    factor = report.num(1e21 / BUDGETS[-1])
    assert f"1e21 is {factor} times the largest budget run" in lead and "not a measurement" in lead
    assert lead.index("Compute-optimal exponents") < lead.index("Pairwise") and "HIT/MISS" not in lead
    assert text.index("HIT/MISS") < text.index("## Trust") < text.index("## Runs") < text.index("![isoflop.png]")
    raw = (tmp_path / report.DATA).read_text()
    data = json.loads(raw, parse_constant=lambda c: pytest.fail(f"{c} in the JSON"))
    assert len(data["records"]) == len(runs) and data["meta"]["predict"] == META["predict"]
    assert data["analysis"]["contenders"]["gpt"]["approach3"]["verdict"] == "trustworthy"
    for name in plots.FILES:
        png = (tmp_path / name).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 30_000, name
    assert not [p.name for p in tmp_path.iterdir() if "tmp" in p.name]


def test_a_partial_ladder_reports_what_it_has_and_names_what_it_could_not_fit(tmp_path):
    runs = [r for r in ladder(("bert", "gpt"), seed=1) if r["budget"] != 1.6e13 or r["contender"] != "bert"
            or r["d_model"] in (32, 64)]  # bert: 2 sizes at 1.6e13
    runs += ladder(("t5",), budgets=(1e12,), seed=2)  # t5: one budget
    lead = report.build(str(tmp_path), runs, META, resamples=10)
    text = (tmp_path / report.REPORT).read_text()
    data = json.loads((tmp_path / report.DATA).read_text())["analysis"]
    bert = data["contenders"]["bert"]["approach2"]
    assert [o["budget"] for o in bert["left_out"]] == [1.6e13] and "2 model size(s)" in bert["left_out"][0]["reason"]
    assert "budget 1.6e13 left out" in bert["verdict"] and len(bert["optima"]) == 3
    skipped = {s["what"] for s in data["skipped"]}
    assert {"t5 approach 2", "t5 approach 3", "t5 held-out check", "t5 blimp", "bert vs t5 on blimp"} <= skipped
    assert "## What could not be fitted" in text and "- t5 approach 3: ValueError: approach 3 fits 5" in text
    assert "could not be made" in lead and "1e21" in lead
    for name in plots.FILES:
        assert (tmp_path / name).stat().st_size > 10_000


def _held_out_report(loss_at=None):
    runs = ladder(("gpt",), seed=4, loss_at=loss_at)
    meta = dict(META, contenders=["gpt"], yardsticks={})
    out = analysis.analyse(runs, meta, resamples=20)
    return out["contenders"]["gpt"]["held_out"], report.markdown(analysis.clean(out), runs, meta)


def test_the_held_out_check_prints_miss_off_the_law_and_hit_on_it():
    clean, text = _held_out_report()
    assert clean["approach3"]["hit"] is True and "| HIT |" in text.split("## Held-out check")[1]
    off, text = _held_out_report(lambda name, C, loss: loss * 1.1 if C == BUDGETS[-1] else loss)
    assert off["approach3"]["hit"] is False and off["approach2"]["hit"] is False
    rows = [line for line in text.split("## Held-out check")[1].split("## ")[0].splitlines() if "| gpt |" in line]
    assert len(rows) == 2 and all(line.endswith("| MISS |") for line in rows), rows
    assert off["approach3"]["measured"] > off["approach3"]["high"]


def lr_records(neighbour_gain, seed_one=True):
    """A ladder run of gpt d96 at 1e13 (loss 4.0), its lr_check neighbours at 0.5x (worse) and 2x (better by
    neighbour_gain) and, with seed_one, the rule again at seed 1 (4.01: noise 0.01)."""
    base = {"contender": "gpt", "size": "d96", "d_model": 96, "budget": 1e13, "params": 1e6, "tokens": 1e6,
            "flops_per_token": 6e6, "lr": 1e-3, "seed": 0}
    runs = [dict(base, role="ladder", lr_factor=1, loss=4.0), dict(base, role="lr_check", lr_factor=0.5, loss=4.2),
            dict(base, role="lr_check", lr_factor=2, loss=4.0 - neighbour_gain)]
    return runs + ([dict(base, role="lr_check", lr_factor=1, seed=1, loss=4.01)] if seed_one else [])


def test_the_learning_rate_check_fails_only_when_a_neighbour_beats_the_rule_by_more_than_the_noise(full):
    fails, holds, unknown = (analysis.lr_check(lr_records(g, s)) for g, s in ((0.05, True), (0.005, True),
                                                                              (0.05, False)))
    assert fails[0]["verdict"] == "fails: factor 2 beats the rule by 0.05 > noise 0.01"
    assert fails[0]["noise"] == pytest.approx(0.01) and fails[0]["losses"] == {0.5: 4.2, 2.0: 3.95, 1.0: 4.0}
    assert holds[0]["verdict"] == "holds" and unknown[0]["verdict"].startswith("undecided")
    out = dict(full[1], lr_check=fails)
    text = report.markdown(analysis.clean(out), full[0] + lr_records(0.05), META)
    row = next(line for line in text.splitlines() if line.startswith("| gpt | d96 |") and "noise" in line)
    assert "| 4.20 | 4.00 | 3.95 |" in row and "fails: factor 2" in row


def test_a_modern_recipe_is_compared_with_its_classic_on_loss_and_yardsticks():
    runs = ladder(("gpt", "gpt-modern"), seed=5)
    meta = dict(META, contenders=["gpt", "gpt-modern"], yardsticks={"blimp": 0.5}, modern_of={"gpt-modern": "gpt"})
    out = analysis.analyse(runs, meta, resamples=20)
    by = {m["yardstick"]: m for m in out["modern"]}
    assert set(by) == {"loss", "blimp"} and by["loss"]["modern"] == "gpt-modern"
    blimp = by["blimp"]["multipliers"]  # the classic needs 2x the modern's compute
    assert all(m["point"] == pytest.approx(2, rel=0.15) and m["low"] < m["point"] < m["high"]
               for m in blimp[:len(BUDGETS)]), blimp
    loss = by["loss"]["multipliers"][len(BUDGETS) - 1]  # one law: the classic needs the same compute
    assert loss["low"] <= 1 <= loss["high"] and loss["point"] == pytest.approx(1, rel=0.2)
    assert "### Modern recipe over its classic contender" in report.lead(analysis.clean(out), runs, meta)


def test_three_sizes_per_budget_give_approach_2_point_values_without_intervals_and_say_why():
    runs = ladder(("gpt",), ratios=(1 / 3, 1, 3), seed=6)
    meta = dict(META, contenders=["gpt"], yardsticks={})
    out = analysis.analyse(runs, meta, resamples=10)
    a2 = out["contenders"]["gpt"]["approach2"]
    assert "resamples" in a2["intervals_failed"] and "5 or more sizes" in a2["intervals_failed"]
    assert a2["exponents"]["a"]["low"] is None and 0.3 < a2["exponents"]["a"]["point"] < 0.6
    assert "no residual to judge" in a2["verdict"] and a2["verdict"].startswith("not trustworthy")
    assert out["contenders"]["gpt"]["held_out"]["approach2"]["skipped"].startswith("all 40 bootstrap resamples")
    lead = report.lead(analysis.clean(out), runs, meta)
    assert "- gpt approach 2: point values only, " in lead

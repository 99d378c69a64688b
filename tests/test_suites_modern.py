"""The modern suite and its learning-rate grid: contenders, matched parameters, their recipes as configs, and plans
whose commands parse."""

import pytest

from experiments import compare, planning, suites
from experiments.suites import learning_rate, modern
from model import config as model_config
from tests import helpers


def test_modern_suite_has_the_classic_and_the_modern_contenders_at_matched_parameters():
    suite = suites.load("modern")
    runs = {r.name: r for r in compare.suite_runs(suite)}
    assert list(runs) == ["bert", "gpt", "t5", "bert-modern", "gpt-modern", "t5-modern"]
    params = compare.check_params(list(runs.values()), 0.005)  # within 0.5% of each other
    assert len(params) == 6
    default = {r.name: r for r in compare.suite_runs(suites.load("default"))}
    for name in ("bert", "gpt", "t5"):  # the classic contenders are the default suite's, unchanged
        assert planning.config_json(runs[name].config) == planning.config_json(default[name].config)
    for name in ("bert-modern", "gpt-modern", "t5-modern"):
        c = runs[name].config
        assert c.data.document_mask and c.train.schedule == "wsd" and not c.model.use_bias
        assert c.train.batch_size == 8 and c.train.learning_rate == modern.LEARNING_RATES[name]
        model_config.from_dict(c.model)  # a valid ModelConfig
    g, b = runs["gpt-modern"].config, runs["bert-modern"].config
    assert (g.train.optimizer, g.model.mlp, g.model.logits_soft_cap, g.model.qk_norm) == ("muon", "relu2", 15.0, True)
    assert g.train.muon_learning_rate == pytest.approx(modern.MUON_RATIO * g.train.learning_rate)
    assert (b.model.attention_pattern, b.model.attention_window, b.objective.mask_rate) == ("GLL", 32, 0.3)
    assert suite["zero_shot"] and suite["probes"] and suite["budget"] == suites.load("default")["budget"]


def test_modern_learning_rate_grid_moves_muon_with_adamw():
    runs = compare.suite_runs(suites.load("modern_learning_rate"))
    assert len(runs) == 3 * len(learning_rate.LRS) + 2  # bert-modern's grid goes on past its best at 5e-3
    by = {r.name: r.config.train for r in runs}
    assert by["gpt-modern@0.0005"].learning_rate == 5e-4
    assert by["gpt-modern@0.0005"].muon_learning_rate == pytest.approx(5e-4 * modern.MUON_RATIO)
    assert by["bert-modern@0.005"].learning_rate == 5e-3 and by["bert-modern@0.005"].optimizer == "adamw"


@pytest.mark.parametrize("suite", ["modern", "modern_learning_rate"])
def test_modern_suites_plan_commands_that_parse(suite, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(helpers.ROOT)
    runs = compare.compare(str(tmp_path), suite, seeds=2 if suite == "modern" else 1, dry_run=True,
                           log=lambda *_: None)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == len(runs) == (12 if suite == "modern" else 17)
    for run, line in [(runs[0], lines[0]), (runs[-1], lines[-1])]:
        assert planning.config_json(helpers.parse_command(line)[1]) == planning.config_json(run.config)


def test_a_changed_masking_rate_is_another_objective_in_the_report():
    from experiments import report

    def cfg(**objective):
        return {"config": {"objective": {"name": "mlm", "mask_rate": 0.15, "whole_word": False, **objective}}}

    assert report.objective_of("mlm", cfg()) == ("mlm", "masked LM")
    assert report.objective_of("mlm", cfg(mask_rate=0.3)) == ("mlm[mask_rate=0.3]", "masked LM, mask_rate 0.3")
    assert report.objective_of("causal_lm", {"config": {"objective": {"mask_rate": 0.3}}})[0] == "causal_lm"
    assert report.objective_of("mlm", {}) == ("mlm", "masked LM")  # an old workdir without config.json

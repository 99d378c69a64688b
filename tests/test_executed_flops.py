"""The executed FLOP account (train/optim.py executed_flops_per_step, model/flops.py newton_schulz_flops) against a
second count from the real parameter tree and against XLA's cost analysis of the compiled training step."""

import math

import jax
import numpy as np
import pytest

from experiments import planning
from model import abstract_params, flops
from model import config as model_config
from tests.helpers import tiny_config
from train import loop, optim


def _ns_from_the_tree(params, steps: int) -> float:
    """Newton-Schulz FLOPs of every parameter Muon gets, from the shapes optim hands optax (its dimension numbers:
    batch axes, then the reduction axes as rows, the output axes as columns)."""
    total = 0.0
    leaves = jax.tree_util.tree_leaves_with_path(params)
    for path, x in leaves:
        if not optim.is_hidden_matrix(path):
            continue
        dims = optim.muon_dimension_numbers(path, x)
        red, out = np.atleast_1d(dims.reduction_axis), np.atleast_1d(dims.output_axis)
        rows = math.prod(x.shape[a] for a in red)
        cols = math.prod(x.shape[a] for a in out)
        batch = x.size // (rows * cols)
        m, n = sorted((rows, cols))
        total += batch * steps * (2 * m * m * n + 2 * m**3 + 2 * m * m * n)
    return total


@pytest.mark.parametrize("arch,extra", [("gpt", {}), ("bert", {"mlp": "geglu"}), ("t5", {"n_decoder_layers": 3}),
                                        ("gpt", {"scan_layers": True, "n_kv_heads": 1}),
                                        ("t5", {"scan_layers": True, "mlp": "swiglu"})])
def test_newton_schulz_count_equals_the_parameter_tree_muon_sees(arch, extra):
    cfg = model_config.ModelConfig(arch=arch, vocab_size=300, d_model=48, n_heads=4, d_ff=80, n_layers=2, max_len=32,
                                   **extra)
    assert flops.newton_schulz_flops(cfg, 5) == _ns_from_the_tree(abstract_params(cfg), 5) > 0
    assert flops.newton_schulz_flops(cfg, 2) == pytest.approx(flops.newton_schulz_flops(cfg, 5) * 2 / 5)


def _xla_flops(config, tmp_path) -> tuple[float, dict]:
    _, model_cfg, _, runner = loop.build(config)
    state = runner.init(jax.random.key(0))
    data = loop.build(config)[0]
    runner.train(state, data.train.batch(0))  # compiles (ahead of time: the executable whose cost we read)
    cost = runner.compiled_train().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    step = optim.executed_flops_per_step(model_cfg, config.train, runner.objective.lengths,
                                         runner.objective.predicted)
    return float(cost["flops"]), step


@pytest.mark.parametrize("arch,optimizer", [
    pytest.param("gpt", "adamw", marks=pytest.mark.slow), ("gpt", "muon"), ("bert", "adamw"),
    pytest.param("bert", "muon", marks=pytest.mark.slow), ("t5", "muon")])  # default suite: each term once
def test_executed_flops_match_xla_cost_analysis_of_the_training_step(arch, optimizer, tmp_path):
    """XLA counts every FLOP of the compiled step; we count matmuls only. What XLA sees and we do not (softmax, norms,
    GELU, the loss, Adam's and Muon's elementwise updates and norms) keeps its count 5-6% above ours at this small
    shape; a missing matmul term (Muon's iterations are 26-42% of these steps) or one counted but not run (BERT's
    head at every position, +23%) would not fit."""
    c = tiny_config(arch, str(tmp_path), **{"model.d_model": 64, "model.d_ff": 256, "model.n_heads": 4,
                                            "data.seq_len": 64, "model.max_len": 64, "train.optimizer": optimizer,
                                            "train.muon_learning_rate": 0.02})
    xla, step = _xla_flops(c, tmp_path)
    assert (step["optimizer"] > 0.1 * step["model"]) == (optimizer == "muon")
    assert step["executed"] == step["model"] + step["optimizer"]
    assert 1.0 <= xla / step["executed"] <= 1.08, (xla, step)  # measured 1.050-1.063 at this shape
    if arch == "bert":  # the conventional count (head at every position) is what the step does NOT run
        assert step["model_6n"] > 1.2 * step["model"]


def test_budgets_charge_the_executed_flops(tmp_path):
    for arch, optimizer in (("bert", "adamw"), ("gpt", "muon")):
        c = tiny_config(arch, str(tmp_path), **{"train.optimizer": optimizer})
        facts = planning.shape_facts(c)
        _, model_cfg, _, runner = loop.build(c)
        step = optim.executed_flops_per_step(model_cfg, c.train, runner.objective.lengths, runner.objective.predicted)
        assert facts["flops_per_step"] == step["executed"] and facts["model_flops_per_step"] == step["model_6n"]
        assert planning.steps_for_budget(c, "flops", 1000 * step["executed"]) == 1000

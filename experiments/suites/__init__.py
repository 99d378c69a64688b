"""Suites of contenders for experiments/compare.py: one module per suite with `get_suite()`.

get_suite() returns a dict:
  description      one paragraph for the report
  contenders       {name: dict(config='experiments/configs/gpt.py:tiny', overrides={path: value})}
  budget           (kind, value) trained by default: kind 'flops', 'tokens', 'seconds' or 'steps'
  param_tolerance  largest allowed max/min - 1 of the contenders' parameter counts (compare refuses more)
  evals            evaluations per contender, evenly spaced in its steps
  probes           (optional) probe tasks (data/probes.py) each contender is fine-tuned on after training, with
                   the same model from a random init as the baseline (experiments/probes.py); default ()
  zero_shot        (optional) probe tasks each contender scores zero-shot after training; default ()
  blimp            (optional) BLiMP pairs per paradigm each contender scores zero-shot after training (the fixed
                   subset of experiments/blimp.py; 1000 = all of BLiMP); default 0, none
  ladder           (optional) the scaling ladder experiments/ladder.py runs for this suite: any of its DEFAULT keys
                   (budgets, widths, sizes_per_budget, lr_exponent, lr_scale, blimp, zero_shot, evals, eval_steps,
                   overrides)
  overrides        (optional) {path: value} every contender shares; --config overrides replace them, a
                   contender's own overrides come last (compare logs where one replaces a --config value);
                   default {}
"""

import importlib
import os

from experiments.planning import SweepError, load_module

KEYS = ("description", "contenders", "budget", "param_tolerance", "evals")
OPTIONAL = ("probes", "zero_shot", "blimp", "overrides", "ladder")


def load(name: str) -> dict:
    """The suite `name` (a module of this package, 'default') or a path to a suite file."""
    if name.endswith(".py"):
        module = load_module(name, f"--suite={name}: file not found")
    else:
        try:
            module = importlib.import_module(f"experiments.suites.{name}")
        except ModuleNotFoundError:
            here = os.path.dirname(__file__)
            names = sorted(f[:-3] for f in os.listdir(here) if f.endswith(".py") and not f.startswith("_"))
            raise SweepError(f"--suite={name}: no such suite; choose one of {names} or a path to a .py file") from None
    suite = module.get_suite()
    if not set(KEYS) <= set(suite) <= set(KEYS + OPTIONAL):
        raise SweepError(f"suite {name}: get_suite() must return {KEYS} (and optionally {OPTIONAL}); got "
                         f"{sorted(suite)}")
    return {"probes": (), "zero_shot": (), "blimp": 0, "overrides": {}, **suite}

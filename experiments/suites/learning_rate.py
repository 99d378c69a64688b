"""The learning-rate grid behind the default suite: each of its contenders at each peak learning rate of LRS, at
4e12 training FLOPs with the default suite's batch and schedule shape.

  python -m experiments.compare --suite=learning_rate --workdir=runs/lr        (15 runs of the 4e12 budget)
  python -m experiments.compare --suite=learning_rate --workdir=runs/lr --contenders=bert@0.001,bert@0.003

Read it on the eval-loss column: within one contender the rows share an objective, so their losses compare (across
contenders they do not). Each default contender takes the learning rate with the lowest eval loss here (the
measured grid is in docs/results.md). The probe columns are off: the choice is made on the pretraining objective
alone, never on the probes it is later judged by (pass --zero_shot=word_order to see them).
"""

from experiments.suites import default

LRS = (5e-4, 1e-3, 2e-3, 3e-3, 5e-3)
BUDGET = ("flops", 4e12)  # Where the grid was measured; --budget_flops=... runs it at another budget.


def get_suite() -> dict:
    """default's contenders x LRS (see the module docstring)."""
    base = default.get_suite()
    contenders = {}
    for name, c in base["contenders"].items():
        for lr in LRS:
            contenders[f"{name}@{lr:g}"] = dict(config=c["config"],
                                               overrides={**c["overrides"], "train.learning_rate": lr})
    return dict(base, description=f"The default suite's contenders at peak learning rates {', '.join(map(str, LRS))}; "
                "compare eval losses within a contender only.", contenders=contenders, probes=(), zero_shot=(), blimp=0,
                budget=BUDGET)

"""The learning-rate grid behind the modern suite: each modern contender at each peak learning rate of
learning_rate.LRS, at 4e12 training FLOPs, as learning_rate.py does for the default suite.

  python -m experiments.compare --suite=modern_learning_rate --workdir=runs/modern_lr        (15 runs of 4e12)

gpt-modern's Muon rate moves with its AdamW rate (modern.MUON_RATIO times it). bert-modern's loss still fell at the
grid's top rate, so its grid goes on upwards (EXTEND) until it turns. Read it on the eval-loss column,
within one contender; each takes the rate of lowest eval loss (modern.LEARNING_RATES; the grid is in
docs/results.md). The probes are off: the choice is made on the pretraining objective alone.
"""

from experiments.suites import learning_rate, modern

EXTEND = {"bert-modern": (8e-3, 1.2e-2)}  # rates past learning_rate.LRS where the grid's best was its last point


def get_suite() -> dict:
    """modern's own contenders x learning_rate.LRS (see the module docstring)."""
    suite = modern.get_suite()
    contenders = {f"{name}@{lr:g}": modern.with_rate(c, lr) for name, c in modern.MODERN.items()
                  for lr in learning_rate.LRS + EXTEND.get(name, ())}
    return dict(suite, description=f"The modern suite's own contenders at peak learning rates "
                f"{', '.join(map(str, learning_rate.LRS))}; compare eval losses within a contender only.",
                contenders=contenders, probes=(), zero_shot=(), blimp=0, budget=learning_rate.BUDGET)

"""Learning-rate schedule x architecture: cosine against warmup-stable-decay with a linear or a 1-sqrt final decay.

  python -m experiments.sweep --sweep=experiments/ablations/schedule.py --workdir=runs/schedule
  python -m experiments.sweep --sweep=experiments/ablations/schedule.py --workdir=runs/schedule --dry_run

Same warmup, peak rate (the tiny preset's) and final rate (train.min_lr_ratio of the peak) for all; wsd holds the
peak until the last train.decay_fraction (0.2) of the steps and then decays (Hägele et al. 2024 report 1-sqrt
ahead of linear, and wsd on par with cosine). AdamW throughout.
3 schedules x 3 architectures x 2 seeds = 18 runs of the cheap CPU model (experiments/sweep.py CHEAP).
"""

from experiments.sweep import CHEAP


def get_sweep() -> dict:
    """The grid (see experiments/sweep.py for the format)."""
    return dict(
        description="Schedule x architecture on the cheap CPU model: cosine vs wsd (last 20% of steps decaying, "
                    "linear or 1-sqrt), same warmup, peak and final rate.",
        config="experiments/configs/{arch}.py:tiny",
        base=CHEAP,
        grid={
            "arch": ["gpt", "bert", "t5"],
            "schedule": {
                "cosine": {"train.schedule": "cosine"},
                "wsd-linear": {"train.schedule": "wsd", "train.decay_shape": "linear"},
                "wsd-1-sqrt": {"train.schedule": "wsd", "train.decay_shape": "1-sqrt"},
            },
        },
        seeds=[0, 1],
    )

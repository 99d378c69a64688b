"""A small scaling ladder: the same depth and training length at three widths, for each architecture.

  python -m experiments.sweep --sweep=experiments/ablations/size.py --workdir=runs/size
  python -m experiments.sweep --sweep=experiments/ablations/size.py --workdir=runs/size --budget_flops=3e12

Widths 32, 64 and 128 (heads of 16, d_ff = 4 x width) on the cheap CPU model's data and schedule; T5 keeps its
2 + 2 split of the 4 blocks. By default every size trains the same 150 steps (so the larger ones spend more
compute); --budget_flops gives every point the same compute instead. 3 sizes x 3 architectures x 2 seeds = 18 runs.
"""

from experiments.sweep import CHEAP

WIDTHS = (32, 64, 128)


def get_sweep() -> dict:
    """The grid (see experiments/sweep.py for the format)."""
    return dict(
        description="Width ladder (d_model 32 / 64 / 128, 4 blocks) on the cheap CPU model.",
        config="experiments/configs/{arch}.py:tiny",
        base=CHEAP,
        grid={
            "arch": ["gpt", "bert", "t5"],
            "size": {f"d{w}": {"model.d_model": w, "model.n_heads": w // 16, "model.d_ff": 4 * w} for w in WIDTHS},
        },
        seeds=[0, 1],
    )

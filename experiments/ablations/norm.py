"""Normalisation: pre- or post-norm residual blocks x LayerNorm or RMSNorm, for each architecture.

  python -m experiments.sweep --sweep=experiments/ablations/norm.py --workdir=runs/norm

Post-norm blocks normalise after the residual add, so the stack needs no final norm (as in the original
Transformer and BERT): the 'post' setting turns model.final_norm off. 2 x 2 x 3 architectures x 2 seeds = 24 runs
of the cheap CPU model. A run that diverges (post-norm at a high learning rate can) is recorded in its failed.json
and left out of the table; the others go on.
"""

from experiments.sweep import CHEAP


def get_sweep() -> dict:
    """The grid (see experiments/sweep.py for the format)."""
    return dict(
        description="Pre- vs post-norm x LayerNorm vs RMSNorm on the cheap CPU model.",
        config="experiments/configs/{arch}.py:tiny",
        base=CHEAP,
        grid={
            "arch": ["gpt", "bert", "t5"],
            "placement": {
                "pre": {"model.norm_position": "pre", "model.final_norm": True},
                "post": {"model.norm_position": "post", "model.final_norm": False},
            },
            "model.norm": ["layernorm", "rmsnorm"],
        },
        seeds=[0, 1],
    )

"""Position encodings x architecture: does RoPE (or ALiBi, or T5's relative bias) help an encoder as much as a decoder?

  python -m experiments.sweep --sweep=experiments/ablations/position.py --workdir=runs/pos
  python -m experiments.sweep --sweep=experiments/ablations/position.py --workdir=runs/pos --dry_run

5 encodings x 3 architectures x 2 seeds = 30 runs of the cheap CPU model (experiments/sweep.py CHEAP; what a run
costs: docs/results.md). `--steps=N` or `--budget_flops=F` changes the length; `--config.x=y` changes every run.
"""

from experiments.sweep import CHEAP


def get_sweep() -> dict:
    """The grid (see experiments/sweep.py for the format)."""
    return dict(
        description="Position encoding x architecture on the cheap CPU model; each architecture on its own "
                    "objective, so compare encodings within an architecture.",
        config="experiments/configs/{arch}.py:tiny",
        base=CHEAP,
        grid={
            "arch": ["gpt", "bert", "t5"],
            "model.position": ["learned", "sinusoidal", "rope", "alibi", "t5_relative"],
        },
        seeds=[0, 1],
    )

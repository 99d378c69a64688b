"""Local / global attention patterns (model.attention_pattern over model.attention_window): all global, all local,
Gemma 2's alternation and ModernBERT's global-every-third, with model.attention_window=16 on 64-token sequences (a
causal query sees itself and the 15 tokens before it, a bidirectional one 15 on each side).

  python -m experiments.sweep --sweep=experiments/ablations/attention_pattern.py --workdir=runs/pattern

The cheap model has 4 blocks (t5: 4 + 4; each stack repeats the pattern over its own depth). Parameters are equal;
the budget counts the full attention square in every layer, as the einsum attention computes it, so a local layer
saves no budget here; `mfu_causal` and flops' `attention_causal` count only the pairs inside the window
(model/flops.py). 4 x 3 architectures x 2 seeds = 24 runs of the cheap CPU model.
"""

from experiments.sweep import CHEAP

WINDOW = 16


def get_sweep() -> dict:
    """The grid (see experiments/sweep.py for the format)."""
    return dict(
        description=f"Per-layer local (window {WINDOW}) / global attention on the cheap CPU model.",
        config="experiments/configs/{arch}.py:tiny",
        base={**CHEAP, "model.attention_window": WINDOW},
        grid={
            "arch": ["gpt", "bert", "t5"],
            "pattern": {
                "global": {"model.attention_pattern": "G"},
                "local": {"model.attention_pattern": "L"},
                "LG": {"model.attention_pattern": "LG"},
                "GLL": {"model.attention_pattern": "GLL"},
            },
        },
        seeds=[0, 1],
    )

"""Attention heads: multi-head, grouped-query (2 key/value heads) and multi-query (1), with and without QK-norm.

  python -m experiments.sweep --sweep=experiments/ablations/attention.py --workdir=runs/attn

The cheap model has 4 query heads of width 16; fewer key/value heads shrink the key/value projections (and a
decoder's KV cache), so GQA and MQA have slightly fewer parameters and FLOPs than MHA: the report lists both.
3 x 2 x 3 architectures x 2 seeds = 36 runs of the cheap CPU model.
"""

from experiments.sweep import CHEAP


def get_sweep() -> dict:
    """The grid (see experiments/sweep.py for the format)."""
    return dict(
        description="MHA / GQA / MQA x QK-norm on the cheap CPU model (4 query heads).",
        config="experiments/configs/{arch}.py:tiny",
        base=CHEAP,
        grid={
            "arch": ["gpt", "bert", "t5"],
            "heads": {
                "mha": {"model.n_kv_heads": 0},
                "gqa": {"model.n_kv_heads": 2},
                "mqa": {"model.n_kv_heads": 1},
            },
            "model.qk_norm": [False, True],
        },
        seeds=[0, 1],
    )

"""MLP kind: ReLU, GELU, squared ReLU (So et al. 2021; modded-nanogpt, nanochat) and the gated SwiGLU / GeGLU
(Shazeer 2020), at equal MLP parameters.

  python -m experiments.sweep --sweep=experiments/ablations/mlp.py --workdir=runs/mlp

Gated MLPs have three matrices instead of two, so their hidden width is 2/3 of the plain one (256 -> 171 on the
cheap model), as in the GLU-variants paper: every point has the same parameters and about the same FLOPs.
5 kinds x 3 architectures x 2 seeds = 30 runs of the cheap CPU model.
"""

from experiments.sweep import CHEAP

D_FF = CHEAP["model.d_ff"]
GATED_D_FF = round(2 * D_FF / 3)


def get_sweep() -> dict:
    """The grid (see experiments/sweep.py for the format)."""
    return dict(
        description=f"MLP kind on the cheap CPU model; gated kinds at d_ff {GATED_D_FF} to match the "
                    f"parameters of d_ff {D_FF}.",
        config="experiments/configs/{arch}.py:tiny",
        base=CHEAP,
        grid={
            "arch": ["gpt", "bert", "t5"],
            "mlp": {
                "relu": {"model.mlp": "relu"},
                "gelu": {"model.mlp": "gelu"},
                "relu2": {"model.mlp": "relu2"},
                "swiglu": {"model.mlp": "swiglu", "model.d_ff": GATED_D_FF},
                "geglu": {"model.mlp": "geglu", "model.d_ff": GATED_D_FF},
            },
        },
        seeds=[0, 1],
    )

"""Optimizer x architecture: AdamW, Muon (hidden matrices; AdamW on the rest) and Lion, on the cheap CPU model.

  python -m experiments.sweep --sweep=experiments/ablations/optimizer.py --workdir=runs/optimizer
  python -m experiments.sweep --sweep=experiments/ablations/optimizer.py --workdir=runs/optimizer --dry_run

Each optimizer runs at a rate sensible for it, taken from published practice and NOT tuned here: AdamW at the
tiny preset's 3e-3; Muon at muon_learning_rate 0.02 (nanochat's and modded-nanogpt's rate under optax's
sqrt(max(1, out/in)) scaling) with its AdamW group (embeddings, head, norms, biases) at the same 3e-3; Lion at a
3x lower rate and 3x higher weight decay than AdamW (Chen et al. 2023 advise 3-10x), which keeps lr x decay equal.
A claim that one optimizer beats another needs a learning-rate grid for each first (as
experiments/suites/learning_rate.py does for AdamW). Same schedule (cosine) and decay mask for all.
3 optimizers x 3 architectures x 2 seeds = 18 runs of the cheap CPU model (experiments/sweep.py CHEAP).
"""

from experiments.sweep import CHEAP

ADAMW_LR = 3e-3  # the tiny preset's rate (experiments/configs/base.py SIZES), with the default decay 0.1
MUON_LR = 0.02  # the Muon group's peak (train.muon_learning_rate's default)
LION_LR, LION_DECAY = 1e-3, 0.3  # 3x below AdamW's rate, 3x above its decay


def get_sweep() -> dict:
    """The grid (see experiments/sweep.py for the format)."""
    return dict(
        description="Optimizer x architecture on the cheap CPU model, each optimizer at a rule-of-thumb rate "
                    "(not tuned here): AdamW 3e-3; Muon 0.02 on block matrices + AdamW 3e-3; Lion 1e-3, decay 0.3.",
        config="experiments/configs/{arch}.py:tiny",
        base=CHEAP,
        grid={
            "arch": ["gpt", "bert", "t5"],
            "optimizer": {
                "adamw": {"train.optimizer": "adamw", "train.learning_rate": ADAMW_LR},
                "muon": {"train.optimizer": "muon", "train.learning_rate": ADAMW_LR,
                         "train.muon_learning_rate": MUON_LR},
                "lion": {"train.optimizer": "lion", "train.learning_rate": LION_LR, "train.weight_decay": LION_DECAY},
            },
        },
        seeds=[0, 1],
    )

"""Encoder-only BERT trained with masked language modelling.

  python -m train.main --config=experiments/configs/bert.py:tiny --workdir=runs/bert

Variants: `tiny` and `small` (our sizes) and the published architectures bert-base (their exact
layer choices and sizes, trained here at the `small` training size on our tokenizer).
"""

from experiments.configs import base


def get_config(arg: str = "tiny"):
    """Returns the experiment config for variant `arg`."""
    return base.get_config("bert", arg)

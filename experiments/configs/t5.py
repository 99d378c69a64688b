"""Encoder-decoder T5 trained with span corruption.

  python -m train.main --config=experiments/configs/t5.py:tiny --workdir=runs/t5

Variants: `tiny` and `small` (our sizes) and the published architectures t5-small, t5.1.1-small (their exact
layer choices and sizes, trained here at the `small` training size on our tokenizer).
"""

from experiments.configs import base


def get_config(arg: str = "tiny"):
    """Returns the experiment config for variant `arg`."""
    return base.get_config("t5", arg)

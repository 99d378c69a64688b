"""Decoder-only GPT trained with next-token prediction.

  python -m train.main --config=experiments/configs/gpt.py:tiny --workdir=runs/gpt

Variants: `tiny` and `small` (our sizes) and the published architectures gpt2 (their exact
layer choices and sizes, trained here at the `small` training size on our tokenizer).
"""

from experiments.configs import base


def get_config(arg: str = "tiny"):
    """Returns the experiment config for variant `arg`."""
    return base.get_config("gpt", arg)

"""The default suite's three contenders next to each family in its 2024-2026 recipe, at the same training FLOPs.

  python -m experiments.compare --suite=modern --workdir=runs/modern --seeds=3
  python -m experiments.compare --suite=modern --workdir=runs/modern --contenders=gpt,gpt-modern

Each modern contender keeps its family's objective and the default suite's `tiny` shape, corpus, tokenizer, batch
and budget, and takes the layers and training of its family's current recipe:
- bert-modern (ModernBERT, Warner et al. 2024): RoPE, no biases, GeGLU, an embedding norm, global attention in every
  third block and a local window elsewhere (model.attention_window=32 keeps |q - k| < 32: 31 each side here, for
  128-token sequences; ModernBERT's 128-token window is 64 each side, of 8,192), 30% masking, AdamW with a
  warmup-stable-decay schedule.
- gpt-modern (nanochat, modded-nanogpt): RoPE, RMSNorm, no biases, ReLU^2, QK-norm, output logits soft-capped at
  15, Muon on the block matrices with AdamW on the rest, warmup-stable-decay.
- t5-modern (T5 v1.1 and its successors): RMSNorm, no biases, GeGLU, T5's relative position buckets, AdamW with
  warmup-stable-decay (T5 v1.1 itself used Adafactor with an inverse-square-root schedule).
All three pack documents with document masks (data.document_mask, as MaxText does), and decay to zero over the last
20% of their steps along 1-sqrt (Hägele et al. 2024). Deviations, for matched parameters: every contender keeps the
tied embedding (an untied head would add 1.0M parameters to 1.8M), and the gated MLPs are 2/3 as wide (341 for
BERT, 256 for T5's narrowed 384) so that all six lie within 0.5% of each other's parameter count.

Each modern contender trains at the peak learning rate of lowest eval loss in experiments/suites/
modern_learning_rate.py (the same five-point grid at 4e12 FLOPs that chose the default suite's rates); the
measured grid is in docs/results.md. Eval losses compare only within an objective: bert-modern's masked-LM loss is
over 30% masked inputs, a different task from bert's 15% (the report keeps them apart); the probes are the shared
yardsticks.
"""

from experiments.suites import default

WSD = {"train.schedule": "wsd", "train.decay_fraction": 0.2, "train.decay_shape": "1-sqrt", "train.min_lr_ratio": 0.0}
PACKED = {"data.document_mask": True}
NO_BIAS = {"model.use_bias": False}

# Peak learning rates chosen in experiments/suites/modern_learning_rate.py (lowest eval loss; docs/results.md).
LEARNING_RATES = {"bert-modern": 5e-3, "gpt-modern": 3e-3, "t5-modern": 1e-3}
MUON_RATIO = 20 / 3  # gpt-modern's Muon rate over its AdamW rate (0.02 at 3e-3: nanochat's matrix rate)

MODERN = {
    "bert-modern": dict(config="experiments/configs/bert.py:tiny", overrides={
        **WSD, **PACKED, **NO_BIAS, "model.position": "rope", "model.mlp": "geglu", "model.d_ff": 341,
        "model.embed_norm": True, "model.attention_window": 32, "model.attention_pattern": "GLL",
        "objective.mask_rate": 0.3}),
    "gpt-modern": dict(config="experiments/configs/gpt.py:tiny", overrides={
        **WSD, **PACKED, **NO_BIAS, "model.position": "rope", "model.norm": "rmsnorm", "model.mlp": "relu2",
        "model.qk_norm": True, "model.logits_soft_cap": 15.0, "train.optimizer": "muon"}),
    "t5-modern": dict(config="experiments/configs/t5.py:tiny", overrides={
        **WSD, **PACKED, **NO_BIAS, "model.n_layers": 2, "model.n_decoder_layers": 2, "model.d_ff": 256,
        "model.norm": "rmsnorm", "model.mlp": "geglu", "model.position": "t5_relative"}),
}


def with_rate(contender: dict, lr: float) -> dict:
    """The contender at peak learning rate `lr` (a Muon contender's Muon rate at MUON_RATIO times it)."""
    overrides = {**contender["overrides"], "train.learning_rate": lr}
    if overrides.get("train.optimizer") == "muon":
        overrides["train.muon_learning_rate"] = MUON_RATIO * lr
    return dict(contender, overrides=overrides)


def modern_contenders() -> dict:
    """The three modern contenders, each at its chosen learning rate."""
    return {name: with_rate(c, LEARNING_RATES[name]) for name, c in MODERN.items()}


def get_suite() -> dict:
    """default's contenders and the modern ones (see the module docstring)."""
    base = default.get_suite()
    return dict(
        base,
        description=(
            "The default suite's BERT, GPT and T5 next to each family in its current recipe (bert-modern: "
            "ModernBERT-like; gpt-modern: nanochat-like, Muon; t5-modern: T5 v1.1-like), all six from the `tiny` "
            "shape at matched parameters (within 0.5%), same corpus, tokenizer, batch and training FLOPs, each at "
            "its own best peak learning rate of a five-point grid."
        ),
        contenders={**base["contenders"], **modern_contenders()},
    )

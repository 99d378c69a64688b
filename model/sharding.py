"""Logical axis names of parameters and activations, and the default map from them to mesh axes.

Parameters are created with `nn.with_logical_partitioning(init, names)` using these names:
  'vocab' 'embed' 'heads' 'kv_heads' 'head_dim' 'mlp' 'layers' (the nn.scan axis) 'relpos_buckets'
  'type_vocab' 'norm' (1-d norm scales and biases) 'length' (learned position table rows).
Activations are constrained at stack boundaries to ('batch', 'length', 'act_embed'); 'act_embed' is kept
separate from 'embed' so the residual stream is not split over 'fsdp' along its feature axis.
Mesh axes: 'data' and 'fsdp' split the batch ('fsdp' also splits parameters along 'embed'); 'tensor' splits
heads, MLP hidden units and the vocabulary. Without a mesh and rules every constraint is a no-op.
"""

from __future__ import annotations

import flax.linen as nn

MESH_AXES = ("data", "fsdp", "tensor")

LOGICAL_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("act_embed", None),
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("head_dim", None),
    ("layers", None),
    ("relpos_buckets", None),
    ("type_vocab", None),
    ("norm", None),
)

ACTIVATION = ("batch", "length", "act_embed")  # Names of a (B, L, D) residual-stream activation.


def rules() -> tuple[tuple[str, str | tuple[str, ...] | None], ...]:
    """The default logical-to-mesh axis rules (use with `nn.logical_axis_rules(rules())`)."""
    return LOGICAL_RULES


def constrain(x):
    """Constrain a (B, L, D) activation to ('batch', 'length', 'act_embed'); a no-op without rules."""
    return nn.with_logical_constraint(x, ACTIVATION)

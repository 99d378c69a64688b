"""The optimiser: an Optax chain built from `config.train` (clipping, AdamW / Adafactor / SGD) and its schedule.

The chain returns the update *direction* at a learning rate of 1; the train step multiplies it by
`schedule(step)`, so the rate applied at step s is always `schedule(s)` (also after a skipped update, see
train/step.py) and it is the rate the step logs. Weight decay is decoupled (Loshchilov & Hutter) for every
optimizer: the update is `-lr * (direction + weight_decay * p)` on the decayed parameters.
"""

import jax
import ml_collections
import optax

from train import errors

OPTIMIZERS = ("adamw", "adafactor", "sgd")
SCHEDULES = ("cosine", "linear", "rsqrt", "constant")


def schedule(tc: ml_collections.ConfigDict) -> optax.Schedule:
    """Linear warmup to `learning_rate`, then cosine / linear / inverse-sqrt decay or constant."""
    if tc.schedule not in SCHEDULES:
        raise errors.UserError(f"train.schedule={tc.schedule!r} is unknown: choose one of {', '.join(SCHEDULES)}")
    peak, warmup = tc.learning_rate, max(int(tc.warmup_steps), 0)
    decay_steps = max(int(tc.steps) - warmup, 1)
    end = peak * tc.min_lr_ratio
    if tc.schedule == "cosine":
        decay = optax.cosine_decay_schedule(peak, decay_steps, alpha=tc.min_lr_ratio)
    elif tc.schedule == "linear":
        decay = optax.linear_schedule(peak, end, decay_steps)
    elif tc.schedule == "rsqrt":
        offset = max(warmup, 1)
        decay = lambda count: peak * (offset / (count + offset)) ** 0.5
    else:
        decay = optax.constant_schedule(peak)
    if warmup == 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decay], [warmup])


def param_kind(path) -> str:
    """What a parameter is, from its name: 'kernel' (a dense matrix), 'embedding' (a lookup table: tokens,
    positions, token types, t5 relative buckets), 'bias' or 'scale' (norms). The same with or without
    model.scan_layers, which only adds a leading 'layers' axis."""
    name = str(getattr(path[-1], "key", path[-1]))
    if name not in ("kernel", "embedding", "bias", "scale"):
        raise ValueError(f"parameter {jax.tree_util.keystr(path)} is of no known kind: name it kernel, embedding, "
                         "bias or scale (train/optim.py decides weight decay from the name)")
    return name


def decay_mask(params, decay_embeddings: bool = False):
    """True for the parameters that get weight decay: every kernel, the embedding tables only if asked."""
    decayed = {"kernel", "embedding"} if decay_embeddings else {"kernel"}
    return jax.tree_util.tree_map_with_path(lambda path, _: param_kind(path) in decayed, params)


def make(tc: ml_collections.ConfigDict) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """(the update direction at learning rate 1, the learning-rate schedule) for `config.train`."""
    if tc.optimizer not in OPTIMIZERS:
        raise errors.UserError(f"train.optimizer={tc.optimizer!r} is unknown: choose one of {', '.join(OPTIMIZERS)}")
    lr = schedule(tc)
    mask = lambda params: decay_mask(params, tc.decay_embeddings)
    if tc.optimizer == "adamw":
        opt = optax.adamw(1.0, b1=tc.b1, b2=tc.b2, eps=tc.eps, weight_decay=tc.weight_decay, mask=mask)
    elif tc.optimizer == "adafactor":
        # learning_rate=None: optax's adafactor then adds the decay to the unscaled update, so the step's
        # multiplication by lr makes it decoupled and scheduled, as in AdamW.
        opt = optax.adafactor(None, weight_decay_rate=tc.weight_decay or None, weight_decay_mask=mask)
    else:  # SGD with momentum and decoupled decay (SGDW): the decay does not go through the momentum.
        parts = [optax.trace(tc.momentum)] if tc.momentum else []
        if tc.weight_decay:
            parts.append(optax.add_decayed_weights(tc.weight_decay, mask))
        opt = optax.chain(*parts, optax.scale(-1.0))
    if tc.grad_clip:
        opt = optax.chain(optax.clip_by_global_norm(tc.grad_clip), opt)
    return opt, lr

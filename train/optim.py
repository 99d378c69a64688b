"""The optimiser: an Optax chain built from `config.train` (schedule, clipping, AdamW / Adafactor / SGD)."""

import re

import jax
import ml_collections
import optax

from train import errors

OPTIMIZERS = ("adamw", "adafactor", "sgd")
SCHEDULES = ("cosine", "linear", "rsqrt", "constant")

# Parameter-path patterns that are embedding tables (not decayed unless train.decay_embeddings).
_EMBEDDING = re.compile(r"(embed|embedding|wte|wpe|position|token_type|rel_bias|relpos)", re.IGNORECASE)


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


def decay_mask(params, decay_embeddings: bool = False):
    """True for parameters that get weight decay: matrices, never norms or biases, embeddings only if asked."""

    def keep(path, leaf) -> bool:
        name = "/".join(str(getattr(k, "key", k)) for k in path)
        if leaf.ndim < 2:
            return False
        return decay_embeddings or not _EMBEDDING.search(name)

    return jax.tree_util.tree_map_with_path(keep, params)


def make(tc: ml_collections.ConfigDict) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The Optax transformation for `config.train` and its learning-rate schedule."""
    if tc.optimizer not in OPTIMIZERS:
        raise errors.UserError(f"train.optimizer={tc.optimizer!r} is unknown: choose one of {', '.join(OPTIMIZERS)}")
    lr = schedule(tc)
    mask = lambda params: decay_mask(params, tc.decay_embeddings)
    if tc.optimizer == "adamw":
        opt = optax.adamw(lr, b1=tc.b1, b2=tc.b2, eps=tc.eps, weight_decay=tc.weight_decay, mask=mask)
    elif tc.optimizer == "adafactor":
        opt = optax.adafactor(lr, weight_decay_rate=tc.weight_decay or None, weight_decay_mask=mask)
    else:
        opt = optax.sgd(lr, momentum=tc.momentum)
        if tc.weight_decay:
            opt = optax.chain(optax.add_decayed_weights(tc.weight_decay, mask), opt)
    if tc.grad_clip:
        opt = optax.chain(optax.clip_by_global_norm(tc.grad_clip), opt)
    return opt, lr

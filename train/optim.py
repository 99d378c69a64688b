"""The optimiser: an Optax chain built from `config.train` (clipping, AdamW / Adafactor / SGD / Muon / Lion) and its
schedule.

The chain returns the update *direction* at a learning rate of 1; the train step multiplies it by
`schedule(step)`, so the rate applied at step s is always `schedule(s)` (also after a skipped update, see
train/step.py) and it is the rate the step logs. Weight decay is decoupled (Loshchilov & Hutter) for every
optimizer: the update is `-lr * (direction + weight_decay * p)` on the decayed parameters.

Muon (Jordan et al. 2024) orthogonalises the momentum of the hidden matrices only, the dense kernels inside the
transformer blocks (`muon_mask`), as nanochat and MaxText do; everything else (embeddings, the output head, norms,
biases, t5's relative-bias tables, BERT's MLM transform / pooler / NSP head, classifier heads) takes AdamW. The
Muon direction (weight decay included) is scaled by muon_learning_rate / learning_rate, so the step's one schedule
gives the Muon group a peak of train.muon_learning_rate and the AdamW group one of train.learning_rate (the rate the
step logs).
"""

import math
import re

import jax
import jax.numpy as jnp
import ml_collections
import optax
from optax import contrib

from model import flops
from train import errors

OPTIMIZERS = ("adamw", "adafactor", "sgd", "muon", "lion")
SCHEDULES = ("cosine", "linear", "rsqrt", "constant", "wsd")
DECAY_SHAPES = ("linear", "1-sqrt")  # wsd's final decay (Hägele et al. 2024)
_BLOCK = re.compile(r"layer_\d+|layers")  # a Stack's blocks: 'layer_<i>' (loop) or 'layers' (model.scan_layers)


def _require(tc: ml_collections.ConfigDict, name: str, ok, must: str) -> None:
    value = tc[name]
    if not (math.isfinite(value) and ok(value)):  # NaN fails every comparison, so also this one.
        raise errors.UserError(f"train.{name}={value} {must}")


def _wsd_decay(tc: ml_collections.ConfigDict, peak: float, end: float, warmup: int):
    """(the step at which wsd's decay starts, the decay as a function of the steps since then)."""
    if not 0 < tc.decay_fraction <= 1:  # also refuses NaN
        raise errors.UserError(f"train.decay_fraction={tc.decay_fraction} must be in (0, 1] (the fraction of "
                               "train.steps over which wsd decays to train.min_lr_ratio x the peak)")
    if tc.decay_shape not in DECAY_SHAPES:
        raise errors.UserError(f"train.decay_shape={tc.decay_shape!r} is unknown: choose one of "
                               f"{', '.join(DECAY_SHAPES)}")
    steps = int(tc.steps)
    start = max(warmup, steps - max(round(tc.decay_fraction * steps), 1))  # never inside the warmup
    length = max(steps - start, 1)
    shape = (lambda t: 1 - t) if tc.decay_shape == "linear" else (lambda t: 1 - jnp.sqrt(t))
    return start, lambda count: end + (peak - end) * shape(jnp.clip(count / length, 0.0, 1.0))


def schedule(tc: ml_collections.ConfigDict) -> optax.Schedule:
    """Linear warmup to `learning_rate`, then cosine / linear / inverse-sqrt decay, constant, or wsd: constant until
    the last `decay_fraction` of the steps (never before the warmup ends), then a linear or 1-sqrt decay."""
    if tc.schedule not in SCHEDULES:
        raise errors.UserError(f"train.schedule={tc.schedule!r} is unknown: choose one of {', '.join(SCHEDULES)}")
    peak, warmup = tc.learning_rate, max(int(tc.warmup_steps), 0)
    decay_steps = max(int(tc.steps) - warmup, 1)
    end = peak * tc.min_lr_ratio
    boundaries = []  # where each piece after the first starts (absolute steps; each piece counts from its start)
    if tc.schedule == "cosine":
        pieces = [optax.cosine_decay_schedule(peak, decay_steps, alpha=tc.min_lr_ratio)]
    elif tc.schedule == "linear":
        pieces = [optax.linear_schedule(peak, end, decay_steps)]
    elif tc.schedule == "rsqrt":
        offset = max(warmup, 1)
        pieces = [lambda count: peak * (offset / (count + offset)) ** 0.5]
    elif tc.schedule == "constant":
        pieces = [optax.constant_schedule(peak)]
    else:
        start, decay = _wsd_decay(tc, peak, end, warmup)
        pieces, boundaries = [optax.constant_schedule(peak), decay], [start]
    if warmup:
        pieces, boundaries = [optax.linear_schedule(0.0, peak, warmup), *pieces], [warmup, *boundaries]
    return optax.join_schedules(pieces, boundaries) if boundaries else pieces[0]


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


def _names(path) -> list[str]:
    return [str(getattr(k, "key", k)) for k in path]


def is_hidden_matrix(path) -> bool:
    """Whether a parameter is a dense kernel inside a transformer block (attention and MLP, t5's cross-attention
    included): the matrices Muon optimises."""
    return param_kind(path) == "kernel" and any(_BLOCK.fullmatch(n) for n in _names(path)[:-1])


def executed_flops_per_step(model_cfg, tc: ml_collections.ConfigDict, lengths: tuple[int, int],
                            predicted: int = 0) -> dict[str, float]:
    """What one training step computes (model/flops.py): 'model', the forward and backward matmuls as the step
    runs them (an MLM head at its `predicted` positions alone, when > 0); 'optimizer', the optimizer's matrix work
    (Muon's Newton-Schulz iterations; 0 for the others); 'executed', their sum: what a FLOP budget charges and what
    MFU divides. 'model_6n' keeps the conventional count (6N + attention, the head at every position, no optimizer)."""
    model = flops.training_flops_per_step(model_cfg, tc.batch_size, *lengths, predicted or None)
    optimizer = flops.newton_schulz_flops(model_cfg, int(tc.muon_ns_steps)) if tc.optimizer == "muon" else 0.0
    return {"model": model, "optimizer": optimizer, "executed": model + optimizer,
            "model_6n": flops.training_flops_per_step(model_cfg, tc.batch_size, *lengths)}


def muon_mask(params):
    """True for the parameters Muon optimises (is_hidden_matrix), False for those AdamW does."""
    return jax.tree_util.tree_map_with_path(lambda path, _: is_hidden_matrix(path), params)


def muon_dimension_numbers(path, x) -> contrib.MuonDimensionNumbers:
    """The (in, out) matrix a block kernel multiplies by (model/layers.py Dense contracts its first n_in axes): the
    attention output (H, Dh, D) contracts H and Dh, every other kernel its first axis ((D, H, Dh) queries, keys and
    values; (D, F) and (F, D) MLP matrices). model.scan_layers' leading layers axis is a batch axis (one matrix per
    layer)."""
    names = _names(path)
    lead = 1 if "layers" in names[:-1] else 0
    n_in = x.ndim - lead - 1 if names[-2] == "out" else 1
    return contrib.MuonDimensionNumbers(reduction_axis=tuple(range(lead, lead + n_in)),
                                        output_axis=tuple(range(lead + n_in, x.ndim)))


def _muon(tc: ml_collections.ConfigDict, adamw: optax.GradientTransformation) -> optax.GradientTransformation:
    """Muon on the hidden matrices, scaled to peak at train.muon_learning_rate; `adamw` on everything else."""
    if not tc.learning_rate > 0:
        raise errors.UserError(f"train.learning_rate={tc.learning_rate} must be positive with train.optimizer='muon' "
                               "(the Muon group's rate is train.muon_learning_rate x schedule / train.learning_rate)")
    _require(tc, "muon_learning_rate", lambda v: v >= 0, "must be >= 0")
    _require(tc, "muon_momentum", lambda v: 0 <= v < 1, "must be in [0, 1)")
    _require(tc, "muon_ns_steps", lambda v: v >= 1 and v == int(v), "must be a whole number >= 1")
    _require(tc, "muon_consistent_rms", lambda v: v >= 0, "must be >= 0 (0 = optax's width scaling)")
    # optax.contrib.muon is given the Muon group only (every leaf it sees is a hidden matrix, so its bundled AdamW
    # gets none): that AdamW would take Muon's nesterov (becoming NAdam) and eps, and decay norms and biases too.
    # optax's conventions: the momentum is bias-corrected (modded-nanogpt's is not; it only changes the Nesterov
    # mix), the orthogonalised update is scaled by sqrt(max(1, fan_out / fan_in)) (Keller Jordan's, fan_in = the
    # contracted axes), so a square matrix's update has RMS ~ 1 / sqrt(D) and rates are ~0.02; with
    # consistent_rms=r by sqrt(max(fan_in, fan_out)) * r instead (Moonlight: RMS ~ r, 0.2 ~ AdamW's). The decay is
    # added before the scaling by the rate, so it is decoupled at the Muon group's rate, as AdamW's is at its own.
    muon = contrib.muon(
        tc.muon_learning_rate / tc.learning_rate, ns_steps=int(tc.muon_ns_steps), beta=tc.muon_momentum,
        nesterov=tc.muon_nesterov, weight_decay=tc.weight_decay, consistent_rms=tc.muon_consistent_rms or None,
        muon_weight_dimension_numbers=lambda p: jax.tree_util.tree_map_with_path(muon_dimension_numbers, p))
    labels = lambda params: jax.tree.map(lambda m: "muon" if m else "adamw", muon_mask(params))
    return optax.partition({"muon": muon, "adamw": adamw}, labels)


def make(tc: ml_collections.ConfigDict) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """(the update direction at learning rate 1, the learning-rate schedule) for `config.train`."""
    if tc.optimizer not in OPTIMIZERS:
        raise errors.UserError(f"train.optimizer={tc.optimizer!r} is unknown: choose one of {', '.join(OPTIMIZERS)}")
    lr = schedule(tc)
    mask = lambda params: decay_mask(params, tc.decay_embeddings)
    if tc.optimizer in ("adamw", "muon"):
        opt = optax.adamw(1.0, b1=tc.b1, b2=tc.b2, eps=tc.eps, weight_decay=tc.weight_decay, mask=mask)
        if tc.optimizer == "muon":
            opt = _muon(tc, opt)
    elif tc.optimizer == "lion":
        _require(tc, "lion_b1", lambda v: 0 <= v < 1, "must be in [0, 1)")
        _require(tc, "lion_b2", lambda v: 0 <= v < 1, "must be in [0, 1)")
        opt = optax.lion(1.0, b1=tc.lion_b1, b2=tc.lion_b2, weight_decay=tc.weight_decay, mask=mask)
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

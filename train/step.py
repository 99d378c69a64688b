"""The pure train and eval steps, the same for every architecture and objective.

`train_step(state, batch) -> (state, metrics)`: the batch (a dict of arrays) goes through the model's
`input_names`, the loss through `losses.cross_entropy` on `targets` / `weights`. Gradients are accumulated over
microbatches with `lax.scan`, summed (not averaged) and divided once by the global token weight, so that k
microbatches, n devices (jit or pmap) and one big batch all give the same update.

Next-sentence prediction (a batch with `nsp_labels`): the model's `mlm_and_nsp` gives both logits and the loss is
MLM mean (per predicted token) + NSP mean (per example, each weighted 1). Since everything is divided by the global
token weight W, the NSP loss sum of B examples enters `loss` multiplied by W / B, both taken from the whole batch
before the microbatch and device split (`nsp_loss_scale`), which keeps the equivalence above exact.
"""

import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

from train import losses


@flax.struct.dataclass
class TrainState:
    """Everything a checkpoint holds: the step number is the only data position needed to resume."""

    step: jax.Array
    params: Any
    opt_state: Any


def model_inputs(model, batch: dict) -> dict:
    """The entries of `batch` the model takes as inputs."""
    return {k: batch[k] for k in model.input_names if k in batch}


def nsp_loss_scale(batch: dict, axis_name: str | None = None) -> jax.Array | None:
    """Global token weight / global examples of a batch with `nsp_labels` (None without): the factor that turns the
    NSP loss sum into the per-example NSP mean once the step divides by the token weight."""
    if "nsp_labels" not in batch:
        return None
    weight = jnp.sum(batch["weights"].astype(jnp.float32))
    examples = jnp.float32(batch["nsp_labels"].shape[0])
    if axis_name is not None:
        weight, examples = jax.lax.psum((weight, examples), axis_name)
    return weight / examples


def loss_sums(model, objective: ml_collections.ConfigDict, params, batch: dict, rng, train: bool,
              nsp_scale: jax.Array | None = None):
    """Summed cross-entropy metrics of `batch` (see losses.SUM_KEYS); evaluating a classifier adds the (C, C)
    `confusion` counts (losses.confusion) from which the host computes accuracy and F1. A batch with `nsp_labels`
    adds losses.NSP_KEYS, and `nsp_scale` times the NSP loss sum to `loss` (see the module docstring)."""
    rngs = {"dropout": rng} if train else {}
    inputs = model_inputs(model, batch)
    if "nsp_labels" in batch:
        logits, nsp_logits_Bx2 = model.apply({"params": params}, **inputs, train=train, rngs=rngs,
                                             method="mlm_and_nsp")
    else:
        logits, nsp_logits_Bx2 = model.apply({"params": params}, **inputs, train=train, rngs=rngs), None
    sums = losses.cross_entropy(
        logits,
        batch["targets"],
        batch["weights"],
        batch.get("target_bytes"),
        label_smoothing=objective.label_smoothing if train else 0.0,
        z_loss=objective.z_loss if train else 0.0,
    )
    if nsp_logits_Bx2 is not None:
        sums.update(losses.nsp_sums(nsp_logits_Bx2, batch["nsp_labels"]))
        sums["loss"] = sums["loss"] + nsp_scale * sums["nsp_loss"]
    if objective.name == "classify" and not train:  # fine-tuning: confusion matrix
        sums["confusion"] = losses.confusion(logits, batch["targets"], batch["weights"])
    return sums


def _split_microbatches(batch: dict, k: int) -> dict:
    return jax.tree.map(lambda x: x.reshape((k, x.shape[0] // k) + x.shape[1:]), batch)


def apply_update(tx: optax.GradientTransformation, lr, grads, opt_state, params):
    """(new params, new optimizer state): `tx` gives the update direction at rate 1 (train/optim.py), scaled by `lr`."""
    direction, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, jax.tree.map(lambda d: lr * d, direction)), opt_state


def train_step(
    state: TrainState,
    batch: dict,
    *,
    model,
    tx: optax.GradientTransformation,
    lr_schedule: optax.Schedule,
    config: ml_collections.ConfigDict,
    axis_name: str | None = None,
) -> tuple[TrainState, dict]:
    """One optimizer update on `batch`; `axis_name` is set when the body runs under pmap."""
    rng = jax.random.fold_in(jax.random.key(config.seed), state.step)
    if axis_name is not None:
        rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))
    sums_fn = functools.partial(loss_sums, model, config.objective, train=True,
                                nsp_scale=nsp_loss_scale(batch, axis_name))

    def grad_fn(params, mb, mb_rng):
        def loss(p):
            sums = sums_fn(p, mb, mb_rng)
            return sums["loss"], sums

        (_, sums), grads = jax.value_and_grad(loss, has_aux=True)(params)
        return sums, grads

    k = config.train.microbatches
    if k == 1:
        sums, grads = grad_fn(state.params, batch, rng)
    else:
        micro = _split_microbatches(batch, k)

        def accumulate(carry, xs):
            i, mb = xs
            sums, grads = grad_fn(state.params, mb, jax.random.fold_in(rng, i))
            return jax.tree.map(jnp.add, carry, (sums, grads)), None

        shapes = jax.eval_shape(grad_fn, state.params, jax.tree.map(lambda x: x[0], micro), rng)
        zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
        (sums, grads), _ = jax.lax.scan(accumulate, zeros, (jnp.arange(k), micro))
    if axis_name is not None:
        sums, grads = jax.lax.psum((sums, grads), axis_name)
    grads = jax.tree.map(lambda g: g / jnp.maximum(sums["weight"], 1.0), grads)
    grad_norm = optax.global_norm(grads)
    lr = lr_schedule(state.step)  # The schedule follows the step, skipped updates included (train/optim.py).
    params, opt_state = apply_update(tx, lr, grads, state.opt_state, state.params)
    finite = jnp.isfinite(sums["loss"]) & jnp.isfinite(grad_norm)
    new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state)
    if config.train.nonfinite == "skip":
        # Keep the old parameters and optimizer state but still advance the step (the batch is consumed, and the
        # next step applies the schedule's rate of its own step).
        kept = jax.tree.map(lambda new, old: jnp.where(finite, new, old), (params, opt_state),
                            (state.params, state.opt_state))
        new_state = TrainState(step=state.step + 1, params=kept[0], opt_state=kept[1])
    metrics = dict(sums, grad_norm=grad_norm, lr=lr,
                   nonfinite=1.0 - finite.astype(jnp.float32))
    return new_state, metrics


def eval_step(params, batch: dict, *, model, config: ml_collections.ConfigDict,
              axis_name: str | None = None) -> dict:
    """Summed metrics of `batch` without dropout (divided on the host by losses.summarize)."""
    sums = loss_sums(model, config.objective, params, batch, None, train=False,
                     nsp_scale=nsp_loss_scale(batch, axis_name))
    if axis_name is not None:
        sums = jax.lax.psum(sums, axis_name)
    return sums

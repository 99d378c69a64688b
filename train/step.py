"""The pure train and eval steps, the same for every architecture and objective.

`train_step(state, batch) -> (state, metrics)`: the objective (train/objectives.py) gives the summed loss and
metrics of a batch. Gradients are accumulated over microbatches with `lax.scan`, summed (not averaged) and divided
once by the global token weight, so that k microbatches, n devices (jit or pmap) and one big batch all give the
same update; whole-batch quantities an objective needs (`objective.constants`) are taken before the split.
"""

from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax


@flax.struct.dataclass
class TrainState:
    """Everything a checkpoint holds: the step number is the only data position needed to resume."""

    step: jax.Array
    params: Any
    opt_state: Any


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
    objective,
    tx: optax.GradientTransformation,
    lr_schedule: optax.Schedule,
    config: ml_collections.ConfigDict,
    axis_name: str | None = None,
) -> tuple[TrainState, dict]:
    """One optimizer update on `batch`; `axis_name` is set when the body runs under pmap."""
    rng = jax.random.fold_in(jax.random.key(config.seed), state.step)
    if axis_name is not None:
        rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))
    constants = objective.constants(batch, axis_name)
    sums_fn = lambda p, mb, mb_rng: objective.loss_sums(model, p, mb, mb_rng, True, constants)

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


def eval_step(params, batch: dict, *, model, objective, axis_name: str | None = None) -> dict:
    """Summed metrics of `batch` without dropout (divided on the host by objective.summarize)."""
    sums = objective.loss_sums(model, params, batch, None, False, objective.constants(batch, axis_name))
    if axis_name is not None:
        sums = jax.lax.psum(sums, axis_name)
    return sums

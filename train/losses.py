"""Token-weighted cross-entropy, z-loss and accuracy, returned as sums so that averages are taken once, on the host.

Every objective (causal LM, prefix LM, MLM, span corruption) goes through `cross_entropy`: the batch says which
positions count through `weights`, so an MLM batch (15% of positions) and a T5 batch (variable target lengths) are
averaged correctly across microbatches, devices and hosts.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

# The sums of `cross_entropy`; `weight` is the denominator of the per-token averages.
TOKEN_SUMS = ("loss", "nll", "z_loss", "correct", "weight", "bytes")
# The sums of `nsp_sums`: per example, `nsp_examples` their denominator.
NSP_SUMS = ("nsp_loss", "nsp_correct", "nsp_examples")


def cross_entropy(
    logits_BxLxV: jax.Array,
    targets_BxL: jax.Array,
    weights_BxL: jax.Array,
    target_bytes_BxL: jax.Array | None = None,
    *,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
) -> dict[str, jax.Array]:
    """Sums over weighted positions of: training loss, plain NLL (nats), z-loss, correct argmax, weight, bytes."""
    logits = logits_BxLxV.astype(jnp.float32)
    vocab = logits.shape[-1]
    log_z_BxL = jax.nn.logsumexp(logits, axis=-1)
    target_logit_BxL = jnp.take_along_axis(logits, targets_BxL[..., None], axis=-1)[..., 0]
    nll_BxL = log_z_BxL - target_logit_BxL
    if label_smoothing:
        # Cross-entropy against q = (confidence at the target, `low` elsewhere), minus the entropy of q so that a
        # perfect model scores 0 (as in t5x):  -sum_v q_v log p_v = (conf - low) nll - low * V * mean_v(log p_v).
        confidence = 1.0 - label_smoothing
        low = label_smoothing / (vocab - 1)
        entropy = -(confidence * math.log(confidence) + (vocab - 1) * low * math.log(low))
        mean_logp_BxL = jnp.mean(logits, axis=-1) - log_z_BxL
        loss_BxL = (confidence - low) * nll_BxL - low * vocab * mean_logp_BxL - entropy
    else:
        loss_BxL = nll_BxL
    z_BxL = z_loss * jnp.square(log_z_BxL)
    weights = weights_BxL.astype(jnp.float32)
    # The target has the top logit (ties count as correct): cheaper than argmax, which is a second pass over V.
    correct_BxL = (target_logit_BxL >= jnp.max(logits, axis=-1)).astype(jnp.float32)
    sums = {
        "loss": jnp.sum((loss_BxL + z_BxL) * weights),
        "nll": jnp.sum(nll_BxL * weights),
        "z_loss": jnp.sum(z_BxL * weights),
        "correct": jnp.sum(correct_BxL * weights),
        "weight": jnp.sum(weights),
    }
    if target_bytes_BxL is None:
        sums["bytes"] = jnp.zeros((), jnp.float32)
    else:
        sums["bytes"] = jnp.sum(target_bytes_BxL.astype(jnp.float32) * (weights > 0))
    return sums


def nsp_sums(logits_Bx2: jax.Array, labels_B: jax.Array) -> dict[str, jax.Array]:
    """NSP_SUMS: summed cross-entropy (nats) and correct argmax of the (B, 2) next-sentence logits, and B."""
    s = cross_entropy(logits_Bx2[:, None], labels_B[:, None], jnp.ones(labels_B.shape + (1,), jnp.float32))
    return {"nsp_loss": s["nll"], "nsp_correct": s["correct"], "nsp_examples": s["weight"]}


# Classification metrics (fine-tuning).
def confusion(logits_BxLxC: jax.Array, targets_BxL: jax.Array, weights_BxL: jax.Array) -> jax.Array:
    """(C, C) float32 summed weights of the positions with target t (row) and argmax prediction p (column)."""
    C = logits_BxLxC.shape[-1]
    pred_BxLxC = jax.nn.one_hot(jnp.argmax(logits_BxLxC, axis=-1), C, dtype=jnp.float32)
    true_BxLxC = jax.nn.one_hot(targets_BxL, C, dtype=jnp.float32) * weights_BxL.astype(jnp.float32)[..., None]
    return jnp.einsum("blt,blp->tp", true_BxLxC, pred_BxLxC)


def classification_metrics(confusion_CxC, prefix: str) -> dict[str, float]:
    """Accuracy from summed confusion counts; for two classes also F1 of the positive class (index 1), for more
    the macro-average F1 over classes."""
    cm = np.asarray(confusion_CxC, np.float64)
    tp = np.diag(cm)
    denom = cm.sum(0) + cm.sum(1)  # 2 tp + fp + fn per class
    f1 = np.where(denom > 0, 2 * tp / np.maximum(denom, 1e-12), 0.0)
    out = {f"{prefix}/accuracy": float(tp.sum() / max(cm.sum(), 1e-9))}
    if len(cm) == 2:
        out[f"{prefix}/f1"] = float(f1[1])
    else:
        out[f"{prefix}/macro_f1"] = float(f1.mean())
    return out


def token_metrics(sums: dict[str, float], prefix: str) -> dict[str, float]:
    """Host-side averages of `cross_entropy` sums: loss, nll, accuracy, perplexity, bits per byte (and z-loss)."""
    weight = max(float(sums["weight"]), 1e-9)
    nll = float(sums["nll"]) / weight
    out = {
        f"{prefix}/loss": float(sums["loss"]) / weight,
        f"{prefix}/nll": nll,
        f"{prefix}/accuracy": float(sums["correct"]) / weight,
        f"{prefix}/perplexity": math.exp(min(nll, 80.0)),
        f"{prefix}/tokens": float(sums["weight"]),
    }
    if float(sums["z_loss"]):
        out[f"{prefix}/z_loss"] = float(sums["z_loss"]) / weight
    if float(sums["bytes"]) > 0:
        out[f"{prefix}/bits_per_byte"] = float(sums["nll"]) / (math.log(2) * float(sums["bytes"]))
    return out


def nsp_metrics(sums: dict[str, float], prefix: str) -> dict[str, float]:
    """Next-sentence loss (nats) and accuracy per example, from `nsp_sums` sums."""
    examples = max(float(sums["nsp_examples"]), 1e-9)
    return {f"{prefix}/nsp_loss": float(sums["nsp_loss"]) / examples,
            f"{prefix}/nsp_accuracy": float(sums["nsp_correct"]) / examples}

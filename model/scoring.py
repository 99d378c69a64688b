"""Log-likelihood of given tokens under a pretrained model, each architecture with its own objective.

  causal_scores  GPT: sum of log p(target_t | [start] context, target_<t): the exact conditional log-likelihood.
  pseudo_scores  BERT: each target token in turn replaced by [MASK], log p(token | everything else), summed (the
                 pseudo-log-likelihood of Salazar et al., 2020). T5: each target token in turn replaced by
                 <extra_id_0> in the encoder input, the decoder reads [0, <extra_id_0>] and the log-probability
                 of the token at its second position is summed.

Both take batches of (context, target) id lists (the context may be empty) and return one float per row. Rows
are framed as in pretraining: BERT [CLS] context target [SEP] (every MLM window), T5 context target eos (every
span-corruption input), GPT after a start token (eos: documents follow one in the training stream). Rows longer
than the model's max_len are refused.
These are pure functions of (model, params, ids): experiments/probes.py builds zero-shot probes on them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from model.config import ConfigError

_ROWS = 256  # rows per compiled call; every call has this many rows (the last padded), so one compile per length


def _padded(rows: list[list[int]], pad_id: int, max_len: int) -> np.ndarray:
    longest = max(map(len, rows))
    if longest > max_len:
        raise ConfigError(f"a scored text is {longest} tokens, more than the model's max_len={max_len}")
    length = min(max_len, 8 * -(-longest // 8))  # a multiple of 8: few distinct shapes to compile
    out = np.full((-(-len(rows) // _ROWS) * _ROWS, length), pad_id, np.int32)
    for i, r in enumerate(rows):
        out[i, :len(r)] = r
    return out


@jax.jit
def _gather_logprob(logits_NxV: jax.Array, ids_N: jax.Array) -> jax.Array:
    logp_NxV = jax.nn.log_softmax(logits_NxV.astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(logp_NxV, ids_N[:, None], axis=-1)[:, 0]


def causal_scores(model, params, contexts: list[list[int]], targets: list[list[int]], start_id: int) -> np.ndarray:
    """(N,) float64: log p(target | start, context) under a GPT (`model.apply({'params': params}, ids)`)."""
    rows = [[start_id, *c, *t] for c, t in zip(contexts, targets, strict=True)]
    ids = _padded(rows, model.cfg.pad_id, model.cfg.max_len)

    @jax.jit
    def token_logprobs(p, ids_BxL):
        logits_BxLxV = model.apply({"params": p}, ids_BxL)
        B, L, V = logits_BxLxV.shape
        return _gather_logprob(logits_BxLxV[:, :-1].reshape(-1, V), ids_BxL[:, 1:].reshape(-1)).reshape(B, L - 1)

    logp = np.concatenate([np.asarray(token_logprobs(params, ids[i:i + _ROWS])) for i in range(0, len(ids), _ROWS)])
    # Position j of logp scores token j + 1 of the row; the target occupies tokens 1 + len(c) ... len(c) + len(t).
    return np.array([logp[i, len(c):len(c) + len(t)].sum(dtype=np.float64)
                     for i, (c, t) in enumerate(zip(contexts, targets, strict=True))])


def pseudo_scores(model, params, contexts: list[list[int]], targets: list[list[int]], *, mask_id: int,
                  end_id: int, cls_id: int | None = None) -> np.ndarray:
    """(N,) float64 pseudo-log-likelihood of each target given its context: BERT (mask_id [MASK], end_id [SEP],
    cls_id [CLS]) or T5 (mask_id <extra_id_0>, end_id eos); see the module docstring."""
    arch = model.cfg.arch
    if arch not in ("bert", "t5"):
        raise ConfigError(f"pseudo_scores scores bert and t5 models, not {arch}; use causal_scores")
    if not any(targets):
        return np.zeros(len(targets))
    rows, where, want, owner = [], [], [], []
    for n, (c, t) in enumerate(zip(contexts, targets, strict=True)):
        base = ([cls_id] if arch == "bert" else []) + list(c) + list(t)
        first = len(base) - len(t)
        for j, token in enumerate(t):
            rows.append(base[:first + j] + [mask_id] + base[first + j + 1:] + [end_id])
            where.append(first + j)
            want.append(token)
            owner.append(n)
    ids = _padded(rows, model.cfg.pad_id, model.cfg.max_len)
    where = np.pad(np.array(where, np.int32), (0, len(ids) - len(rows)))
    want = np.pad(np.array(want, np.int32), (0, len(ids) - len(rows)))

    if arch == "bert":
        def logits_at(module, ids_BxL, where_B):
            h_BxLxD = module.features(ids_BxL)
            h_Bx1xD = jnp.take_along_axis(h_BxLxD, where_B[:, None, None], axis=1)
            return module.mlm_logits(h_Bx1xD)[:, 0]  # the head only where a token was masked
    else:
        def logits_at(module, ids_BxS, where_B):
            decoder_Bx2 = jnp.stack([jnp.zeros_like(where_B), jnp.full_like(where_B, mask_id)], axis=1)
            return module(ids_BxS, decoder_Bx2)[:, 1]  # the position after <extra_id_0> predicts the span

    @jax.jit
    def token_logprobs(p, ids_BxL, where_B, want_B):
        return _gather_logprob(model.apply({"params": p}, ids_BxL, where_B, method=logits_at), want_B)

    logp = np.concatenate([np.asarray(token_logprobs(params, ids[i:i + _ROWS], where[i:i + _ROWS],
                                                     want[i:i + _ROWS])) for i in range(0, len(ids), _ROWS)])
    return np.bincount(np.array(owner, np.int64), weights=logp[:len(rows)].astype(np.float64),
                       minlength=len(targets))

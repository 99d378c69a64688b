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

_TOKENS = 8192  # token positions per compiled call (rows x padded length)


def _pad8(n: int, max_len: int) -> int:
    return min(max_len, 8 * -(-n // 8))  # a multiple of 8: few distinct shapes to compile


def _batches(rows: list[list[int]], pad_id: int, max_len: int):
    """(row indices, (R, L) int32 ids) per compiled call: the rows sorted by length, so that each call pads its
    rows only to their own longest (rounded up to a multiple of 8) and holds R = _TOKENS // L rows (the last call
    filled with pad rows): one compile per padded length, whatever the number of rows."""
    lengths = np.array([len(r) for r in rows])
    if lengths.max() > max_len:
        raise ConfigError(f"a scored text is {lengths.max()} tokens, more than the model's max_len={max_len}")
    order = np.argsort(lengths, kind="stable")
    i = 0
    while i < len(rows):
        length = _pad8(int(lengths[order[i]]), max_len)
        while True:  # the longest of the rows this length holds sets the length
            n = max(1, _TOKENS // length)
            longest = _pad8(int(lengths[order[min(i + n, len(rows)) - 1]]), max_len)
            if longest <= length:
                break
            length = longest
        idx = order[i:i + n]
        ids = np.full((n, length), pad_id, np.int32)
        for j, k in enumerate(idx):
            ids[j, :lengths[k]] = rows[k]
        yield idx, ids
        i += n


@jax.jit
def _gather_logprob(logits_NxV: jax.Array, ids_N: jax.Array) -> jax.Array:
    logp_NxV = jax.nn.log_softmax(logits_NxV.astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(logp_NxV, ids_N[:, None], axis=-1)[:, 0]


def causal_scores(model, params, contexts: list[list[int]], targets: list[list[int]], start_id: int) -> np.ndarray:
    """(N,) float64: log p(target | start, context) under a GPT (`model.apply({'params': params}, ids)`)."""
    rows = [[start_id, *c, *t] for c, t in zip(contexts, targets, strict=True)]

    @jax.jit
    def token_logprobs(p, ids_BxL):
        logits_BxLxV = model.apply({"params": p}, ids_BxL)
        B, L, V = logits_BxLxV.shape
        return _gather_logprob(logits_BxLxV[:, :-1].reshape(-1, V), ids_BxL[:, 1:].reshape(-1)).reshape(B, L - 1)

    out = np.zeros(len(rows))
    for idx, ids in _batches(rows, model.cfg.pad_id, model.cfg.max_len):
        logp = np.asarray(token_logprobs(params, ids), np.float64)
        # Position j of logp scores token j + 1 of the row; the target occupies tokens 1 + len(c) ... len(c) + len(t).
        for j, k in enumerate(idx):
            out[k] = logp[j, len(contexts[k]):len(contexts[k]) + len(targets[k])].sum()
    return out


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

    where, want = np.array(where, np.int32), np.array(want, np.int32)
    logp = np.zeros(len(rows))
    for idx, ids in _batches(rows, model.cfg.pad_id, model.cfg.max_len):
        pad = len(ids) - len(idx)
        got = token_logprobs(params, ids, np.pad(where[idx], (0, pad)), np.pad(want[idx], (0, pad)))
        logp[idx] = np.asarray(got, np.float64)[:len(idx)]
    return np.bincount(np.array(owner, np.int64), weights=logp, minlength=len(targets))

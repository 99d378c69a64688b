"""Autoregressive generation from GPT (`generate`) and T5 (`generate_seq2seq`): greedy, temperature, top-k and
top-p sampling, with the KV cache (`use_cache=True`) or a full forward pass per step (`use_cache=False`, the
reference the cached path is tested against).

Prompts are left-aligned: row b holds its prompt in `prompt_ids[b, :prompt_lengths[b]]`, padding after it, so
every row's tokens sit at the positions they would have alone. All rows step through one position per
iteration (the cache index is shared): while position t is still inside row b's prompt, row b is fed its
prompt token (teacher forcing) and whatever was sampled for it is discarded; from its prompt end on it is fed its
own samples. The common prefix (up to the shortest prompt) is prefilled through the cache in one chunk. A row
stops after emitting `eos_id` (kept in the output, pad after it) or `max_new_tokens` tokens; the loop ends when
every row has stopped. Everything runs in one jitted `lax.while_loop`; per-step randomness is
`fold_in(rng, position)`, so the cached and uncached paths draw the same samples.

Shape letters: B batch, P prompt width, T total positions (P + max_new_tokens), S encoder length, V vocab.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

# ---- Sampling filters (written once; tests compare them with numpy references). Settings may be traced. ----
# The cut-offs are found by a 32-step bisection on the float bits rather than a sort: exact, and far cheaper than
# XLA's sort on CPU (a sort of the vocabulary per step made sampling ~50x slower than greedy there).

def _ordered_bits(x: jax.Array) -> jax.Array:
    """uint32 keys with the order of the float32 values (the radix-sort trick: flip negatives, set the sign bit)."""
    bits = lax.bitcast_convert_type(x.astype(jnp.float32), jnp.uint32)
    return jnp.where(bits >> 31 == 1, ~bits, bits | jnp.uint32(1 << 31))


def _largest_cutoff(keys_BxV: jax.Array, holds) -> jax.Array:
    """(B, 1) largest key t with holds(keys >= t) true, for a `holds` that is true at t = 0 and monotone."""
    def bit(i, t_Bx1):
        candidate = t_Bx1 | (jnp.uint32(1) << (31 - i).astype(jnp.uint32))
        return jnp.where(holds(keys_BxV >= candidate), candidate, t_Bx1)

    return lax.fori_loop(0, 32, bit, jnp.zeros(keys_BxV.shape[:-1] + (1,), jnp.uint32))


def top_k_filter(logits_BxV: jax.Array, k) -> jax.Array:
    """Logits below the k-th largest of each row set to -inf (ties with the k-th are kept); k <= 0: unchanged."""
    def apply(logits_BxV):
        keys = _ordered_bits(logits_BxV)
        cutoff = _largest_cutoff(keys, lambda kept: jnp.sum(kept, -1, keepdims=True) >= k)
        return jnp.where(keys < cutoff, -jnp.inf, logits_BxV)

    return lax.cond(jnp.asarray(k) > 0, apply, lambda x: x, logits_BxV)


def top_p_filter(logits_BxV: jax.Array, p) -> jax.Array:
    """Nucleus filter: keeps the smallest set of most likely tokens whose probability sums to >= p (the most
    likely token always; ties with the least likely kept token too), the rest set to -inf; p >= 1: unchanged."""
    def apply(logits_BxV):
        probs_BxV = jax.nn.softmax(logits_BxV.astype(jnp.float32), axis=-1)
        keys = _ordered_bits(probs_BxV)
        cutoff = _largest_cutoff(keys, lambda kept: jnp.sum(jnp.where(kept, probs_BxV, 0), -1, keepdims=True) >= p)
        return jnp.where(keys < cutoff, -jnp.inf, logits_BxV)

    return lax.cond(jnp.asarray(p) < 1.0, apply, lambda x: x, logits_BxV)


def filter_logits(logits_BxV: jax.Array, *, temperature=1.0, top_k=0, top_p=1.0) -> jax.Array:
    """float32 logits / temperature (if > 0), then the top-k and top-p filters (in that order, as Hugging Face)."""
    logits_BxV = logits_BxV.astype(jnp.float32)
    logits_BxV = logits_BxV / jnp.where(temperature > 0, temperature, 1.0)
    return top_p_filter(top_k_filter(logits_BxV, top_k), top_p)


def sample_logits(logits_BxV: jax.Array, rng: jax.Array, *, temperature=0.0, top_k=0, top_p=1.0) -> jax.Array:
    """(B,) int32 next tokens: argmax when temperature == 0 (greedy), else a draw from the filtered softmax."""
    def draw(logits_BxV):
        filtered = filter_logits(logits_BxV, temperature=temperature, top_k=top_k, top_p=top_p)
        return jax.random.categorical(rng, filtered, axis=-1).astype(jnp.int32)

    greedy = lambda logits_BxV: jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
    return lax.cond(jnp.asarray(temperature) > 0, draw, greedy, logits_BxV)


def _check_sampling(temperature: float, top_k: int, top_p: float, max_new_tokens: int) -> None:
    if temperature < 0:
        raise ValueError(f"temperature={temperature} must be >= 0 (0 = greedy)")
    if top_k < 0:
        raise ValueError(f"top_k={top_k} must be >= 0 (0 = no top-k filter)")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p={top_p} must be in (0, 1] (1 = no nucleus filter)")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 1")


# ---- The loop shared by both architectures. ----

def _variables(params) -> dict:
    """Accepts a parameter tree or a {'params': ...} variables dict; returns {'params': unboxed tree}."""
    params = nn.meta.unbox(params)
    return {"params": params["params"]} if "params" in params else {"params": params}


def _loop(step_fn, state, buf_BxT, lengths_B, settings: dict, *, first: int, max_new_tokens: int, pad_id: int):
    """Fills buf from position `first` on; step_fn(state, buf, i) -> (logits (B, V) predicting position i + 1,
    state). Returns the (B, max_new_tokens) tokens after each row's prompt."""
    B, T = buf_BxT.shape
    rng, eos_id = settings["rng"], settings["eos_id"]
    sampling = {k: settings[k] for k in ("temperature", "top_k", "top_p")}

    def cond(carry):
        t, _, done_B, _ = carry
        return (t < T) & ~jnp.all(done_B)

    def body(carry):
        t, buf_BxT, done_B, state = carry
        logits_BxV, state = step_fn(state, buf_BxT, t - 1)
        sampled_B = sample_logits(logits_BxV, jax.random.fold_in(rng, t), **sampling)
        in_prompt_B = t < lengths_B
        tok_B = jnp.where(in_prompt_B, buf_BxT[:, t], jnp.where(done_B, pad_id, sampled_B))
        buf_BxT = lax.dynamic_update_slice(buf_BxT, tok_B[:, None], (0, t))
        done_B = done_B | (t >= lengths_B + max_new_tokens - 1) | (~in_prompt_B & (tok_B == eos_id))
        return t + 1, buf_BxT, done_B, state

    done_B = jnp.zeros((B,), bool)
    _, buf_BxT, _, _ = lax.while_loop(cond, body, (jnp.asarray(first, jnp.int32), buf_BxT, done_B, state))
    idx_BxN = lengths_B[:, None] + jnp.arange(max_new_tokens)[None]
    return jnp.take_along_axis(buf_BxT, idx_BxN, axis=1)


def _settings(rng, temperature: float, top_k: int, top_p: float, eos_id: int | None, max_new_tokens: int) -> dict:
    """The sampling settings as arrays (traced, so changing them does not recompile), checked first."""
    _check_sampling(temperature, top_k, top_p, max_new_tokens)
    return {"rng": jax.random.key(0) if rng is None else rng, "temperature": jnp.float32(temperature),
            "top_k": jnp.int32(top_k), "top_p": jnp.float32(top_p),
            "eos_id": jnp.int32(-1 if eos_id is None else eos_id)}


def _check_length(model, positions: int, what: str) -> None:
    if positions > model.cfg.max_len:
        raise ValueError(f"{what} needs {positions} positions but model.max_len={model.cfg.max_len}: shorten the "
                         f"prompt or lower max_new_tokens")


@functools.partial(jax.jit, static_argnames=("model", "first", "max_new_tokens", "use_cache"))
def _generate_gpt(model, variables, buf_BxT, lengths_B, settings, *, first, max_new_tokens, use_cache):
    B, T = buf_BxT.shape
    F = T - 1  # positions ever fed: the last token is sampled, never fed
    if use_cache:
        _, cache = model.apply(variables, jnp.zeros((B, F), jnp.int32), decode=True, mutable=["cache"])
        cache = cache["cache"]
        if first > 1:  # the positions inside every row's prompt, in one chunk
            _, upd = model.apply({**variables, "cache": cache}, buf_BxT[:, :first - 1], decode=True,
                                 mutable=["cache"])
            cache = upd["cache"]

        def step_fn(cache, buf_BxT, i):
            tok_Bx1 = lax.dynamic_slice_in_dim(buf_BxT, i, 1, axis=1)
            logits_Bx1xV, upd = model.apply({**variables, "cache": cache}, tok_Bx1, decode=True,
                                            mutable=["cache"])
            return logits_Bx1xV[:, 0], upd["cache"]
    else:
        cache = ()

        def step_fn(cache, buf_BxT, i):  # the whole sequence so far (later slots are causally invisible)
            logits_BxFxV = model.apply(variables, buf_BxT[:, :F])
            return lax.dynamic_index_in_dim(logits_BxFxV, i, axis=1, keepdims=False), cache

    return _loop(step_fn, cache, buf_BxT, lengths_B, settings, first=first, max_new_tokens=max_new_tokens,
                 pad_id=model.cfg.pad_id)


def generate(model, params, prompt_ids, prompt_lengths, *, max_new_tokens: int, rng: jax.Array | None = None,
             temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, eos_id: int | None = None,
             use_cache: bool = True) -> jax.Array:
    """(B, max_new_tokens) int32 continuations of GPT prompts (left-aligned in prompt_ids (B, P), lengths (B,)
    >= 1, host values); after a row's eos (kept) or its last token, pad. Needs max(lengths) + max_new_tokens - 1
    <= model.max_len. rng is used when temperature > 0. Not jittable itself (it reads the lengths on the host);
    compiles once per (batch, max(lengths), min(lengths), max_new_tokens, use_cache)."""
    if model.cfg.arch != "gpt":
        raise ValueError(f"generate is for arch='gpt' models (got {model.cfg.arch!r}); use generate_seq2seq for t5")
    settings = _settings(rng, temperature, top_k, top_p, eos_id, max_new_tokens)
    lengths = np.asarray(prompt_lengths, np.int32)
    prompt = np.asarray(prompt_ids, np.int32)
    if prompt.ndim != 2 or lengths.shape != prompt.shape[:1]:
        raise ValueError(f"prompt_ids must be (B, P) and prompt_lengths (B,); got {prompt.shape}, {lengths.shape}")
    if lengths.min() < 1 or lengths.max() > prompt.shape[1]:
        raise ValueError(f"prompt_lengths {lengths.tolist()} must lie in [1, {prompt.shape[1]}] (a GPT prompt "
                         f"needs at least one token; start one with eos)")
    P = int(lengths.max())
    T = P + max_new_tokens
    _check_length(model, T - 1, f"a prompt of {P} tokens plus max_new_tokens={max_new_tokens}")
    buf = np.full((prompt.shape[0], T), model.cfg.pad_id, np.int32)
    buf[:, :P] = np.where(np.arange(P)[None] < lengths[:, None], prompt[:, :P], model.cfg.pad_id)
    return _generate_gpt(model, _variables(params), jnp.asarray(buf), jnp.asarray(lengths), settings,
                         first=int(lengths.min()), max_new_tokens=max_new_tokens, use_cache=use_cache)


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "use_cache"))
def _generate_t5(model, variables, encoder_inputs_BxS, settings, *, max_new_tokens, use_cache):
    B = encoder_inputs_BxS.shape[0]
    T = 1 + max_new_tokens  # the decoder start token (pad), then the generated tokens
    F = T - 1
    encoded_BxSxD = model.apply(variables, encoder_inputs_BxS, method="encode")
    decode = functools.partial(model.apply, method="decode")
    if use_cache:
        _, cache = decode(variables, encoded_BxSxD, encoder_inputs_BxS, jnp.zeros((B, F), jnp.int32),
                          decode=True, mutable=["cache"])
        cache = cache["cache"]

        def step_fn(cache, buf_BxT, i):
            tok_Bx1 = lax.dynamic_slice_in_dim(buf_BxT, i, 1, axis=1)
            logits_Bx1xV, upd = decode({**variables, "cache": cache}, encoded_BxSxD, encoder_inputs_BxS, tok_Bx1,
                                       decode=True, mutable=["cache"])
            return logits_Bx1xV[:, 0], upd["cache"]
    else:
        cache = ()

        def step_fn(cache, buf_BxT, i):
            logits_BxFxV = decode(variables, encoded_BxSxD, encoder_inputs_BxS, buf_BxT[:, :F])
            return lax.dynamic_index_in_dim(logits_BxFxV, i, axis=1, keepdims=False), cache

    pad = model.cfg.pad_id
    buf_BxT = jnp.full((B, T), pad, jnp.int32)  # position 0: the decoder start token, which is pad
    return _loop(step_fn, cache, buf_BxT, jnp.ones((B,), jnp.int32), settings, first=1,
                 max_new_tokens=max_new_tokens, pad_id=pad)


def generate_seq2seq(model, params, encoder_inputs, *, max_new_tokens: int, rng: jax.Array | None = None,
                     temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, eos_id: int | None = None,
                     use_cache: bool = True) -> jax.Array:
    """(B, max_new_tokens) int32 T5 outputs for encoder_inputs (B, S) (pad = model.cfg.pad_id is masked, so rows
    may have any length); the encoder runs once, the decoder starts from pad. Pad after a row's eos (kept).
    Needs S <= model.max_len and max_new_tokens <= model.max_len."""
    if model.cfg.arch != "t5":
        raise ValueError(f"generate_seq2seq is for arch='t5' models (got {model.cfg.arch!r}); use generate for gpt")
    settings = _settings(rng, temperature, top_k, top_p, eos_id, max_new_tokens)
    enc = np.asarray(encoder_inputs, np.int32)
    if enc.ndim != 2:
        raise ValueError(f"encoder_inputs must be (B, S); got shape {enc.shape}")
    _check_length(model, enc.shape[1], f"an encoder input of {enc.shape[1]} tokens")
    _check_length(model, max_new_tokens, f"max_new_tokens={max_new_tokens}")
    return _generate_t5(model, _variables(params), jnp.asarray(enc), settings, max_new_tokens=max_new_tokens,
                        use_cache=use_cache)

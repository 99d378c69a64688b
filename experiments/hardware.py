"""Peak FLOP/s of the device a run is on, and model FLOPs utilisation (MFU).

`peak_flops(device, dtype)` returns (FLOP/s per device, where the number comes from): a table of the dense
(no-sparsity) peaks vendors publish, keyed by `jax.Device.device_kind`, or on CPU a matmul measured in this process.

Which peak counts for float32: XLA's default matmul precision runs float32 dots on TF32 tensor cores on A100, H100
and H200 and as bfloat16 passes on TPU, so 'float32' is compared with the TF32 (GPU) or bfloat16 (TPU) peak; pass
dtype='float32_highest' for the true-float32 (CUDA core) peak, what `jax_default_matmul_precision='highest'` runs at.

  MFU = flops_per_step / step_time_s / (peak_flops_per_device * n_devices)

Beside the peaks, the probes experiments/bench.py runs against them (docs/performance.md has what they found):
`matmul_ceiling`, the training step's matmuls timed alone at their own shapes, and `loss_memory`, the compiled
memory of the head + cross-entropy with full or chunked logits. `time_matmul` is the one matmul timer of both.
"""

from __future__ import annotations

import functools
import os
import time

import jax
import jax.numpy as jnp

from train import errors, losses

# Published dense peaks in FLOP/s per device: bf16 (and fp16), tf32, fp32.
# Substring matches on the lower-cased device_kind, first match wins (so 'h100 pcie' precedes 'h100').
_GPUS = (
    ("h100 pcie", dict(bfloat16=756e12, tf32=378e12, fp32=51e12)),
    ("h100", dict(bfloat16=989e12, tf32=494.5e12, fp32=67e12)),
    ("h200", dict(bfloat16=989e12, tf32=494.5e12, fp32=67e12)),
    ("a100", dict(bfloat16=312e12, tf32=156e12, fp32=19.5e12)),
)
# TPU device_kind strings are exact ('TPU v5 lite' is v5e, 'TPU v5' is v5p, 'TPU v6 lite' is v6e); bf16 peaks.
_TPUS = {
    "tpu v4": 275e12,
    "tpu v5 lite": 197e12,
    "tpu v5e": 197e12,
    "tpu v5": 459e12,
    "tpu v5p": 459e12,
    "tpu v6 lite": 918e12,
    "tpu v6e": 918e12,
}
DTYPES = ("float32", "bfloat16", "float16", "float32_highest")


class UnknownDeviceError(LookupError):
    """The accelerator is in neither table; pass its peak explicitly."""


class BenchError(errors.UserError):
    """A bench flag that cannot work (bad --sweep, --data, --steps; --matmul_ceiling on t5, a --loss_chunk that does
    not divide L); the message names the flag and the fix. Here, not in bench.py, because the probes below raise it."""


def table_peak(device_kind: str, dtype: str = "float32") -> tuple[float, str]:
    """(peak FLOP/s, source) of an accelerator from the published table; raises UnknownDeviceError if unknown."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r}: choose one of {DTYPES}")
    kind = device_kind.strip().lower()
    if kind in _TPUS:
        return _TPUS[kind], f"{device_kind}: published bf16 peak (float32 dots run as bf16 passes on TPU)"
    for pattern, peaks in _GPUS:
        if pattern in kind:
            key = {"float32": "tf32", "float32_highest": "fp32"}.get(dtype, "bfloat16")
            note = {"tf32": "TF32 dense peak (XLA's default precision for float32 dots)",
                    "fp32": "FP32 (non-tensor-core) peak", "bfloat16": "bf16 dense peak"}[key]
            return peaks[key], f"{device_kind}: published {note}"
    raise UnknownDeviceError(f"no published peak for device kind {device_kind!r}")


def time_matmul(m: int, k: int, n: int, dtype="float32", batch: int = 1, repeats: int = 5) -> float:
    """Best seconds of an (m x k) by (k x n) matmul (`batch` of them at once if batch > 1) on the default device,
    accumulating in float32: one warm-up call (it compiles), then `repeats` timed."""
    lead = (batch,) if batch > 1 else ()
    x, y = jnp.ones(lead + (m, k), dtype), jnp.ones(lead + (k, n), dtype)
    f = jax.jit(lambda x, y: jnp.matmul(x, y, preferred_element_type=jnp.float32))
    f(x, y).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        f(x, y).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return best


def measure_matmul_flops(n: int = 4096, repeats: int = 5, dtype: str = "float32") -> float:
    """Best FLOP/s of an n x n by n x n matmul on the default device (one warm-up, then `repeats` timed)."""
    return 2.0 * n**3 / time_matmul(n, n, n, "bfloat16" if dtype in ("bfloat16", "float16") else "float32",
                                    repeats=repeats)


@functools.cache
def _measured(dtype: str) -> float:
    return measure_matmul_flops(dtype=dtype)


def peak_flops(device=None, dtype: str = "float32") -> tuple[float, str]:
    """(peak FLOP/s per device, source): published table for known accelerators, a measured matmul on CPU.

    `device` defaults to jax.devices()[0]; the CPU measurement (a 4096^2 matmul in `dtype`, best of 5) is cached per
    process and dtype.
    """
    if device is None:
        device = jax.devices()[0]
    if device.platform == "cpu":
        pinned = os.environ.get("TRIAD_CPU_PEAK_FLOPS")
        if pinned:  # A shared CPU measures a lower peak under load, which inflates MFU: pin it for comparable runs.
            return float(pinned), "TRIAD_CPU_PEAK_FLOPS"
        return _measured(dtype), f"measured: {dtype} 4096x4096 jnp.dot on {device.device_kind}, best of 5" + _load()
    try:
        return table_peak(device.device_kind, dtype)
    except UnknownDeviceError:
        return _measured(dtype), f"measured: {dtype} 4096x4096 jnp.dot on {device.device_kind} (not in the table)"


def _load() -> str:
    """', load 0.3' (1-minute load average per core), plus a warning when others share the cores: a peak measured
    then is low and the MFU against it high; pin an idle measurement with TRIAD_CPU_PEAK_FLOPS instead."""
    try:
        per_core = os.getloadavg()[0] / (os.cpu_count() or 1)
    except OSError:
        return ""
    busy = per_core > 0.5
    return f", load {per_core:.2f} per core" + (" (busy: MFU against it is inflated; pin TRIAD_CPU_PEAK_FLOPS "
                                                 "to a peak measured idle)" if busy else "")


def mfu(flops_per_step: float, step_time_s: float, peak_per_device: float, n_devices: int = 1) -> float:
    """Model FLOPs utilisation: achieved model FLOP/s over the peak of all devices."""
    if step_time_s <= 0 or peak_per_device <= 0 or n_devices <= 0:
        raise ValueError("step_time_s, peak_per_device and n_devices must be positive")
    return flops_per_step / step_time_s / (peak_per_device * n_devices)


# ---------------------------------------------------------------------------------------------- matmul ceiling


def step_matmuls(model_cfg, batch: int, seq_len: int) -> dict[str, list[tuple[int, int, int, int, int]]]:
    """The matmuls of one gpt/bert forward as (count, batch, m, k, n), grouped 'dense', 'attention', 'head'."""
    if model_cfg.arch == "t5":
        raise BenchError("--matmul_ceiling covers gpt and bert (no cross-attention shapes yet)")
    c = model_cfg
    N, D, H, K, Dh, F = batch * seq_len, c.d_model, c.n_heads, c.kv_heads, c.dh, c.d_ff
    n_up = 2 if model_cfg.mlp in ("swiglu", "geglu") else 1
    Lyr = model_cfg.n_layers
    dense = [(Lyr, 1, N, D, H * Dh), (2 * Lyr, 1, N, D, K * Dh), (Lyr, 1, N, H * Dh, D),
             (n_up * Lyr, 1, N, D, F), (Lyr, 1, N, F, D)]
    head = [(1, 1, N, D, model_cfg.vocab_size)] + ([(1, 1, N, D, D)] if model_cfg.mlm_transform else [])
    attention = [(Lyr, batch * H, seq_len, Dh, seq_len), (Lyr, batch * H, seq_len, seq_len, Dh)]
    return {"dense": dense, "attention": attention, "head": head}


def matmul_ceiling(model_cfg, batch: int, seq_len: int, repeats: int = 3) -> dict:
    """Seconds the training step's matmuls alone take at their own shapes (forward m.k.n plus the two backward
    products m.n.k and k.m.n, each timed on its own, best of `repeats`), per group and in total, and the FLOP/s
    they reach: what the step could do if everything else (norms, softmax, optimizer, copies) were free."""
    out, total_s, total_f = {}, 0.0, 0.0
    for group, mms in step_matmuls(model_cfg, batch, seq_len).items():
        secs = flops_ = 0.0
        for count, b, m, k, n in mms:
            t = sum(time_matmul(*shape, model_cfg.dtype, batch=b, repeats=repeats)
                    for shape in ((m, k, n), (m, n, k), (k, m, n)))
            secs += count * t
            flops_ += count * 3 * 2.0 * b * m * k * n
        out[group] = {"seconds": secs, "flops": flops_, "flops_per_sec": flops_ / secs}
        total_s += secs
        total_f += flops_
    out["total"] = {"seconds": total_s, "flops": total_f, "flops_per_sec": total_f / total_s}
    return out


# ---------------------------------------------------------------------------------------------- loss memory


def loss_memory(d_model: int, vocab: int, batch: int, seq_len: int, chunk: int = 0, dtype: str = "float32") -> dict:
    """Compiled memory of value_and_grad of (hidden_BxLxD, tied table VxD) -> summed cross-entropy.

    chunk=0: the model's path (full (B, L, V) logits, then losses.cross_entropy); chunk=c: a `lax.scan` over
    sequence chunks of c positions, each chunk's head matmul + logsumexp under `jax.checkpoint`, so only one
    (B, c, V) block of logits is alive in the forward or the backward.
    """
    dt = jnp.dtype(dtype)
    h = jax.ShapeDtypeStruct((batch, seq_len, d_model), dt)
    table = jax.ShapeDtypeStruct((vocab, d_model), jnp.float32)
    tgt = jax.ShapeDtypeStruct((batch, seq_len), jnp.int32)

    def full(h, table, tgt):
        logits = jnp.einsum("bld,vd->blv", h, table.astype(dt))
        return losses.cross_entropy(logits, tgt, jnp.ones(tgt.shape, jnp.float32))["loss"]

    def chunked(h, table, tgt):
        n = seq_len // chunk
        h_c = h.reshape(batch, n, chunk, d_model).swapaxes(0, 1)
        t_c = tgt.reshape(batch, n, chunk).swapaxes(0, 1)

        @jax.checkpoint
        def one(h, t):
            logits = jnp.einsum("bld,vd->blv", h, table.astype(dt)).astype(jnp.float32)
            lse = jax.nn.logsumexp(logits, axis=-1)
            return jnp.sum(lse - jnp.take_along_axis(logits, t[..., None], axis=-1)[..., 0])

        def body(total, xs):
            return total + one(*xs), None

        return jax.lax.scan(body, jnp.zeros((), jnp.float32), (h_c, t_c))[0]

    if chunk and seq_len % chunk:
        raise BenchError(f"--loss_chunk={chunk} must divide the sequence length {seq_len}")
    fn = jax.jit(jax.value_and_grad(chunked if chunk else full, argnums=(0, 1)))
    m = fn.lower(h, table, tgt).compile().memory_analysis()
    temp = int(m.temp_size_in_bytes)
    return {"vocab": vocab, "chunk": chunk, "temp_bytes": temp,
            "total_bytes": int(m.argument_size_in_bytes + m.output_size_in_bytes + temp - m.alias_size_in_bytes),
            "logits_f32_bytes": batch * seq_len * vocab * 4}

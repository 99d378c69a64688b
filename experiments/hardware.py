"""Peak FLOP/s of the device a run is on, and model FLOPs utilisation (MFU).

`peak_flops(device, dtype)` returns (FLOP/s per device, where the number comes from): a table of the dense
(no-sparsity) peaks vendors publish, keyed by `jax.Device.device_kind`, or on CPU a matmul measured in this process.

Which peak counts for float32: XLA's default matmul precision runs float32 dots on TF32 tensor cores on A100, H100
and H200 and as bfloat16 passes on TPU, so 'float32' is compared with the TF32 (GPU) or bfloat16 (TPU) peak; pass
dtype='float32_highest' for the true-float32 (CUDA core) peak, what `jax_default_matmul_precision='highest'` runs at.

  MFU = flops_per_step / step_time_s / (peak_flops_per_device * n_devices)
"""

from __future__ import annotations

import functools
import os
import time

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


def measure_matmul_flops(n: int = 4096, repeats: int = 5, dtype: str = "float32") -> float:
    """Best FLOP/s of an n x n by n x n `jnp.dot` on the default device (one warm-up, then `repeats` timed)."""
    import jax
    import jax.numpy as jnp

    jdtype = jnp.bfloat16 if dtype in ("bfloat16", "float16") else jnp.float32
    a = jax.random.normal(jax.random.key(0), (n, n), jdtype)
    b = jax.random.normal(jax.random.key(1), (n, n), jdtype)
    dot = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.float32))
    dot(a, b).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        dot(a, b).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3 / best


@functools.cache
def _measured(dtype: str) -> float:
    return measure_matmul_flops(dtype=dtype)


def peak_flops(device=None, dtype: str = "float32") -> tuple[float, str]:
    """(peak FLOP/s per device, source): published table for known accelerators, a measured matmul on CPU.

    `device` defaults to jax.devices()[0]; the CPU measurement (4096^2 float32 `jnp.dot`, best of 5) is cached per
    process and dtype.
    """
    if device is None:
        import jax

        device = jax.devices()[0]
    if device.platform == "cpu":
        pinned = os.environ.get("TRIAD_CPU_PEAK_FLOPS")
        if pinned:  # A shared CPU measures a lower peak under load, which inflates MFU: pin it for comparable runs.
            return float(pinned), "TRIAD_CPU_PEAK_FLOPS"
        return _measured(dtype), f"measured: {dtype} 4096x4096 jnp.dot on {device.device_kind}, best of 5"
    try:
        return table_peak(device.device_kind, dtype)
    except UnknownDeviceError:
        return _measured(dtype), f"measured: {dtype} 4096x4096 jnp.dot on {device.device_kind} (not in the table)"


def mfu(flops_per_step: float, step_time_s: float, peak_per_device: float, n_devices: int = 1) -> float:
    """Model FLOPs utilisation: achieved model FLOP/s over the peak of all devices."""
    if step_time_s <= 0 or peak_per_device <= 0 or n_devices <= 0:
        raise ValueError("step_time_s, peak_per_device and n_devices must be positive")
    return flops_per_step / step_time_s / (peak_per_device * n_devices)

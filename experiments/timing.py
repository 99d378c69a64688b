"""Times a config's REAL training step on this machine: throughput, MFU, compile time and memory, one record each.

  records = bench_many([config_a, config_b], steps=10, data='both')   # experiments/bench.py is the command line

The step is the one train.main runs: `loop.build` -> `runner.init` -> `runner.train(state, numpy_batch)`, timed
after `warmup` steps (the first compiles) the way the loop drives it: step n+1 is dispatched before step n is waited
for, and a step's time is the gap between the completions of consecutive steps. Several configs are built and warmed
up first, then timed in interleaved blocks (A, B, C, A, B, C, ...), so their records are side-by-side ratios.

  MFU = model_flops_per_step / step_time / (peak_flops_per_device * n_devices)

model_flops_per_step is the analytic count of what the step executes (train/optim.py executed_flops_per_step:
3 x forward matmul FLOPs as the step computes them, the MLM head at the masked positions alone, plus Muon's
Newton-Schulz matmuls; remat recompute NOT included); the peak comes from
experiments/hardware.py (published table, or on CPU a 4096^2 matmul measured in this process; on CPU it is
measured again after the timed steps, `peak_flops_after`, because the machine is shared).
`xla_flops_ratio` = XLA's cost_analysis() FLOPs of the compiled step (all devices) / model_flops_per_step: a little
above 1, since XLA also counts norms, softmax, the loss and AdamW; remat recompute raises it; under scan_layers XLA
counts the loop body once, so the ratio is meaningless there. Measured values: docs/performance.md.

data='real' times the pipeline's `batch(step)` (prefetch thread + host-to-device copy, as in training);
'synthetic' reuses one device batch; 'both' alternates blocks of the two and reports
host_overhead = 1 - synthetic / real median step time.
"""

from __future__ import annotations

import os
import time
from typing import Any

import jax
import numpy as np

from experiments import hardware
from experiments.hardware import BenchError
from model import flops
from train import loop, optim

DATA_MODES = ("real", "synthetic", "both")


def xla_flops(compiled) -> float | None:
    """'flops' of the compiled executable's cost_analysis() (a dict, or a list of dicts in older JAX)."""
    if compiled is None:
        return None
    try:
        cost = compiled.cost_analysis()
    except Exception:  # some backends do not implement it
        return None
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    if not cost or "flops" not in cost:
        return None
    return float(cost["flops"])


def memory_report(runner) -> dict:
    """peak_memory_bytes (loop.peak_memory_bytes: allocator peak where the backend has one, else XLA's memory
    analysis of the compiled step, argument + output + temp - alias), which of the two, and the analysis terms."""
    stats = jax.local_devices()[0].memory_stats() or {}
    out = {"peak_memory_bytes": loop.peak_memory_bytes(runner),
           "peak_memory_source": ("device memory_stats peak_bytes_in_use" if "peak_bytes_in_use" in stats
                                  else "XLA memory_analysis: argument + output + temp - alias")}
    compiled = runner.compiled_train()
    m = compiled.memory_analysis() if compiled is not None else None
    if m is not None:
        out["memory_analysis"] = {k: int(getattr(m, f"{k}_size_in_bytes")) for k in
                                  ("argument", "output", "temp", "alias", "generated_code")}
    return out


def step_stats(seconds: list[float]) -> dict:
    """Median, p10, p90, min, max and mean of step times, in milliseconds."""
    ms = np.asarray(seconds, np.float64) * 1e3
    return {"median": float(np.median(ms)), "p10": float(np.percentile(ms, 10)),
            "p90": float(np.percentile(ms, 90)), "min": float(ms.min()), "max": float(ms.max()),
            "mean": float(ms.mean()), "n": int(ms.size)}


def _timed(step_fn, state, batches) -> tuple[Any, list[float], float]:
    """Runs `step_fn` over `batches` as the training loop does (dispatch n+1, then wait for n). Returns the state,
    the gaps between consecutive step completions (the first step of the block is not timed: its batch was not
    prepared ahead) and the process CPU seconds spent meanwhile."""
    times, pending, last, cpu0 = [], None, None, None
    for batch in batches:
        state, metrics = step_fn(state, batch)
        if pending is not None:
            jax.block_until_ready(pending)
            now = time.perf_counter()
            if last is None:
                cpu0 = _cpu_seconds()
            else:
                times.append(now - last)
            last = now
        pending = metrics
    jax.block_until_ready(pending)
    times.append(time.perf_counter() - last)
    return state, times, _cpu_seconds() - cpu0


def _cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


class _Case:
    """One config built, initialised and warmed up, ready to time in blocks of steps."""

    def __init__(self, config, warmup: int, devices=None):
        self.config = config
        t0 = time.perf_counter()
        self.pipe, self.model_cfg, self.model, self.runner = loop.build(config, devices=devices)
        self.state = self.runner.init(jax.random.key(config.seed))
        jax.block_until_ready(self.state)
        self.init_s = time.perf_counter() - t0
        self.first = self.pipe.train.batch(0)
        t1 = time.perf_counter()
        self.state, metrics = self.runner.train(self.state, self.first)
        jax.block_until_ready(metrics)
        self.first_step_s = time.perf_counter() - t1
        for s in range(1, warmup):
            self.state, metrics = self.runner.train(self.state, self.pipe.train.batch(s))
        jax.block_until_ready(metrics)
        self.next_step = warmup
        self.compiled = self.runner.compiled_train()
        self.const = None
        if self.compiled is not None:
            with jax.set_mesh(self.runner.mesh):
                self.const = self.runner.device_batch(self.first)
        self.times = {"real": [], "synthetic": []}
        self.cpu_s = 0.0

    def _run_compiled(self, state, batch):
        with jax.set_mesh(self.runner.mesh):
            return self.compiled(state, batch)

    def block(self, mode: str, n: int) -> None:
        """Times n steps (n + 1 run) on real batches (the pipeline, as in training) or one constant device batch
        (pmap, which has no ahead-of-time executable: one constant host batch through runner.train)."""
        if mode == "real":
            batches = (b for _, b in self.pipe.train.iterate(self.next_step, n + 1))
            fn = self.runner.train
        elif self.compiled is not None:
            batches, fn = [self.const] * (n + 1), self._run_compiled
        else:
            batches, fn = [self.first] * (n + 1), self.runner.train
        self.state, times, cpu = _timed(fn, self.state, batches)
        self.next_step += n + 1
        self.times[mode] += times
        self.cpu_s += cpu


def bench_many(configs: list, *, steps: int = 10, warmup: int = 2, data: str = "real",
               peak: tuple[float, str] | None = None, devices=None, recheck_peak: bool = True,
               ceiling: bool = False) -> list[dict]:
    """Measures the training step of each config (experiment ConfigDicts) side by side and returns one record each.

    All configs are built and warmed up first, then timed in interleaved blocks (config A, B, ..., A, B, ...; with
    data='both' also real / synthetic) so that load changes on a shared machine hit every case alike.
    `peak` = (FLOP/s per device, source) skips the hardware lookup (tests); otherwise experiments.hardware's peak
    for the compute dtype, looked up before the timed steps and, on CPU with `recheck_peak`, measured again after
    them. `ceiling` adds `matmul_ceiling` (experiments/hardware.py): the step's matmuls timed alone at their shapes
    (gpt/bert).
    """
    if data not in DATA_MODES:
        raise BenchError(f"--data={data!r}: choose one of {', '.join(DATA_MODES)}")
    if steps < 2 or warmup < 1:
        raise BenchError(f"--steps={steps} --warmup={warmup}: use at least 2 timed steps and 1 warm-up step "
                         "(the first step compiles)")
    cases = [_Case(c, warmup, devices) for c in configs]
    modes = ["real", "synthetic"] if data == "both" else [data]
    blocks = 1 if len(cases) * len(modes) == 1 else min(3, steps // 2)
    peaks = {}
    for case in cases:
        dtype = case.model_cfg.dtype
        if peak is None and dtype not in peaks:
            peaks[dtype] = hardware.peak_flops(_device(case.runner), dtype)
    wall0 = time.perf_counter()
    for b in range(blocks):
        n = steps // blocks + (1 if b < steps % blocks else 0)
        for case in cases:
            for mode in modes:
                case.block(mode, n)
    wall = time.perf_counter() - wall0
    out = []
    for case in cases:
        r = _record(case, data, peak or peaks[case.model_cfg.dtype], wall)
        if recheck_peak and _device(case.runner).platform == "cpu" and r["peak_flops_source"].startswith("measured"):
            after = hardware.measure_matmul_flops(dtype=case.model_cfg.dtype)
            r["peak_flops_after"] = after
            r["mfu_vs_peak_after"] = hardware.mfu(r["model_flops_per_step"], r["step_time_ms"]["median"] / 1e3,
                                                  after, r["n_devices"])
        if ceiling:
            per_device = r["batch_size"] // r["n_devices"]
            r["matmul_ceiling"] = hardware.matmul_ceiling(case.model_cfg, per_device, r["seq_len"])
            r["matmul_share_of_step"] = r["matmul_ceiling"]["total"]["seconds"] / (r["step_time_ms"]["median"] / 1e3)
        out.append(r)
    return out


def bench(config, **kwargs) -> dict:
    """`bench_many([config], **kwargs)[0]`: the record of one config's training step."""
    return bench_many([config], **kwargs)[0]


def _device(runner):
    return runner.mesh.devices.flat[0] if hasattr(runner, "mesh") else runner.devices[0]


def _record(case: _Case, data: str, peak: tuple[float, str], wall: float) -> dict:
    model_cfg, runner, config = case.model_cfg, case.runner, case.config
    main = "synthetic" if data == "synthetic" else "real"
    stats = step_stats(case.times[main])
    step_s = stats["median"] / 1e3
    n_devices = runner.mesh.size if hasattr(runner, "mesh") else len(runner.devices)
    device = _device(runner)
    B = config.train.batch_size
    seq_len, target_len = case.runner.objective.lengths
    predicted = case.runner.objective.predicted or None  # MLM: the head at the masked positions alone
    step_flops = optim.executed_flops_per_step(model_cfg, config.train, (seq_len, target_len), predicted or 0)
    model_flops = step_flops["executed"]  # what the step computes, Muon's Newton-Schulz matmuls included
    causal_flops = (3 * flops.flops_per_example(model_cfg, seq_len, target_len, predicted)["forward_causal"] * B
                    + step_flops["optimizer"])
    tokens = B * case.runner.objective.tokens_per_example
    xla = xla_flops(case.compiled)
    if xla is not None:
        xla *= n_devices  # the cost analysis of an SPMD executable is per device
    timed_s = sum(sum(t) for t in case.times.values())
    out = {
        "config": f"{model_cfg.arch} d{model_cfg.d_model} x{model_cfg.n_layers} V{model_cfg.vocab_size}",
        "arch": model_cfg.arch,
        "params": flops.param_count(model_cfg),
        "batch_size": B,
        "seq_len": seq_len,
        "target_len": target_len,
        "tokens_per_step": tokens,
        "dtype": model_cfg.dtype,
        "param_dtype": model_cfg.param_dtype,
        "remat": model_cfg.remat,
        "scan_layers": model_cfg.scan_layers,
        "attention_impl": model_cfg.attention_impl,
        "microbatches": config.train.microbatches,
        "parallel": config.parallel,
        "data": data,
        "step_time_ms": stats,
        "tokens_per_sec": tokens / step_s,
        "model_flops_per_step": model_flops,
        "model_flops_per_sec": model_flops / step_s,
        "xla_flops_per_step": xla,
        "xla_flops_ratio": None if xla is None else xla / model_flops,
        "peak_flops": peak[0],
        "peak_flops_source": peak[1],
        "mfu": hardware.mfu(model_flops, step_s, peak[0], n_devices),
        # The same with causal attention counted over the (q, k <= q) half only, as MaxText counts it.
        "model_flops_causal_per_step": causal_flops,
        "mfu_causal": hardware.mfu(causal_flops, step_s, peak[0], n_devices),
        "attention_flops": "mfu: full L x L square (what XLA computes); mfu_causal: causal half, L (L + 1) / 2",
        # pmap has no ahead-of-time executable: its compile happens inside the first step.
        "compile_s": runner.compile_seconds if case.compiled is not None else case.first_step_s,
        "first_step_s": case.first_step_s,
        "init_s": case.init_s,
        **memory_report(runner),
        # Process CPU seconds per second of timed steps, over the cores: well below 1 = the machine is shared.
        "cpu_share": case.cpu_s / max(timed_s, 1e-9) / (os.cpu_count() or 1),
        "timed_wall_s": wall,
        "backend": jax.default_backend(),
        "device_kind": device.device_kind,
        "n_devices": n_devices,
        "jax_version": jax.__version__,
        "compile_cache": jax.config.jax_compilation_cache_dir or "",
    }
    if xla is not None and model_cfg.scan_layers:  # the ratio drops far below 1 (docs/performance.md)
        out["xla_flops_note"] = "scan_layers: XLA's cost analysis counts the scanned loop body once, not per layer"
    if data == "both":
        synth = step_stats(case.times["synthetic"])
        out["synthetic_step_time_ms"] = synth
        out["host_overhead"] = 1.0 - synth["median"] / stats["median"]
    return out

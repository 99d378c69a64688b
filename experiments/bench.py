"""Throughput, MFU, compile time and memory of a config's REAL training step on this machine.

  python -m experiments.bench --config=experiments/configs/gpt.py:small
  python -m experiments.bench --config=experiments/configs/gpt.py:small --json --steps=20
  python -m experiments.bench --config=experiments/configs/gpt.py:small --sweep=batch_size:8,16,32
  python -m experiments.bench --config=experiments/configs/gpt.py:small --sweep=model.remat:none,dots,full
  python -m experiments.bench --config=experiments/configs/gpt.py:small --data=both   # host overhead
  python -m experiments.bench --config=experiments/configs/gpt.py:small --compile_cache=/tmp/xla  # run twice
  python -m experiments.bench --config=experiments/configs/gpt.py:small --matmul_ceiling   # matmuls alone
  python -m experiments.bench --config=experiments/configs/gpt.py:small --loss_memory=8000,32000,50257

Results and what moved them: docs/performance.md. The step is the one train.main runs: `loop.build` ->
`runner.init` -> `runner.train(state, numpy_batch)`, timed after `--warmup` steps (the first compiles) the way the
loop drives it: step n+1 is dispatched before step n is waited for, and a step's time is the gap between the
completions of consecutive steps. A --sweep builds and warms up every value first, then times them in interleaved
blocks (A, B, C, A, B, C, ...), so its rows are side-by-side ratios.

  MFU = model_flops_per_step / step_time / (peak_flops_per_device * n_devices)

model_flops_per_step is the analytic count of model/flops.py (3 x forward matmul FLOPs, remat recompute NOT
included); the peak comes from experiments/hardware.py (published table, or on CPU a 4096^2 matmul measured in this
process; on CPU it is measured again after the timed steps, `peak_flops_after`, because the machine is shared).
`xla_flops_ratio` = XLA's cost_analysis() FLOPs of the compiled step (all devices) / model_flops_per_step: about
1.01 for the small GPT (XLA also counts norms, softmax, the loss and AdamW); remat recompute raises it (dots 1.04,
full 1.20); under scan_layers XLA counts the loop body once, so the ratio is meaningless there (0.34).

--data=real times the pipeline's `batch(step)` (prefetch thread + host-to-device copy, as in training);
--data=synthetic reuses one device batch; --data=both alternates blocks of the two and reports
host_overhead = 1 - synthetic / real median step time.
"""

from __future__ import annotations

import copy
import json
import os
import sys
import time
from typing import Any

import numpy as np

from train import errors

DATA_MODES = ("real", "synthetic", "both")


class BenchError(errors.UserError):
    """A bench flag that cannot work (bad --sweep, --data, --steps); the message names the flag and the fix."""


# ---------------------------------------------------------------------------------------------- --sweep


def resolve_key(config, key: str) -> str:
    """The full config path of `key`: a path ('model.remat') or a field name unique in the config ('batch_size')."""
    node = config
    for part in key.split("."):
        if not hasattr(node, "keys") or part not in node:
            break
        node = node[part]
    else:
        if not hasattr(node, "keys"):
            return key
    if "." not in key:
        hits = [f"{section}.{key}" for section in config.keys()
                if hasattr(config[section], "keys") and key in config[section]]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise BenchError(f"--sweep={key}:...: {key!r} is ambiguous ({', '.join(hits)}): give the full path")
    raise BenchError(f"--sweep={key}:...: the config has no field {key!r}; see experiments/configs/base.py")


def convert(text: str, current: Any, name: str) -> Any:
    """`text` as the type of the config field's current value."""
    text = text.strip()
    if isinstance(current, bool):
        if text.lower() in ("true", "1", "yes"):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
    else:
        try:
            return type(current)(text) if isinstance(current, (int, float, str)) else text
        except ValueError:
            pass
    raise BenchError(f"--sweep: {name}={text!r} is not a {type(current).__name__}")


def parse_sweep(spec: str, config) -> tuple[str, list[Any]]:
    """'key:v1,v2,...' -> (full config path, [typed values])."""
    key, sep, values = spec.partition(":")
    raw = [v for v in values.split(",") if v.strip()]
    if not sep or not key.strip() or not raw:
        raise BenchError(f"--sweep={spec!r}: write --sweep=<field>:<v1>,<v2>,... e.g. --sweep=batch_size:8,16,32 "
                         "or --sweep=model.remat:none,dots,full")
    path = resolve_key(config, key.strip())
    node = config
    for part in path.split("."):
        node = node[part]
    return path, [convert(v, node, path) for v in raw]


def with_override(config, path: str, value: Any):
    """A copy of `config` with `path` set to `value` (the original, possibly locked, is untouched)."""
    new = copy.deepcopy(config)
    *parents, leaf = path.split(".")
    node = new
    for p in parents:
        node = node[p]
    node[leaf] = value
    return new


# ---------------------------------------------------------------------------------------------- measurements


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
    import jax

    from train import loop

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
    import jax

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
        import jax

        from train import loop

        self.config = config
        t0 = time.perf_counter()
        self.pipe, self.mcfg, self.model, self.runner = loop.build(config, devices=devices)
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
        import jax

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
    them. `ceiling` adds `matmul_ceiling`: the step's matmuls timed alone at their shapes (gpt/bert).
    """
    from experiments import hardware

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
        dtype = case.mcfg.dtype
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
        r = _record(case, data, peak or peaks[case.mcfg.dtype], wall)
        if recheck_peak and _device(case.runner).platform == "cpu" and r["peak_flops_source"].startswith("measured"):
            after = hardware.measure_matmul_flops(dtype=case.mcfg.dtype)
            r["peak_flops_after"] = after
            r["mfu_vs_peak_after"] = hardware.mfu(r["model_flops_per_step"], r["step_time_ms"]["median"] / 1e3,
                                                  after, r["n_devices"])
        if ceiling:
            r["matmul_ceiling"] = matmul_ceiling(case.mcfg, r["batch_size"] // r["n_devices"], r["seq_len"])
            r["matmul_share_of_step"] = r["matmul_ceiling"]["total"]["seconds"] / (r["step_time_ms"]["median"] / 1e3)
        out.append(r)
    return out


def bench(config, **kwargs) -> dict:
    """`bench_many([config], **kwargs)[0]`: the record of one config's training step."""
    return bench_many([config], **kwargs)[0]


def _device(runner):
    return runner.mesh.devices.flat[0] if hasattr(runner, "mesh") else runner.devices[0]


def _record(case: _Case, data: str, peak: tuple[float, str], wall: float) -> dict:
    import jax

    from experiments import hardware
    from model import flops
    from train import loop

    mcfg, runner, config = case.mcfg, case.runner, case.config
    main = "synthetic" if data == "synthetic" else "real"
    stats = step_stats(case.times[main])
    step_s = stats["median"] / 1e3
    n_devices = runner.mesh.size if hasattr(runner, "mesh") else len(runner.devices)
    device = _device(runner)
    B = config.train.batch_size
    seq_len, target_len = loop.sequence_lengths(case.first)
    model_flops = flops.training_flops_per_step(mcfg, B, seq_len, target_len)
    tokens = B * loop.tokens_per_example(case.first, case.model)
    xla = xla_flops(case.compiled)
    if xla is not None:
        xla *= n_devices  # the cost analysis of an SPMD executable is per device
    timed_s = sum(sum(t) for t in case.times.values())
    out = {
        "config": f"{mcfg.arch} d{mcfg.d_model} x{mcfg.n_layers} V{mcfg.vocab_size}",
        "arch": mcfg.arch,
        "params": flops.param_count(mcfg),
        "batch_size": B,
        "seq_len": seq_len,
        "target_len": target_len,
        "tokens_per_step": tokens,
        "dtype": mcfg.dtype,
        "param_dtype": mcfg.param_dtype,
        "remat": mcfg.remat,
        "scan_layers": mcfg.scan_layers,
        "attention_impl": mcfg.attention_impl,
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
    if xla is not None and mcfg.scan_layers:  # measured: 0.34 for the small GPT (6 layers) under scan
        out["xla_flops_note"] = "scan_layers: XLA's cost analysis counts the scanned loop body once, not per layer"
    if data == "both":
        synth = step_stats(case.times["synthetic"])
        out["synthetic_step_time_ms"] = synth
        out["host_overhead"] = 1.0 - synth["median"] / stats["median"]
    return out



# ---------------------------------------------------------------------------------------------- matmul ceiling


def step_matmuls(mcfg, batch: int, seq_len: int) -> dict[str, list[tuple[int, int, int, int, int]]]:
    """The matmuls of one gpt/bert forward as (count, batch, m, k, n), grouped 'dense', 'attention', 'head'."""
    if mcfg.arch == "t5":
        raise BenchError("--matmul_ceiling covers gpt and bert (no cross-attention shapes yet)")
    N, D, H, K, Dh, F = batch * seq_len, mcfg.d_model, mcfg.n_heads, mcfg.kv_heads, mcfg.dh, mcfg.d_ff
    n_up = 2 if mcfg.mlp in ("swiglu", "geglu") else 1
    Lyr = mcfg.n_layers
    dense = [(Lyr, 1, N, D, H * Dh), (2 * Lyr, 1, N, D, K * Dh), (Lyr, 1, N, H * Dh, D),
             (n_up * Lyr, 1, N, D, F), (Lyr, 1, N, F, D)]
    head = [(1, 1, N, D, mcfg.vocab_size)] + ([(1, 1, N, D, D)] if mcfg.mlm_transform else [])
    attention = [(Lyr, batch * H, seq_len, Dh, seq_len), (Lyr, batch * H, seq_len, seq_len, Dh)]
    return {"dense": dense, "attention": attention, "head": head}


def _time_dot(b: int, m: int, k: int, n: int, dtype, repeats: int) -> float:
    import jax
    import jax.numpy as jnp

    x, y = jnp.ones((b, m, k), dtype), jnp.ones((b, k, n), dtype)
    f = jax.jit(lambda x, y: jnp.einsum("bmk,bkn->bmn", x, y, preferred_element_type=jnp.float32))
    f(x, y).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        f(x, y).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return best


def matmul_ceiling(mcfg, batch: int, seq_len: int, repeats: int = 3) -> dict:
    """Seconds the training step's matmuls alone take at their own shapes (forward m.k.n plus the two backward
    products m.n.k and k.m.n, each timed on its own, best of `repeats`), per group and in total, and the FLOP/s
    they reach: what the step could do if everything else (norms, softmax, optimizer, copies) were free."""
    import jax.numpy as jnp

    dt = jnp.dtype(mcfg.dtype)
    out, total_s, total_f = {}, 0.0, 0.0
    for group, mms in step_matmuls(mcfg, batch, seq_len).items():
        secs = flops_ = 0.0
        for count, b, m, k, n in mms:
            t = sum(_time_dot(b, *shape, dt, repeats) for shape in ((m, k, n), (m, n, k), (k, m, n)))
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
    import jax
    import jax.numpy as jnp

    from train import losses

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


# ---------------------------------------------------------------------------------------------- output


def _mb(n) -> str:
    return "-" if n is None else f"{n / 2**20:,.0f}"


def format_table(rows: list[dict], sweep_key: str | None = None) -> str:
    """A markdown table, one row per result."""
    head = ([sweep_key] if sweep_key else []) + [
        "config", "device", "dtype", "batch", "tokens/s", "step ms (median [p10, p90])", "MFU", "XLA/model FLOPs",
        "compile s", "memory MB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        st = r["step_time_ms"]
        cells = ([str(r["sweep_value"])] if sweep_key else []) + [
            r["config"] + (f" remat={r['remat']}" if r["remat"] != "none" else "")
            + (" scan" if r["scan_layers"] else ""),
            f"{r['n_devices']}x {r['device_kind']}",
            r["dtype"],
            f"{r['batch_size']}x{r['seq_len']}" + (f"+{r['target_len']}" if r["target_len"] else ""),
            f"{r['tokens_per_sec']:,.0f}",
            f"{st['median']:,.1f} [{st['p10']:,.1f}, {st['p90']:,.1f}]",
            f"{r['mfu']:.1%}",
            "-" if r["xla_flops_ratio"] is None else f"{r['xla_flops_ratio']:.3f}",
            f"{r['compile_s']:.1f}",
            _mb(r["peak_memory_bytes"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    notes = []
    r = rows[0]
    notes.append(f"peak {r['peak_flops'] / 1e9:,.1f} GFLOP/s per device ({r['peak_flops_source']})")
    for r in rows:
        tag = f"{sweep_key}={r['sweep_value']}: " if sweep_key else ""
        if "peak_flops_after" in r:
            notes.append(f"{tag}peak re-measured after the steps {r['peak_flops_after'] / 1e9:,.1f} GFLOP/s -> "
                         f"MFU {r['mfu_vs_peak_after']:.1%}")
        if "matmul_ceiling" in r:
            c = r["matmul_ceiling"]
            parts = ", ".join(f"{g} {c[g]['seconds'] * 1e3:,.0f} ms at {c[g]['flops_per_sec'] / 1e9:,.1f} GFLOP/s"
                              for g in ("dense", "attention", "head"))
            notes.append(f"{tag}matmuls alone: {c['total']['seconds'] * 1e3:,.0f} ms = "
                         f"{r['matmul_share_of_step']:.0%} of the step ({parts})")
        if "host_overhead" in r:
            notes.append(f"{tag}host overhead {r['host_overhead']:+.1%} (real {r['step_time_ms']['median']:,.1f} ms "
                         f"vs synthetic {r['synthetic_step_time_ms']['median']:,.1f} ms)")
    notes.append(f"memory: {rows[0]['peak_memory_source']}")
    return "\n".join(lines + [""] + notes)


# ---------------------------------------------------------------------------------------------- CLI


def main(argv: list[str]) -> None:
    from absl import flags

    from train import metrics as metrics_lib

    fv = flags.FLAGS
    if len(argv) > 1:
        raise BenchError(f"unexpected arguments {argv[1:]}")
    with errors.one_line():
        metrics_lib.quiet_libraries()
        if fv.compile_cache:
            from train import parallel

            parallel.enable_compile_cache(fv.compile_cache)
        if fv.loss_memory:
            cfg = fv.config
            rows = []
            for v in fv.loss_memory.split(","):
                for chunk in (0, fv.loss_chunk):
                    rows.append(loss_memory(cfg.model.d_model, int(v), cfg.train.batch_size, cfg.data.seq_len,
                                            chunk, dtype=cfg.model.dtype))
            if fv.json:
                print(json.dumps(rows))
            else:
                print("| vocab | loss | compiled temp MB | total MB | full f32 logits MB |\n|---|---|---|---|---|")
                for r in rows:
                    kind = f"chunked ({r['chunk']} positions)" if r["chunk"] else "full logits"
                    print(f"| {r['vocab']} | {kind} | {_mb(r['temp_bytes'])} | {_mb(r['total_bytes'])} | "
                          f"{_mb(r['logits_f32_bytes'])} |")
            return
        peak = (fv.peak_flops, "given: --peak_flops") if fv.peak_flops > 0 else None
        kwargs = dict(steps=fv.steps, warmup=fv.warmup, data=fv.data, recheck_peak=fv.recheck_peak,
                      ceiling=fv.matmul_ceiling, peak=peak)
        if fv.sweep:
            key, values = parse_sweep(fv.sweep, fv.config)
            rows = bench_many([with_override(fv.config, key, v) for v in values], **kwargs)
            for v, r in zip(values, rows, strict=True):
                r["sweep_value"] = v
            if fv.json:
                print(json.dumps({"sweep": key, "values": values, "rows": rows}, default=str))
            else:
                print(format_table(rows, key))
            return
        r = bench(fv.config, **kwargs)
        print(json.dumps(r, default=str) if fv.json else format_table([r]))


def define_flags() -> None:
    from absl import flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "Experiment config file, e.g. experiments/configs/gpt.py:small.",
                                    lock_config=True)
    flags.DEFINE_integer("steps", 10, "Timed training steps (after the warm-up).")
    flags.DEFINE_integer("warmup", 2, "Untimed steps first (the first one compiles).")
    flags.DEFINE_bool("json", False, "Print one JSON object instead of the table.")
    flags.DEFINE_string("sweep", "", "field:v1,v2,... e.g. batch_size:8,16,32 or model.remat:none,dots,full.")
    flags.DEFINE_enum("data", "real", DATA_MODES, "real: the pipeline's batch(step); synthetic: one device batch "
                      "reused; both: alternate them and report the host overhead.")
    flags.DEFINE_float("peak_flops", 0.0, "Peak FLOP/s per device to compute MFU against (0 = experiments/hardware.py:"
                       " published table, or a matmul measured now on CPU).")
    flags.DEFINE_bool("recheck_peak", True, "On CPU, measure the matmul peak again after the timed steps.")
    flags.DEFINE_bool("matmul_ceiling", False, "Also time the step's matmuls alone at their shapes (gpt/bert): "
                      "how much of the step they explain.")
    flags.DEFINE_string("compile_cache", "", "Directory of a persistent XLA compilation cache ('' = off).")
    flags.DEFINE_string("loss_memory", "", "Comma-separated vocab sizes: instead of the step, report the compiled "
                        "memory of head + cross-entropy (full logits vs chunked) at the config's d_model, B, L.")
    flags.DEFINE_integer("loss_chunk", 64, "Sequence positions per chunk for --loss_memory.")


if __name__ == "__main__":
    from absl import flags

    define_flags()
    flags.mark_flags_as_required(["config"])
    sys.exit(errors.run_app(main))


"""Throughput, MFU, compile time and memory of a config's REAL training step on this machine: the command line.

  python -m experiments.bench --config=experiments/configs/gpt.py:small
  python -m experiments.bench --config=experiments/configs/gpt.py:small --json --steps=20
  python -m experiments.bench --config=experiments/configs/gpt.py:small --sweep=batch_size:8,16,32
  python -m experiments.bench --config=experiments/configs/gpt.py:small --sweep=model.remat:none,dots,full
  python -m experiments.bench --config=experiments/configs/gpt.py:small --data=both   # host overhead
  python -m experiments.bench --config=experiments/configs/gpt.py:small --compile_cache=/tmp/xla  # run twice
  python -m experiments.bench --config=experiments/configs/gpt.py:small --matmul_ceiling   # matmuls alone
  python -m experiments.bench --config=experiments/configs/gpt.py:small --loss_memory=8000,32000,50257

Results and what moved them: docs/performance.md. How the step is timed and what MFU and xla_flops_ratio mean:
experiments/timing.py; the matmul ceiling and the loss memory: experiments/hardware.py. A --sweep builds and warms
up every value first, then times them in interleaved blocks (A, B, C, A, B, C, ...), so its rows are side-by-side
ratios. --data=real times the pipeline's batches, --data=synthetic one constant device batch, --data=both both,
reporting the host overhead.
"""

from __future__ import annotations

import copy
import json
import sys
from typing import Any

from absl import flags
from ml_collections import config_flags

from experiments import hardware, planning, timing
from experiments.hardware import BenchError
from train import errors, parallel
from train import metrics as metrics_lib

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
    return planning.apply_overrides(copy.deepcopy(config), {path: value})


# ---------------------------------------------------------------------------------------------- output


def _mb(n) -> str:
    return "-" if n is None else f"{n / 2**20:,.0f}"


def format_table(rows: list[dict], sweep_key: str | None = None) -> str:
    """A markdown table, one row per result."""
    head = ([sweep_key] if sweep_key else []) + [
        "config", "device", "dtype", "batch", "tokens/s", "step ms (median [p10, p90])", "MFU (causal)",
        "XLA/model FLOPs", "compile s", "memory MB"]
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
            f"{r['mfu']:.1%} ({r['mfu_causal']:.1%})",
            "-" if r["xla_flops_ratio"] is None else f"{r['xla_flops_ratio']:.3f}",
            f"{r['compile_s']:.1f}",
            _mb(r["peak_memory_bytes"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    notes = []
    r = rows[0]
    notes.append(f"peak {r['peak_flops'] / 1e9:,.1f} GFLOP/s per device ({r['peak_flops_source']}); MFU counts "
                 "attention over the full L x L square, (causal) over the half a causal mask keeps")
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
    fv = flags.FLAGS
    if len(argv) > 1:
        raise BenchError(f"unexpected arguments {argv[1:]}")
    with errors.one_line():
        metrics_lib.quiet_libraries()
        if fv.compile_cache:
            parallel.enable_compile_cache(fv.compile_cache)
        if fv.loss_memory:
            cfg = fv.config
            rows = []
            for v in fv.loss_memory.split(","):
                for chunk in (0, fv.loss_chunk):
                    rows.append(hardware.loss_memory(cfg.model.d_model, int(v), cfg.train.batch_size,
                                                     cfg.data.seq_len, chunk, dtype=cfg.model.dtype))
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
            rows = timing.bench_many([with_override(fv.config, key, v) for v in values], **kwargs)
            for v, r in zip(values, rows, strict=True):
                r["sweep_value"] = v
            if fv.json:
                print(json.dumps({"sweep": key, "values": values, "rows": rows}, default=str))
            else:
                print(format_table(rows, key))
            return
        r = timing.bench(fv.config, **kwargs)
        print(json.dumps(r, default=str) if fv.json else format_table([r]))


def define_flags() -> None:
    config_flags.DEFINE_config_file("config", None, "Experiment config file, e.g. experiments/configs/gpt.py:small.",
                                    lock_config=True)
    flags.DEFINE_integer("steps", 10, "Timed training steps (after the warm-up).")
    flags.DEFINE_integer("warmup", 2, "Untimed steps first (the first one compiles).")
    flags.DEFINE_bool("json", False, "Print one JSON object instead of the table.")
    flags.DEFINE_string("sweep", "", "field:v1,v2,... e.g. batch_size:8,16,32 or model.remat:none,dots,full.")
    flags.DEFINE_enum("data", "real", timing.DATA_MODES, "real: the pipeline's batch(step); synthetic: one device "
                      "batch reused; both: alternate them and report the host overhead.")
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
    define_flags()
    flags.mark_flags_as_required(["config"])
    sys.exit(errors.run_app(main))


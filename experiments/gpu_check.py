"""The GPU measurements in one go (experiments/gpu_check.sh runs it on an NVIDIA H100/H200): one JSON file.

  python -m experiments.gpu_check --out=runs/gpu_check.json            # on the GPU machine, about 8 minutes
  python -m experiments.gpu_check --out=/tmp/smoke.json --smoke        # the same code at tiny sizes on CPU (tests)

1. agreement: tiny GPT, BERT and T5 on the GPU and on the CPU (a subprocess with JAX_PLATFORMS=cpu) from the same
   init and batches: the loss at init and after three steps must agree within 2% (GPU float32 dots run as TF32);
2. speed (experiments/timing.py, side by side in interleaved blocks): gpt2 at its published 124M (vocabulary
   50,257 through a GPT-2-like tokenizer.json made here), seq 1024, bf16, attention xla vs cudnn, then cudnn with
   scan + remat none / dots / full; bert-base at seq 512 and t5-small, xla vs cudnn;
3. the persistent compile cache, cold and warm: the gpt2 step compiled in two fresh processes sharing a cache dir;
4. head + loss memory at V 50,257, full logits vs chunked (experiments/hardware.py loss_memory).
Each part that fails is recorded with its error and the others still run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import jax
import numpy as np
from absl import app, flags

from experiments import hardware, planning, timing
from experiments.configs import base

flags.DEFINE_string("out", "runs/gpu_check.json", "The JSON file to write.")
flags.DEFINE_bool("smoke", False, "Tiny sizes, any backend: checks the script itself (the test suite runs it).")
flags.DEFINE_string("train_files", "", "The corpus ('' = the bundled one); the smoke test passes a small one.")
flags.DEFINE_string("part", "", "Internal: run one part in this process ('first_losses' or 'compile').")
flags.DEFINE_string("args", "", "Internal: the part's JSON arguments.")
FLAGS = flags.FLAGS
ROOT = Path(__file__).resolve().parent.parent
GPT2_VOCAB = 50257


def gpt2_like_tokenizer(path: Path, vocab: int) -> str:
    """A byte-level BPE tokenizer.json with `vocab` ids (trained on the bundled corpus, padded with unused added
    tokens) and <|endoftext|>: GPT-2's shape, so the gpt2 preset runs at its published parameter count."""
    import gzip

    import tokenizers

    if path.is_file():
        return str(path)
    with gzip.open(ROOT / "data" / "corpora" / "kjv.txt.gz", "rt", encoding="utf-8") as f:
        lines = f.read().splitlines()
    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<|endoftext|>"],
                                             initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(lines, trainer)
    if tok.get_vocab_size() < vocab:
        tok.add_tokens([f"<unused_{i}>" for i in range(vocab - tok.get_vocab_size())])
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))
    return str(path)


def _config(arch: str, variant: str, overrides: dict):
    config = base.get_config(arch, variant)
    return planning.apply_overrides(config, {"train.progress_bar": False, **overrides})


def first_losses(arch: str, overrides: dict, steps: int = 3) -> dict:
    """Eval loss at init and train losses of the first `steps` steps of a tiny config on this process's backend."""
    from train import loop

    config = _config(arch, "tiny", overrides)
    data, _, _, runner = loop.build(config)
    state = runner.init(jax.random.key(0))
    out = {"backend": jax.default_backend(), "init_eval": loop.evaluate(runner, state, data, 1)["eval/loss"]}
    train = []
    for s in range(steps):
        state, m = runner.train(state, data.train.batch(s))
        m = jax.device_get(m)
        train.append(float(m["loss"]) / float(m["weight"]))
    return out | {"train": train}


def _subprocess_part(part: str, args: dict, env: dict) -> dict:
    r = subprocess.run([sys.executable, "-m", "experiments.gpu_check", f"--part={part}", f"--args={json.dumps(args)}"],
                       cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=600)
    if r.returncode:
        raise RuntimeError(r.stderr[-2000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def agreement(smoke: bool, data: dict) -> dict:
    """The first losses of tiny GPT, BERT and T5 here and on the CPU."""
    out = {}
    for arch in ("gpt", "bert", "t5"):
        overrides = {**data, "train.batch_size": 8, "train.warmup_steps": 0}
        if smoke:
            overrides |= {"model.d_model": 32, "model.n_heads": 2, "model.d_ff": 64, "data.seq_len": 32,
                          "model.max_len": 32}
        here = first_losses(arch, overrides)
        cpu = _subprocess_part("first_losses", {"arch": arch, "overrides": overrides}, {"JAX_PLATFORMS": "cpu"})
        a, b = np.array([here["init_eval"], *here["train"]]), np.array([cpu["init_eval"], *cpu["train"]])
        rel = float(np.max(np.abs(a - b) / np.abs(b)))
        out[arch] = {"here": here, "cpu": cpu, "max_rel_diff": rel, "agree": rel < 0.02}
    return out


def compile_times(overrides: dict, cache: str) -> dict:
    """The gpt2 step's compile seconds in two fresh processes sharing an empty persistent cache."""
    env = {"TRIAD_COMPILE_CACHE": cache}
    cold = _subprocess_part("compile", {"overrides": overrides}, env)
    warm = _subprocess_part("compile", {"overrides": overrides}, env)
    return {"cold": cold, "warm": warm}


def _compile_part(overrides: dict) -> dict:
    from train import loop, parallel

    parallel.enable_compile_cache()
    t0 = time.perf_counter()
    config = _config("gpt", "gpt2", overrides)
    data, _, _, runner = loop.build(config)
    state = runner.init(jax.random.key(0))
    t1 = time.perf_counter()
    state, m = runner.train(state, data.train.batch(0))
    jax.block_until_ready(m)
    return {"init_s": t1 - t0, "first_step_s": time.perf_counter() - t1, "compile_s": runner.compile_seconds}


def _bench(label: str, configs: list, steps: int) -> dict:
    records = timing.bench_many(configs, steps=steps, warmup=2)
    keep = ("config", "tokens_per_sec", "step_time_ms", "mfu", "peak_flops", "peak_flops_source", "compile_s",
            "peak_memory_bytes", "model_flops_per_step", "dtype", "device_kind")
    return {label: [{k: r.get(k) for k in keep} for r in records]}


def speed(smoke: bool, data: dict, tokenizer: str) -> dict:
    """gpt2 (xla vs cudnn attention, then remat/scan), bert-base and t5-small, each group side by side."""
    seq, steps = (64, 2) if smoke else (1024, 10)
    common = {**data, "model.dropout": 0.0, "model.attention_dropout": 0.0, "model.dtype": "bfloat16"}
    shrink = {"model.n_layers": 2, "model.d_model": 64, "model.n_heads": 2, "model.d_ff": 128} if smoke else {}
    gpt2 = {**common, **shrink, "data.tokenizer": tokenizer, "data.seq_len": seq, "model.max_len": max(seq, 1024),
            "train.batch_size": 2 if smoke else 16}
    out = {}
    out |= _bench("gpt2_attention", [_config("gpt", "gpt2", {**gpt2, "model.attention_impl": a})
                                     for a in ("xla", "cudnn")], steps)
    out |= _bench("gpt2_cudnn_scan_remat", [_config("gpt", "gpt2", {
        **gpt2, "model.attention_impl": "cudnn", "model.scan_layers": True, "model.remat": r})
        for r in ("none", "dots", "full")], steps)
    bert = {**common, **shrink, "data.seq_len": 64 if smoke else 512, "train.batch_size": 2 if smoke else 32}
    out |= _bench("bert_base", [_config("bert", "bert-base", {**bert, "model.attention_impl": a})
                                for a in ("xla", "cudnn")], steps)
    t5 = {**common, **shrink, "train.batch_size": 2 if smoke else 64}
    if smoke:
        t5 |= {"model.n_decoder_layers": 2, "model.head_dim": 32, "data.seq_len": 64}
    out |= _bench("t5_small", [_config("t5", "t5-small", {**t5, "model.attention_impl": a})
                               for a in ("xla", "cudnn")], steps)
    return out


def run_all(smoke: bool, out_path: str) -> dict:
    work = Path(tempfile.mkdtemp(prefix="triad-gpu-check-"))
    data = {"data.cache_dir": str(work / "cache")}
    if FLAGS.train_files:
        data["data.train_files"] = FLAGS.train_files
    if smoke:
        data["data.vocab_size"] = 512
    record = {"backend": jax.default_backend(), "devices": [d.device_kind for d in jax.devices()],
              "jax": jax.__version__, "smoke": smoke, "parts": {}}
    vocab = 600 if smoke else GPT2_VOCAB
    tokenizer = gpt2_like_tokenizer(work / f"gpt2-like-{vocab}.json", vocab)
    seq = 64 if smoke else 1024
    shrink = {"model.n_layers": 2, "model.d_model": 64, "model.n_heads": 2, "model.d_ff": 128} if smoke else {}
    parts = {
        "agreement": lambda: agreement(smoke, data),
        "speed": lambda: speed(smoke, data, tokenizer),
        "compile_cache": lambda: compile_times({**data, "data.tokenizer": tokenizer,
                                                "data.seq_len": seq, "model.max_len": max(seq, 1024),
                                                "model.dtype": "bfloat16", "model.attention_impl": "cudnn",
                                                "train.batch_size": 2 if smoke else 16, **shrink},
                                               str(work / "xla")),
        "loss_memory": lambda: {str(c): hardware.loss_memory(64 if smoke else 768, vocab, 2 if smoke else 16,
                                                             seq, chunk=c, dtype="bfloat16")
                        for c in (0, 32 if smoke else 128)},
    }
    for name, fn in parts.items():
        t0 = time.perf_counter()
        try:
            record["parts"][name] = {"result": fn(), "seconds": round(time.perf_counter() - t0, 1)}
        except Exception as e:  # noqa: BLE001 - a failed part is recorded; the others still run
            record["parts"][name] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-3000:]}
        Path(out_path).parent.mkdir(parents=True, exist_ok=True)
        Path(out_path).write_text(json.dumps(record, indent=1, default=str))
        print(json.dumps({"part": name, "seconds": round(time.perf_counter() - t0, 1),
                          "ok": "error" not in record["parts"][name]}), flush=True)
    return record


def main(argv):
    del argv
    if FLAGS.part == "first_losses":
        args = json.loads(FLAGS.args)
        print(json.dumps(first_losses(args["arch"], args["overrides"])))
    elif FLAGS.part == "compile":
        print(json.dumps(_compile_part(json.loads(FLAGS.args)["overrides"])))
    else:
        run_all(FLAGS.smoke, FLAGS.out)


if __name__ == "__main__":
    app.run(main)

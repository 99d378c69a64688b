"""Measures corpus preparation at scale on a synthetic corpus made here from the bundled text (nothing downloaded).

  python -m experiments.prepare_bench --corpus=/tmp/synth --gb=10 --make      # ~10 GB of text in jsonl.zst + parquet
  python -m experiments.prepare_bench --corpus=/tmp/synth --workers=1,2        # prepare it, once per worker count

Per worker count: wall time, MB/s of text and tokens/s, peak resident memory of the whole process tree (sampled
from /proc every 0.2 s), the store's size on disk; then the time a fresh process needs to open the store and build
the first batch (what train.main waits for before compiling), and the time of `batch(step)`. One JSON line per
measurement; results go to docs/performance.md with the command.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from absl import app, flags

from data import corpus
from experiments.configs import base

flags.DEFINE_string("corpus", "/tmp/triad-synth", "Directory of the synthetic corpus.")
flags.DEFINE_float("gb", 10.0, "Gigabytes of text to generate with --make.")
flags.DEFINE_integer("files", 40, "Files to spread it over (alternately .jsonl.zst and .parquet).")
flags.DEFINE_bool("make", False, "Generate the corpus.")
flags.DEFINE_string("workers", "1,2", "Worker counts to prepare with (each into a cache of its own).")
flags.DEFINE_string("cache", "/tmp/triad-synth-cache", "Where the stores go (deleted before each preparation).")
FLAGS = flags.FLAGS
ROOT = Path(__file__).resolve().parent.parent


def make_corpus(directory: Path, gigabytes: float, files: int, seed: int = 0) -> int:
    """Documents of 5-40 shuffled verses of the bundled text until `gigabytes` of UTF-8; returns the bytes."""
    with gzip.open(ROOT / "data" / "corpora" / "kjv.txt.gz", "rt", encoding="utf-8") as f:
        verses = [line.strip() for line in f if line.strip()]
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    per_file, total = gigabytes * 1e9 / files, 0
    for i in range(files):
        docs, size = [], 0
        while size < per_file:
            doc = " ".join(verses[j] for j in rng.integers(0, len(verses), rng.integers(5, 41)))
            docs.append(doc)
            size += len(doc.encode("utf-8"))
        total += size
        if i % 2 == 0:
            with pa.CompressedOutputStream(str(directory / f"web-{i:03d}.jsonl.zst"), "zstd") as w:
                for d in docs:
                    w.write((json.dumps({"text": d}) + "\n").encode("utf-8"))
        else:
            pq.write_table(pa.table({"text": docs}), directory / f"web-{i:03d}.parquet", row_group_size=2000)
    return total


def _tree_rss(pid: int) -> int:
    """Resident bytes of `pid` and all its descendants."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                total += next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo += [int(c) for c in f.read().split()]
        except (OSError, StopIteration):
            continue
    return total


def run_measured(cmd: list[str], env: dict) -> tuple[float, int, subprocess.CompletedProcess]:
    """(seconds, peak RSS of the process tree in bytes, the completed process)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = 0
    while p.poll() is None:
        peak = max(peak, _tree_rss(p.pid))
        time.sleep(0.2)
    out, err = p.communicate()
    return time.perf_counter() - t0, peak, subprocess.CompletedProcess(cmd, p.returncode, out, err)


def _config_args(corpus_dir: Path, cache: Path, tokenizer: str) -> list[str]:
    return ["--config=experiments/configs/gpt.py:tiny", f"--config.data.train_files={corpus_dir}/web-*",
            f"--config.data.cache_dir={cache}", f"--config.data.tokenizer={tokenizer}"]


def main(argv):
    del argv
    directory = Path(FLAGS.corpus)
    if FLAGS.make:
        t0 = time.perf_counter()
        n = make_corpus(directory, FLAGS.gb, FLAGS.files)
        print(json.dumps({"made": str(directory), "text_bytes": n, "seconds": round(time.perf_counter() - t0, 1),
                          "disk_bytes": sum(f.stat().st_size for f in directory.iterdir())}), flush=True)
    # One tokenizer for every run: the bundled corpus's (training it is not what is measured).
    data = base.base_config("gpt", "tiny").data
    data.cache_dir = FLAGS.cache + "-tokenizer"
    tokenizer = corpus.load(data).tokenizer.path
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    for workers in (int(w) for w in FLAGS.workers.split(",")):
        cache = Path(f"{FLAGS.cache}-{workers}")
        shutil.rmtree(cache, ignore_errors=True)
        seconds, peak, r = run_measured([sys.executable, "-m", "data.prepare", *_config_args(directory, cache,
                                         tokenizer), f"--num_workers={workers}"], env)
        if r.returncode:
            sys.exit(r.stderr[-3000:])
        index = json.loads(next(cache.glob("stores/*/store.json")).read_text())
        text = sum(p[s]["bytes"] for p in index["parts"] for s in ("train", "val"))
        tokens = sum(p[s]["tokens"] for p in index["parts"] for s in ("train", "val"))
        disk = sum(f.stat().st_size for f in cache.glob("stores/*/*"))
        print(json.dumps({"workers": workers, "seconds": round(seconds, 1),
                          "text_MB_per_s": round(text / seconds / 1e6, 2), "tokens_per_s": round(tokens / seconds),
                          "peak_rss_MiB": round(peak / 2**20), "store_bytes": disk, "text_bytes": text,
                          "tokens": tokens}), flush=True)
    start = ("import time; t0 = time.perf_counter(); from data import pipeline; "
             "from experiments.configs import base; from experiments.planning import apply_overrides; "
             "c = base.base_config('gpt', 'tiny'); "
             f"apply_overrides(c, {{'data.train_files': '{directory}/web-*', 'data.cache_dir': '{cache}', "
             f"'data.tokenizer': '{tokenizer}'}}); "
             "d = pipeline.build(c); b = d.train.batch(0); t1 = time.perf_counter(); "
             "[d.train.batch(s) for s in range(1, 51)]; t2 = time.perf_counter(); "
             "print(round(t1 - t0, 2), round((t2 - t1) / 50 * 1e3, 2), d.summary()['train_tokens'])")
    seconds, peak, r = run_measured([sys.executable, "-c", start], env)
    if r.returncode:
        sys.exit(r.stderr[-3000:])
    open_s, batch_ms, train_tokens = r.stdout.split()
    print(json.dumps({"open_store_and_first_batch_s": float(open_s), "batch_ms": float(batch_ms),
                      "train_tokens": int(train_tokens), "process_peak_rss_MiB": round(peak / 2**20)}), flush=True)


if __name__ == "__main__":
    app.run(main)

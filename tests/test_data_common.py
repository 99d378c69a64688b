"""Helpers for the data tests (no tests here): a synthetic corpus and small configs."""

import numpy as np

from experiments.configs import base


def synthetic_text(n_lines: int = 1500, seed: int = 0) -> str:
    """Deterministic pseudo-English: n_lines documents of 5..25 words from a 300-word vocabulary."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words = ["".join(rng.choice(letters, rng.integers(2, 9))) for _ in range(300)]
    words += ["café", "naïve", "über"]
    lines = []
    for _ in range(n_lines):
        n = rng.integers(5, 26)
        ws = [words[i] for i in (rng.pareto(0.7, n) * 10).astype(int) % len(words)]
        lines.append(" ".join(ws).capitalize() + ".")
    return "\n".join(lines) + "\n"


def write_corpus(directory, name: str = "corpus.txt", n_lines: int = 1500, seed: int = 0) -> str:
    path = directory / name
    path.write_text(synthetic_text(n_lines, seed), encoding="utf-8")
    return str(path)


def make_config(arch: str, train_files: str, cache_dir: str = "", **overrides):
    """A small config for `arch` ('gpt', 'bert', 't5') on `train_files`; overrides are 'a.b' -> value."""
    c = base.base_config(arch, "tiny")
    c.data.train_files = train_files
    c.data.cache_dir = cache_dir
    c.data.vocab_size = 512
    c.data.seq_len = 32
    c.data.val_fraction = 0.1
    c.data.prefetch = 2
    c.train.batch_size = 8
    c.train.eval_steps = 2
    for key, value in overrides.items():
        node = c
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return c

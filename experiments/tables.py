"""The report's tables: value formats, the cost and quality columns, probe columns, cells with their standard error.

A column is (key, header, format of a value, format of its standard error or None: the column shows the mean alone);
rows are experiments/report.py's aggregated groups.
"""

from __future__ import annotations

import math


def si(x: float, unit: str = "") -> str:
    for p, s in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= s:
            return f"{x / s:.2f} {p}{unit}"
    return f"{x:.0f} {unit}".strip()


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def points(x: float) -> str:
    return f"{100 * x:.1f}"


def loss(x: float) -> str:
    return f"{x:.3f}"


# (key, header, format of a value, format of its standard error or None: the column shows the mean alone).
# Short headers, explained in the notes; report.json has every number (FLOPs per token and compile time too).
COST = [
    ("group", "contender", str, None),
    ("architecture", "architecture", str, None),
    ("params", "params", lambda x: f"{x:,.0f}", None),
    ("flops", "train FLOPs", lambda x: f"{x:.3e}", None),
    ("steps", "steps", lambda x: f"{x:.0f}", None),
    ("tokens", "tokens", lambda x: si(x), None),
    ("wall_s", "wall (s)", lambda x: f"{x:.0f}", None),
    ("tokens_per_sec", "tokens/s", lambda x: f"{x:,.0f}", None),
    ("mfu", "MFU", lambda x: f"{100 * x:.1f}%" if x >= 0.01 else f"{100 * x:.2g}%", None),
    ("peak_memory_bytes", "memory", lambda x: f"{x / 2**20:.0f} MiB", None),
]
QUALITY = [
    ("group", "contender", str, None),
    ("objective", "objective", str, None),
    ("train_loss", "train loss", loss, loss),
    ("eval_loss", "eval loss", loss, loss),
    ("eval_accuracy", "acc", pct, points),
    ("eval_bpb", "bits/byte", loss, loss),
]
SEEDS = ("n", "seeds", str, None)
MAX_COLUMNS = 10  # A table wider than this is hard to read on a laptop screen: probe columns get their own tables.
PROBE_SUFFIXES = {"": "", " (zero-shot)": " 0-shot", " (random init)": " rand-init"}  # column key -> header


def cell(row: dict, col: tuple) -> str:
    key, _, fmt, se_fmt = col
    v = row.get(key)
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    text = fmt(v)
    se = row.get(f"{key}_se")
    if se_fmt and row.get("n", 1) > 1 and se is not None and math.isfinite(se):
        text += " ± " + se_fmt(se)
    return text


def probe_keys(groups: list[dict]) -> list[str]:
    """The 'probe/<task>[ (zero-shot)| (random init)]' columns any group has, sorted (by task)."""
    return sorted({k for g in groups for r in g["members"] for k in r if k.startswith("probe/")})


def probe_kind(key: str) -> str:
    """'' (fine-tuned), ' (zero-shot)', ' (random init)' or another suffix of a probe column."""
    name = key.removeprefix("probe/")
    return next((suffix for suffix in PROBE_SUFFIXES if suffix and name.endswith(suffix)), "")


def probe_header(key: str) -> str:
    """The table header of a probe column: 'word_order', 'word_order 0-shot', 'word_order rand-init'."""
    name, kind = key.removeprefix("probe/"), probe_kind(key)
    return name[:len(name) - len(kind)] + PROBE_SUFFIXES[kind]


def tables(groups: list[dict]) -> list[tuple[str, list[tuple]]]:
    """(title, columns) of each table: cost, then quality with the probe columns where it stays within MAX_COLUMNS,
    else the probe columns in tables of their own."""
    seeds = [SEEDS] if any(g.get("n", 1) > 1 for g in groups) else []
    quality = QUALITY[:1] + seeds + QUALITY[1:]
    probes = [(k, probe_header(k), pct, points) for k in probe_keys(groups)]
    spread = " (mean ± standard error over seeds)" if seeds else ""
    if len(quality) + len(probes) <= MAX_COLUMNS:
        return [("Cost", COST), (f"Quality{spread}", quality + probes)]
    per = MAX_COLUMNS - 1
    return [("Cost", COST), (f"Quality{spread}", quality)] + [
        (f"Probes: accuracy{spread}", QUALITY[:1] + probes[i:i + per]) for i in range(0, len(probes), per)]


def markdown_table(groups: list[dict], cols: list[tuple]) -> str:
    lines = ["| " + " | ".join(c[1] for c in cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(g, c) for c in cols) + " |" for g in groups]
    return "\n".join(lines)


def interval(row: dict, key: str) -> tuple[float | None, str]:
    """(half-width of the 95% interval of a group's column, what it is from): with 2+ seeds, Student's t over the
    seeds' values (t_{0.975, n-1} x the standard error of their mean); with one, the run's own evaluation examples
    (1.96 x the standard error of its accuracy over its pairs or examples, `eval_se/<key>`); None without either."""
    n, se = row.get(f"{key}_n", row.get("n", 1)), row.get(f"{key}_se")
    if n > 1 and se is not None:
        from scipy import stats as scipy_stats  # here: scipy.stats takes a second to import, the report's tables none

        return float(scipy_stats.t.ppf(0.975, n - 1) * se), f"95% t-interval over {n} seeds"
    eval_se = row.get(f"eval_se/{key}")
    if eval_se is not None:
        return 1.96 * eval_se, "95% interval over the evaluation pairs or examples of one run"
    return None, ""

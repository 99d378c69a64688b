"""The report's figures: eval loss against training compute or time (one panel per objective), and throughput.

experiments/report.py hands them the aggregated groups of runs, the objectives' names and the peak MFU is relative
to; they only draw, into PNG files.
"""

from __future__ import annotations

import numpy as np

from experiments.tables import interval, probe_header


def _pyplot():
    """matplotlib.pyplot on the Agg backend (files only, no display). Imported here rather than at the top: pyplot is
    slow to import, which compare and sweep (importing experiments.report) would pay before they train, and choosing
    the backend at import would change it for every program that imports the report."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _color(i: int):
    return _pyplot().get_cmap("tab10")(i % 10)


def plot_loss(groups: list[dict], x: str, path: str, objectives: dict[str, tuple[str, str]]) -> None:
    """Eval loss against `x` ('flops' or 'seconds'): one panel per objective, one line per group, shared x axis.
    `objectives`: {objective id: (short name, what its loss is)}, the panel titles."""
    plt = _pyplot()
    objs = list(dict.fromkeys(g["objective_id"] for g in groups))
    xs_all = [v for g in groups for c in g["curves"] for v in c[x] if v > 0] or [1.0]
    scale, log = 1.0, False
    if x == "flops":
        unit, scale = next(((u, f) for u, f in (("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6))
                            if max(xs_all) >= f), ("FLOP", 1.0))
        log = max(xs_all) / min(xs_all) > 30  # a ladder of sizes spans decades; one budget does not
        xlabel = f"training compute ({unit}, as executed)"
    else:
        xlabel = "training time (s: measured steps, no compile or eval)"
    fig, axes = plt.subplots(1, len(objs), figsize=(5.2 * len(objs), 4.4), squeeze=False, sharex=True)
    styles = [("o", "-"), ("s", "--"), ("^", "-."), ("D", ":"), ("v", "-"), ("P", "--")]
    for ax, obj in zip(axes[0], objs, strict=True):
        k = 0  # lines in this panel: marker and dash pattern tell apart lines that overlap
        for i, g in enumerate(groups):
            if g["objective_id"] != obj or not g["curves"] or not g["curves"][0]["loss"]:
                continue
            marker, dash = styles[k % len(styles)]
            k += 1
            n = min(len(c["loss"]) for c in g["curves"])
            xs = np.mean([c[x][:n] for c in g["curves"]], axis=0) / scale
            ys = np.array([c["loss"][:n] for c in g["curves"]])
            label = g["group"] + (f" (mean of {g['n']} seeds, band: min-max)" if g["n"] > 1 else "")
            ax.plot(xs, ys.mean(0), marker=marker, ls=dash, color=_color(i), label=label, lw=2, ms=5)
            if g["n"] > 1:
                ax.fill_between(xs, ys.min(0), ys.max(0), color=_color(i), alpha=0.12, lw=0)
        short, meaning = objectives.get(obj, (obj, ""))
        ax.set_title(f"{short}\n({meaning})", fontsize=9)
        ax.set_ylabel("eval loss (nats / predicted token)")
        if log:
            ax.set_xscale("log")
        else:  # all panels share one axis from 0 to the largest x of any panel
            ax.set_xlim(0, 1.04 * max(xs_all) / scale)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    what = "training compute" if x == "flops" else "training time"
    fig.suptitle(f"Eval loss vs {what} (lower is better). One panel per objective: losses of different "
                 "objectives are different quantities", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_throughput(groups: list[dict], path: str, of: str) -> None:
    """Horizontal bars: tokens/s and MFU per group; `of` names what MFU is a percentage of ('2.70 TFLOP/s x 1
    device')."""
    plt = _pyplot()
    labels = [f"{g['group']} ({g['objective']})" for g in groups]
    fig, axes = plt.subplots(1, 2, figsize=(11, 1.2 + 0.45 * len(groups)), squeeze=False)
    panels = [("tokens_per_sec", "tokens/s (token positions: L, or S + T for T5)", lambda v: f"{v:,.0f}", 1.0),
              ("mfu", f"MFU (% of {of}; FLOPs as executed)", lambda v: f"{v:.1f}%", 100.0)]
    y = np.arange(len(groups))
    for ax, (key, xlabel, fmt, scale) in zip(axes[0], panels, strict=True):
        vals = [(g.get(key) or 0.0) * scale for g in groups]
        errs = [(g.get(f"{key}_std") or 0.0) * scale for g in groups]
        ax.barh(y, vals, xerr=errs if any(errs) else None, color=[_color(i) for i in range(len(groups))],
                error_kw={"capsize": 3})
        for yi, v, e in zip(y, vals, errs, strict=True):
            ax.text(v + e, yi, " " + fmt(v), va="center", fontsize=8)
        ax.set_yticks(y, labels if key == "tokens_per_sec" else [""] * len(groups))
        ax.invert_yaxis()
        ax.set_xlabel(xlabel)
        ax.set_xlim(0, max([v + e for v, e in zip(vals, errs, strict=True)] + [1e-9]) * 1.3)
        ax.grid(alpha=0.3, axis="x")
    seeds = " Bars: mean over seeds, whiskers: standard deviation." if any(g["n"] > 1 for g in groups) else ""
    fig.suptitle(f"Training throughput (median step time, compile excluded).{seeds}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _bars(ax, groups: list[dict], key: str, y0: float = 0.0, height: float = 0.8, legend: bool = False) -> list[str]:
    """Horizontal bars of `key` (an accuracy) per group with 95% whiskers (experiments.tables.interval): at rows
    y0, y0 + 1, ... or, with height < 0.8, side by side within [y0, y0 + height); returns what the whiskers are."""
    kinds = []
    for i, g in enumerate(groups):
        v = g.get(key)
        if v is None:
            continue
        half, kind = interval(g, key)
        kinds.append(kind)
        ax.barh(y0 + i * height / len(groups) if height < 0.8 else y0 + i, 100 * v,
                height=height / len(groups) if height < 0.8 else 0.7, color=_color(i),
                xerr=None if half is None else 100 * half, error_kw={"capsize": 2, "lw": 1},
                label=g["group"] if legend else None)
    return kinds


def plot_yardsticks(groups: list[dict], keys: list[str], path: str) -> None:
    """One panel per shared yardstick (probe and BLiMP columns: accuracies of balanced pairs, chance 50%), a bar per
    group with its 95% interval."""
    plt = _pyplot()
    cols = min(4, len(keys))
    rows = -(-len(keys) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 0.9 + (0.35 * len(groups) + 0.9) * rows),
                             squeeze=False)
    kinds = set()
    for ax, key in zip(axes.flat, keys, strict=False):
        kinds.update(_bars(ax, groups, key))
        ax.axvline(50, color="gray", ls="--", lw=1)
        ax.set_yticks(range(len(groups)), [g["group"] for g in groups], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlim(0, 100)
        ax.set_title(probe_header(key), fontsize=9)
        ax.grid(alpha=0.3, axis="x")
        ax.tick_params(axis="x", labelsize=8)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.suptitle("Shared yardsticks: accuracy (%) per contender; dashed: chance (50%); whiskers: "
                 + "; ".join(sorted(k for k in kinds if k)), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_blimp_phenomena(groups: list[dict], path: str, published: dict[str, dict[str, float]]) -> None:
    """BLiMP accuracy per phenomenon: grouped bars per group with 95% intervals, and the published models of the
    BLiMP paper as markers (`published`: {model: {'phenomenon/<term>': accuracy}})."""
    plt = _pyplot()
    terms = sorted({k.removeprefix("blimp/") for g in groups for r in g["members"] for k in r
                    if k.startswith("blimp/")})
    fig, ax = plt.subplots(figsize=(9, 1.2 + 0.5 * len(terms)))
    kinds = set()
    for t, term in enumerate(terms):
        kinds.update(_bars(ax, groups, f"blimp/{term}", y0=t - 0.4, height=0.75, legend=t == 0))
    markers = {"gpt2": ("GPT-2 (BLiMP paper)", "D", "black"), "ngram": ("5-gram (BLiMP paper)", "s", "silver")}
    for model, (label, marker, color) in markers.items():
        xs = [100 * published.get(model, {}).get(f"phenomenon/{term}", np.nan) for term in terms]
        ax.scatter(xs, np.arange(len(terms)) - 0.4 + 0.375, marker=marker, color=color, s=28, zorder=3, label=label)
    ax.axvline(50, color="gray", ls="--", lw=1)
    ax.set_yticks(range(len(terms)), [t.replace("_", " ") for t in terms], fontsize=9)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("BLiMP accuracy (%): mean over the phenomenon's paradigms; dashed: chance")
    ax.grid(alpha=0.3, axis="x")
    ax.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=4, frameon=False)
    fig.suptitle("BLiMP per phenomenon; whiskers: " + "; ".join(sorted(k for k in kinds if k)), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

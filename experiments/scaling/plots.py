"""A scaling ladder's pictures, drawn from analysis.analyse()'s dict and the runs: the isoFLOP parabolas per
contender, each contender's loss frontier against compute, and the shared yardsticks against compute. PNG files only
(matplotlib's Agg backend, imported when a picture is drawn: experiments.plots._pyplot)."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

import numpy as np

from experiments.plots import _color, _pyplot

FILES = ("isoflop.png", "frontier.png", "yardsticks.png")


def _floats(x) -> np.ndarray:
    """A list that may hold None (a cleaned NaN) as a float array with NaN there."""
    return np.array([np.nan if v is None else v for v in x], np.float64)


def _fitted(part: dict | None) -> bool:
    return bool(part) and "skipped" not in part


def _why(part: dict | None) -> str:
    """Why a fit is missing, wrapped for a panel title."""
    reason = (part or {}).get("skipped", "no ladder runs").removeprefix("ValueError: ")
    reason = reason if len(reason) <= 110 else reason[:110].rsplit(" ", 1)[0] + " ..."  # the report has all of it
    return textwrap.fill(f"not fitted: {reason}", 60)


def _null():
    from matplotlib import ticker

    return ticker.NullFormatter()


def _ladder(records: Sequence[dict], contender: str) -> list[dict]:
    return [r for r in records if r.get("role", "ladder") == "ladder" and r["contender"] == contender]


def _panels(plt, n: int, width: float = 4.6, height: float = 4.0, sharex: bool = False):
    fig, axes = plt.subplots(1, n, figsize=(width * n, height), squeeze=False, sharex=sharex)
    return fig, list(axes[0])


def _flops(c: float) -> str:
    """1.6e13, not 1.6e+13."""
    return f"{c:.2g}".replace("e+", "e")


def _save(plt, fig, path: str, title: str) -> None:
    fig.suptitle(textwrap.fill(title, int(16 * fig.get_figwidth())), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_isoflop(records: Sequence[dict], result: dict, path: str) -> None:
    """One panel per contender: eval loss against params (log x), one colour per budget; the runs as points, the
    approach-2 parabola per budget across its sizes and its optimum as a star (hollow where the sizes run do not
    bracket it); budgets left out of approach 2 as crosses."""
    plt = _pyplot()
    names = [c for c in result["contenders"] if _ladder(records, c)] or list(result["contenders"])
    fig, axes = _panels(plt, len(names))
    budgets = sorted({r["budget"] for r in records if r.get("role", "ladder") == "ladder"})
    cmap = plt.get_cmap("viridis")
    colour = {c: cmap(0.85 * i / max(len(budgets) - 1, 1)) for i, c in enumerate(budgets)}
    for ax, name in zip(axes, names, strict=True):
        runs, a2 = _ladder(records, name), result["contenders"][name].get("approach2")
        fitted = {p["budget"]: p for p in a2["parabolas"]} if _fitted(a2) else {}
        bracketed = {o["budget"]: o["bracketed"] for o in a2["optima"]} if _fitted(a2) else {}
        for c in sorted({r["budget"] for r in runs}):
            at = sorted((r for r in runs if r["budget"] == c), key=lambda r: r["params"])
            N, L = np.array([r["params"] for r in at]), np.array([r["loss"] for r in at])
            ax.scatter(N, L, color=colour[c], s=18, marker="o" if c in fitted else "x", zorder=3,
                       label=f"{_flops(c)} FLOPs" + ("" if c in fitted else " (not fitted)"))
            if c in fitted:
                p = fitted[c]
                u = np.linspace(np.log(N.min()) - 0.15, np.log(N.max()) + 0.15, 60)
                ax.plot(np.exp(u), p["L_opt"] + p["curvature"] * (u - np.log(p["N_opt"])) ** 2, color=colour[c],
                        lw=1.2)
                ax.scatter([p["N_opt"]], [p["L_opt"]], s=90, marker="*", zorder=4, edgecolors=colour[c],
                           facecolors=colour[c] if bracketed[c] else "white", linewidths=1.2)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(_null())
        ax.set_xlabel("parameters N")
        ax.set_ylabel(f"{name} eval loss (its own objective, nats/token)")
        ax.set_title(name if _fitted(a2) else f"{name}\n{_why(a2)}", fontsize=9)
        ax.grid(alpha=0.3, which="both")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    _save(plt, fig, path, "IsoFLOP curves (approach 2): one colour per training budget; star = the parabola's optimum, "
          "hollow where it lies outside the sizes run. Losses of different objectives are not comparable.")


def _extended(ax, grid: np.ndarray, band: dict, top: float, color, label: str) -> None:
    """A fitted curve on the grid, solid up to the largest budget run and dashed beyond, with its bootstrap band."""
    C, y = _floats(grid), _floats(band["point"])
    j = int(np.sum(C <= top * 1.0001))  # the grid is sorted: the runs' range is its first j points
    ax.plot(C[:j], y[:j], color=color, lw=1.8, label=label)
    ax.plot(C[max(j - 1, 0):], y[max(j - 1, 0):], color=color, lw=1.5, ls="--")
    if band["low"] is not None:
        ax.fill_between(C, _floats(band["low"]), _floats(band["high"]), color=color, alpha=0.15, lw=0)


def plot_frontier(records: Sequence[dict], result: dict, path: str, modern_of: dict[str, str] | None = None) -> None:
    """Compute-optimal loss against compute, log-log: one panel per objective (a contender and its modern recipe,
    which share one), x axis shared. Per contender: approach 2's optimum per budget (hollow: not bracketed), its
    fitted frontier with the bootstrap band to the largest predicted budget (dashed beyond the runs), and approach
    3's predicted optimum at each predicted budget with its interval."""
    plt = _pyplot()
    from matplotlib import ticker

    modern_of = modern_of or {}
    names = list(result["contenders"])
    objectives = list(dict.fromkeys(modern_of.get(n, n) for n in names))
    fig, axes = _panels(plt, len(objectives), sharex=True)
    for i, name in enumerate(names):
        ax, res, color = axes[objectives.index(modern_of.get(name, name))], result["contenders"][name], _color(i)
        a2, a3 = res.get("approach2"), res.get("approach3")
        if not _fitted(a2) and not _fitted(a3):
            ax.text(0.5, 0.5, f"{name}: {_why(a2)}", transform=ax.transAxes, ha="center", va="center", fontsize=8,
                    color=color)
        if _fitted(a2):
            for o in a2["optima"]:
                ax.scatter([o["budget"]], [o["L_opt"]], color=color, s=30, zorder=3,
                           facecolors=color if o["bracketed"] else "white")
            form = "E + A C^-alpha" if a2["frontier"]["form"] == "saturating" else "A C^-alpha, no E: < 4 budgets"
            _extended(ax, a2["band"]["C"], a2["band"], res["largest_budget"], color,
                      f"{name}: approach 2 frontier ({form})")
        if _fitted(a3):
            p = a3["predictions"]
            C, y = np.array([q["budget"] for q in p]), _floats([q["loss"]["point"] for q in p])
            lo, hi = _floats([q["loss"]["low"] for q in p]), _floats([q["loss"]["high"] for q in p])
            err = None if np.isnan(lo).all() else np.abs(np.stack([y - lo, hi - y]))
            ax.errorbar(C, y, yerr=err, fmt="D", ms=4, color=color, mfc="white", capsize=2,
                        label=f"{name}: approach 3 at " + ", ".join(_flops(c) for c in C))
        if res.get("largest_budget"):
            ax.axvline(res["largest_budget"], color=color, lw=0.8, ls=":")
    for ax, obj in zip(axes, objectives, strict=True):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(ticker.NullFormatter())
        points = [v for line in ax.lines for v in np.asarray(line.get_ydata(), float).ravel() if v > 0]
        if points:  # the points and curves decide the range; an exploding band is cut at 2x beyond them
            ax.set_ylim(min(points) / 2, max(points) * 2)
        ax.set_xlabel("training compute C (FLOPs)")
        ax.set_ylabel("compute-optimal eval loss (nats/token)")
        ax.set_title(f"{obj}'s objective", fontsize=9)
        ax.grid(alpha=0.3, which="both")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    _save(plt, fig, path, "Loss frontier: one panel per objective (their losses are different quantities). Points: "
          "isoFLOP optima (hollow: not bracketed); band: 90% bootstrap; dashed beyond the largest run (dotted line).")


def plot_yardsticks(records: Sequence[dict], result: dict, meta: dict, path: str) -> None:
    """One panel per yardstick that two or more contenders scored: every run as a point (at its budget), each
    contender's bounded fit with its bootstrap band to the largest predicted budget (dashed beyond its runs), chance
    as a grey line."""
    plt = _pyplot()
    names = list(result["contenders"])
    keys = [k for k in meta.get("yardsticks", {})
            if sum(any(r.get(k) is not None for r in _ladder(records, n)) for n in names) >= 2]
    if not keys:
        fig, ax = plt.subplots(figsize=(6, 2))
        ax.axis("off")
        ax.text(0.5, 0.5, "no yardstick was scored by two or more contenders", ha="center", va="center")
        _save(plt, fig, path, "Shared yardsticks")
        return
    fig, axes = _panels(plt, len(keys), sharex=True)
    for ax, key in zip(axes, keys, strict=True):
        for i, name in enumerate(names):
            runs = [r for r in _ladder(records, name) if r.get(key) is not None]
            if not runs:
                continue
            ax.scatter([r["budget"] for r in runs], [r[key] for r in runs], color=_color(i), s=12, alpha=0.7, zorder=3)
            fit = result["contenders"][name]["yardsticks"].get(key)
            if _fitted(fit):
                _extended(ax, fit["band"]["C"], fit["band"], max(r["budget"] for r in runs), _color(i), name)
            else:
                ax.plot([], [], color=_color(i), label=f"{name} (no fit)")
        ax.axhline(meta["yardsticks"][key], color="gray", lw=1, ls="-", label="chance")
        ax.set_xscale("log")
        ax.set_ylim(min(0.45, ax.get_ylim()[0]), 1.0)
        ax.set_xlabel("training compute C (FLOPs)")
        ax.set_ylabel(f"{key} accuracy")
        ax.set_title(key, fontsize=9)
        ax.grid(alpha=0.3, which="both")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    _save(plt, fig, path, "Shared yardsticks against compute: runs as points (every size), bounded fit between chance "
          "and 1 with its 90% bootstrap band, dashed beyond each contender's largest run.")


def draw(records: Sequence[dict], result: dict, meta: dict, paths: dict[str, str]) -> None:
    """The three pictures, into paths[name] for each name in FILES."""
    plot_isoflop(records, result, paths["isoflop.png"])
    plot_frontier(records, result, paths["frontier.png"], meta.get("modern_of"))
    plot_yardsticks(records, result, meta, paths["yardsticks.png"])

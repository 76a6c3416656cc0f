"""The gate's output: a markdown table and a bar chart of the changes."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from dit_repro.bench.report import save_figure_atomic

from .compare import Comparison, Verdict

_VERDICT_TEXT = {
    Verdict.PASS: "pass",
    Verdict.REGRESSION: "**REGRESSION**",
    Verdict.IMPROVEMENT: "improvement",
    Verdict.FAIL: "**FAIL**",
    Verdict.NEW: "new (not gated)",
}

_COLOURS = {Verdict.PASS: "#7f7f7f", Verdict.REGRESSION: "#d62728", Verdict.IMPROVEMENT: "#2ca02c",
            Verdict.FAIL: "#000000", Verdict.NEW: "#1f77b4"}


def format_value(value: float | None, unit: str) -> str:
    """A figure in a readable unit: ms for seconds, MiB for bytes, plain for ratios and gmacs."""
    if value is None:
        return "-"
    if unit == "s":
        return f"{value * 1e3:.2f} ms"
    if unit == "bytes":
        return f"{value / 2**20:.1f} MiB"
    if unit == "gmacs":
        return f"{value:.4g} GMACs"
    if unit == "x":
        return f"{value:.3f}x"
    return f"{value:.4g}"


def format_change(change: float | None) -> str:
    """``+10.0%`` style; ``-`` when there is no change to show."""
    if change is None:
        return "-"
    if math.isinf(change):
        return "+inf"
    return f"{(change - 1) * 100:+.1f}%"


def format_p(p: float | None) -> str:
    """The p-value, or ``exact`` for counts without sampling noise."""
    return "exact" if p is None else (f"{p:.2g}" if p >= 1e-4 else "<1e-4")


def markdown_table(comparisons: Sequence[Comparison]) -> str:
    """Metric, baseline, current, change, p-value and verdict, one line per comparison."""
    lines = ["| metric | baseline | current | change | p-value | verdict |", "|---|---|---|---|---|---|"]
    for c in comparisons:
        verdict = _VERDICT_TEXT[c.verdict] + (f" ({c.note})" if c.note and c.verdict is not Verdict.PASS else "")
        lines.append(
            f"| {c.metric} | {format_value(c.baseline, c.unit)} | {format_value(c.current, c.unit)} | "
            f"{format_change(c.change)} | {format_p(c.p_value)} | {verdict} |"
        )
    return "\n".join(lines)


def plot_changes(comparisons: Sequence[Comparison], path: Path, title: str) -> Path:
    """Horizontal bars of each metric's change in percent, coloured by verdict, thresholds dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [c for c in comparisons if c.change is not None and math.isfinite(c.change)]
    fig, ax = plt.subplots(figsize=(9, 0.35 * max(len(shown), 4) + 1.5))
    if shown:
        y = range(len(shown))
        ax.barh(list(y), [(c.change - 1) * 100 for c in shown], color=[_COLOURS[c.verdict] for c in shown])
        ax.set_yticks(list(y), [c.metric for c in shown], fontsize=7)
        ax.invert_yaxis()
        for threshold in sorted({c.threshold for c in shown}):
            for sign in (-1, 1):
                ax.axvline(sign * threshold * 100, linestyle="--", linewidth=0.8, color="#999999")
    else:
        ax.text(0.5, 0.5, "no numeric comparisons", ha="center", va="center", transform=ax.transAxes)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlabel("change against baseline (%)   dashed: thresholds")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    save_figure_atomic(fig, path)
    plt.close(fig)
    return path


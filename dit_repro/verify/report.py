"""The verifier's output: ``report.md`` (verdict table and details), ``report.json``, and two plots.

``speed.png`` and ``memory.png`` show each Table 4 configuration: the paper's bars for one and
two A100s beside what was modelled (memory) or measured (GPU results), in absolute units where
the scales match and relative to the GCP row (the paper's reference) for every series.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from dit_repro.atomic import write_bytes_atomic, write_json_atomic, write_text_atomic

from .runner import ClaimResult, VerificationReport
from .verdicts import Measurement, PaperCheck

REPORT_MD = "report.md"
REPORT_JSON = "report.json"
SPEED_PNG = "speed.png"
MEMORY_PNG = "memory.png"

GROUPS = ("Table 1", "Table 2", "Table 3", "Table 4", "Text")
PAPER_CHECK_SHORT = {PaperCheck.CONSISTENT: "consistent", PaperCheck.INCONSISTENT: "**inconsistent**",
                     PaperCheck.NOT_APPLICABLE: "n/a"}
SERIES_COLOURS = {"paper": ("#1f77b4", "#aec7e8"), "model": ("#2ca02c", "#98df8a"), "measured": ("#ff7f0e", "#ffbb78")}


def write_report(report: VerificationReport, out_dir: str | Path) -> dict[str, Path]:
    """Write report.md, report.json, speed.png and memory.png into ``out_dir``; returns their paths."""
    out = Path(out_dir)
    paths = {
        "speed": write_plot(report.plots, "speed", out / SPEED_PNG),
        "memory": write_plot(report.plots, "memory", out / MEMORY_PNG),
    }
    paths["json"] = write_json_atomic(out / REPORT_JSON, json.loads(json.dumps(report.to_dict())))
    paths["markdown"] = write_text_atomic(out / REPORT_MD, render_markdown(report, plots={k: p.name for k, p in paths.items()
                                                                                             if k in ("speed", "memory")}))
    return paths


# ---------------------------------------------------------------------------------------- markdown


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def group_of(source: str) -> str:
    """The report section of a claim: the table its source names, else Text."""
    for group in GROUPS[:-1]:
        if group in source:
            return group
    return "Text"


def claim_row(result: ClaimResult) -> str:
    """One line of the verdict table."""
    c = result.claim
    measured = result.measured.display if isinstance(result.measured, Measurement) else "-"
    here = result.measured.hardware if isinstance(result.measured, Measurement) else "-"
    cells = [
        f"**{c.id}**: {c.text}",
        c.source,
        result.figure.display,
        measured,
        f"{c.hardware.describe()} -> {here}",
        PAPER_CHECK_SHORT[result.consistency.check],
        f"**{result.verdict.value}**",
    ]
    return "| " + " | ".join(_cell(x) for x in cells) + " |"


def _details(result: ClaimResult) -> list[str]:
    c = result.claim
    lines = [f"- **{c.id}** ({result.verdict.value})"]
    if c.note:
        lines.append(f"  - reading: {c.note}")
    if c.resolution:
        lines.append(f"  - below resolution: {c.resolution}")
    lines.append(f"  - paper check ({result.consistency.check.value}): {result.consistency.detail}")
    lines += [f"  - **flagged**: {flag}" for flag in result.consistency.flags]
    if isinstance(result.measured, Measurement):
        lines.append(f"  - measured: {result.measured.display}; {result.measured.detail}")
    lines.append(f"  - {result.judgement.verdict.value}: {result.judgement.reason}")
    return lines


def _flag_lines(report: VerificationReport) -> list[str]:
    """The flagged claims, one line each, under the verdict counts."""
    flagged = [(r.claim.id, flag) for r in report.results for flag in r.consistency.flags]
    if not flagged:
        return []
    return ["Flagged (the paper check passes, but read it with this):", "",
            *[f"- **{claim_id}**: {flag}" for claim_id, flag in flagged], ""]


def _finding_lines(report: VerificationReport) -> list[str]:
    """What the general rules found, rule by rule, each with the rows it used."""
    if not report.findings:
        return []
    return ["Findings of the general rules (each run over all of the paper's numbers):", "",
            *[f"- *{f.rule}*: {f.message} [rows: {'; '.join(f.rows)}]" for f in report.findings], ""]


def render_markdown(report: VerificationReport, plots: dict[str, str] | None = None) -> str:
    """The whole report as markdown."""
    env = report.environment
    inputs = report.inputs
    counts = report.counts()
    lines = [
        "# Claims of 'Optimizing Diffusion Transformers' (Jin & Xie), verified",
        "",
        f"Run {report.created_utc} on {env.get('device_name', 'unknown device')} ({env.get('device', '?')}); "
        f"torch {env.get('torch', '?')}; commit {env.get('git_commit') or 'unknown'}.",
        f"Benchmark results used: {', '.join(inputs.get('results') or []) or 'none'}; scale: {inputs.get('scale')}; "
        f"equivalence checks: {'run' if inputs.get('equivalence') else 'skipped'}; "
        f"claims: {inputs.get('claims')} ({len(report.results)} checked).",
        "",
        "## Verdicts",
        "",
        "| verdict | claims |",
        "|---|---|",
        *[f"| {verdict} | {count} |" for verdict, count in counts.items()],
        "",
        *_flag_lines(report),
        *_finding_lines(report),
        "## How to read this",
        "",
        "- Each claim is judged twice. **Paper check**: do the paper's own numbers (through the rounding of "
        "their printed digits) support the text? **Measured**: what this machine, the memory model or the given "
        "GPU results show.",
        "- The final verdict is *inconsistent in the paper itself* when the paper check fails; otherwise it is "
        "the measured verdict: *reproduced* (same direction, size within the tolerance), *consistent with a "
        "bound* (a lower bound measured here, such as the tensors-only memory, does not exclude the figure), "
        "*direction only*, *not reproduced*, or *not checkable here* (with the reason).",
        "- A change the paper reports that is no larger than its tolerance has no direction the paper's own "
        "spread can establish: it counts as reproduced when the measurement is within the tolerance of it.",
        "- Per-GPU memory is modelled on fake tensors at the paper's scale (weights, gradients, AdamW, EMA, DDP "
        "buckets, VAE, batch, saved activations, autocast copies): a lower bound that leaves out the CUDA "
        "context, workspaces and the allocator's cache, which the paper's figures include.",
        "- Tolerances, derived from the paper's own numbers:",
        *[f"  - **{t.name}** ({'per figure' if t.value is None else f'{t.value:.1%}'}): {t.rationale}"
          + (f". {t.detail}." if t.detail else ".") for t in report.tolerances.values()],
        "",
    ]
    for group in GROUPS:
        members = [r for r in report.results if group_of(r.claim.source) == group]
        if not members:
            continue
        lines += [f"## {group}", "",
                  "| claim | source | paper | measured | hardware (paper -> here) | paper check | verdict |",
                  "|---|---|---|---|---|---|---|",
                  *[claim_row(r) for r in members], ""]
    lines += ["## Details", ""]
    for result in report.results:
        lines += _details(result)
    if plots:
        lines += ["", "## Speed and memory per configuration (Table 4)", ""]
        lines += [f"![{name}]({file})" for name, file in plots.items()]
    return "\n".join(lines).rstrip() + "\n"


# ---------------------------------------------------------------------------------------- plots


def _relative(values: list[float | None], reference: int) -> list[float | None]:
    ref = values[reference]
    return [None if v is None or not ref else v / ref for v in values]


def write_plot(plots: dict[str, Any], metric: str, path: Path) -> Path:
    """A two-panel grouped bar chart of ``plots[metric]``: absolute values and relative to the GCP row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    configurations = plots["configurations"]
    reference = plots["rows"].index(plots["reference_row"])
    series = plots[metric]
    absolute = [s for s in series if s["kind"] != "measured" or s.get("paper_scale")]
    unit = "steps/s" if metric == "speed" else "MiB per GPU"
    height = 1.5 + 0.22 * len(configurations) * max(1, len(series))
    fig, (ax_abs, ax_rel) = plt.subplots(1, 2, figsize=(13, height))
    for ax, chosen, relative in ((ax_abs, absolute, False), (ax_rel, series, True)):
        _bars(ax, configurations, chosen, reference, relative)
        ax.set_xlabel(f"{'relative to GCP' if relative else unit}")
    if metric == "memory":
        ax_abs.axvline(plots["capacity_mib"], color="#d62728", linestyle="--", linewidth=1)
        ax_abs.text(plots["capacity_mib"], -0.6, " A100 memory", color="#d62728", fontsize=7, va="bottom")
    handles, labels = ax_rel.get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="lower center", ncol=min(3, max(1, len(labels))))
    nothing = "" if any(s["kind"] != "paper" for s in series) else " (nothing modelled or measured in this run)"
    fig.suptitle(f"Table 4 configurations, DiT-XL/2 global batch 128: {metric}{nothing}", fontsize=10)
    rows_of_legend = -(-len(labels) // 3)
    fig.tight_layout(rect=(0, 0.03 + 0.03 * rows_of_legend, 1, 1))
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return write_bytes_atomic(path, buffer.getvalue())


def _bars(ax, configurations: list[str], series: list[dict[str, Any]], reference: int, relative: bool) -> None:
    count = max(1, len(series))
    height = 0.8 / count
    used: dict[str, int] = {}
    for index, s in enumerate(series):
        values = _relative(s["values"], reference) if relative else s["values"]
        shade = SERIES_COLOURS[s["kind"]][used.get(s["kind"], 0) % 2]
        used[s["kind"]] = used.get(s["kind"], 0) + 1
        ys = [y + (index - (count - 1) / 2) * height for y in range(len(configurations))]
        ax.barh(ys, [0.0 if v is None else v for v in values], height=height, color=shade, label=s["label"])
        for y, v, oom in zip(ys, values, s["oom"], strict=True):
            if oom or v is None:
                ax.text(0, y, " OOM" if oom else " -", va="center", fontsize=6, color="#d62728")
    ax.set_yticks(range(len(configurations)), configurations, fontsize=8)
    ax.invert_yaxis()
    if relative:
        ax.axvline(1.0, color="grey", linewidth=0.8)


def summary_lines(report: VerificationReport) -> list[str]:
    """A short plain-text summary for the terminal: one line per claim and the counts."""
    width = max((len(r.claim.id) for r in report.results), default=10)
    lines = [f"{r.claim.id:<{width}}  {r.verdict.value}" for r in report.results]
    lines.append("; ".join(f"{v}: {n}" for v, n in report.counts().items() if n))
    return lines


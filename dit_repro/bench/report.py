"""The benchmark's human-readable output: a markdown table of the rows and a bar chart."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from .schema import default_file_mode


def _mib(value: int | None) -> str:
    if value is None:
        return "-"
    mib = value / 2**20
    return f"{mib:,.0f}" if mib >= 100 else f"{mib:.2f}"


def _row_line(row: dict[str, Any], device_type: str) -> str:
    timing, compute, memory = row["timing"], row["compute"], row["memory"]
    saved = row["saved_activations"]
    if timing is None:
        speed = ["-"] * 5
    else:
        speed = [f"{timing['median_s'] * 1e3:.1f}", f"{timing['iqr_s'] * 1e3:.1f}", f"{timing['steps_per_s']:.3f}",
                 f"{timing['images_per_s']:.1f}",
                 "-" if compute is None or compute["model_tflops_per_s"] is None else f"{compute['model_tflops_per_s']:.2f}"]
    mfu = "-" if compute is None or compute["mfu"] is None else f"{compute['mfu']:.1%}"
    if memory is None:
        mem = ["-", "-"]
    elif memory["kind"] == "cuda":
        mem = [_mib(memory["max_allocated_bytes"]), _mib(memory["max_reserved_bytes"])]
    else:
        mem = [_mib(memory["peak_rss_bytes"]), "-"]
    backend = (row["attention"] or {}).get("backend", "-")
    status = row["status"] if row["injected_slowdown"] is None else f"{row['status']} (slowed x{row['injected_slowdown']})"
    cells = [row["name"], status, *speed, mfu, *mem, _mib(saved["bytes"]) if saved else "-", backend]
    return "| " + " | ".join(cells) + " |"


def results_table(results: dict[str, Any]) -> str:
    """One line per row: status, median and IQR step time, throughput, TFLOP/s, MFU, memory, attention."""
    cuda = results["device"]["type"] == "cuda"
    memory_heads = ["peak alloc MiB", "peak reserved MiB"] if cuda else ["peak RSS MiB", "-"]
    head = ["row", "status", "median ms", "IQR ms", "steps/s", "images/s", "model TFLOP/s", "MFU", *memory_heads,
            "saved act. MiB", "attention"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += [_row_line(row, results["device"]["type"]) for row in results["rows"]]
    return "\n".join(lines)


def results_markdown(results: dict[str, Any]) -> str:
    """Heading, scale and device, the notes of scale and matrix, the table, and each failed row's error."""
    scale, device = results["scale"], results["device"]
    side = ""
    if "ab" in results:
        ab = results["ab"]
        side = (f", reference side: {ab['against']} = {ab['reference_commit'][:12]}" if ab["role"] == "reference"
                else f", candidate side: {ab['candidate']}")
    lines = [
        f"# Benchmark: matrix {results['matrix']['name']} on {device['name']} ({device['type']} x{device['count']}){side}",
        "",
        f"{scale['model']}, global batch {scale['global_batch_size']}, {scale['image_size']} px, "
        f"{scale['timed_steps']} timed steps per row after a steady warm-up, schedule {scale['schedule']}",
        "",
    ]
    lines += [f"- {note}" for note in (*scale["notes"], *results["matrix"]["notes"])]
    lines += ["", results_table(results), ""]
    for row in results["rows"]:
        if row["error"]:
            lines.append(f"- {row['name']}: {row['status']} ({row['error']['type']}): "
                         f"{row['error']['message'].splitlines()[0]}")
        if row["warmup"] is not None and not row["warmup"]["steady"]:
            lines.append(f"- {row['name']}: the warm-up reached its cap without a steady step time")
        lines += [f"- {row['name']}: {note}" for note in row["notes"]]
    return "\n".join(lines).rstrip() + "\n"


def save_figure_atomic(fig: Any, path: Path) -> Path:
    """Save a matplotlib figure as PNG through a temporary file in the same directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110, format="png")
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def plot_results(results: dict[str, Any], path: Path) -> Path:
    """Two panels: steps/s per row (median, IQR as error bar) and memory (peak allocated on a GPU,
    saved activations on a CPU, where peak RSS is mostly the libraries)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["rows"]
    names = [row["name"] for row in rows]
    speed, low, high, memory = [], [], [], []
    for row in rows:
        t = row["timing"]
        speed.append(0.0 if t is None else t["steps_per_s"])
        low.append(0.0 if t is None else t["steps_per_s"] - 1 / t["q3_s"])
        high.append(0.0 if t is None else 1 / t["q1_s"] - t["steps_per_s"])
        m = row["memory"]
        if m is None:
            memory.append(0.0)
        elif m["kind"] == "cuda":
            memory.append(m["max_allocated_bytes"] / 2**30)
        else:
            saved = row["saved_activations"]
            memory.append(0.0 if saved is None else saved["bytes"] / 2**20)
    memory_label = "peak allocated GiB" if results["device"]["type"] == "cuda" else "saved activations MiB"
    fig, (ax_speed, ax_mem) = plt.subplots(1, 2, figsize=(11, 0.45 * len(rows) + 1.8), sharey=True)
    y = list(range(len(rows)))
    ax_speed.barh(y, speed, xerr=[low, high], color="#1f77b4")
    ax_speed.set_yticks(y, names, fontsize=8)
    ax_speed.invert_yaxis()
    ax_speed.set_xlabel("steps/s (median; bar: IQR)")
    ax_mem.barh(y, memory, color="#ff7f0e")
    ax_mem.set_xlabel(memory_label)
    for i, row in enumerate(rows):
        if row["status"] != "ok":
            ax_speed.text(0, i, f"  {row['status']}", va="center", fontsize=8, color="#d62728")
    fig.suptitle(f"{results['matrix']['name']}: {results['scale']['model']} b{results['scale']['global_batch_size']} "
                 f"on {results['device']['name']}", fontsize=9)
    fig.tight_layout()
    save_figure_atomic(fig, path)
    plt.close(fig)
    return path

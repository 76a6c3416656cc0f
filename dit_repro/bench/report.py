"""The benchmark's human-readable output: a markdown table of the rows and a bar chart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dit_repro.atomic import atomic_write

from .results import PEAK_OVERRIDE_SOURCE


def _mib(value: int | None) -> str:
    if value is None:
        return "-"
    mib = value / 2**20
    return f"{mib:,.0f}" if mib >= 100 else f"{mib:.2f}"


def _peak_cell(compute: dict[str, Any] | None) -> str:
    # Which peak the MFU was divided by, so a tf32 row's MFU reads against the TF32 rate.
    peak = None if compute is None else compute.get("peak")
    if peak is None or peak["flops_per_s"] is None:
        return "-"
    basis = "--peak-flops" if peak["source"] == PEAK_OVERRIDE_SOURCE else peak["precision"]
    return f"{peak['flops_per_s'] / 1e12:,.1f} ({basis})"


def _encode_note(row: dict[str, Any]) -> str | None:
    # Live-feature rows encode with the VAE inside the step; its FLOPs are shown apart from the model's.
    compute, timing = row["compute"], row["timing"]
    encode = None if compute is None else compute.get("encode_flops_per_step")
    if encode is None:
        return None
    # Three significant figures: the CPU smoke scale's encode is a few MFLOP, a GPU's many TFLOP.
    rate = "" if timing is None else f", {encode / timing['median_s'] / 1e12:.3g} TFLOP/s at the median step"
    return (f"VAE encode {encode / 1e9:.3g} GFLOP per step{rate}: in the step time, "
            "not in model TFLOP/s or MFU")


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
    cells = [row["name"], status, *speed, mfu, _peak_cell(compute), *mem, _mib(saved["bytes"]) if saved else "-",
             backend]
    return "| " + " | ".join(cells) + " |"


def results_table(results: dict[str, Any]) -> str:
    """One line per row: status, median and IQR step time, throughput, TFLOP/s, MFU and the peak it is
    of, memory, attention."""
    cuda = results["device"]["type"] == "cuda"
    memory_heads = ["peak alloc MiB", "peak reserved MiB"] if cuda else ["peak RSS MiB", "-"]
    head = ["row", "status", "median ms", "IQR ms", "steps/s", "images/s", "model TFLOP/s", "MFU",
            "MFU peak TFLOP/s", *memory_heads, "saved act. MiB", "attention"]
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
        f"MFU peaks: {device['peak_source']}",
        "",
    ]
    lines += [f"- {note}" for note in (*scale["notes"], *results["matrix"]["notes"])]
    lines += ["", results_table(results), ""]
    lines += [fixed_cost_table(results["rows"]), ""]
    for row in results["rows"]:
        if row["error"]:
            lines.append(f"- {row['name']}: {row['status']} ({row['error']['type']}): "
                         f"{row['error']['message'].splitlines()[0]}")
        if row["warmup"] is not None and not row["warmup"]["steady"]:
            lines.append(f"- {row['name']}: the warm-up reached its cap without a steady step time")
        lines += [f"- {row['name']}: {note}" for note in row["notes"]]
        if (encode := _encode_note(row)) is not None:
            lines.append(f"- {row['name']}: {encode}")
        memory = row.get("memory") or {}
        if memory.get("encode_max_allocated_bytes") is not None:
            lines.append(f"- {row['name']}: peak allocated {_mib(memory['encode_max_allocated_bytes'])} MiB in the "
                         f"VAE encode, {_mib(memory['dit_step_max_allocated_bytes'])} MiB in the DiT step "
                         "(checkpointing's saving shows in the latter)")
    return "\n".join(lines).rstrip() + "\n"


def fixed_cost_table(rows: list[dict[str, Any]]) -> str:
    """Seconds each row spent before its first timed step, split into import, data, build and warm-up."""
    head = ["row", "total s", "import s", "data s", "build s", "warm-up s", "warm-up steps"]
    lines = ["Fixed cost per row (worker start to first timed step):", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cost = row.get("fixed_cost")
        if cost is None:
            cells = ["-"] * 5
        else:
            cells = [f"{cost[key]:.1f}" for key in ("total_s", "import_s", "data_s", "build_s", "warmup_s")]
        steps = str(row["warmup"]["steps"]) if row.get("warmup") else "-"
        lines.append("| " + " | ".join([row["name"], *cells, steps]) + " |")
    return "\n".join(lines)


def save_figure_atomic(fig: Any, path: Path) -> Path:
    """Save a matplotlib figure as a 110 dpi PNG, atomically."""
    return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))


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

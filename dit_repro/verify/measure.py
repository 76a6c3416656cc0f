"""What this machine can measure for each claim: one method per ``measure.kind`` of claims.json.

Sources, by what they can honestly show:

* machine-independent counts (parameters, multiply-adds, FLOPs, latent shape) on any machine;
* the memory model (:mod:`dit_repro.verify.memory_model`) for per-GPU memory at the paper's
  scale, as a lower bound; benchmark results at the paper's scale on one GPU take precedence;
* equivalence checks run in-process on the CPU;
* speed only from GPU benchmark results (``--results`` or ``--scale small``): CPU timing ratios do
  not transfer to GPU throughput, and a claim made on two or four GPUs needs that many, which a
  one-process benchmark does not have.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dit_repro.models import PRESETS
from dit_repro.paper import PaperData, split_row_ref

from .claims import Claim, ClaimSet
from .equivalence import CHECKS
from .figures import UNITS, coefficient_of_variation
from .machine import forward_gmacs, latent_shape, param_count, training_step_flops
from .memory_model import MemoryModel, MemorySpec
from .results import ResultsFile, block_rate_cv, median, row_metric
from .verdicts import Measurement, NotCheckable

COUNT_WORDS = {2: "two", 3: "three", 4: "four"}
MATRIX_FAMILY = {"table4": "dit", "table3": "uvit", "uvit": "uvit"}
"""The model family each benchmark matrix of claims.json is run with."""


@dataclass(frozen=True)
class Setup:
    """The configuration a paper cell was measured in."""

    model: str
    """Model preset."""
    global_batch_size: int
    """Images per step over all GPUs."""
    gpu: str
    """The paper's GPU."""
    gpus: int
    """How many."""
    switches: dict[str, str]
    """checkpointing, precision, features."""
    image_size: int | None
    """Image side in pixels, where the paper gives it."""
    ddp: bool
    """Whether the code base holds DDP's gradient buckets in this setup."""

    @property
    def per_gpu_batch(self) -> int:
        """Images per GPU per step."""
        return self.global_batch_size // self.gpus

    @property
    def key(self) -> tuple[Any, ...]:
        """Equal for rows of one configuration (a setup the paper ran, or printed, more than once)."""
        return (self.model, self.global_batch_size, self.gpu, self.gpus, tuple(sorted(self.switches.items())),
                self.image_size, self.ddp)

    def memory_spec(self) -> MemorySpec:
        """The memory model's configuration of this setup."""
        return MemorySpec(self.model, self.per_gpu_batch, self.switches["checkpointing"], self.switches["precision"],
                          self.switches["features"], image_size=self.image_size or 256, ddp=self.ddp)


class Evidence:
    """Measures claims from results files, the memory model, counts and equivalence checks."""

    def __init__(self, claims: ClaimSet, results: list[ResultsFile], *, run_equivalence: bool = True,
                 gpu_here: bool = False, memory_model: MemoryModel | None = None) -> None:
        self.claims = claims
        """The claims and the paper's tables."""
        self.paper = claims.paper
        """The paper's tables."""
        self.results = results
        """Benchmark results files given or produced by --scale small."""
        self.run_equivalence = run_equivalence
        """False skips the (slowest) equivalence checks."""
        self.gpu_here = gpu_here
        """Whether this machine has a CUDA device (only changes what the reasons suggest)."""
        self.memory_model = memory_model or MemoryModel()
        """Shared so that repeated configurations are modelled once."""

    def measure(self, claim: Claim) -> Measurement | NotCheckable:
        """The measurement of one claim, or why it cannot be made here."""
        handler = getattr(self, f"_measure_{claim.measure.kind}", None)
        if handler is None:
            raise ValueError(f"{claim.id}: no measurement {claim.measure.kind!r}")
        return handler(claim)

    # ------------------------------------------------------------------ setups

    def setup(self, ref: str, setting: str | None = None) -> Setup:
        """The paper's configuration behind a row of Tables 1-4 (``setting``: Table 4's column)."""
        return row_setup(self.paper, ref, setting)

    # ------------------------------------------------------------------ GPU results

    def gpu_results(self, matrix: str, family: str | None = None) -> list[ResultsFile]:
        """GPU results files of a matrix (and model family)."""
        return [r for r in self.results if r.on_gpu and r.matrix == matrix and (family is None or r.family == family)]

    def _no_gpu_reason(self) -> str:
        if self.results and not any(r.on_gpu for r in self.results):
            return ("the given results were measured on a CPU: the claim is about GPU throughput, and CPU timing "
                    "ratios do not transfer to a GPU")
        if self.gpu_here:
            return ("no GPU results: run `dit-repro verify --scale small` on this GPU, or pass --results from "
                    "`dit-repro bench`")
        return ("no GPU here and no GPU results given (--results): the claim is about GPU throughput, and CPU timing "
                "ratios do not transfer to a GPU")

    def _gate(self, claim: Claim, any_count: bool = False) -> NotCheckable | None:
        gpus = claim.hardware.gpus or 1
        if gpus > 1 and not any_count:
            return NotCheckable(f"{COUNT_WORDS.get(gpus, gpus)} GPUs needed: the claim is on {gpus} {claim.hardware.gpu}s, "
                                "and `dit-repro bench` times one process")
        if not any(r.on_gpu for r in self.results):
            return NotCheckable(self._no_gpu_reason())
        return None

    def _docs(self, matrix: str, family: str | None) -> list[ResultsFile] | NotCheckable:
        docs = self.gpu_results(matrix, family)
        if docs:
            return docs
        who = f" for a {'U-ViT' if family == 'uvit' else 'DiT'} model" if family else ""
        return NotCheckable(f"no GPU results of the {matrix} matrix{who} (run `dit-repro bench --matrix {matrix}` "
                            "on a GPU and pass --results)")

    @staticmethod
    def _status(doc: ResultsFile, row: str) -> str:
        found = doc.row(row)
        if found is None:
            return f"{row} missing"
        reason = ((found["error"] or {}).get("message") or "").splitlines()
        return f"{row} {found['status']}" + (f" ({reason[0]})" if reason and found["status"] != "ok" else "")

    def _changes(self, docs: list[ResultsFile], baseline: str, treated: str, metric: str
                 ) -> tuple[list[tuple[ResultsFile, float, float]], list[str]]:
        found, problems = [], []
        for doc in docs:
            a, b = row_metric(doc.row(baseline), metric), row_metric(doc.row(treated), metric)
            if a is None or b is None:
                problems.append(f"{doc.describe()}: {self._status(doc, baseline)}, {self._status(doc, treated)}")
            else:
                found.append((doc, a, b))
        return found, problems

    def _change_measurement(self, found: list[tuple[ResultsFile, float, float]], metric: str, label: str = ""
                            ) -> Measurement:
        changes = [b / a - 1 for _, a, b in found]
        m = median(changes)
        doc, a, b = found[0]
        unit = UNITS[metric]
        runs = f", median of {len(found)} runs" if len(found) > 1 else ""
        return Measurement(m, f"{label}{m:+.1%} ({a:.3g} -> {b:.3g} {unit}{runs})", doc.describe(),
                           "memory is peak reserved (the allocator's cache included)" if metric == "memory_mib" else
                           "steps/s at the median step time")

    # ------------------------------------------------------------------ kinds

    def _measure_none(self, claim: Claim) -> NotCheckable:
        return NotCheckable(claim.measure.params["reason"])

    def _measure_params(self, claim: Claim) -> Measurement:
        model = claim.measure.params["model"]
        count = param_count(model)
        return Measurement(float(count), f"{count:,} ({count / 1e6:.1f}M)", "any (model built on the meta device)",
                           f"{model} as defined, 1000 classes, 32x32x4 latents")

    def _measure_macs_ratio(self, claim: Claim) -> Measurement:
        base, treated = claim.measure.params["baseline_model"], claim.measure.params["treated_model"]
        a, b = forward_gmacs(base), forward_gmacs(treated)
        return Measurement(b / a - 1, f"{treated} {b:.1f} vs {base} {a:.1f} GMACs per image ({b / a - 1:+.1%})",
                           "any (analytic multiply-adds at 256 px)", "dit_repro.flops.forward_macs")

    def _measure_recompute_flops(self, claim: Claim) -> Measurement:
        model = claim.measure.params["model"]
        plain, recompute = training_step_flops(model, False), training_step_flops(model, True)
        m = recompute / plain - 1
        return Measurement(m, f"{m:+.1%} ({plain / 1e9:.1f} -> {recompute / 1e9:.1f} GFLOPs per image per step)",
                           "any (FlopCounterMode on fake tensors)",
                           f"{model} at 256 px, forward+backward of the training loss, every block checkpointed")

    def _measure_latent_shape(self, claim: Claim) -> Measurement:
        shape = latent_shape(int(claim.measure.params["image_size"]))
        return Measurement(float(shape[0]), "x".join(map(str, shape)), "any (SD VAE encoder on fake tensors)",
                           "the Stable Diffusion VAE configuration DiT uses")

    def _measure_equivalence(self, claim: Claim) -> Measurement | NotCheckable:
        if not self.run_equivalence:
            return NotCheckable("equivalence checks skipped (--skip-equivalence)")
        result = CHECKS[claim.measure.params["switch"]]()
        return Measurement(result.holds, result.summary, "CPU (in-process check)", result.setup)

    def _measure_memory_model(self, claim: Claim) -> Measurement | NotCheckable:
        c = claim.comparison
        on_gpu = self._paper_scale_memory(claim)
        if on_gpu is not None:
            return on_gpu
        treated = self.setup(c.treated, c.setting)
        spec = treated.memory_spec()
        where = (f"memory model: {spec.model}, {spec.per_gpu_batch} images per GPU, tensors only "
                 "(fake tensors; a lower bound)")
        if c.kind == "change":
            base_spec = self.setup(c.baseline, c.setting).memory_spec()
            if base_spec.tensor_key == spec.tensor_key:
                return NotCheckable("the two rows hold identical tensors (TF32 changes kernels, not tensor sizes): "
                                    "the difference is workspaces and allocator caching, which needs a GPU measurement")
            a, b = self.memory_model.estimate(base_spec), self.memory_model.estimate(spec)
            m = b.peak_bytes / a.peak_bytes - 1
            if base_spec.model != spec.model or base_spec.per_gpu_batch != spec.per_gpu_batch:
                where = (f"memory model: {base_spec.model} against {spec.model}, {spec.per_gpu_batch} images per GPU, "
                         "tensors only")
            return Measurement(m, f"{m:+.1%} ({a.peak_mib:,.0f} -> {b.peak_mib:,.0f} MiB)", where,
                               _spec_text(base_spec) + " against " + _spec_text(spec))
        estimate = self.memory_model.estimate(spec)
        if c.kind == "value":
            return Measurement(estimate.peak_mib, f">= {estimate.peak_mib:,.0f} MiB", where, _spec_text(spec),
                               bound="lower")
        capacity = self.paper.capacity_mib(treated.gpu).value
        allowance = self.claims.tolerances[c.tolerance].value
        peak = estimate.peak_mib
        if peak > capacity:
            return Measurement(True, f"OOM: tensors alone need {peak:,.0f} of {capacity:,.0f} MiB", where, _spec_text(spec))
        if peak * (1 + allowance) <= capacity:
            return Measurement(False, f"fits: {peak:,.0f} of {capacity:,.0f} MiB (with {allowance:.0%} allowance)",
                               where, _spec_text(spec))
        return NotCheckable(f"undecided: the tensors need {peak:,.0f} of {capacity:,.0f} MiB, within the {allowance:.0%} "
                            "allowance for what the model leaves out (context, workspaces, allocator cache)")

    def _paper_scale_memory(self, claim: Claim) -> Measurement | NotCheckable | None:
        """GPU results of Table 4 at the paper's model, batch and size, for one-GPU Table 4 claims; else None."""
        c = claim.comparison
        if (claim.hardware.gpus or 1) != 1 or not (c.treated or "").startswith("table4/"):
            return None
        setting = c.setting or "a100x1"
        setup = self.setup(c.treated, setting)
        docs = [d for d in self.gpu_results("table4", "dit")
                if (d.model, d.global_batch_size, d.image_size) == (setup.model, setup.global_batch_size, setup.image_size)]
        if not docs:
            return None
        treated_row = split_row_ref(c.treated)[1]
        if c.kind == "holds":
            row = docs[0].row(treated_row)
            if row is None or row["status"] not in ("ok", "oom"):
                return NotCheckable(f"{docs[0].describe()}: {self._status(docs[0], treated_row)}")
            oom = row["status"] == "oom"
            return Measurement(oom, "OOM" if oom else f"fits ({row_metric(row, 'memory_mib'):,.0f} MiB reserved)",
                               docs[0].describe(), "benchmark at the paper's scale")
        if c.kind == "value":
            values = [row_metric(d.row(treated_row), "memory_mib") for d in docs]
            values = [v for v in values if v is not None]
            if not values:
                return NotCheckable(f"{docs[0].describe()}: {self._status(docs[0], treated_row)}")
            return Measurement(median(values), f"{median(values):,.0f} MiB reserved", docs[0].describe(),
                               "benchmark at the paper's scale")
        found, problems = self._changes(docs, split_row_ref(c.baseline)[1], treated_row, "memory_mib")
        if not found:
            return NotCheckable("; ".join(problems))
        return self._change_measurement(found, "memory_mib")

    def _measure_bench_change(self, claim: Claim) -> Measurement | NotCheckable:
        gate = self._gate(claim)
        if gate is not None:
            return gate
        c, matrix = claim.comparison, claim.measure.params["matrix"]
        docs = self._docs(matrix, MATRIX_FAMILY.get(matrix))
        if isinstance(docs, NotCheckable):
            return docs
        found, problems = self._changes(docs, split_row_ref(c.baseline)[1], split_row_ref(c.treated)[1], c.metric)
        if not found:
            return NotCheckable("; ".join(problems))
        return self._change_measurement(found, c.metric)

    def _measure_bench_value(self, claim: Claim) -> Measurement | NotCheckable:
        gate = self._gate(claim)
        if gate is not None:
            return gate
        c, params = claim.comparison, claim.measure.params
        if c.treated is None:
            return NotCheckable("the claim names no configuration to benchmark")
        setup = self.setup(c.treated, c.setting)
        docs = self.gpu_results(params["matrix"])
        matching = [d for d in docs if setup.gpu in d.device_name.replace(" ", "")
                    and (d.model, d.global_batch_size) == (setup.model, setup.global_batch_size)
                    and (setup.image_size is None or d.image_size == setup.image_size)]
        if not matching:
            have = "; ".join(d.describe() for d in docs) or f"no GPU results of the {params['matrix']} matrix"
            return NotCheckable(f"absolute figures hold only on the paper's {setup.gpu} x{setup.gpus} with {setup.model} "
                                f"at batch {setup.global_batch_size}; results: {have}")
        values = [row_metric(d.row(params["row"]), c.metric) for d in matching]
        values = [v for v in values if v is not None]
        if not values:
            return NotCheckable("; ".join(f"{d.describe()}: {self._status(d, params['row'])}" for d in matching))
        m = median(values)
        return Measurement(m, f"{m:.3g} {UNITS[c.metric]}", matching[0].describe(), "median over the given runs")

    def _measure_bench_best(self, claim: Claim) -> Measurement | NotCheckable:
        gate = self._gate(claim)
        if gate is not None:
            return gate
        c, params = claim.comparison, claim.measure.params
        docs = self._docs(params["matrix"], params.get("family"))
        if isinstance(docs, NotCheckable):
            return docs
        best: tuple[float, str, Measurement] | None = None
        problems = []
        for treated in params["treated_rows"]:
            found, missing = self._changes(docs, params["baseline_row"], treated, c.metric)
            problems += missing
            if found:
                measured = self._change_measurement(found, c.metric, label=f"{treated}: ")
                if best is None or measured.value > best[0]:
                    best = (float(measured.value), treated, measured)
        if best is None:
            return NotCheckable("; ".join(problems))
        _, _, measured = best
        others = f"; not measured: {'; '.join(problems)}" if problems else ""
        return Measurement(measured.value, measured.display, measured.hardware,
                           f"largest change among {', '.join(params['treated_rows'])} against {params['baseline_row']}{others}")

    def _measure_stability_within(self, claim: Claim) -> Measurement | NotCheckable:
        gate = self._gate(claim, any_count=True)
        if gate is not None:
            return gate
        worst: tuple[float, str, ResultsFile] | None = None
        for doc in (r for r in self.results if r.on_gpu):
            for row in doc.doc["rows"]:
                cv = block_rate_cv(row)
                if cv is not None and (worst is None or cv > worst[0]):
                    worst = (cv, row["name"], doc)
        if worst is None:
            return NotCheckable("no GPU row has ten or more timed steps")
        cv, row, doc = worst
        return Measurement(cv, f"largest CV {cv:.1%} (row {row})", doc.describe(),
                           "timed steps cut into ten consecutive blocks, as Table 1 cuts a run into ten epochs; "
                           "one GPU (the claim's four are not needed for a spread within one run)")

    def _measure_stability_across(self, claim: Claim) -> Measurement | NotCheckable:
        gate = self._gate(claim, any_count=True)
        if gate is not None:
            return gate
        groups: dict[tuple[Any, ...], list[ResultsFile]] = {}
        for doc in (r for r in self.results if r.on_gpu):
            key = (doc.matrix, doc.model, doc.global_batch_size, doc.image_size, doc.device_name)
            groups.setdefault(key, []).append(doc)
        worst: tuple[float, str, list[ResultsFile]] | None = None
        for docs in (g for g in groups.values() if len(g) >= 2):
            names = [row["name"] for row in docs[0].doc["rows"]]
            for name in names:
                rates = [row_metric(d.row(name), "steps_per_s") for d in docs]
                if all(r is not None for r in rates):
                    cv = coefficient_of_variation(rates)
                    if worst is None or cv > worst[0]:
                        worst = (cv, name, docs)
        if worst is None:
            return NotCheckable("needs two or more GPU results files of the same matrix, scale and GPU "
                                "(pass --results several times)")
        cv, name, docs = worst
        return Measurement(cv, f"largest CV across {len(docs)} runs {cv:.1%} (row {name})", docs[0].describe(),
                           "coefficient of variation of the same row's steps/s across repeated results files")


def row_setup(paper: PaperData, ref: str, setting: str | None = None) -> Setup:
    """The paper's configuration behind a row of Tables 1-4 (``setting``: Table 4's column).

    A row's own switches (Table 4's, and Table 3's switch rows) override its protocol's.
    """
    table, row_id = split_row_ref(ref)
    row, meta = paper.row(table, row_id), paper.tables[table]["setup"]
    if table == "table4":
        where = paper.tables["table4"]["settings"][setting]
        protocol = paper.protocols[meta["protocol"]]
        return Setup(meta["model"], meta["global_batch_size"], where["gpu"], where["gpus"], row["switches"],
                     meta.get("image_size"), _holds_ddp(protocol, where["gpus"]))
    if table == "table2":
        protocol = paper.protocols[PRESETS[row["model"]].family]
        return Setup(row["model"], row["global_batch_size"], row["gpu"], row["gpus"], protocol["switches"],
                     meta.get("image_size"), _holds_ddp(protocol, row["gpus"]))
    if table in ("table1", "table3"):
        protocol = paper.protocols[meta["protocol"]]
        return Setup(meta["model"], meta["global_batch_size"], meta["gpu"], meta["gpus"],
                     row.get("switches") or protocol["switches"], meta.get("image_size"),
                     _holds_ddp(protocol, meta["gpus"]))
    raise ValueError(f"no setup for {ref}")


def _holds_ddp(protocol: dict[str, Any], gpus: int) -> bool:
    return protocol["ddp"] == "always" or gpus > 1


def _spec_text(spec: MemorySpec) -> str:
    return (f"{spec.model}, {spec.per_gpu_batch}/GPU, checkpointing {spec.checkpointing}, {spec.precision}, "
            f"{spec.features} features, {'with' if spec.ddp else 'no'} DDP buckets")

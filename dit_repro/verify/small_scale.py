"""``dit-repro verify --scale small``: the benchmark subset one GPU can run in a few minutes.

DiT-S/2 (and U-ViT-S/2 for Table 3) at 256 px, global batch 32, through ``dit-repro bench``'s
runner (each row in a fresh process, CUDA-event timing, peak memory). The matrices are the rows
the speed claims compare: Table 4, the attention backends the paper names, compile of the
model and of its blocks, and Table 3's two switchable rows. The figures describe this small
scale on this GPU, not DiT-XL/2 on A100s; the report says so beside every one.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

from dit_repro.bench.latent_cache import build_temporary_cache
from dit_repro.bench.matrices import Matrix, attention_matrix, compile_matrix, select_rows, table3, table4
from dit_repro.bench.plan import BenchRequest, BenchScale, run_bench
from dit_repro.bench.schema import write_results
from dit_repro.bench.stats import WarmupPolicy
from dit_repro.config import ConfigError

from .results import ResultsFile

SMALL_SCALE = BenchScale(
    model="DiT-S/2", global_batch_size=32, image_size=256, timed_steps=20, block_steps=10, schedule="sequential",
    warmup=WarmupPolicy(window=5, rel_tol=0.05, min_steps=5, max_steps=40),
    data="synthetic:count=256,classes=1000", vae="full-size-random", num_classes=1000, threads=None, smoke=False,
    notes=("verify --scale small: DiT-S/2 (U-ViT-S/2 for Table 3), global batch 32, 256 px, the SD-VAE architecture "
           "with random weights for live rows; speed and memory only, not the paper's DiT-XL/2 on A100s",),
)
"""The scale of ``--scale small``."""

UVIT_SMALL_MODEL = "U-ViT-S/2"
"""Table 3's U-ViT-S (the paper names no patch size)."""


def small_matrices(device_type: str) -> list[tuple[Matrix, str]]:
    """(matrix, model) pairs: Table 4, attention (math, flash, xformers), compile (eager, model, blocks), Table 3.

    Each is a built-in matrix, or the rows of one that the claims compare.
    """
    attention = select_rows(attention_matrix(device_type), ["math", "flash", "xformers"])
    compiled = select_rows(compile_matrix(device_type), ["eager", "default/model", "default/blocks"])
    model = SMALL_SCALE.model
    return [(table4(device_type), model), (attention, model), (compiled, model), (table3(device_type), UVIT_SMALL_MODEL)]


def run_small_scale(out_dir: Path, say: Callable[[str], None] = lambda text: print(text, file=sys.stderr)
                    ) -> list[ResultsFile]:
    """Run every small-scale matrix on this GPU; write each results file under ``out_dir/bench``."""
    if not torch.cuda.is_available():
        raise ConfigError("--scale small needs a CUDA device; on a CPU the verifier checks the machine-independent "
                          "claims only (pass --results from a GPU run for the others)")
    bench_dir = out_dir / "bench"
    produced = []
    with tempfile.TemporaryDirectory(prefix="dit-repro-verify-cache-") as tmp:
        say(f"[verify] building a latent cache ({SMALL_SCALE.data}, {SMALL_SCALE.image_size} px)")
        cache = build_temporary_cache(Path(tmp) / "cache", data=SMALL_SCALE.data, vae=SMALL_SCALE.vae,
                                      image_size=SMALL_SCALE.image_size, device="cuda", batch_size=32)
        for matrix, model in small_matrices("cuda"):
            say(f"[verify] benchmarking {matrix.name} ({len(matrix.rows)} rows, {model})")
            request = BenchRequest(matrix, replace(SMALL_SCALE, model=model), "cuda", cache_dir=str(cache),
                                   timeout_s=900.0, command=["dit-repro", "verify", "--scale", "small"])
            results = run_bench(request, bench_dir / "logs" / matrix.name).results
            path = bench_dir / f"{matrix.name}.json"
            write_results(path, results)
            produced.append(ResultsFile(str(path), results))
    return produced

"""The hardware key that stored baselines are matched on, and its folder name."""

from __future__ import annotations

from dit_repro.bench.hardware import (
    cpu_key,
    describe_key,
    gpu_key,
    isa_label,
    key_hash,
    key_slug,
    major_minor,
    parse_cpuinfo,
)
from dit_repro.envinfo import environment_fingerprint

XEON_AMX = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+ CPU @ 2.00GHz
flags\t\t: fpu sse2 avx avx2 fma avx512f avx512dq avx512_bf16 amx_bf16 amx_tile amx_int8

processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8480+ CPU @ 2.00GHz
flags\t\t: fpu sse2 avx avx2 fma avx512f avx512dq avx512_bf16 amx_bf16 amx_tile amx_int8
"""
XEON_AVX2 = "model name\t: Intel(R) Xeon(R) Processor\nflags\t\t: fpu sse2 avx avx2 fma\n"
GRAVITON = "processor\t: 0\nBogoMIPS\t: 2100.00\nFeatures\t: fp asimd evtstrm aes sve sve2 bf16 i8mm\n"


def test_cpuinfo_gives_the_model_and_only_the_features_torch_dispatches_on() -> None:
    assert parse_cpuinfo(XEON_AMX) == ("Intel(R) Xeon(R) Platinum 8480+ CPU @ 2.00GHz",
                                       ["avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"])
    assert parse_cpuinfo(XEON_AVX2) == ("Intel(R) Xeon(R) Processor", ["avx2"])
    assert parse_cpuinfo(GRAVITON) == (None, ["asimd", "sve", "sve2", "bf16", "i8mm"])
    assert parse_cpuinfo("") == (None, [])


def test_cpu_key_and_slug_name_model_isa_class_and_cores() -> None:
    key = cpu_key(XEON_AMX, cores=2, machine="x86_64")
    assert key == {"type": "cpu", "name": "Intel(R) Xeon(R) Platinum 8480+ CPU @ 2.00GHz", "arch": "x86_64",
                   "isa": ["avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"], "cores": 2}
    assert key_slug(key) == f"cpu-intel-xeon-platinum-8480-amx-2c-{key_hash(key)}"
    assert key_slug(cpu_key(XEON_AVX2, cores=2, machine="x86_64")).startswith("cpu-intel-xeon-avx2-2c-")
    assert key_slug(cpu_key(GRAVITON, cores=64, machine="aarch64")).startswith("cpu-")
    assert "-sve2-64c-" in key_slug(cpu_key(GRAVITON, cores=64, machine="aarch64"))


def test_every_field_of_the_key_changes_the_folder() -> None:
    base = cpu_key(XEON_AMX, cores=2, machine="x86_64")
    variants = [dict(base, name="AMD EPYC 9654 96-Core Processor"), dict(base, isa=["avx2", "avx512f"]),
                dict(base, cores=4), dict(base, arch="aarch64")]
    slugs = {key_slug(base), *(key_slug(v) for v in variants)}
    assert len(slugs) == 1 + len(variants)
    assert key_slug(dict(base)) == key_slug(base)  # a pure function of the key


def test_gpu_key_keeps_major_minor_releases_and_whole_gib() -> None:
    key = gpu_key("NVIDIA H100 80GB HBM3", 8, 85_045_526_528, "12.8", "2.14.1+cu128")
    assert key == {"type": "cuda", "name": "NVIDIA H100 80GB HBM3", "count": 8, "memory_gib": 79, "cuda": "12.8",
                   "torch": "2.14"}
    assert key_slug(key) == f"nvidia-h100-80gb-hbm3-x8-cuda12.8-{key_hash(key)}"
    assert key_slug(dict(key, count=1)) != key_slug(key) and key_slug(dict(key, torch="2.15")) != key_slug(key)
    assert major_minor("12.4.1") == "12.4" and major_minor(None) is None


def test_isa_label_picks_the_most_capable_class() -> None:
    assert isa_label(["avx2", "avx512f", "avx512_bf16"]) == "avx512bf16"
    assert isa_label(["avx2"]) == "avx2" and isa_label([]) == "baseline"


def test_the_environment_fingerprint_carries_this_machine_s_key() -> None:
    key = environment_fingerprint("cpu")["hardware_key"]
    assert key == cpu_key()
    assert key["type"] == "cpu" and key["cores"] >= 1
    assert "cores=" in describe_key(key) and "isa=" in describe_key(key)

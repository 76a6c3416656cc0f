"""TF32 through one API: every precision value leaves the flags readable through both of torch's APIs.

On a GPU, torch checks the two TF32 APIs against each other inside every fp32 cuBLAS matmul and
cuDNN convolution and raises when they were written with different values. CPU kernels never run
that check, so these tests read the legacy flags themselves, which runs the same check: a VAE encode
under strict fp32 inside a tf32 run raised it before TF32 was set through one API.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

import dit_repro.precision as precision_module
from dit_repro.config import Precision, TrainConfig
from dit_repro.precision import (
    matmul_precision,
    restore_tf32_state,
    set_matmul_precision,
    strict_fp32,
    tf32_preflight,
    tf32_state,
)
from dit_repro.train import Trainer

PRECISIONS = [p.value for p in Precision]


def read_legacy_flags() -> tuple[bool, bool]:
    """What a cuBLAS matmul and a cuDNN convolution ask before running (raises on a mix of APIs)."""
    return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32


def read_new_api() -> tuple[str, str, str]:
    """The same settings through the ``fp32_precision`` attributes."""
    backends = torch.backends
    return backends.cuda.matmul.fp32_precision, backends.cudnn.conv.fp32_precision, backends.cudnn.rnn.fp32_precision


def expect(allowed: bool) -> None:
    assert read_legacy_flags() == (allowed, allowed)
    assert torch.get_float32_matmul_precision() == ("high" if allowed else "highest")
    matmul, conv, rnn = read_new_api()
    assert matmul == ("tf32" if allowed else "ieee") and conv == rnn and (conv == "tf32") == allowed


@pytest.fixture(autouse=True)
def restore_flags():
    saved = tf32_state()
    yield
    restore_tf32_state(saved)


@pytest.mark.parametrize(("outer", "inner"), list(itertools.product(PRECISIONS, PRECISIONS)))
def test_every_precision_inside_every_other_leaves_both_apis_readable_and_equal(outer: str, inner: str) -> None:
    set_matmul_precision(outer)
    expect(outer != "fp32")
    with matmul_precision(inner):
        expect(inner != "fp32")
        with strict_fp32():
            expect(False)
        expect(inner != "fp32")
    expect(outer != "fp32")


def test_the_new_api_written_alone_is_what_breaks_the_legacy_readers() -> None:
    # Why this module writes the legacy flags: on this torch the new attributes do not update them.
    set_matmul_precision("fp32")
    torch.backends.cuda.matmul.fp32_precision = "tf32"
    with pytest.raises(RuntimeError, match="mix of the legacy and new APIs"):
        read_legacy_flags()


@pytest.mark.slow
@pytest.mark.parametrize("strict_encode", [False, True], ids=["paper-encode", "strict-encode"])
@pytest.mark.parametrize("precision", PRECISIONS)
def test_a_live_features_step_with_the_full_size_vae_never_mixes_the_tf32_apis(precision: str, strict_encode: bool) -> None:
    # Every Linear and Conv2d forward of one step (the DiT's and the full-size SD-VAE's encoder,
    # mid-block attention included) reads the flags, as each fp32 cuBLAS / cuDNN call does on a GPU.
    cfg = TrainConfig(model="DiT-S/2", data="synthetic:count=4,classes=2", image_size=32, global_batch_size=2,
                      steps=1, seed=0, device="cpu", vae="full-size-random", strict_fp32_encode=strict_encode,
                      switches={"precision": precision, "features": "live"})
    trainer = Trainer(cfg)
    seen: dict[str, set[tuple[bool, bool]]] = {"dit": set(), "vae": set()}
    handles = []
    for owner, model in (("dit", trainer.model), ("vae", trainer.source.vae.model)):
        for module in model.modules():
            if isinstance(module, nn.Linear | nn.Conv2d):
                handles.append(module.register_forward_pre_hook(
                    lambda module, args, owner=owner: seen[owner].add(read_legacy_flags())))
    try:
        trainer.train_step(trainer.next_batch())
    finally:
        for handle in handles:
            handle.remove()
    # The DiT runs with TF32 allowed except under fp32; the VAE encodes as the DiT does (DiT's
    # train.py sets TF32 globally) unless the strict encode was asked for.
    tf32 = precision != "fp32"
    assert seen["dit"] == {(tf32, tf32)}
    assert seen["vae"] == ({(False, False)} if strict_encode else {(tf32, tf32)})
    assert trainer.source.describe()["encode_precision"] == (
        "strict fp32" if strict_encode else "fp32 under the precision switch's TF32 flags")


def test_the_preflight_passes_every_precision_and_restores_the_flags() -> None:
    set_matmul_precision("fp32")
    lines = tf32_preflight("cpu")
    print(lines)
    assert [line["precision"] for line in lines] == list(PRECISIONS)
    assert all(line["ok"] for line in lines)
    assert {line["precision"]: line["outside"]["legacy"] for line in lines} == {
        p: (p != "fp32",) * 2 for p in PRECISIONS}
    assert read_legacy_flags() == (False, False)


def test_the_preflight_reports_a_mixed_api_state_instead_of_raising(monkeypatch: pytest.MonkeyPatch) -> None:
    def mixed(precision) -> None:  # what writing the new API alone does (see the test above)
        torch.backends.cuda.matmul.fp32_precision = "tf32"

    # The mix exists only against legacy flags that say off: with TF32 left on by whatever ran
    # before in this process, "tf32" through the new API would agree with them and nothing mixes.
    set_matmul_precision("fp32")
    assert read_legacy_flags() == (False, False)
    monkeypatch.setattr(precision_module, "set_matmul_precision", mixed)
    lines = tf32_preflight("cpu")
    set_matmul_precision("fp32")
    assert not any(line["ok"] for line in lines)
    assert all("mix of the legacy and new APIs" in line["error"] for line in lines)

"""The live-vs-cached data timing runs end to end and labels what it measured."""

from __future__ import annotations

from dit_repro.data.timing import time_live_vs_cached


def test_timing_smoke_with_the_tiny_vae():
    result = time_live_vs_cached(batch_size=2, image_size=32, steps=3, warmup=1, vae_spec="tiny-random")
    assert result["vae"]["random_weights"] is True and "never for a reported number" in result["vae"]["note"]
    for path in ("live_s", "cached_s"):
        spread = result[path]
        assert 0 < spread["min"] <= spread["p25"] <= spread["median"] <= spread["p75"] <= spread["max"]
    assert result["live_over_cached_median"] == result["live_s"]["median"] / result["cached_s"]["median"]
    assert (result["batch_size"], result["image_size"], result["steps"]) == (2, 32, 3)

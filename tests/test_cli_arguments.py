"""Train flags are validated when parsed: a bad value is an argparse error naming the flag, before any work."""

from __future__ import annotations

import pytest

from dit_repro.cli import main
from dit_repro.config import ConfigError, TrainConfig


@pytest.mark.parametrize(
    "flag, value, expected",
    [("--log-every", "0", ">= 1, got 0"), ("--num-workers", "-1", ">= 0, got -1"), ("--steps", "-5", ">= 0, got -5"),
     ("--batch-size", "0", ">= 1, got 0"), ("--image-size", "0", ">= 1, got 0"), ("--warmup-steps", "-1", ">= 0"),
     ("--save-every", "-2", ">= 0"), ("--ema-decay", "1.0", "[0, 1), got 1.0"), ("--lr", "0", "> 0"),
     ("--log-every", "ten", "integer >= 1, got 'ten'")],
)
def test_a_bad_train_flag_is_refused_naming_the_flag(capsys, flag: str, value: str, expected: str) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["train", flag, value, "--device", "cpu"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}" in err and expected in err, err


@pytest.mark.parametrize("field, value", [("log_every", 0), ("num_workers", -1), ("save_every", -1),
                                          ("image_size", 0), ("warmup_steps", -3)])
def test_the_config_refuses_the_same_values_for_library_users(field: str, value: int) -> None:
    with pytest.raises(ConfigError, match=f"{field} must be >= "):
        TrainConfig(**{field: value})


@pytest.mark.parametrize("flag, value", [("--steps", "0"), ("--num", "0"), ("--batch-size", "0"), ("--seed", "-1")])
def test_a_bad_sample_flag_is_refused_before_anything_is_written(capsys, tmp_path, flag: str, value: str) -> None:
    out = tmp_path / "samples"
    args = ["sample", "--checkpoint", str(tmp_path / "none.pt"), "--out", str(out), "--num", "4", flag, value]
    with pytest.raises(SystemExit) as exited:
        main(args)
    assert exited.value.code == 2 and f"argument {flag}" in capsys.readouterr().err
    assert not out.exists()


def test_a_sampling_request_is_checked_before_its_record_is_written(tmp_path) -> None:
    from dit_repro.sampling import SamplingRequest, run_sampling

    request = SamplingRequest(checkpoint=str(tmp_path / "none.pt"), out_dir=str(tmp_path / "samples"), num=4, steps=0)
    with pytest.raises(ConfigError, match="--steps must be >= 1, got 0"):
        run_sampling(request)
    assert not (tmp_path / "samples").exists()


def test_an_output_path_under_a_file_is_refused_naming_the_flag(capsys, tmp_path) -> None:
    # Unwritable for every user, root included: nothing can be created under a regular file.
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["verify", "--out", str(blocker / "report")]) == 2
    err = capsys.readouterr().err
    assert "--out" in err and "cannot write there" in err
    assert main(["bench", "--device", "cpu", "--out", str(blocker / "results.json")]) == 2
    assert "--out" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra, expected",
    [(["--checkpointing-k", "3"], "--checkpointing-k 3 applies only to --checkpointing every-k"),
     (["--checkpointing", "full", "--checkpointing-k", "3"], "not full"),
     (["--compile-scope", "blocks"], "--compile-scope blocks applies only with --compile"),
     (["--features", "pixels", "--vae", "tiny-random"], "--vae given with --features pixels"),
     (["--features", "pixels", "--cache", "somewhere"], "--cache given with --features pixels"),
     (["--features", "live", "--vae", "tiny-random", "--cache", "x"], "--cache given with --features live"),
     (["--strict-fp32-encode"], "--strict-fp32-encode applies only to --features live")],
)
def test_a_flag_the_chosen_mode_ignores_is_an_error(capsys, extra: list[str], expected: str) -> None:
    assert main(["train", "--device", "cpu", "--steps", "0", *extra]) == 2
    assert expected in capsys.readouterr().err


def test_every_k_takes_its_interval(tmp_path) -> None:
    assert main(["train", "--device", "cpu", "--steps", "1", "--batch-size", "8", "--image-size", "8",
                 "--checkpointing", "every-k", "--checkpointing-k", "3", "--out", str(tmp_path / "run")]) == 0
    import json
    env = json.loads((tmp_path / "run" / "env.json").read_text())
    assert env["checkpointed_blocks"] == [0, 3, 6, 9]


@pytest.mark.parametrize(
    "old, new",
    [(["--checkpoint-every", "50000"], "--checkpointing-k K (activation checkpointing stride) or --save-every N"),
     (["--checkpoint-every-steps", "100"], "write --save-every N")],
)
def test_renamed_checkpoint_flags_are_refused_with_their_new_spelling(capsys, old: list[str], new: str) -> None:
    """DiT's --ckpt-every saves every N steps; here the save interval is --save-every and the activation
    checkpointing stride --checkpointing-k, so no flag containing "checkpoint" means both."""
    with pytest.raises(SystemExit) as exited:
        main(["train", "--device", "cpu", "--steps", "0", *old])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert f"{old[0]} is no longer accepted" in err and new in err


def test_configs_written_before_the_rename_still_load() -> None:
    old = TrainConfig().to_dict()
    old["checkpoint_every_steps"] = old.pop("save_every")
    old["switches"]["checkpoint_every"] = old["switches"].pop("checkpointing_k")
    assert TrainConfig.from_dict(old) == TrainConfig()


def parsed_train(*flags: str):
    """The train parser's namespace for ``flags`` (nothing runs)."""
    import argparse

    from dit_repro.commands import train as train_command

    parser = argparse.ArgumentParser()
    train_command.register(parser.add_subparsers())
    return parser.parse_args(["train", *flags])


@pytest.mark.parametrize(
    "flags, features, vae",
    [((), "pixels", None),  # DiT-S/2 on 16 px digits: the small pixel-space default stays
     (("--model", "DiT-XL/2", "--image-size", "256"), "live", "stabilityai/sd-vae-ft-ema"),
     (("--model", "U-ViT-H/2", "--image-size", "64"), "live", "stabilityai/sd-vae-ft-ema"),
     (("--model", "U-ViT-M/4", "--image-size", "64"), "pixels", None),  # U-ViT models 64 px ImageNet in pixels
     (("--model", "DiT-XL/2", "--image-size", "32"), "pixels", None),
     (("--model", "DiT-XL/2", "--image-size", "256", "--features", "pixels"), "pixels", None),
     (("--vae", "tiny-random"), "live", "tiny-random"),
     (("--cache", "latents"), "cached", None)],
)
def test_features_default_to_latents_where_the_preset_trains_on_them(flags, features, vae) -> None:
    from dit_repro.commands.train import default_features

    assert default_features(parsed_train(*flags)) == (features, vae)


def test_an_imagenet_style_command_asks_for_the_vae_instead_of_training_on_pixels(capsys, tmp_path) -> None:
    # No VAE weights on this machine: the default live features name where they must go.
    code = main(["train", "--device", "cpu", "--model", "DiT-XL/2", "--image-size", "256", "--data", "synthetic",
                 "--steps", "0", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "sd-vae-ft-ema" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "precision, environ, expected",
    [(None, {}, ("fp32", "auto")),
     (None, {"ACCELERATE_MIXED_PRECISION": "no"}, ("fp32", "auto")),
     (None, {"ACCELERATE_MIXED_PRECISION": "fp16"}, ("fp16", "auto")),
     (None, {"ACCELERATE_MIXED_PRECISION": "bf16"}, ("bf16", "auto")),
     ("bf16", {"ACCELERATE_MIXED_PRECISION": "bf16"}, ("bf16", "auto")),
     ("tf32", {"ACCELERATE_MIXED_PRECISION": "no"}, ("tf32", "auto")),
     (None, {"ACCELERATE_USE_CPU": "True"}, ("fp32", "cpu"))],
)
def test_accelerate_launch_settings_set_the_switches(precision, environ, expected) -> None:
    from dit_repro.distributed import accelerate_settings

    assert accelerate_settings(precision, "auto", environ) == expected


@pytest.mark.parametrize(
    "precision, device, environ, message",
    [("fp32", "auto", {"ACCELERATE_MIXED_PRECISION": "fp16"}, "--precision fp32 contradicts accelerate launch --mixed_precision fp16"),
     (None, "auto", {"ACCELERATE_MIXED_PRECISION": "fp8"}, "--mixed_precision fp8 has no precision switch"),
     (None, "cuda", {"ACCELERATE_USE_CPU": "True"}, "--device cuda contradicts accelerate launch --cpu")],
)
def test_accelerate_launch_contradictions_are_refused_naming_both(precision, device, environ, message) -> None:
    from dit_repro.distributed import accelerate_settings

    with pytest.raises(ValueError, match=message):
        accelerate_settings(precision, device, environ)


def test_accelerate_mixed_precision_reaches_the_run_config(monkeypatch, tmp_path) -> None:
    """What `accelerate launch --mixed_precision fp16 -m dit_repro.cli train` passes on: the run trains in fp16."""
    import json

    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")
    assert main(["train", "--device", "cpu", "--steps", "1", "--batch-size", "4", "--image-size", "8",
                 "--out", str(tmp_path / "run")]) == 0
    assert json.loads((tmp_path / "run" / "config.json").read_text())["switches"]["precision"] == "fp16"


def test_an_output_is_proven_writable_without_creating_anything(tmp_path) -> None:
    from dit_repro.commands.arguments import writable_target

    deep = tmp_path / "a" / "b" / "results.json"
    assert writable_target(deep, "--out") == deep
    assert writable_target(tmp_path / "x" / "y", "--report-dir", folder=True) == tmp_path / "x" / "y"
    assert sorted(tmp_path.iterdir()) == []  # the probe file is gone and no folder was made
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match=rf"--json {blocker}/r.json: cannot write there \({blocker} is a file"):
        writable_target(blocker / "r.json", "--json")
    with pytest.raises(ConfigError, match="--report-dir .*: is a file, not a folder"):
        writable_target(blocker, "--report-dir", folder=True)
    with pytest.raises(ConfigError, match="--json .*: is a folder; name the file to write"):
        writable_target(tmp_path, "--json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


@pytest.mark.parametrize("text", ["0", "0.5", "nan", "-1", "x", "inf"])
def test_a_number_strictly_between_refuses_the_ends_nan_and_words(text: str) -> None:
    import argparse

    from dit_repro.commands.arguments import number_between

    with pytest.raises(argparse.ArgumentTypeError, match=r"must be a number in \(0, 0.5\)"):
        number_between(0.0, 0.5)(text)
    assert number_between(0.0, 0.5)("0.01") == 0.01

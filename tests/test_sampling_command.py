"""``dit-repro sample``: where rank and world size come from, and errors that exit 2."""

from __future__ import annotations

import pytest

from dit_repro.cli import build_parser, main
from dit_repro.commands.sample import launch_position
from dit_repro.config import ConfigError


def test_position_comes_from_flags_or_the_launcher(monkeypatch) -> None:
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert launch_position(None, None) == (0, 1)
    assert launch_position(2, 4) == (2, 4)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "8")
    assert launch_position(None, None) == (3, 8)
    assert launch_position(3, 8) == (3, 8)
    with pytest.raises(ConfigError, match="contradicts RANK=3"):
        launch_position(1, None)
    with pytest.raises(ConfigError, match="contradicts WORLD_SIZE=8"):
        launch_position(None, 2)


def test_help_names_the_seed_rule() -> None:
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command")
    text = subparsers.choices["sample"].format_help()
    assert "seed + i" in text and "--cfg-channels" in text and "--weights" in text


def test_missing_checkpoint_exits_2(tmp_path, capsys) -> None:
    argv = ["sample", "--checkpoint", str(tmp_path / "absent.pt"), "--num", "4", "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    assert "does not exist" in capsys.readouterr().err


def test_bad_count_exits_2(tmp_path, capsys) -> None:
    argv = ["sample", "--checkpoint", str(tmp_path / "absent.pt"), "--num", "0", "--out", str(tmp_path / "o")]
    with pytest.raises(SystemExit) as exited:  # refused by the parser, naming the flag
        main(argv)
    assert exited.value.code == 2
    assert "argument --num/--num-samples/--num-fid-samples: must be an integer >= 1, got 0" in capsys.readouterr().err


def test_dit_sample_ddp_spellings_are_accepted() -> None:
    from dit_repro.cli import build_parser

    args = build_parser().parse_args(
        ["sample", "--checkpoint", "c.pt", "--out", "o", "--num-fid-samples", "50000", "--per-proc-batch-size", "64",
         "--num-sampling-steps", "250", "--global-seed", "3", "--cfg-scale", "1.5"]
    )
    assert (args.num, args.batch_size, args.steps, args.seed, args.cfg_scale) == (50000, 64, 250, 3, 1.5)

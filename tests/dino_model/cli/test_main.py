"""`dino-mlops --version` and the help of every command: defaults shown, one example each."""

from __future__ import annotations

import argparse
import importlib.metadata

import pytest

from dino_model.cli.main import build_parser, iter_parsers, main

PARSERS = {p.prog: p for p in iter_parsers(build_parser())}


def test_version_is_the_package_version(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == importlib.metadata.version("dino-mlops")


def _has_default(action: argparse.Action) -> bool:
    default = action.default
    return not (action.help == argparse.SUPPRESS or default in (None, "", argparse.SUPPRESS)
                or isinstance(default, bool) or (isinstance(default, (list, tuple)) and not default))


@pytest.mark.parametrize("prog", sorted(PARSERS))
def test_every_command_help_shows_defaults_and_an_example(prog: str) -> None:
    parser = PARSERS[prog]
    text = parser.format_help()
    assert "Example:\n  dino-mlops" in text
    for action in parser._actions:
        if _has_default(action):
            assert "default" in (action.help or "").lower(), f"{prog} {action.option_strings or action.dest}"
    if any(_has_default(a) for a in parser._actions):
        assert "default" in text


def test_defaults_are_the_library_values() -> None:
    from dino_model.eval.davis.config import DavisConfig
    from dino_model.eval.settings import LinearProbeConfig

    linear = PARSERS["dino-mlops eval linear"].parse_args(["--checkpoint", "c.pth"])
    probe = LinearProbeConfig()
    assert (linear.epochs, linear.lr, linear.batch_size, linear.seed) == (probe.epochs, probe.lr, probe.batch_size,
                                                                          probe.seed)
    davis = PARSERS["dino-mlops eval davis"].parse_args(["--davis-root", "d", "--output-dir", "o"])
    cfg = DavisConfig()
    assert (davis.short_side, davis.topk, davis.temperature) == (cfg.short_side, cfg.propagation.topk,
                                                                 cfg.propagation.temperature)
    assert "(default: 100)" in " ".join(PARSERS["dino-mlops eval linear"].format_help().split())

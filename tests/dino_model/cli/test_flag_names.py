"""One spelling per concept across every subcommand; the old spellings still parse."""

from __future__ import annotations

import argparse

import pytest

from dino_model.cli.main import build_parser, iter_parsers

# each concept: the chosen spelling, then the spellings it replaced
CONCEPTS = {
    "output folder": ("--output-dir", "--out-dir", "--outdir", "--output-folder"),
    "Triton gRPC endpoint": ("--url", "--triton-url", "--grpc-url", "--triton"),
    "served model name": ("--model-name", "--model"),
}
# options that share a replaced spelling but name another concept
OTHER_CONCEPTS = {
    ("dino-mlops monitoring up", "--triton"),  # Triton metrics endpoints to scrape, not its gRPC endpoint
    ("dino-mlops serve", "--model"),  # models loaded at start
}


def _primary_options(parser: argparse.ArgumentParser) -> set[str]:
    return {a.option_strings[0] for a in parser._actions if a.option_strings and a.help != argparse.SUPPRESS}


@pytest.mark.parametrize("concept", sorted(CONCEPTS))
def test_one_spelling_per_concept(concept: str) -> None:
    chosen, *old = CONCEPTS[concept]
    used = {}
    for parser in iter_parsers(build_parser()):
        for option in _primary_options(parser) & {chosen, *old}:
            if (parser.prog, option) not in OTHER_CONCEPTS:
                used.setdefault(option, []).append(parser.prog)
    assert set(used) <= {chosen}, f"{concept}: {used}"


@pytest.mark.parametrize(("argv", "dest", "value"), [
    (["monitoring", "render-k8s", "--out-dir", "x"], "output_dir", "x"),
    (["monitoring", "render-k8s", "--output-dir", "x"], "output_dir", "x"),
    (["retrain", "check", "--triton-url", "h:8001"], "url", "h:8001"),
    (["retrain", "watch", "--url", "h:8001"], "url", "h:8001"),
])
def test_old_spellings_still_parse(argv: list[str], dest: str, value: str) -> None:
    args = build_parser().parse_args(argv)
    assert str(getattr(args, dest)) == value


def test_old_spellings_stay_out_of_help() -> None:
    parsers = {p.prog: p for p in iter_parsers(build_parser())}
    assert "--out-dir" not in parsers["dino-mlops monitoring render-k8s"].format_help()
    assert "--triton-url" not in parsers["dino-mlops retrain check"].format_help()

"""Argument types shared by the subcommands: a bad number is refused by the parser, before any
work, with the flag's name (``argument --batch-size: expected a positive integer, got '0'``)."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any, TypeVar

__all__ = [
    "DATA_SPECS",
    "add_data",
    "add_deploy_folder",
    "add_out",
    "add_reporting",
    "add_threads",
    "deploy_folder_kwargs",
    "positive_int",
    "positive_ints",
    "settings_from",
]

Settings = TypeVar("Settings")


def positive_int(text: str) -> int:
    """An integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def positive_ints(text: str) -> tuple[int, ...]:
    """Comma-separated integers >= 1: ``"1,32"`` -> ``(1, 32)``."""
    try:
        return tuple(positive_int(part) for part in text.split(","))
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated positive integers, got {text!r}"
        ) from None


DATA_SPECS = "digits | synthetic[:N] | cifar10:DIR | cifar100:DIR | folder:DIR"


def add_data(parser: argparse.ArgumentParser, help_text: str, *aliases: str, **kwargs) -> None:
    """``--data SPEC`` (the one name of a data flag; ``aliases`` keep older names working)."""
    parser.add_argument(
        "--data", *aliases, metavar="SPEC", help=f"{help_text} ({DATA_SPECS})", **kwargs
    )


def add_threads(parser: argparse.ArgumentParser, default: int | None = None) -> None:
    """``--threads N``: the CPU threads this command computes with, torch and ONNX Runtime."""
    shown = "all cores" if default is None else default
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=default,
        help=f"CPU threads for torch and ONNX Runtime (default: {shown})",
    )


def add_out(parser: argparse.ArgumentParser, kind: str, help_text: str, **kwargs) -> None:
    """``--out``: says plainly whether it is a folder or a file."""
    parser.add_argument("--out", metavar=kind.upper(), help=f"{kind}: {help_text}", **kwargs)


def add_reporting(parser: argparse.ArgumentParser, what: str = "one JSON object") -> None:
    """``--json`` (``what`` on stdout and nothing else there) and ``--no-progress``."""
    parser.add_argument(
        "--json", action="store_true", help=f"print {what} on stdout (logs go to stderr)"
    )
    parser.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bars or progress messages (on stderr)",
    )


def add_deploy_folder(parser: argparse.ArgumentParser, out: str = "") -> None:
    """The options of a command that writes a deploy folder (``deploy``, ``qat``): ``--out``
    (``out`` adds to its help), ``--threads``, ``--latency-repeats``, ``--force`` and the
    reporting ones."""
    add_out(parser, "folder", f"the deploy folder to write{out}", required=True)
    add_threads(parser)
    parser.add_argument(
        "--latency-repeats", type=positive_int, default=30, help="timed runs (median reported)"
    )
    replace = "replace an existing --out (only a deploy folder reparam wrote)"
    parser.add_argument("--force", action="store_true", help=replace)
    add_reporting(parser)


def deploy_folder_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments that :func:`add_deploy_folder`'s options give the deploy and QAT
    pipelines (``--out`` apart)."""
    return {
        "latency_repeats": args.latency_repeats,
        "threads": args.threads,
        "progress": not args.no_progress,
        "force": args.force,
    }


def settings_from(args: argparse.Namespace, settings: type[Settings]) -> Settings:
    """The ``settings`` dataclass with every field that an argument of the same name sets (the
    others keep their defaults)."""
    names = {field.name for field in dataclasses.fields(settings)}
    return settings(**{name: value for name, value in vars(args).items() if name in names})

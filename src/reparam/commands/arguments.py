"""Argument types shared by the subcommands: a bad number is refused by the parser, before any
work, with the flag's name (``argument --batch-size: expected a positive integer, got '0'``)."""

from __future__ import annotations

import argparse

__all__ = ["positive_int", "positive_ints"]


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

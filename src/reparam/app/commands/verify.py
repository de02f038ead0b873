"""Run every equivalence check (fused vs unfused, RepOpt vs CSLA, ONNX vs torch).

Each check reports max_abs_err, max_rel_err, dtype and passed; the exit status is 1 when any
check fails. With --json, one JSON object {check: result} is printed on stdout.
"""

from __future__ import annotations

import argparse

from tqdm import tqdm

from reparam.app.commands.arguments import add_reporting
from reparam.app.verify.checks import CHECKS, run_checks
from reparam.errors import UserError
from reparam.files import json_text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "checks",
        nargs="*",
        metavar="CHECK",
        help=f"checks to run (default all: {', '.join(CHECKS)})",
    )
    add_reporting(parser)


def run(args: argparse.Namespace) -> int:
    names = args.checks or list(CHECKS)
    unknown = [n for n in names if n not in CHECKS]
    if unknown:
        raise UserError(f"unknown check(s) {unknown}; known: {', '.join(CHECKS)}")
    results = {}
    for name in tqdm(names, desc="verify", unit="check", disable=args.no_progress):
        results.update(run_checks([name]))
    if args.json:
        print(json_text(results, indent=2))
    else:
        print(f"{'check':<24} {'dtype':<8} {'max_abs_err':>12} {'max_rel_err':>12}  result")
        for name, r in results.items():
            verdict = "PASS" if r["passed"] else "FAIL"
            print(
                f"{name:<24} {r['dtype']:<8} {_error(r['max_abs_err'])} {_error(r['max_rel_err'])}  "
                f"{verdict}"
            )
    return 0 if all(r["passed"] for r in results.values()) else 1


def _error(value: float | None) -> str:
    return f"{value:>12.3e}" if value is not None else f"{'non-finite':>12}"

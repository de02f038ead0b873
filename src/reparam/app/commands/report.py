"""Markdown + PNG plots from run folders, deploy folders (--int8) and PTQ comparison folders.

  reparam report runs/a0 deploy/a0 --out report/     report/report.md + *.png

Deploy folders give per-layer weight statistics, weight violins and per-layer SQNR bars;
comparison folders (reparam deploy --compare) the PTQ-drop table as well.
"""

from __future__ import annotations

import argparse

from reparam.app.commands.arguments import add_out
from reparam.app.report import write_report
from reparam.files import json_text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "sources", nargs="+", metavar="DIR", help="run, deploy or comparison folders"
    )
    add_out(parser, "folder", "where report.md and its PNG plots are written", required=True)
    parser.add_argument(
        "--json", action="store_true", help="print {report, plots} as JSON on stdout"
    )
    parser.add_argument(
        "--force", action="store_true", help="replace an existing --out (only a report folder)"
    )


def run(args: argparse.Namespace) -> int:
    report = write_report(args.sources, args.out, force=args.force)
    plots = sorted(str(p) for p in report.parent.glob("*.png"))
    if args.json:
        print(json_text({"report": str(report), "plots": plots}, indent=2))
    else:
        print(f"wrote {report} and {len(plots)} plot(s)")
    return 0

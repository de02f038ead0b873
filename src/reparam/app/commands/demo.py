"""The paper's story end to end on one data set (default: the built-in digits).

1. Hyper-Search the RepOpt-VGG scales (HS model, ordinary training) -> scale file;
2. train RepOpt-VGG with those scales (RepOptSGD: a plain VGG with gradient masks);
3. train RepVGG (multi-branch training blocks) with the same deploy structure;
4. train the plain VGG of that structure with plain SGD;
5. fuse all three, check fused == unfused, and tabulate top-1 (train form and fused), train
   images/s, params and MACs (train form and deploy form), plus plots: identity variance ratio per
   block (RepOpt fig. 4) and validation top-1 per epoch;
6. export each fused model to ONNX and quantize it to INT8 (ONNX Runtime QDQ, per-tensor
   MinMax, 256 calibration images: the setting that separates the three): INT8 top-1, output
   SQNR and the INT8/FP32 speedup join the table.

Writes OUT/<model>/ run folders, OUT/deploy/<model>/ deploy folders and OUT/report/
(summary.md, summary.json, PNGs).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from reparam.app.commands.arguments import add_data, add_out, add_reporting, positive_int
from reparam.app.demo import REPORT_FILES, demo_table, run_demo
from reparam.files import json_text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_data(parser, "data to train and quantize on (default digits)", default="digits")
    parser.add_argument(
        "--arch", default="a0", help="deploy structure shared by the three (a0, a1, ...)"
    )
    parser.add_argument("--epochs", type=positive_int, default=8, help="epochs per trained model")
    parser.add_argument("--hs-epochs", type=positive_int, default=8, help="Hyper-Search epochs")
    parser.add_argument("--image-size", type=positive_int, default=32)
    parser.add_argument("--batch-size", type=positive_int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    add_out(
        parser,
        "folder",
        "runs, deploy folders and the report (default runs/demo)",
        default="runs/demo",
    )
    add_reporting(parser, "the summary as one JSON object")


def run(args: argparse.Namespace) -> int:
    summary = run_demo(
        args.out,
        args.data,
        args.arch,
        epochs=args.epochs,
        hs_epochs=args.hs_epochs,
        image_size=args.image_size,
        batch_size=args.batch_size,
        seed=args.seed,
        command=" ".join(["reparam", *sys.argv[1:]]),
        progress=not args.no_progress,
    )
    if args.json:
        print(json_text(summary))
        return 0
    print(demo_table(summary))
    report = Path(args.out) / "report"
    print(f"report: {report}/ ({REPORT_FILES}); {summary['seconds']:.0f} s in all")
    return 0

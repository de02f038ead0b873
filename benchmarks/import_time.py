"""Start-up cost: wall time of ``reparam --help`` and ``import reparam`` against ``import torch``.

Each command runs in a fresh interpreter, interleaved round by round so that machine load hits
all of them alike; medians are reported, with the ratio to ``import torch``:

    .venv/bin/python benchmarks/import_time.py --repeats 7 \
        --record benchmarks/results/import_time.json
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

from reparam.app.bench.machine import machine_info
from reparam.files import write_json

BIN = Path(sys.executable).parent
COMMANDS = {
    "import torch": [sys.executable, "-c", "import torch"],
    "import timm": [sys.executable, "-c", "import timm"],
    "import reparam": [sys.executable, "-c", "import reparam"],
    "reparam --help": [str(BIN / "reparam"), "--help"],
}


def wall_seconds(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="rounds (default 7)")
    parser.add_argument("--record", help="write the results JSON here")
    args = parser.parse_args()
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for command in COMMANDS.values():  # warm the file cache once
        wall_seconds(command)
    for _ in range(args.repeats):
        for name, command in COMMANDS.items():
            times[name].append(wall_seconds(command))
    medians = {name: statistics.median(values) for name, values in times.items()}
    torch_s = medians["import torch"]
    record = {
        "command": shlex.join(["python", *sys.argv]),
        "machine": machine_info(),
        "repeats": args.repeats,
        "median_s": medians,
        "ratio_to_import_torch": {name: s / torch_s for name, s in medians.items()},
        "seconds": times,
    }
    for name, seconds in medians.items():
        print(f"{name:<16} {seconds:6.2f} s  {seconds / torch_s:5.2f}x import torch")
    if args.record:
        write_json(record, args.record)
    print(json.dumps({"ratio_reparam_help": medians["reparam --help"] / torch_s}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

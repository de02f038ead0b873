"""The ``reparam`` command. Each subcommand lives in ``reparam/app/commands/<name>.py`` and exposes

- ``add_arguments(parser: argparse.ArgumentParser) -> None``
- ``run(args: argparse.Namespace) -> int`` (exit status)
- a module docstring whose first line is the subcommand's one-line help.

Errors a user can fix (missing files, bad specs, wrong shapes) are raised as
:class:`reparam.errors.ReparamError` subclasses and printed as one line, without a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import shlex
import signal
import sys
from types import ModuleType

from reparam import __version__
from reparam.app.commands import (
    bench,
    convert,
    demo,
    deploy,
    evaluate,
    hypersearch,
    models,
    predict,
    qat,
    report,
    train,
    verify,
)
from reparam.errors import ReparamError, RunInterrupted, Terminated

__all__ = ["COMMANDS", "build_parser", "main"]

COMMANDS: dict[str, ModuleType] = {
    "train": train,
    "hypersearch": hypersearch,
    "deploy": deploy,
    "qat": qat,
    "eval": evaluate,
    "predict": predict,
    "bench": bench,
    "verify": verify,
    "report": report,
    "models": models,
    "demo": demo,
    "convert": convert,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reparam",
        description="Re-parameterized vision backbones: train, fuse, export, measure.",
    )
    parser.add_argument("--version", action="version", version=f"reparam {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module in COMMANDS.items():
        summary = (module.__doc__ or name).strip().splitlines()[0]
        command = sub.add_parser(
            name,
            help=summary,
            description=module.__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(command)
        command.set_defaults(run=module.run, parser=command)
    return parser


def main(argv: list[str] | None = None) -> int:
    args, unknown = build_parser().parse_known_args(argv)
    if unknown:  # the subcommand's own usage and one-line error, not the top-level one
        args.parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    args.command_line = shlex.join(["reparam", *(sys.argv[1:] if argv is None else argv)])
    previous = None
    with contextlib.suppress(ValueError):  # not the main thread: no handlers
        previous = signal.signal(signal.SIGTERM, _terminate)  # SIGTERM unwinds like Ctrl-C
    try:
        return int(args.run(args) or 0)
    except RunInterrupted as err:
        print(f"reparam {args.command}: {err}", file=sys.stderr)
        return 128 + (err.signal or signal.SIGINT)
    except ReparamError as err:
        print(f"reparam {args.command}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # the environment: missing files, permissions, a full disk
        where = f"{err.filename}: " if err.filename else ""
        print(f"reparam {args.command}: error: {where}{err.strerror or err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        signum = signal.SIGTERM if isinstance(err, Terminated) else signal.SIGINT
        print(f"reparam {args.command}: stopped by {signum.name}", file=sys.stderr)
        return 128 + signum
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _terminate(signum: int, frame: object) -> None:
    raise Terminated


if __name__ == "__main__":
    sys.exit(main())

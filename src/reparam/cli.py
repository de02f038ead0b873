"""The ``reparam`` command. Each subcommand lives in ``reparam/commands/<name>.py`` and exposes

- ``add_arguments(parser: argparse.ArgumentParser) -> None``
- ``run(args: argparse.Namespace) -> int`` (exit status)
- a module docstring whose first line is the subcommand's one-line help.

Errors a user can fix (missing files, bad specs, wrong shapes) are raised as :class:`UserError`
or the library's own error types and printed as one line, without a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from . import __version__

__all__ = ["COMMANDS", "UserError", "main"]

# subcommand name -> module under reparam.commands
COMMANDS = {
    "train": "train",
    "hypersearch": "hypersearch",
    "deploy": "deploy",
    "eval": "evaluate",
    "bench": "bench",
    "verify": "verify",
    "report": "report",
    "models": "models",
    "demo": "demo",
}


class UserError(Exception):
    """An error caused by the command's input; printed as one readable line."""


def _user_errors() -> tuple[type[BaseException], ...]:
    from .checkpoint import CheckpointError
    from .data import DataError
    from .deploy.fuse import FusionError

    return (UserError, CheckpointError, DataError, FusionError, FileNotFoundError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reparam",
        description="Re-parameterized vision backbones: train, fuse, export, measure.",
    )
    parser.add_argument("--version", action="version", version=f"reparam {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name in COMMANDS.items():
        try:
            module = importlib.import_module(f".commands.{module_name}", __package__)
        except ModuleNotFoundError as err:
            if err.name == f"{__package__}.commands.{module_name}":
                continue  # not built yet
            raise
        summary = (module.__doc__ or name).strip().splitlines()[0]
        command = sub.add_parser(
            name,
            help=summary,
            description=module.__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(command)
        command.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return int(args.run(args) or 0)
    except _user_errors() as err:
        print(f"reparam {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"reparam {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""`litewhisper` command line: a thin layer over the library, one module per sub-command.

Each sub-command module defines `add_parser(subparsers)` which registers its parser and sets
`func=run` (a callable taking the parsed args and returning an exit code).
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from litewhisper.errors import LiteWhisperError

log = logging.getLogger("litewhisper")

# Sub-command modules, in the order `--help` lists them.
COMMANDS = ("transcribe", "calibrate", "plan", "compress", "export", "evaluate", "bench", "report")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="litewhisper",
        description="Compress Whisper's encoder with LiteASR and prove it: WER, size, FLOPs, speed.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
            continue  # sub-command not built yet
        module.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except LiteWhisperError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

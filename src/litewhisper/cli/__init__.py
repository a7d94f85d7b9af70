"""`litewhisper` command line: a thin layer over the library, one module per sub-command.

Each sub-command module defines `add_parser(subparsers)` which registers its parser and sets
`func=run` (a callable taking the parsed args and returning an exit code).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from litewhisper import __version__
from litewhisper.cpu import cpu_threads
from litewhisper.errors import LiteWhisperError
from litewhisper.progress import quiet

__all__ = ["COMMANDS", "build_parser", "main"]

log = logging.getLogger("litewhisper")

# Sub-command modules, in the order `--help` lists them.
COMMANDS = ("transcribe", "calibrate", "plan", "compress", "export", "evaluate", "bench", "report")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="litewhisper",
        description="Compress Whisper's encoder with LiteASR and prove it: WER, size, FLOPs, speed.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"litewhisper {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
            continue  # sub-command not built yet
        module.add_parser(subparsers)
    for sub in subparsers.choices.values():
        _add_quiet(sub)
    return parser


def _add_quiet(p: argparse.ArgumentParser) -> None:
    """`--quiet` on every sub-command; an older `--no-progress` stays as a hidden alias."""
    actions = p._option_string_actions
    if "--no-progress" in actions:
        actions["--no-progress"].help = argparse.SUPPRESS
    if "--quiet" not in actions:
        p.add_argument("--quiet", action="store_true", help="no progress bars")


DISTRIBUTED = ("transcribe", "calibrate", "evaluate")  # sub-commands that share their work across torchrun workers


def _check_torchrun(command: str):
    from litewhisper.distributed import detect_world

    world = detect_world()
    if world.distributed and command not in DISTRIBUTED:
        raise LiteWhisperError(
            f"`{command}` does not run across torchrun workers (WORLD_SIZE={world.size}): run it "
            f"in one process; under torchrun use {', '.join(DISTRIBUTED)}"
        )
    return world


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.quiet = getattr(args, "quiet", False) or getattr(args, "no_progress", False)
    args.no_progress = args.quiet
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s: %(message)s")
    try:
        world = _check_torchrun(args.command)
        # torchrun: progress bars on rank 0 only; torch on the cores other processes leave free
        with quiet(args.quiet or not world.is_main), cpu_threads(getattr(args, "threads", None)):
            return int(args.func(args) or 0)
    except LiteWhisperError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

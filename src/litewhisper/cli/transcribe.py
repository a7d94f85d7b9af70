"""`litewhisper transcribe MODEL AUDIO...`: transcripts to standard output or one file per input."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from litewhisper.cli.decoding import add_decoding_args, decoding_options
from litewhisper.errors import AudioError, LiteWhisperError

log = logging.getLogger("litewhisper")

FORMAT_CHOICES = ("txt", "json", "srt", "vtt")
DTYPES = ("float32", "float16", "bfloat16")


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "transcribe",
        help="transcribe audio files, folders or manifests",
        description="Transcribe speech with a Whisper model (built-in name, CTranslate2 / Hugging Face "
        "directory or hub id). Bad files are reported and skipped; the exit code is 1 if any failed.",
    )
    p.add_argument("model", metavar="MODEL", help="tiny.en, base, a model directory or a hub id")
    p.add_argument(
        "audio",
        metavar="AUDIO",
        nargs="+",
        help="audio files (any format FFmpeg decodes: wav, flac, mp3, m4a, webm, mp4...), folders of "
        "audio (searched recursively), JSONL manifests, or - for standard input",
    )
    p.add_argument("--language", help="language code (e.g. en, de); default: detected per file")
    p.add_argument("--task", choices=("transcribe", "translate"), default="transcribe")
    p.add_argument("--format", choices=FORMAT_CHOICES, default="txt", help="output format (default txt)")
    p.add_argument(
        "--output-dir",
        type=Path,
        metavar="DIR",
        help="write DIR/NAME.<format> per input; default: stdout. NAME is the file's path inside the folder or "
        "manifest it came from (sub-folders are kept; a file given on its own: its name) without the extension; "
        "files whose NAMEs would clash keep their extension (jfk.wav.txt, jfk.m4a.txt), and names still shared "
        "get -2, -3... in input order",
    )
    p.add_argument("--split", help="only manifest rows of this split (e.g. dev); default: every row")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--dtype", choices=DTYPES, default="float32", help="model weights dtype (default float32)")
    p.add_argument("--threads", type=int, help="intra-op CPU threads of an exported model (litewhisper export)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_decoding_args(p)
    p.set_defaults(func=run)


def collect_inputs(sources: list[str], split: str | None = None) -> list[tuple[Path, str]]:
    """(audio path, output name without suffix) for every input; folders and manifests are expanded.

    A path that is neither a folder nor a manifest is kept as a file even if missing, so that it is
    reported and skipped with the others. Output names never clash (`output_names`).
    """
    from litewhisper.audio.datasets import discover_audio

    inputs: list[tuple[Path, str]] = []  # (path, its name with the extension)
    for source in map(Path, sources):
        if source.is_dir() or (source.is_file() and source.suffix in (".jsonl", ".json")):
            base = source if source.is_dir() else source.parent
            for item in discover_audio(source, split=split):
                rel = Path(os.path.relpath(item.path, base))
                inputs.append((item.path, (rel if ".." not in rel.parts else Path(item.path.name)).as_posix()))
        else:
            inputs.append((source, "stdin" if str(source) == "-" else source.name))  # '-': read standard input
    if sum(str(path) == "-" for path, _ in inputs) > 1:
        raise LiteWhisperError("standard input (-) was given more than once: it can be read only once")
    return list(zip((path for path, _ in inputs), output_names(inputs), strict=True))


def output_names(inputs: list[tuple[Path, str]]) -> list[str]:
    """One output name per (path, name with extension), unique ignoring case (a disk may ignore it).

    The rule: a name drops its audio extension (a/jfk.wav -> jfk) unless another file would get the same
    name, then each keeps it (jfk.wav, jfk.m4a); names still shared by different files (jfk.wav in two
    folders) get -2, -3... in input order (jfk.wav, jfk.wav-2). The same file given twice keeps one name.
    """
    files = {_identity(path): full for path, full in inputs}  # distinct files, in input order
    short = {file: Path(full).with_suffix("").as_posix() for file, full in files.items()}
    counts = Counter(name.casefold() for name in short.values())
    names: dict[Path | str, str] = {}
    used: set[str] = set()
    for file, full in files.items():
        wanted = short[file] if counts[short[file].casefold()] == 1 else full
        name, n = wanted, 1
        while name.casefold() in used:
            n += 1
            name = f"{wanted}-{n}"
        names[file] = name
        used.add(name.casefold())
    return [names[_identity(path)] for path, _ in inputs]


def _identity(path: Path) -> Path | str:
    """What makes two inputs the same file ('-' is standard input)."""
    return "-" if str(path) == "-" else Path(path).resolve()


def _stdout_text(result, fmt: str, name: str, several: bool) -> str:
    from litewhisper.decode.formats import render, to_json

    if fmt == "txt":
        return f"{name}: {result.text}" if several else result.text
    if fmt == "json":
        return to_json(result, indent=None).rstrip("\n")  # one object per line (JSON Lines)
    doc = render(result, fmt).rstrip("\n")
    return f"==> {name} <==\n{doc}\n" if several else doc


def run(args: argparse.Namespace) -> int:
    from litewhisper.progress import quiet

    options = decoding_options(args, language=args.language, task=args.task)  # fail before the model loads
    with quiet(args.quiet):
        return _transcribe(args, options)


def _load(args: argparse.Namespace):
    """The model; an export directory loads without torch / transformers (models/deployed.py)."""
    from litewhisper.models.deployed import check_threads, is_export, load_deployed

    if args.threads is not None:
        check_threads(args.threads)
    if is_export(args.model):
        return load_deployed(args.model, threads=args.threads)
    import torch

    from litewhisper.models.load import load_model

    if args.quiet:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # transformers' weight-loading bar
    return load_model(args.model, device=args.device, dtype=getattr(torch, args.dtype))


def _transcribe(args: argparse.Namespace, options) -> int:
    from litewhisper.distributed import exchange, main_first, process_group

    inputs = collect_inputs(args.audio, split=args.split)
    if options.vad:
        from litewhisper.decode.vad import SpeechFilter

        SpeechFilter()  # a missing extra fails before the model loads
    present = _present(inputs)
    with process_group(args.device) as world:  # torchrun: each worker transcribes and writes its share
        bundle = main_first(world, lambda: _load(args), "loading the model")
        mine = [i for i in _my_indices(inputs, world) if i in present]
        lines: list[tuple[int, str]] = []
        emit = (
            (lambda index, text: print(text, flush=True))
            if not world.distributed
            else (lambda index, text: lines.append((index, text)))
        )
        failed, error = 0, None
        try:
            failed = _decode_share(bundle, inputs, mine, args, options, emit)
        except Exception as exc:  # noqa: BLE001 - every worker fails with it (distributed.exchange)
            error = exc
        shares = exchange(world, (failed, lines), error, "transcribing")
    if world.distributed and world.is_main and args.output_dir is None:
        for _, text in sorted(pair for _, part in shares for pair in part):  # stdout keeps input order
            print(text, flush=True)
    failed = sum(f for f, _ in shares) + len(inputs) - len(present)
    if failed:
        if world.is_main:
            print(
                f"{failed} of {len(inputs)} inputs failed; the other {len(inputs) - failed} were transcribed",
                file=sys.stderr,
            )  # results of the others are already written
        return 1
    if args.output_dir is not None and world.is_main:
        log.info("wrote %d transcripts to %s", len(inputs), args.output_dir)
    return 0


def _present(inputs: list[tuple[Path, str]]) -> set[int]:
    """Indices of the usable inputs; missing files and an empty standard input are reported now, before the
    model loads."""
    from litewhisper.audio.load import check_stdin

    problems: dict[int, str] = {}
    for i, (path, _) in enumerate(inputs):
        if str(path) == "-":
            try:
                check_stdin()  # peeks: nothing is consumed
            except AudioError as exc:
                problems[i] = str(exc)
        elif not Path(path).exists():
            problems[i] = "audio file not found"
    if len(problems) == len(inputs):  # nothing to do: say so before the model load
        missing = [str(path) for path, _ in inputs if str(path) != "-"]
        parts = [problems[i] for i, (path, _) in enumerate(inputs) if str(path) == "-"]
        if missing:
            parts.insert(
                0, f"audio not found: {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}; check the path(s)"
            )
        raise AudioError("; ".join(parts))
    if os.environ.get("RANK", "0") == "0":  # torchrun: rank 0 speaks for all
        for i, problem in problems.items():  # a typo is reported at once, the other inputs are still transcribed
            print(f"skipped {inputs[i][0]}: {problem}", file=sys.stderr)
    return set(range(len(inputs))) - set(problems)


def _my_indices(inputs: list[tuple[Path, str]], world) -> list[int]:
    """Indices of the inputs this worker transcribes (all of them in a single process)."""
    from litewhisper.audio.load import audio_seconds
    from litewhisper.distributed import my_rounds, plan_shards, shard_seconds_from_env

    if not world.distributed:
        return list(range(len(inputs)))
    shards = plan_shards([audio_seconds(path) for path, _ in inputs], shard_seconds_from_env())
    return [i for shard in my_rounds(len(shards), world) if shard is not None for i in shards[shard]]


def _decode_share(
    bundle,
    inputs: list[tuple[Path, str]],
    indices: list[int],
    args: argparse.Namespace,
    options,
    emit: Callable[[int, str], None],
) -> int:
    """Transcribe inputs[indices], writing files or emitting stdout text in input order; returns failures."""
    from litewhisper.decode.formats import write_transcription
    from litewhisper.decode.transcribe import TranscriptionFailure, decode

    stream = decode(bundle, [inputs[i][0] for i in indices], options)
    failed, pending, next_index = 0, {}, 0
    for index, result in stream:
        path, name = inputs[indices[index]]
        if isinstance(result, TranscriptionFailure):
            failed += 1
            print(f"skipped {path}: {result.error}", file=sys.stderr)
        elif args.output_dir is not None:
            write_transcription(result, args.output_dir / f"{name}.{args.format}", args.format)
        pending[index] = result
        while next_index in pending:  # stdout keeps input order
            done = pending.pop(next_index)
            if args.output_dir is None and not isinstance(done, TranscriptionFailure):
                emit(
                    indices[next_index],
                    _stdout_text(done, args.format, str(inputs[indices[next_index]][0]), len(inputs) > 1),
                )
            next_index += 1
    return failed

"""Evaluate models on a manifest: the one decoder (what `transcribe` prints), corpus WER per domain and pooled.

Every hypothesis is appended to a JSONL file (and flushed) as soon as its batch is decoded, so an interrupted
run loses nothing: `resume=True` skips the (model, clip) pairs already there. Runaway loops and hallucinations
are reported beside the WER: clips with a window that reached its token limit (`max_new_tokens` or its budget), or
whose hypothesis has a gzip compression ratio above the fallback threshold, and their share of the errors.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from litewhisper.atomic import atomic_write_text
from litewhisper.audio.datasets import AudioItem, discover_audio, split_label
from litewhisper.constants import MULTILINGUAL_VOCAB_SIZE
from litewhisper.decode.options import DecodeOptions
from litewhisper.decode.results import compression_ratio
from litewhisper.distributed import (
    World,
    all_or_none,
    broadcast_object,
    main_first,
    map_shards,
    plan_shards,
    shard_seconds_from_env,
)
from litewhisper.errors import AudioError, LiteWhisperError
from litewhisper.evaluation.metrics import (
    CorpusScore,
    UtteranceScore,
    corpus_score,
    paired_change_ci,
    relative_change,
    score_utterance,
    total,
    uses_cer,
)
from litewhisper.evaluation.normalize import NORMALIZERS, describe, normalize, resolve_normalizer

__all__ = [
    "EvalConfig",
    "Hypothesis",
    "ModelResult",
    "EvalReport",
    "LoopStats",
    "select_clips",
    "decode",
    "read_hypotheses",
    "HypothesisLog",
    "score_hypotheses",
    "paired_change",
    "loop_stats",
    "evaluate_model",
    "evaluate",
    "format_table",
    "write_json",
    "is_english_only",
    "spread_over_domains",
]

log = logging.getLogger("litewhisper")

LOOP_COMPRESSION_RATIO = 2.4  # openai-whisper's default fallback threshold, used when decoding sets none


@dataclass(frozen=True)
class EvalConfig:
    """Clip selection, decoding and scoring settings, identical for every model compared.

    split: manifest split (None: every row); decoding: the options `transcribe` takes (its defaults too).
    """

    split: str | None = None
    language: str | None = None  # keep only clips in this language (and force it on multilingual models)
    normalizer: str = "auto"  # auto: english for English clips, basic otherwise
    decoding: DecodeOptions = DecodeOptions()
    bootstrap: int = 0  # resamples for the 95 % CI of the pooled WER (0: none)
    seed: int = 0
    max_clips: int | None = None  # spread round-robin over domains

    def __post_init__(self) -> None:
        if self.normalizer not in NORMALIZERS:
            raise LiteWhisperError(f"normalizer {self.normalizer!r}: expected one of {', '.join(NORMALIZERS)}")
        if not isinstance(self.decoding, DecodeOptions):
            raise LiteWhisperError(f"decoding must be a DecodeOptions, got {type(self.decoding).__name__}")
        if self.bootstrap < 0 or (self.max_clips is not None and self.max_clips < 1):
            raise LiteWhisperError("bootstrap must be >= 0 and max_clips >= 1")

    @property
    def loop_ratio(self) -> float:
        """Compression ratio above which a hypothesis counts as a loop / hallucination."""
        return self.decoding.compression_ratio_threshold or LOOP_COMPRESSION_RATIO


@dataclass(frozen=True)
class Hypothesis:
    """One decoded clip, as stored in the hypotheses JSONL; `decode_s`: wall seconds since the previous
    record of the run (they sum to the decoding time, across resumed runs too)."""

    model: str
    id: str
    hypothesis: str
    reference: str
    domain: str | None = None
    lang: str | None = None
    n_tokens: int = 0
    hit_token_limit: bool = False
    decode_s: float | None = None
    audio_s: float | None = None

    def to_json(self) -> str:
        return json.dumps(self.__dict__, ensure_ascii=False)


@dataclass(frozen=True)
class LoopStats:
    """Clips that hit the token limit or whose hypothesis compresses too well, and their share of errors."""

    hit_token_limit_ids: tuple[str, ...] = ()
    high_compression_ids: tuple[str, ...] = ()
    loop_errors: int = 0  # word errors on those clips
    total_errors: int = 0

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self.hit_token_limit_ids + self.high_compression_ids))

    @property
    def error_share(self) -> float:
        """Fraction of all word errors made on loop / hallucination clips."""
        return self.loop_errors / self.total_errors if self.total_errors else 0.0


@dataclass(frozen=True)
class ModelResult:
    """Scores of one model; `to_dict` gives the `--json` entry. `timing_partial`: decode_seconds covers only
    part of the clips (records from an older run without timings)."""

    model: str
    score: CorpusScore
    encoder_params: int | None
    loops: LoopStats = LoopStats()
    decode_seconds: float = 0.0
    audio_seconds: float = 0.0
    timing_partial: bool = False
    settings: dict[str, Any] = field(default_factory=dict)
    # (first model, relative WER change %, 95 % CI low, high); the interval is None without bootstrap
    change: tuple[str, float, float | None, float | None] | None = None

    @property
    def n_hit_token_limit(self) -> int:
        return len(self.loops.hit_token_limit_ids)

    @property
    def hit_token_limit_ids(self) -> tuple[str, ...]:
        return self.loops.hit_token_limit_ids

    def to_dict(self) -> dict[str, Any]:
        s, lp = self.score, self.loops
        out = {
            "model": self.model,
            "wer": _num(s.wer),
            "n_utterances": s.n_utterances,
            "n_ref_words": s.n_ref_words,
            "encoder_params": self.encoder_params,
            "domains": {d: {"wer": _num(g.rate), "n": g.n} for d, g in s.domains.items()},
            "macro_wer": _num(s.macro_wer),
            "n_hit_token_limit": self.n_hit_token_limit,
            "hit_token_limit_ids": list(lp.hit_token_limit_ids),
            "n_high_compression": len(lp.high_compression_ids),
            "high_compression_ids": list(lp.high_compression_ids),
            "n_loops": len(lp.ids),
            "loop_error_share": round(lp.error_share, 4),
            "languages": {
                k: {"rate": _num(g.rate), "metric": "cer" if uses_cer(k) else "wer", "n": g.n}
                for k, g in s.languages.items()
            },
            "errors": s.counts.to_dict(),
        }
        if s.cer is not None:
            out["cer"] = _num(s.cer)
        if s.ci95 is not None:
            out["wer_ci95"] = [_num(v) for v in s.ci95]
        if self.decode_seconds:
            out["decode_seconds"] = round(self.decode_seconds, 2)
            out["rtf"] = round(self.decode_seconds / max(self.audio_seconds, 1e-9), 4)
            if self.timing_partial:
                out["timing_partial"] = True
        if self.change is not None:
            bootstrapped = self.change[2] is not None
            out["relative_change"] = {
                "vs": self.change[0],
                "percent": _num(self.change[1]),
                "ci95": [_num(v) for v in self.change[2:]] if bootstrapped else None,
                "paired_bootstrap": bootstrapped,
            }
        out["settings"] = self.settings
        return out


@dataclass(frozen=True)
class EvalReport:
    normalizer: str
    data: str
    results: list[ModelResult]

    def to_dict(self) -> dict[str, Any]:
        return {"normalizer": self.normalizer, "data": self.data, "results": [r.to_dict() for r in self.results]}


def _num(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), 4)


# ----------------------------------------------------------------------------------------------- clips


def select_clips(data: str | os.PathLike | Sequence[AudioItem], config: EvalConfig) -> list[AudioItem]:
    """Clips with a reference transcript, filtered by split and language, first `max_clips` of them."""
    items = list(data) if not isinstance(data, (str, os.PathLike)) else discover_audio(data, split=config.split)
    with_text = [it for it in items if it.text is not None]
    if len(with_text) < len(items):
        log.warning(
            "%d of %d clips have no reference transcript and are skipped", len(items) - len(with_text), len(items)
        )
    if config.language is not None:
        with_text = [it for it in with_text if it.lang in (None, config.language)]
    if not with_text:
        raise LiteWhisperError(
            f"no clips with reference transcripts in {data} ({split_label(config.split)}, "
            f"{'any language' if config.language is None else f'language {config.language!r}'}); "
            "a manifest needs a 'text' field per clip"
        )
    return spread_over_domains(with_text, config.max_clips) if config.max_clips else with_text


def spread_over_domains(items: Sequence[AudioItem], n: int) -> list[AudioItem]:
    """`n` clips taken round-robin over domains (manifest order within each), so small runs see every domain."""
    by_domain: dict[str | None, list[AudioItem]] = {}
    for it in items:
        by_domain.setdefault(it.domain, []).append(it)
    queues = [list(reversed(group)) for group in by_domain.values()]
    out: list[AudioItem] = []
    while len(out) < n and any(queues):
        for queue in queues:
            if queue and len(out) < n:
                out.append(queue.pop())
    return out


# ----------------------------------------------------------------------------------------------- decoding


def decode(bundle, items: list[AudioItem], config: EvalConfig, model_name: str) -> Iterable[Hypothesis]:
    """Yield a `Hypothesis` per clip, decoded exactly as `transcribe` does with `config.decoding` (clips in
    manifest order; multilingual models get each clip's language, grouped by language)."""
    from litewhisper.decode.transcribe import TranscriptionFailure
    from litewhisper.decode.transcribe import decode as decode_audio

    groups: dict[str | None, list[AudioItem]] = {}
    for it in items:
        lang = (config.language or it.lang or config.decoding.language) if bundle.is_multilingual else None
        groups.setdefault(lang, []).append(it)
    for lang, group in groups.items():
        options = config.decoding.replace(language=lang) if bundle.is_multilingual else config.decoding
        last = time.perf_counter()
        for index, result in decode_audio(bundle, [it.path for it in group], options):
            it = group[index]
            if isinstance(result, TranscriptionFailure):
                raise AudioError(f"{model_name}: clip {it.id or it.path}: {result.error}")
            now = time.perf_counter()
            yield Hypothesis(
                model=model_name,
                id=str(it.id or it.path),
                hypothesis=result.text,
                reference=it.text or "",
                domain=it.domain,
                lang=it.lang,
                n_tokens=result.n_tokens,
                hit_token_limit=result.hit_token_limit,
                decode_s=round(now - last, 4),
                audio_s=result.duration_s,
            )
            last = now


# ----------------------------------------------------------------------------------------------- JSONL


def _parse(path: Path) -> tuple[list[Hypothesis], int | None, int]:
    """(records before the first invalid line, that line's number or None, number of lines)."""
    out = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            out.append(Hypothesis(**json.loads(line)))
        except (json.JSONDecodeError, TypeError) as exc:
            log.debug("%s:%d: not a hypotheses record (%s)", path, n, exc)
            return out, n, len(lines)
    return out, None, len(lines)


def read_hypotheses(path: str | os.PathLike) -> list[Hypothesis]:
    """Records of a hypotheses JSONL up to the first invalid line (an interrupted write), with a warning."""
    path = Path(path)
    if not path.is_file():
        return []
    records, bad, n_lines = _parse(path)
    if bad is not None:
        log.warning(
            "%s: line %d is not a hypotheses record (interrupted write?): ignoring it and the %d line(s) after it",
            path,
            bad,
            n_lines - bad,
        )
    return records


class HypothesisLog:
    """Append-only JSONL of hypotheses, flushed after every record. Resuming truncates the file at its first
    invalid record (an interrupted write) before appending, so the next resume can read it again."""

    def __init__(self, path: str | os.PathLike | None, resume: bool):
        self.path = Path(path) if path is not None else None
        self.done: dict[tuple[str, str], Hypothesis] = {}
        if self.path is None:
            return
        if self.path.exists() and self.path.stat().st_size > 0 and not resume:
            raise LiteWhisperError(
                f"hypotheses file {self.path} already exists: pass --resume (resume=True) to "
                "continue it, or delete it / choose another path"
            )
        records = read_hypotheses(self.path)
        self.done = {(h.model, h.id): h for h in records}
        if self.path.is_file():
            text = self.path.read_text(encoding="utf-8")
            kept = "".join(h.to_json() + "\n" for h in records)
            if text and (_parse(self.path)[1] is not None or not text.endswith("\n")):
                atomic_write_text(self.path, kept)  # drop the damaged tail

    def append(self, hyp: Hypothesis) -> None:
        self.done[(hyp.model, hyp.id)] = hyp
        if self.path is not None:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(hyp.to_json() + "\n")
                f.flush()


# ----------------------------------------------------------------------------------------------- scoring


def _utterance_scores(hyps: Sequence[Hypothesis], normalizer: str) -> tuple[list[UtteranceScore], set[str]]:
    used: set[str] = set()
    scores = []
    for h in hyps:
        name = resolve_normalizer(normalizer, h.lang)
        used.add(name)
        scores.append(
            score_utterance(
                h.id, normalize(h.reference, name), normalize(h.hypothesis, name), domain=h.domain, lang=h.lang
            )
        )
    return scores, used


def score_hypotheses(
    hyps: Sequence[Hypothesis], normalizer: str = "auto", bootstrap: int = 0, seed: int = 0
) -> tuple[CorpusScore, set[str]]:
    """Corpus scores of normalised hypotheses, and the set of normalisers applied."""
    scores, used = _utterance_scores(hyps, normalizer)
    return corpus_score(scores, bootstrap=bootstrap, seed=seed), used


def paired_change(
    base: Sequence[Hypothesis],
    other: Sequence[Hypothesis],
    normalizer: str = "auto",
    bootstrap: int = 1000,
    seed: int = 0,
) -> tuple[float, float | None, float | None]:
    """Relative WER change (%) of `other` against `base` (hypotheses of the same clips, same order) with its
    paired-bootstrap 95 % interval: (change, low, high); bootstrap=0: (change, None, None)."""
    if [h.id for h in base] != [h.id for h in other]:
        raise LiteWhisperError("a paired comparison needs hypotheses of the same clips in the same order")
    counts = [[s.counts for s in _utterance_scores(hyps, normalizer)[0]] for hyps in (base, other)]
    if not bootstrap:
        return relative_change(*counts), None, None
    return paired_change_ci(*counts, n_resamples=bootstrap, seed=seed)


def loop_stats(
    hyps: Sequence[Hypothesis], normalizer: str = "auto", max_ratio: float = LOOP_COMPRESSION_RATIO
) -> LoopStats:
    """Clips that hit the token limit or whose hypothesis compression ratio exceeds `max_ratio`, and the word
    errors made on them (normalised as for the WER)."""
    hits = tuple(h.id for h in hyps if h.hit_token_limit)
    high = tuple(h.id for h in hyps if compression_ratio(h.hypothesis) > max_ratio)
    looped = set(hits) | set(high)
    errors = {
        h.id: score_utterance(
            h.id,
            normalize(h.reference, resolve_normalizer(normalizer, h.lang)),
            normalize(h.hypothesis, resolve_normalizer(normalizer, h.lang)),
            lang=h.lang,
        ).counts
        for h in hyps
    }
    return LoopStats(
        hits, high, total(c for i, c in errors.items() if i in looped).errors, total(errors.values()).errors
    )


def encoder_param_count(model) -> int:
    """Encoder parameters (analytic counter from `litewhisper.models.cost` when available)."""
    try:
        from litewhisper.models.cost import encoder_params

        return int(encoder_params(model))
    except ImportError:
        return sum(p.numel() for p in model.get_encoder().parameters())


def _decode_into(
    bundle, todo: list[AudioItem], config: EvalConfig, name: str, log_file: HypothesisLog, world: World
) -> None:
    """Decode `todo` into `log_file`; in a torchrun job each rank decodes its shards and rank 0 logs them."""
    from litewhisper.audio.load import audio_seconds

    if not world.distributed:
        for hyp in decode(bundle, todo, config, name):
            log_file.append(hyp)
        return
    shards = [
        [todo[i] for i in shard] for shard in plan_shards([audio_seconds(it) for it in todo], shard_seconds_from_env())
    ]
    for hyps in map_shards(shards, lambda part: list(decode(bundle, part, config, name)), world, f"evaluating {name}"):
        for hyp in hyps:  # rank 0 only: the others get []
            log_file.append(hyp)


def evaluate_model(
    model: Any,
    items: Sequence[AudioItem],
    config: EvalConfig,
    name: str | None = None,
    log_file: HypothesisLog | None = None,
    world: World | None = None,
) -> ModelResult | None:
    """Decode `items` with one model (a source for `load_model`, or a loaded bundle) and score it.

    In a torchrun job (`world`) every rank decodes its share; rank 0 scores and returns the result, the other
    ranks return None.
    """
    from litewhisper.models.load import load_model

    world = world or World()
    bundle = (
        main_first(world, lambda: load_model(model), f"loading {model}")
        if isinstance(model, (str, os.PathLike))
        else model
    )
    name = name or (str(model) if isinstance(model, (str, os.PathLike)) else bundle.name)
    if not bundle.is_multilingual and any(it.lang not in (None, "en") for it in items):
        raise LiteWhisperError(
            f"model {name} is English-only but the clips include other languages: pass --language en (language='en')"
        )
    log_file = log_file or HypothesisLog(None, resume=False)
    done = broadcast_object({key for key in log_file.done if key[0] == name}, world)  # rank 0 read the log
    todo = [it for it in items if (name, str(it.id or it.path)) not in done]
    if len(todo) < len(items):
        log.info("%s: resuming, %d of %d clips already decoded", name, len(items) - len(todo), len(items))
    _decode_into(bundle, todo, config, name, log_file, world)
    if not world.is_main:
        return None
    hyps = [log_file.done[(name, str(it.id or it.path))] for it in items]
    score, _ = score_hypotheses(hyps, config.normalizer, config.bootstrap, config.seed)
    timed = [h for h in hyps if h.decode_s is not None]
    settings = {
        "split": config.split,
        "language": config.language,
        "normalizer": config.normalizer,
        "decoding": config.decoding.to_dict(),
    }
    params = encoder_param_count(bundle.model) if hasattr(bundle, "model") else None  # an export: no torch model
    return ModelResult(
        model=name,
        score=score,
        encoder_params=params,
        loops=loop_stats(hyps, config.normalizer, config.loop_ratio),
        decode_seconds=sum(h.decode_s for h in timed),
        audio_seconds=sum(h.audio_s or 0.0 for h in timed),
        timing_partial=len(timed) < len(hyps),
        settings=settings,
    )


def is_english_only(model: Any) -> bool:
    """Whether a model (bundle, built-in name or directory) is English-only, without loading its weights."""
    if hasattr(model, "is_multilingual"):
        return not model.is_multilingual
    path = Path(model) / "config.json"
    if path.is_file():
        try:
            vocab = json.loads(path.read_text(encoding="utf-8")).get("vocab_size")
        except (ValueError, AttributeError):  # unreadable: load_model says why when it loads the model
            vocab = None
        if vocab is not None:
            return vocab < MULTILINGUAL_VOCAB_SIZE  # openai/whisper: multilingual iff n_vocab >= 51865
    return str(model).endswith(".en")


def evaluate(
    models: Sequence[Any],
    data: str | os.PathLike,
    config: EvalConfig = EvalConfig(),
    hypotheses: str | os.PathLike | None = None,
    resume: bool = False,
    world: World | None = None,
) -> EvalReport:
    """Evaluate each model on the same clips of `data`, in the order given.

    In a torchrun job (`world`) the clips are decoded by all ranks; rank 0 alone reads and writes `hypotheses`,
    scores, and every rank returns its report.
    """
    world = world or World()
    if not models:
        raise LiteWhisperError("no model given: pass at least one model (e.g. tiny.en)")
    if config.language is None and any(is_english_only(m) for m in models):
        log.info("an English-only model is compared: evaluating English clips only (as with --language en)")
        config = replace(config, language="en")
    items = select_clips(data, config)
    with all_or_none(world, f"reading {hypotheses}"):
        log_file = HypothesisLog(hypotheses if world.is_main else None, resume)
    results = [evaluate_model(m, items, config, log_file=log_file, world=world) for m in models]
    if world.is_main and len(results) > 1:
        results = _with_changes(results, items, log_file, config)
    used = {resolve_normalizer(config.normalizer, it.lang) for it in items}
    report = EvalReport(normalizer=describe(used), data=str(data), results=results) if world.is_main else None
    return broadcast_object(report, world, "sharing the report")


def _with_changes(
    results: list[ModelResult], items: Sequence[AudioItem], log_file: HypothesisLog, config: EvalConfig
) -> list[ModelResult]:
    """Each model after the first, with its relative WER change against the first (and its paired-bootstrap
    interval when `config.bootstrap`)."""
    first = results[0].model
    hyps = {r.model: [log_file.done[(r.model, str(it.id or it.path))] for it in items] for r in results}
    return results[:1] + [
        replace(
            r,
            change=(
                first,
                *paired_change(hyps[first], hyps[r.model], config.normalizer, config.bootstrap, config.seed),
            ),
        )
        for r in results[1:]
    ]


def format_table(report: EvalReport) -> str:
    """Readable table: pooled/macro WER, per-domain WER, loops (token-limit hits + high compression ratio) and
    their share of the errors, encoder size."""
    domains = sorted({d for r in report.results for d in r.score.domains})
    head = [
        "model",
        "WER%",
        "vs-first%",
        "macroWER%",
        *[d[:18] for d in domains],
        "clips",
        "hit-limit",
        "high-gzip",
        "loop-err%",
        "enc-params",
    ]
    rows = [head]
    for r in report.results:
        s, c = r.score, r.change
        ci = f" [{s.ci95[0]:.2f},{s.ci95[1]:.2f}]" if s.ci95 else ""
        change = "-" if c is None else f"{c[1]:+.1f}" + ("" if c[2] is None else f" [{c[2]:+.1f},{c[3]:+.1f}]")
        rows.append(
            [
                r.model,
                f"{s.wer:.2f}{ci}",
                change,
                f"{s.macro_wer:.2f}",
                *[f"{s.domains[d].rate:.2f}" if d in s.domains else "-" for d in domains],
                str(s.n_utterances),
                str(r.n_hit_token_limit),
                str(len(r.loops.high_compression_ids)),
                f"{100 * r.loops.error_share:.1f}",
                f"{r.encoder_params / 1e6:.2f}M" if r.encoder_params else "-",
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return f"normalizer: {report.normalizer}\ndata: {report.data}\n" + "\n".join(lines)


def write_json(report: EvalReport, path: str | os.PathLike) -> Path:
    return atomic_write_text(path, json.dumps(report.to_dict(), indent=2, ensure_ascii=False) + "\n")

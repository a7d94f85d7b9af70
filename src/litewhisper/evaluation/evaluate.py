"""Evaluate models on a manifest: greedy decoding with identical settings, corpus WER per domain and pooled.

Every hypothesis is appended to a JSONL file (and flushed) as soon as its batch is decoded, so an interrupted
run loses nothing: `resume=True` skips the (model, clip) pairs already there. Clips whose decoding reached
`max_new_tokens` without an end-of-text token (runaway repetition loops) are counted separately.
"""
from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch

from litewhisper.atomic import atomic_write_text
from litewhisper.audio.datasets import AudioItem, discover_audio
from litewhisper.distributed import World, all_or_none, broadcast_object, main_first, map_shards, plan_shards
from litewhisper.distributed import shard_seconds_from_env
from litewhisper.errors import LiteWhisperError
from litewhisper.evaluation.metrics import CorpusScore, corpus_score, score_utterance, uses_cer
from litewhisper.evaluation.normalize import NORMALIZERS, describe, normalize, resolve_normalizer

log = logging.getLogger("litewhisper")

CHUNK_S = 30.0  # clips up to one Whisper window are decoded short-form here; longer ones via transcribe


@dataclass(frozen=True)
class EvalConfig:
    """Decoding and scoring settings, identical for every model compared."""
    split: str | None = "dev"
    language: str | None = None  # keep only clips in this language (and force it on multilingual models)
    normalizer: str = "auto"  # auto: english for English clips, basic otherwise
    batch_size: int = 8
    max_new_tokens: int = 224
    bootstrap: int = 0  # resamples for the 95 % CI of the pooled WER (0: none)
    seed: int = 0
    max_clips: int | None = None  # spread round-robin over domains
    progress: bool = True

    def __post_init__(self) -> None:
        if self.normalizer not in NORMALIZERS:
            raise LiteWhisperError(f"normalizer {self.normalizer!r}: expected one of {', '.join(NORMALIZERS)}")
        if self.batch_size < 1:
            raise LiteWhisperError(f"batch_size must be a positive integer, got {self.batch_size}")
        if not 1 <= self.max_new_tokens <= 444:
            raise LiteWhisperError(f"max_new_tokens must be between 1 and 444, got {self.max_new_tokens}")
        if self.bootstrap < 0 or (self.max_clips is not None and self.max_clips < 1):
            raise LiteWhisperError("bootstrap must be >= 0 and max_clips >= 1")


@dataclass(frozen=True)
class Hypothesis:
    """One decoded clip, as stored in the hypotheses JSONL."""
    model: str
    id: str
    hypothesis: str
    reference: str
    domain: str | None = None
    lang: str | None = None
    n_tokens: int = 0
    hit_token_limit: bool = False

    def to_json(self) -> str:
        return json.dumps(self.__dict__, ensure_ascii=False)


@dataclass(frozen=True)
class ModelResult:
    """Scores of one model; `to_dict` gives the `--json` entry."""
    model: str
    score: CorpusScore
    encoder_params: int | None
    n_hit_token_limit: int
    hit_token_limit_ids: tuple[str, ...] = ()
    decode_seconds: float = 0.0
    audio_seconds: float = 0.0
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        s = self.score
        out = {"model": self.model, "wer": _num(s.wer), "n_utterances": s.n_utterances,
               "n_ref_words": s.n_ref_words, "encoder_params": self.encoder_params,
               "domains": {d: {"wer": _num(g.rate), "n": g.n} for d, g in s.domains.items()},
               "macro_wer": _num(s.macro_wer), "n_hit_token_limit": self.n_hit_token_limit,
               "hit_token_limit_ids": list(self.hit_token_limit_ids),
               "languages": {k: {"rate": _num(g.rate), "metric": "cer" if uses_cer(k) else "wer", "n": g.n}
                             for k, g in s.languages.items()},
               "errors": s.counts.to_dict()}
        if s.cer is not None:
            out["cer"] = _num(s.cer)
        if s.ci95 is not None:
            out["wer_ci95"] = [_num(v) for v in s.ci95]
        if self.decode_seconds:
            out["decode_seconds"] = round(self.decode_seconds, 2)
            out["rtf"] = round(self.decode_seconds / max(self.audio_seconds, 1e-9), 4)
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
        log.warning("%d of %d clips have no reference transcript and are skipped", len(items) - len(with_text),
                    len(items))
    if config.language is not None:
        with_text = [it for it in with_text if it.lang in (None, config.language)]
    if not with_text:
        raise LiteWhisperError(f"no clips with reference transcripts in {data} (split {config.split!r}, "
                               f"language {config.language!r}); a manifest needs a 'text' field per clip")
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

def generate_short(bundle, arrays: list, language: str | None, max_new_tokens: int
                   ) -> list[tuple[str, int, bool]]:
    """Greedy decoding of 16 kHz arrays <= 30 s -> (text, n_text_tokens, hit_token_limit) per clip."""
    from litewhisper.decode.transcribe import _features

    features = _features(bundle.processor, arrays, long_form=False)["input_features"]
    features = features.to(bundle.device, bundle.dtype)  # (batch, n_mels, 3000)
    kwargs: dict[str, Any] = {"language": language, "task": "transcribe"} if bundle.is_multilingual else {}
    with torch.inference_mode():
        out = bundle.model.generate(features, max_new_tokens=max_new_tokens, max_length=None, num_beams=1,
                                    do_sample=False, return_timestamps=False, return_dict_in_generate=True,
                                    **kwargs)
    eot = bundle.model.generation_config.eos_token_id
    results = []
    for seq in out.sequences.tolist():  # decoder prompt + text tokens + <|endoftext|> (+ padding)
        body = seq[1:]
        text_tokens = [t for t in body if t < eot]
        text = bundle.processor.tokenizer.decode(text_tokens, skip_special_tokens=True).strip()
        results.append((text, len(text_tokens), eot not in body))
    return results


def _short_form(bundle, items: list[AudioItem], language: str | None, max_new_tokens: int
                ) -> list[tuple[str, int, bool]]:
    from litewhisper.audio.load import load_audio

    return generate_short(bundle, [load_audio(it.path) for it in items], language, max_new_tokens)


def _long_form(bundle, items: list[AudioItem], language: str | None, max_new_tokens: int
               ) -> list[tuple[str, int, bool]]:
    """Clips > 30 s through `transcribe` (sequential windows); the token limit applies per window."""
    from litewhisper.decode.transcribe import transcribe

    outs = transcribe(bundle, [it.path for it in items], language=language if bundle.is_multilingual else None,
                      batch_size=len(items), return_segments=False, max_new_tokens=max_new_tokens,
                      progress=False)
    return [(t.text, len(bundle.processor.tokenizer.encode(t.text, add_special_tokens=False)), False)
            for t in outs]


def _duration(it: AudioItem) -> float:
    if it.duration_s is not None:
        return float(it.duration_s)
    import soundfile as sf
    try:
        return float(sf.info(str(it.path)).duration)
    except (sf.LibsndfileError, RuntimeError, TypeError):
        return 0.0  # unreadable: the decoder reports it


def _batches(bundle, items: list[AudioItem], config: EvalConfig
             ) -> Iterable[tuple[bool, str | None, list[AudioItem]]]:
    """(long-form, forced language, clips) batches of similar duration (less padding in batched decoding);
    multilingual models get each clip's own language."""
    def lang_of(it: AudioItem) -> str | None:
        return (config.language or it.lang) if bundle.is_multilingual else None

    groups: dict[tuple[bool, str | None], list[tuple[float, AudioItem]]] = {}
    for it in items:
        seconds = _duration(it)
        groups.setdefault((seconds > CHUNK_S, lang_of(it)), []).append((seconds, it))
    for (long, lang), group in groups.items():
        ordered = [it for _, it in sorted(group, key=lambda pair: pair[0])]
        for i in range(0, len(ordered), config.batch_size):
            yield long, lang, ordered[i:i + config.batch_size]


def decode(bundle, items: list[AudioItem], config: EvalConfig, model_name: str) -> Iterable[Hypothesis]:
    """Yield a `Hypothesis` per clip as each batch finishes (greedy, bounded `max_new_tokens`)."""
    from tqdm.auto import tqdm

    with tqdm(total=len(items), unit="clip", desc=f"evaluating {model_name}", disable=not config.progress,
              file=sys.stderr) as bar:
        for long, lang, batch in _batches(bundle, items, config):
            outs = (_long_form if long else _short_form)(bundle, batch, lang, config.max_new_tokens)
            for it, (text, n_tokens, hit) in zip(batch, outs):
                yield Hypothesis(model=model_name, id=str(it.id or it.path), hypothesis=text,
                                 reference=it.text or "", domain=it.domain, lang=it.lang, n_tokens=n_tokens,
                                 hit_token_limit=hit)
            bar.update(len(batch))


# ----------------------------------------------------------------------------------------------- JSONL

def read_hypotheses(path: str | os.PathLike) -> list[Hypothesis]:
    """Records of a hypotheses JSONL; a truncated last line (interrupted write) is ignored."""
    path = Path(path)
    if not path.is_file():
        return []
    out = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            out.append(Hypothesis(**json.loads(line)))
        except (json.JSONDecodeError, TypeError) as exc:
            if n == len(lines):
                log.warning("%s: ignoring an incomplete last line (interrupted write)", path)
                continue
            raise LiteWhisperError(f"{path}:{n}: not a hypotheses record ({exc}); delete the file or "
                                   "choose another --hypotheses path") from exc
    return out


class HypothesisLog:
    """Append-only JSONL of hypotheses, flushed after every record."""

    def __init__(self, path: str | os.PathLike | None, resume: bool):
        self.path = Path(path) if path is not None else None
        self.done: dict[tuple[str, str], Hypothesis] = {}
        if self.path is None:
            return
        if self.path.exists() and self.path.stat().st_size > 0 and not resume:
            raise LiteWhisperError(f"hypotheses file {self.path} already exists: pass --resume (resume=True) to "
                                   "continue it, or delete it / choose another path")
        self.done = {(h.model, h.id): h for h in read_hypotheses(self.path)}
        if self.path.is_file():
            text = self.path.read_text(encoding="utf-8")
            if text and not text.endswith("\n"):  # interrupted mid-line: keep only the complete records
                atomic_write_text(self.path, "".join(h.to_json() + "\n" for h in self.done.values()))

    def append(self, hyp: Hypothesis) -> None:
        self.done[(hyp.model, hyp.id)] = hyp
        if self.path is not None:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(hyp.to_json() + "\n")
                f.flush()


# ----------------------------------------------------------------------------------------------- scoring

def score_hypotheses(hyps: Sequence[Hypothesis], normalizer: str = "auto", bootstrap: int = 0,
                     seed: int = 0) -> tuple[CorpusScore, set[str]]:
    """Corpus scores of normalised hypotheses, and the set of normalisers applied."""
    used: set[str] = set()
    scores = []
    for h in hyps:
        name = resolve_normalizer(normalizer, h.lang)
        used.add(name)
        scores.append(score_utterance(h.id, normalize(h.reference, name), normalize(h.hypothesis, name),
                                      domain=h.domain, lang=h.lang))
    return corpus_score(scores, bootstrap=bootstrap, seed=seed), used


def encoder_param_count(model) -> int:
    """Encoder parameters (analytic counter from `litewhisper.models.cost` when available)."""
    try:
        from litewhisper.models.cost import encoder_params
        return int(encoder_params(model))
    except ImportError:
        return sum(p.numel() for p in model.get_encoder().parameters())


def _decode_into(bundle, todo: list[AudioItem], config: EvalConfig, name: str, log_file: HypothesisLog,
                 world: World) -> None:
    """Decode `todo` into `log_file`; in a torchrun job each rank decodes its shards and rank 0 logs them."""
    from litewhisper.audio.load import audio_seconds

    if not world.distributed:
        for hyp in decode(bundle, todo, config, name):
            log_file.append(hyp)
        return
    shards = [[todo[i] for i in shard]
              for shard in plan_shards([audio_seconds(it) for it in todo], shard_seconds_from_env())]
    for hyps in map_shards(shards, lambda part: list(decode(bundle, part, config, name)), world,
                           f"evaluating {name}"):
        for hyp in hyps:  # rank 0 only: the others get []
            log_file.append(hyp)


def evaluate_model(model: Any, items: Sequence[AudioItem], config: EvalConfig, name: str | None = None,
                   log_file: HypothesisLog | None = None, world: World | None = None) -> ModelResult | None:
    """Decode `items` with one model (a source for `load_model`, or a loaded bundle) and score it.

    In a torchrun job (`world`) every rank decodes its share; rank 0 scores and returns the result, the other
    ranks return None.
    """
    from litewhisper.models.load import load_model

    world = world or World()
    bundle = (main_first(world, lambda: load_model(model), f"loading {model}")
              if isinstance(model, (str, os.PathLike)) else model)
    name = name or (str(model) if isinstance(model, (str, os.PathLike)) else bundle.name)
    if not bundle.is_multilingual and any(it.lang not in (None, "en") for it in items):
        raise LiteWhisperError(f"model {name} is English-only but the clips include other languages: "
                               "pass --language en (language='en')")
    log_file = log_file or HypothesisLog(None, resume=False)
    done = broadcast_object({key for key in log_file.done if key[0] == name}, world)  # rank 0 read the log
    todo = [it for it in items if (name, str(it.id or it.path)) not in done]
    if len(todo) < len(items):
        log.info("%s: resuming, %d of %d clips already decoded", name, len(items) - len(todo), len(items))
    start = time.perf_counter()
    _decode_into(bundle, todo, config, name, log_file, world)
    seconds = time.perf_counter() - start
    if not world.is_main:
        return None
    hyps = [log_file.done[(name, str(it.id or it.path))] for it in items]
    score, _ = score_hypotheses(hyps, config.normalizer, config.bootstrap, config.seed)
    hits = tuple(h.id for h in hyps if h.hit_token_limit)
    settings = {"split": config.split, "language": config.language, "batch_size": config.batch_size,
                "max_new_tokens": config.max_new_tokens, "decoding": "greedy"}
    return ModelResult(model=name, score=score, encoder_params=encoder_param_count(bundle.model),
                       n_hit_token_limit=len(hits), hit_token_limit_ids=hits, decode_seconds=seconds,
                       audio_seconds=sum(it.duration_s or 0.0 for it in todo), settings=settings)


def is_english_only(model: Any) -> bool:
    """Whether a model (bundle, built-in name or directory) is English-only, without loading its weights."""
    if hasattr(model, "is_multilingual"):
        return not model.is_multilingual
    path = Path(model) / "config.json"
    if path.is_file():
        vocab = json.loads(path.read_text(encoding="utf-8")).get("vocab_size")
        if vocab is not None:
            return vocab < 51865  # openai/whisper: multilingual iff n_vocab >= 51865
    return str(model).endswith(".en")


def evaluate(models: Sequence[Any], data: str | os.PathLike, config: EvalConfig = EvalConfig(),
             hypotheses: str | os.PathLike | None = None, resume: bool = False,
             world: World | None = None) -> EvalReport:
    """Evaluate each model on the same clips of `data`, in the order given.

    In a torchrun job (`world`) the clips are decoded by all ranks; rank 0 alone reads and writes `hypotheses`,
    scores, and every rank returns its report.
    """
    world = world or World()
    if not models:
        raise LiteWhisperError("no model given: pass at least one model (e.g. tiny.en)")
    if config.language is None and any(is_english_only(m) for m in models):
        log.info("an English-only model is compared: evaluating English clips only (language='en')")
        config = replace(config, language="en")
    items = select_clips(data, config)
    with all_or_none(world, f"reading {hypotheses}"):
        log_file = HypothesisLog(hypotheses if world.is_main else None, resume)
    results = [evaluate_model(m, items, config, log_file=log_file, world=world) for m in models]
    used = {resolve_normalizer(config.normalizer, it.lang) for it in items}
    report = EvalReport(normalizer=describe(used), data=str(data), results=results) if world.is_main else None
    return broadcast_object(report, world, "sharing the report")


def format_table(report: EvalReport) -> str:
    """Readable table: pooled/macro WER, per-domain WER, token-limit hits, encoder size."""
    domains = sorted({d for r in report.results for d in r.score.domains})
    head = ["model", "WER%", "macroWER%", *[d[:18] for d in domains], "clips", "hit-limit", "enc-params"]
    rows = [head]
    for r in report.results:
        s = r.score
        ci = f" [{s.ci95[0]:.2f},{s.ci95[1]:.2f}]" if s.ci95 else ""
        rows.append([r.model, f"{s.wer:.2f}{ci}", f"{s.macro_wer:.2f}",
                     *[f"{s.domains[d].rate:.2f}" if d in s.domains else "-" for d in domains],
                     str(s.n_utterances), str(r.n_hit_token_limit),
                     f"{r.encoder_params / 1e6:.2f}M" if r.encoder_params else "-"])
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return f"normalizer: {report.normalizer}\ndata: {report.data}\n" + "\n".join(lines)


def write_json(report: EvalReport, path: str | os.PathLike) -> Path:
    return atomic_write_text(path, json.dumps(report.to_dict(), indent=2, ensure_ascii=False) + "\n")

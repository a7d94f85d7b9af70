"""Benchmarks: encoder latency on a 30-s window (models interleaved A B A B in one process), speedup ratios,
analytic FLOPs and the ideal speedup they imply, and end-to-end real-time factor with an encoder/decoder split.

Absolute times on a shared machine drift; ratios measured round by round in one run hold. The speedup of a
model is the median over rounds of (first model's time / this model's time) in the same round.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from litewhisper.constants import WINDOW_FRAMES, WINDOW_S
from litewhisper.decode.options import DecodeOptions
from litewhisper.errors import LiteWhisperError
from litewhisper.models.load import ATTENTION_MODES, load_model
from litewhisper.progress import progress_bar, quiet

__all__ = [
    "BenchConfig",
    "BenchReport",
    "EncoderResult",
    "EndToEndResult",
    "Spread",
    "bench",
    "bench_encoders",
    "bench_end_to_end",
    "encoder_fn",
    "torch_e2e_fn",
    "analytic",
    "interleaved_timings",
    "speedups",
    "module_timer",
    "environment",
    "format_bench",
    "report_dict",
]

log = logging.getLogger("litewhisper")


@dataclass(frozen=True)
class BenchConfig:
    """What to measure; validated here."""

    batch_sizes: tuple[int, ...] = (1,)
    repeats: int = 10
    warmup: int = 2
    threads: int | None = None
    device: str = "cpu"
    max_clips: int = 16  # end-to-end clips (when data is given)
    decoding: DecodeOptions = DecodeOptions()  # end-to-end decoding: what transcribe does
    attention: str = "auto"  # lite-whisper models: reduced-dimension attention where it saves FLOPs, or "standard"

    def __post_init__(self) -> None:
        if self.attention not in ATTENTION_MODES:
            raise LiteWhisperError(f"attention must be one of {ATTENTION_MODES}, got {self.attention!r}")
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise LiteWhisperError(f"batch sizes must be positive integers, got {self.batch_sizes}")
        if self.repeats < 1 or self.warmup < 0:
            raise LiteWhisperError(f"repeats must be >= 1 and warmup >= 0, got {self.repeats}, {self.warmup}")
        if self.threads is not None and self.threads < 1:
            raise LiteWhisperError(f"threads must be >= 1, got {self.threads}")


@dataclass(frozen=True)
class Spread:
    """Median and inter-quartile range of a sample."""

    median: float
    q1: float
    q3: float
    n: int

    @property
    def iqr(self) -> float:
        return self.q3 - self.q1

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        if not len(values):
            return cls(float("nan"), float("nan"), float("nan"), 0)
        q1, med, q3 = np.percentile(np.asarray(values, dtype=np.float64), [25, 50, 75])
        return cls(float(med), float(q1), float(q3), len(values))


def interleaved_timings(
    fns: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1, clock: Callable[[], float] = time.perf_counter
) -> dict[str, list[float]]:
    """Run every function `warmup` times, then `repeats` rounds of A B C A B C...; seconds per call."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = clock()
            fn()
            times[name].append(clock() - start)
    return times


def speedups(times: dict[str, list[float]]) -> dict[str, Spread]:
    """Per-round ratios (first entry's time / each entry's time), summarised; the first entry gets 1.0."""
    names = list(times)
    base = np.asarray(times[names[0]], dtype=np.float64)
    return {name: Spread.of((base / np.asarray(times[name], dtype=np.float64)).tolist()) for name in names}


@dataclass(frozen=True)
class EncoderResult:
    """Encoder latency of one model at one batch size (seconds per batch of 30-s windows)."""

    model: str
    batch_size: int
    latency: Spread
    speedup: Spread
    flops: int | None = None  # per 30-s window
    params: int | None = None
    ideal_speedup: float | None = None  # first model's FLOPs / this model's FLOPs

    @property
    def efficiency(self) -> float | None:
        """Measured speedup as a fraction of the FLOP bound."""
        return None if not self.ideal_speedup else self.speedup.median / self.ideal_speedup


@dataclass(frozen=True)
class EndToEndResult:
    """End-to-end decoding of real clips: wall time split into encoder, decoder and the rest."""

    model: str
    n_clips: int
    audio_s: float
    total_s: float
    encoder_s: float
    decoder_s: float

    @property
    def rtf(self) -> float:
        return self.total_s / self.audio_s if self.audio_s else float("nan")

    @property
    def other_s(self) -> float:
        return max(self.total_s - self.encoder_s - self.decoder_s, 0.0)


@dataclass(frozen=True)
class BenchReport:
    encoder: list[EncoderResult]
    end_to_end: list[EndToEndResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    environment: dict[str, Any] = field(default_factory=dict)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def encoder_fn(bundle, batch_size: int, seed: int = 0) -> Callable[[], None]:
    """A call running the encoder on `batch_size` 30-s windows of log-mel features (content does not matter)."""
    cfg = bundle.model.config
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(batch_size, cfg.num_mel_bins, WINDOW_FRAMES, generator=gen)  # (B, n_mels, 3000)
    features = features.to(bundle.device, bundle.dtype)
    encoder = bundle.encoder

    def run() -> None:
        with torch.inference_mode():
            encoder(features)
        _sync(bundle.device)

    return run


def analytic(model) -> tuple[int, int]:
    """(encoder FLOPs per 30-s window, encoder parameters) from `litewhisper.models.cost`."""
    from litewhisper.models.cost import encoder_flops, encoder_params

    return int(encoder_flops(model)), int(encoder_params(model))


def bench_encoders(
    fns_by_batch: dict[int, dict[str, Callable[[], Any]]],
    costs: dict[str, tuple[int, int]],
    repeats: int,
    warmup: int,
    clock: Callable[[], float] = time.perf_counter,
) -> list[EncoderResult]:
    """Interleaved encoder timings per batch size; `costs[name]` = (FLOPs, params) for the ideal speedup."""
    results = []
    for batch_size, fns in fns_by_batch.items():
        times = interleaved_timings(fns, repeats, warmup, clock)
        ratios = speedups(times)
        first = next(iter(fns))
        for name in fns:
            flops, params = costs.get(name, (None, None))
            base_flops = costs.get(first, (None, None))[0]
            ideal = base_flops / flops if flops and base_flops else None
            results.append(EncoderResult(name, batch_size, Spread.of(times[name]), ratios[name], flops, params, ideal))
    return results


@contextlib.contextmanager
def module_timer(module: torch.nn.Module, device: torch.device | None = None) -> Iterator[list[float]]:
    """Accumulate the wall time of every forward call of `module` into the yielded one-element list."""
    total = [0.0]
    start: list[float] = []

    def pre(_mod, _inp):
        if device is not None:
            _sync(device)
        start.append(time.perf_counter())

    def post(_mod, _inp, _out):
        if device is not None:
            _sync(device)
        total[0] += time.perf_counter() - start.pop()

    handles = [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    try:
        yield total
    finally:
        for h in handles:
            h.remove()


# ----------------------------------------------------------------------------------------------- end to end


def _english_arrays(data, split: str | None, max_clips: int) -> tuple[list[np.ndarray], float]:
    """Up to `max_clips` English (or unlabelled) clips of <= 30 s, loaded; and their total duration."""
    from litewhisper.audio.datasets import discover_audio, split_label
    from litewhisper.audio.load import SAMPLE_RATE, load_audio

    items = [
        it
        for it in discover_audio(data, split=split)
        if it.lang in (None, "en") and (it.duration_s is None or it.duration_s <= WINDOW_S)
    ][:max_clips]
    if not items:
        raise LiteWhisperError(
            f"no English clips of at most 30 s in {data} ({split_label(split)}) for the end-to-end benchmark"
        )
    arrays = [load_audio(it.path)[: 30 * SAMPLE_RATE] for it in items]
    return arrays, sum(a.size for a in arrays) / SAMPLE_RATE


def torch_e2e_fn(bundle, options: DecodeOptions) -> Callable[[list[np.ndarray]], tuple[float, float]]:
    """A call decoding a batch of arrays with the one decoder -> (encoder seconds, decoder seconds) inside it."""
    from litewhisper.decode.transcribe import transcribe

    options = options.replace(
        batch_size=max(options.batch_size, 64), language="en" if bundle.is_multilingual else options.language
    )

    def run(arrays: list[np.ndarray]) -> tuple[float, float]:
        with (
            module_timer(bundle.encoder, bundle.device) as enc,
            module_timer(bundle.model.get_decoder(), bundle.device) as dec,
            quiet(),
        ):
            transcribe(bundle, arrays, options)
        return enc[0], dec[0]

    return run


def bench_end_to_end(
    fns: dict[str, Callable[[list[np.ndarray]], tuple[float, float]]],
    arrays: list[np.ndarray],
    audio_s: float,
    batch_size: int,
) -> list[EndToEndResult]:
    """Decode the same batches with every model, interleaved batch by batch, after one warm-up batch."""
    for fn in fns.values():
        fn(arrays[:1])
    acc = {name: [0.0, 0.0, 0.0] for name in fns}  # total, encoder, decoder
    batches = [arrays[i : i + batch_size] for i in range(0, len(arrays), batch_size)]
    for batch in progress_bar(batches, desc="end-to-end", unit="batch"):
        for name, fn in fns.items():
            start = time.perf_counter()
            enc, dec = fn(batch)
            acc[name][0] += time.perf_counter() - start
            acc[name][1] += enc
            acc[name][2] += dec
    return [EndToEndResult(name, len(arrays), audio_s, *acc[name]) for name in fns]


# ----------------------------------------------------------------------------------------------- driver


def environment(config: BenchConfig) -> dict[str, Any]:
    """Versions, threads and hardware, stated in every benchmark and report."""
    import platform

    import transformers

    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    env = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "cpu": cpu,
        "torch_threads": torch.get_num_threads(),
        "device": config.device,
    }
    if config.device.startswith("cuda") and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name()
    return env


def bench(
    models: Sequence[Any],
    config: BenchConfig = BenchConfig(),
    data: Any = None,
    split: str | None = None,
    peer: str | None = None,
    names: Sequence[str] | None = None,
) -> BenchReport:
    """Benchmark models (sources for `load_model` or loaded bundles); ratios are against the first one."""

    if not models:
        raise LiteWhisperError("no model given: pass at least one model (e.g. tiny.en)")
    if config.threads:
        torch.set_num_threads(config.threads)
    bundles = {}
    for i, m in enumerate(models):
        name = names[i] if names else (str(m) if isinstance(m, str) else m.name)
        bundles[name if name not in bundles else f"{name}#{i}"] = (
            load_model(m, device=config.device, attention=config.attention) if isinstance(m, str) else m
        )
    costs = {name: analytic(b.model) for name, b in bundles.items()}
    fns_by_batch = {bs: {name: encoder_fn(b, bs) for name, b in bundles.items()} for bs in config.batch_sizes}
    notes: list[str] = []
    peers = _peers(peer, models[0], config, notes)
    first_cost = next(iter(costs.values()))
    for label, p in peers.items():
        costs[label] = first_cost  # the same (original) checkpoint
        for bs in config.batch_sizes:
            fns_by_batch[bs][label] = p.encoder_fn(bs)
    encoder = bench_encoders(fns_by_batch, costs, config.repeats, config.warmup)
    e2e: list[EndToEndResult] = []
    if data is not None:
        arrays, audio_s = _english_arrays(data, split, config.max_clips)
        fns = {name: torch_e2e_fn(b, config.decoding) for name, b in bundles.items()}
        fns.update({label: p.e2e_fn(config.decoding.max_new_tokens) for label, p in peers.items()})
        e2e = bench_end_to_end(fns, arrays, audio_s, config.decoding.batch_size)
    return BenchReport(encoder=encoder, end_to_end=e2e, notes=notes, environment=environment(config))


def _peers(peer: str | None, first: Any, config: BenchConfig, notes: list[str]) -> dict[str, Any]:
    """CTranslate2 (int8, float32) runners of the first model's checkpoint, when asked for and possible."""
    if peer is None:
        return {}
    if peer not in ("faster-whisper", "ctranslate2"):
        raise LiteWhisperError(f"unknown peer {peer!r}: expected 'faster-whisper' or 'ctranslate2'")
    from litewhisper.bench.peers import PeerUnavailable, ct2_peers

    try:
        return ct2_peers(first, config.device, config.threads)
    except PeerUnavailable as exc:
        notes.append(f"peer {peer} not measured: {exc}")
        log.warning("peer %s not measured: %s", peer, exc)
        return {}


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_bench(report: BenchReport) -> str:
    """Readable tables: encoder latency and speedups per batch size; end-to-end RTF with the breakdown."""
    rows = [["model", "batch", "median ms", "IQR ms", "speedup [IQR]", "GFLOPs", "params M", "ideal", "of ideal"]]
    for r in report.encoder:
        s = r.speedup
        rows.append(
            [
                r.model,
                str(r.batch_size),
                f"{1e3 * r.latency.median:.1f}",
                f"{1e3 * r.latency.iqr:.1f}",
                f"{s.median:.2f}x [{s.q1:.2f},{s.q3:.2f}]",
                f"{r.flops / 1e9:.2f}" if r.flops else "-",
                f"{r.params / 1e6:.2f}" if r.params else "-",
                f"{r.ideal_speedup:.2f}x" if r.ideal_speedup else "-",
                f"{100 * r.efficiency:.0f}%" if r.efficiency else "-",
            ]
        )
    out = [
        "encoder latency, one 30-s window per batch item (interleaved rounds; speedup vs the first model)",
        _table(rows),
    ]
    if report.end_to_end:
        rows = [["model", "clips", "audio s", "total s", "RTF", "encoder s", "decoder s", "other s", "encoder %"]]
        for e in report.end_to_end:
            rows.append(
                [
                    e.model,
                    str(e.n_clips),
                    f"{e.audio_s:.1f}",
                    f"{e.total_s:.2f}",
                    f"{e.rtf:.3f}",
                    f"{e.encoder_s:.2f}",
                    f"{e.decoder_s:.2f}",
                    f"{e.other_s:.2f}",
                    f"{100 * e.encoder_s / max(e.total_s, 1e-9):.0f}%",
                ]
            )
        out += [
            "",
            "end-to-end decoding (real clips, same batches for every model; CTranslate2 peers: greedy)",
            _table(rows),
        ]
    out += [f"note: {n}" for n in report.notes]
    out.append("environment: " + ", ".join(f"{k}={v}" for k, v in report.environment.items()))
    return "\n".join(out)


def report_dict(report: BenchReport) -> dict[str, Any]:
    """JSON-ready form of a benchmark report (times in seconds)."""
    import dataclasses

    def enc(r: EncoderResult) -> dict[str, Any]:
        d = dataclasses.asdict(r)
        d["efficiency"] = r.efficiency
        return d

    def e2e(e: EndToEndResult) -> dict[str, Any]:
        return {**dataclasses.asdict(e), "rtf": e.rtf, "other_s": e.other_s}

    return {
        "encoder": [enc(r) for r in report.encoder],
        "end_to_end": [e2e(e) for e in report.end_to_end],
        "notes": report.notes,
        "environment": report.environment,
    }

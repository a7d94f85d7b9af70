"""Calibration: run speech through the ENCODER ONLY and stream each linear layer's output moments.

Whisper encodes 30-s windows (3000 mel frames -> 1500 positions). Windows are built either one clip per
window ("clip", as the LiteASR paper), by packing clips end to end into full windows ("pack"), or one clip per
window encoded as the decoder's short-window policy encodes it ("short": `encoder_window_frames`, clip + 2 s, at
least 10 s, as `--window auto` decodes). With frames="audio" only positions that carry audio are counted;
frames="all" counts the padding too (for "short", the padding the window keeps).
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from litewhisper.audio.load import audio_seconds, load_audio
from litewhisper.compression.stats import ActivationStats, LayerStats, Moments
from litewhisper.constants import (
    CALIBRATION_WINDOWS,
    SAMPLE_RATE,
    WINDOW_FRAMES,
    WINDOW_SAMPLES,
    encoder_window_frames,
)
from litewhisper.distributed import SHARD_SECONDS, World, add_in_rank_order, exchange, my_rounds, plan_shards
from litewhisper.errors import CalibrationError
from litewhisper.models.encoder_window import encoder_window
from litewhisper.models.linears import (
    SHARED_INPUT,
    encoder_linears,
    encoder_signature,
    find_encoder,
    model_name,
    short_name,
)
from litewhisper.progress import progress_bar

log = logging.getLogger("litewhisper")

__all__ = [
    "CalibrationConfig",
    "ActivationStats",
    "Window",
    "calibrate",
    "load_samples",
    "iter_windows",
    "batched",
    "moment_hooks",
    "feature_extractor",
    "position_mask",
    "clip_windows",
    "window_features",
    "clip_features",
]

SAMPLES_PER_POSITION = 320  # hop 160 samples per mel frame x conv2 stride 2


@dataclass(frozen=True)
class CalibrationConfig:
    """How calibration windows are built and which frames are counted.

    windowing: "clip" (one clip per 30-s window; longer clips are cut into several), "pack" (clips end to end) or
    "short" (as "clip", each window encoded at the length `--window auto` gives it).
    frames: "all" (every encoder position, padding included) or "audio" (positions carrying audio only).
    share_inputs: collect q/k/v input moments once per block (and fc1's, the narrower side) and derive outputs.
    """

    windowing: str = "clip"
    frames: str = "all"
    max_clips: int | None = None
    batch_size: int = 4
    device: str | None = None
    share_inputs: bool = True
    shard_seconds: float = SHARD_SECONDS  # clips are calibrated in shards of about this much audio

    def __post_init__(self) -> None:
        if self.windowing not in CALIBRATION_WINDOWS:
            raise CalibrationError(f"windowing must be one of {', '.join(CALIBRATION_WINDOWS)}, got {self.windowing!r}")
        if self.frames not in ("all", "audio"):
            raise CalibrationError(f"frames must be 'all' or 'audio', got {self.frames!r}")
        if self.max_clips is not None and (not isinstance(self.max_clips, int) or self.max_clips < 1):
            raise CalibrationError(f"max_clips must be a positive integer or None, got {self.max_clips!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise CalibrationError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        if not self.shard_seconds > 0:
            raise CalibrationError(f"shard_seconds must be positive, got {self.shard_seconds!r}")


@dataclass(frozen=True)
class Window:
    samples: np.ndarray  # (<= WINDOW_SAMPLES,) float32; the feature extractor pads it to 30 s
    audio_samples: int  # how many samples carry audio
    long_clip: bool = False  # cut from a clip longer than one window


def load_samples(source) -> np.ndarray:
    """Samples of an AudioItem, a path, or an array (float32 mono 16 kHz)."""
    if isinstance(source, np.ndarray) or torch.is_tensor(source):
        samples = np.asarray(source, dtype=np.float32).reshape(-1)
        if samples.size == 0:
            raise CalibrationError("calibration audio array is empty (0 samples)")
        if not np.isfinite(samples).all():
            raise CalibrationError("calibration audio array contains NaN or infinite samples")
        return samples
    return load_audio(getattr(source, "path", source))


def iter_windows(sources: Iterable, windowing: str) -> Iterator[Window]:
    """30-s windows from clips, one clip per window ("clip", "short") or packed end to end ("pack")."""
    pending: list[np.ndarray] = []
    pending_len = 0
    for source in sources:
        samples = load_samples(source)
        if windowing != "pack":
            for start in range(0, len(samples), WINDOW_SAMPLES):
                chunk = samples[start : start + WINDOW_SAMPLES]
                yield Window(chunk, len(chunk), long_clip=len(samples) > WINDOW_SAMPLES)
            continue
        pending.append(samples)
        pending_len += len(samples)
        while pending_len >= WINDOW_SAMPLES:
            joined = np.concatenate(pending)
            yield Window(joined[:WINDOW_SAMPLES], WINDOW_SAMPLES)
            pending, pending_len = [joined[WINDOW_SAMPLES:]], pending_len - WINDOW_SAMPLES
    if pending_len > 0:
        yield Window(np.concatenate(pending), pending_len)


def batched(items: Iterator, size: int) -> Iterator[list]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


class _MomentCollector:
    """Forward hooks accumulating moments at each site; `mask` (B, T) selects the positions to count."""

    def __init__(self, encoder: nn.Module, share_inputs: bool):
        self.linears = {n: m for n, m in encoder_linears(encoder).items() if isinstance(m, nn.Linear)}
        if len(self.linears) != len(encoder_linears(encoder)):
            raise CalibrationError("this encoder already has low-rank layers; calibrate the original model")
        self.sources: dict[str, tuple[str, str]] = {}  # layer -> (site name, "input" | "output")
        for name, linear in self.linears.items():
            parent = name.rsplit(".", 1)[0]
            if share_inputs and short_name(name) in SHARED_INPUT:
                self.sources[name] = (f"{parent}.{SHARED_INPUT[0]}", "input")
            elif share_inputs and linear.in_features < linear.out_features:
                self.sources[name] = (name, "input")
            else:
                self.sources[name] = (name, "output")
        self.sites = {site: side for site, side in self.sources.values()}
        self.moments: dict[str, Moments] = {}
        self.mask: torch.Tensor | None = None
        self._handles: list = []

    def __enter__(self) -> _MomentCollector:
        try:
            self.moments = self.zeros()
            for site, side in self.sites.items():
                self._handles.append(self.linears[site].register_forward_hook(self._hook(site, side)))
        except BaseException:
            self.remove()
            raise
        return self

    def zeros(self) -> dict[str, Moments]:
        """Empty moments for every site, on the device of its layer."""
        out = {}
        for site, side in self.sites.items():
            linear = self.linears[site]
            dim = linear.in_features if side == "input" else linear.out_features
            out[site] = Moments.zeros(dim, linear.weight.device)
        return out

    def __exit__(self, *exc) -> None:
        self.remove()

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook(self, site: str, side: str):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            x = inputs[0] if side == "input" else output  # (B, T, D)
            rows = x[self.mask] if self.mask is not None else x.reshape(-1, x.shape[-1])  # (N, D)
            if not torch.isfinite(rows).all():
                raise CalibrationError(
                    f"non-finite (NaN/inf) activations at the {side} of encoder layer {site}; the model weights "
                    "or the dtype overflow (try --dtype float32) or the audio is corrupt"
                )
            self.moments[site].add_(rows)

        return hook

    def _on_cpu(self, sites: dict[str, Moments] | None) -> dict[str, Moments]:
        """`sites` (or the collected moments) with their tensors on the CPU (a no-op for CPU tensors)."""
        return {k: Moments(m.count, m.sum.cpu(), m.gram.cpu()) for k, m in (sites or self.moments).items()}

    def layer_stats(self, sites: dict[str, Moments] | None = None) -> dict[str, LayerStats]:
        """Output moments of every layer (derived through W, b where an input site was used), on the CPU;
        from `sites` (moments per site, e.g. summed over shards) or the collected ones."""
        sites = self._on_cpu(sites)
        out = {}
        for name, (site, side) in self.sources.items():
            linear = self.linears[name]
            moments = sites[site].through(linear) if side == "input" else sites[site]
            out[name] = LayerStats(linear.in_features, linear.bias is not None, moments)
        return out

    def factors(self, sites: dict[str, Moments] | None = None) -> dict[str, torch.Tensor]:
        """Output-covariance factors of widening layers measured at their input (see Moments.output_factor)."""
        sites = self._on_cpu(sites)
        return {
            name: sites[site].output_factor(self.linears[name])
            for name, (site, side) in self.sources.items()
            if side == "input" and self.linears[name].in_features < self.linears[name].out_features
        }


@contextlib.contextmanager
def moment_hooks(encoder: nn.Module, share_inputs: bool = True) -> Iterator[_MomentCollector]:
    """Install moment-collecting hooks on the encoder's linears; always removed on exit (even on error)."""
    with _MomentCollector(encoder, share_inputs) as collector:
        yield collector


def feature_extractor(bundle_or_model, encoder: nn.Module):
    """The bundle's log-mel feature extractor, or Whisper's default for the encoder's mel bins."""
    processor = getattr(bundle_or_model, "processor", None)
    if processor is not None:
        return getattr(processor, "feature_extractor", processor)
    from transformers import WhisperFeatureExtractor

    return WhisperFeatureExtractor(feature_size=encoder.config.num_mel_bins)


def position_mask(windows: Sequence[Window], positions: int, frames: str, device) -> torch.Tensor | None:
    """(B, T) bool: positions carrying audio, or None to count every position."""
    if frames == "all":
        return None
    valid = torch.tensor([min(positions, math.ceil(w.audio_samples / SAMPLES_PER_POSITION)) for w in windows])
    return (torch.arange(positions)[None, :] < valid[:, None]).to(device)


def _encode_shard(
    encoder: nn.Module,
    extractor,
    collector: _MomentCollector,
    sources: Sequence,
    config: CalibrationConfig,
    device: torch.device,
    dtype: torch.dtype,
    bar,
) -> int:
    """Stream one shard's windows through the encoder into fresh `collector.moments`; returns its windows."""
    collector.moments = collector.zeros()
    n_windows = 0
    with encoder_window(encoder) as window:
        for batch in batched(iter_windows(_advancing(sources, bar), config.windowing), config.batch_size):
            for frames, group in _by_frames(batch, config.windowing):
                feats = extractor([w.samples for w in group], sampling_rate=SAMPLE_RATE, return_tensors="pt")
                window.frames = frames  # "short": the first `frames` of the padded 30 s
                mel = feats.input_features.to(device, dtype)  # (B, n_mels, 3000)
                collector.mask = position_mask(group, frames // 2, config.frames, device)
                encoder(mel)
            n_windows += len(batch)
    return n_windows


def _by_frames(batch: list[Window], windowing: str) -> list[tuple[int, list[Window]]]:
    """The batch split into windows encoded at the same length (all 3000 frames unless "short"; a window cut
    from a clip longer than 30 s stays 3000, as `--window auto` decodes long audio)."""
    groups: dict[int, list[Window]] = {}
    for w in batch:
        short = windowing == "short" and not w.long_clip
        frames = encoder_window_frames(w.audio_samples / SAMPLE_RATE) if short else WINDOW_FRAMES
        groups.setdefault(frames, []).append(w)
    return sorted(groups.items())


def _advancing(sources: Sequence, bar) -> Iterator:
    for source in sources:
        yield source
        bar.update(1)


def _sum_shards(
    encoder: nn.Module,
    extractor,
    collector: _MomentCollector,
    sources: list,
    config: CalibrationConfig,
    device: torch.device,
    dtype: torch.dtype,
    world: World,
) -> tuple[dict, int]:
    """Per-shard moments added in shard order (on rank 0): the same bytes for any number of workers."""
    shards = plan_shards([audio_seconds(s) for s in sources], config.shard_seconds)
    rounds = my_rounds(len(shards), world)
    totals = collector.zeros()
    flat_totals = [t for m in totals.values() for t in (m.sum, m.gram)]
    n_windows = 0
    mine = sum(len(shards[s]) for s in rounds if s is not None)
    with progress_bar(total=mine, desc="calibrating", unit="clip") as bar:
        for shard in rounds:
            windows, error = 0, None
            try:
                if shard is not None:
                    windows = _encode_shard(
                        encoder, extractor, collector, [sources[i] for i in shards[shard]], config, device, dtype, bar
                    )
            except Exception as exc:  # noqa: BLE001 - every rank raises (distributed.exchange)
                error = exc
            counts = {k: m.count for k, m in collector.moments.items()} if shard is not None else None
            for windows_r, counts_r in exchange(world, (windows, counts), error, "calibration"):
                n_windows += windows_r
                for site, count in (counts_r or {}).items():
                    totals[site].count += count
            parts = [t for m in collector.moments.values() for t in (m.sum, m.gram)] if shard is not None else None
            add_in_rank_order(flat_totals, parts, world, "adding calibration statistics")
    return totals, n_windows


def calibrate(
    bundle_or_model, audio: Sequence, config: CalibrationConfig = CalibrationConfig(), world: World | None = None
) -> ActivationStats | None:
    """Stream output statistics of every encoder linear over `audio` (AudioItems, paths or arrays).

    The clips are calibrated in shards (`config.shard_seconds` of audio each) whose float64 moments are added in
    shard order. In a torchrun job (`world`), each rank calibrates its shards, rank 0 adds them all in the same
    order and gets the statistics; the other ranks get None.
    """
    world = world or World()
    sources = list(audio)[: config.max_clips]
    if not sources:
        raise CalibrationError("the calibration set is empty: give at least one audio clip")
    encoder = find_encoder(bundle_or_model)
    extractor = feature_extractor(bundle_or_model, encoder)
    param = next(encoder.parameters())
    device = torch.device(config.device) if config.device else param.device
    was_training = encoder.training
    encoder.eval().to(device)
    try:
        with moment_hooks(encoder, config.share_inputs) as collector, torch.inference_mode():
            totals, n_windows = _sum_shards(encoder, extractor, collector, sources, config, device, param.dtype, world)
            if not world.is_main:
                return None
            stats = collector.layer_stats(totals)
            factors = collector.factors(totals)
    finally:
        encoder.to(param.device).train(was_training)
    n_frames = next(iter(stats.values())).moments.count if stats else 0
    meta = {
        "model": model_name(bundle_or_model),
        "signature": encoder_signature(encoder),
        "clips": str(len(sources)),
        "windows": str(n_windows),
        "frames": str(n_frames),
        "windowing": config.windowing,
        "frames_mode": config.frames,
    }
    log.info(
        "calibrated on %d clips (%d windows, %d frames; windows by %s, frames: %s)",
        len(sources),
        n_windows,
        n_frames,
        config.windowing,
        config.frames,
    )
    return ActivationStats(stats, meta, factors=factors)  # factors: cheaper exact PCA of widening layers


def clip_windows(audio: Sequence, max_windows: int = 48, seed: int = 0) -> list[np.ndarray]:
    """16 kHz samples of up to `max_windows` clips drawn at random (`seed`), one clip per window (as the model
    sees clips in real use; a clip longer than 30 s gives its first window)."""
    clips = list(audio)
    clips = random.Random(seed).sample(clips, min(max_windows, len(clips)))
    return [w.samples for w in iter_windows(clips, "clip")][:max_windows]


def window_features(bundle_or_model, windows: Sequence[np.ndarray]) -> torch.Tensor:
    """(N, n_mels, 3000) log-mel windows of 16 kHz `windows`, on the encoder's device and dtype."""
    encoder = find_encoder(bundle_or_model)
    extractor = feature_extractor(bundle_or_model, encoder)
    param = next(encoder.parameters())
    return extractor(list(windows), sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features.to(
        param.device, param.dtype
    )


def clip_features(bundle_or_model, audio: Sequence, max_windows: int = 48, seed: int = 0) -> torch.Tensor:
    """`window_features` of `clip_windows`: the inputs of sensitivity probes and refinement."""
    return window_features(bundle_or_model, clip_windows(audio, max_windows, seed))

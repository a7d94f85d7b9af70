"""compress(): calibrate (or reuse statistics), plan ranks, factorize — one call, with timings and memory."""
from __future__ import annotations

import copy
import dataclasses
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Sequence

import torch

from litewhisper.compression.calibration import CalibrationConfig, calibrate
from litewhisper.errors import CalibrationError
from litewhisper.compression.factorize import apply_plan
from litewhisper.models.cost import encoder_flops, encoder_params
from litewhisper.models.linears import encoder_linears, find_encoder, unwrap_model
from litewhisper.compression.plan import RankPlan, RankPolicy, plan_ranks
from litewhisper.compression.stats import ActivationStats

log = logging.getLogger("litewhisper")


def _rss_bytes() -> int:
    """Resident memory of this process (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096
    except (OSError, ValueError, IndexError):
        return 0


class PeakMemory:
    """Context manager sampling resident memory (and CUDA allocations) to report the peak inside the block."""

    def __init__(self, interval_s: float = 0.05):
        self.interval_s = interval_s
        self.start = self.peak = 0
        self.cuda_peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak = max(self.peak, _rss_bytes())

    def __enter__(self) -> "PeakMemory":
        self.start = self.peak = _rss_bytes()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())
        if torch.cuda.is_available():
            self.cuda_peak = torch.cuda.max_memory_allocated()

    @property
    def increase(self) -> int:
        """Peak minus the resident memory at entry, in bytes."""
        return max(0, self.peak - self.start)


@dataclass
class CompressionResult:
    """The compressed bundle (or model) and how it was obtained. Memory in bytes, times in seconds."""
    bundle: object
    plan: RankPlan
    stats: ActivationStats
    timings: dict[str, float] = field(default_factory=dict)
    peak_memory: dict[str, int] = field(default_factory=dict)
    params_before: int = 0
    params_after: int = 0
    flops_before: int = 0
    flops_after: int = 0

    @property
    def model(self):
        return unwrap_model(self.bundle)

    def summary(self) -> str:
        t, m = self.timings, self.peak_memory
        return (f"encoder params {self.params_before / 1e6:.2f}M -> {self.params_after / 1e6:.2f}M "
                f"(x{self.params_after / max(self.params_before, 1):.3f}); encoder GFLOPs per 30-s window "
                f"{self.flops_before / 1e9:.2f} -> {self.flops_after / 1e9:.2f} "
                f"(x{self.flops_after / max(self.flops_before, 1):.3f}); {len(self.plan.low_rank)}/"
                f"{len(self.plan.entries)} linears low-rank; time "
                f"{', '.join(f'{stage} {seconds:.1f}s' for stage, seconds in t.items()) or '-'}"
                + (f"; peak memory +{m['calibrate_rss_increase'] / 2**20:.0f} MiB during calibration"
                   if "calibrate_rss_increase" in m else ""))


def _replace_model(bundle, model):
    """A bundle holding `model` (frozen dataclass bundles are copied), or the model itself."""
    if isinstance(bundle, torch.nn.Module):
        return model
    if dataclasses.is_dataclass(bundle):
        return dataclasses.replace(bundle, model=model)
    new = copy.copy(bundle)
    new.model = model
    return new


def measured_calibration(bundle, audio: Sequence, config: CalibrationConfig, timings: dict[str, float],
                         memory: dict[str, int], progress: bool = True) -> ActivationStats:
    """calibrate(), recording its time in `timings` and its peak resident memory in `memory`."""
    start = time.perf_counter()
    with PeakMemory() as peak:
        stats = calibrate(bundle, audio, config, progress=progress)
    timings["calibrate"] = time.perf_counter() - start
    memory.update(calibrate_rss_peak=peak.peak, calibrate_rss_increase=peak.increase,
                  calibrate_cuda_peak=peak.cuda_peak)
    return stats


def compress(bundle, calibration: Sequence | None = None, policy: RankPolicy = RankPolicy(), *,
             stats: ActivationStats | None = None, config: CalibrationConfig = CalibrationConfig(),
             inplace: bool = False, progress: bool = True) -> CompressionResult:
    """Compress the encoder of `bundle` (a WhisperBundle or a Whisper model) with LiteASR.

    Give either calibration audio (AudioItems, paths or arrays) or precomputed `stats` (a θ sweep re-uses one
    calibration). The input model is left untouched unless `inplace`.
    """
    model = unwrap_model(bundle)
    linears = encoder_linears(find_encoder(model))
    params_before, flops_before = encoder_params(model), encoder_flops(model)
    timings: dict[str, float] = {}
    memory: dict[str, int] = {}
    if stats is None:
        if calibration is None:
            raise CalibrationError("give calibration audio or precomputed statistics (stats=...)")
        stats = measured_calibration(bundle, calibration, config, timings, memory, progress)
    stats.check_matches(linears)
    start = time.perf_counter()
    plan = plan_ranks(stats, policy)
    timings["plan"] = time.perf_counter() - start
    start = time.perf_counter()
    target = model if inplace else copy.deepcopy(model)
    apply_plan(target, plan, stats, progress=progress)
    timings["factorize"] = time.perf_counter() - start
    result = CompressionResult(
        _replace_model(bundle, target) if not inplace else bundle, plan, stats, timings, memory,
        params_before, encoder_params(target), flops_before, encoder_flops(target))
    log.info("%s", result.summary())
    return result

"""compress(model, audio, policy): the one entry point — calibrate (or reuse statistics), choose ranks by the
θ rule (RankPolicy) or for a size budget (SizeBudget), factorize (optionally sequentially, then refined)."""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from litewhisper.compression.budget import plan_budget
from litewhisper.compression.calibration import CalibrationConfig, calibrate, clip_features
from litewhisper.compression.factorize import apply_plan
from litewhisper.compression.plan import RankPlan, plan_ranks
from litewhisper.compression.policy import Policy, RankPolicy, SizeBudget
from litewhisper.compression.recovery import recover
from litewhisper.compression.refit import refit_factors
from litewhisper.compression.sensitivity import PROBE_WINDOWS, layer_sensitivities
from litewhisper.compression.sequential import compress_sequential
from litewhisper.compression.stats import ActivationStats
from litewhisper.errors import CalibrationError, PlanError
from litewhisper.models.cost import encoder_flops, encoder_params
from litewhisper.models.linears import encoder_linears, find_encoder, replace_model, unwrap_model

__all__ = [
    "compress",
    "CompressionResult",
    "PeakMemory",
    "measured_calibration",
    "probe_sensitivities",
]

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

    def __enter__(self) -> PeakMemory:
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
    sensitivities: dict[str, float] | None = None  # layer weights the budget used (pass back to re-use them)

    @property
    def model(self):
        return unwrap_model(self.bundle)

    def summary(self) -> str:
        t, m = self.timings, self.peak_memory
        return (
            f"encoder params {self.params_before / 1e6:.2f}M -> {self.params_after / 1e6:.2f}M "
            f"(x{self.params_after / max(self.params_before, 1):.3f}); encoder GFLOPs per 30-s window "
            f"{self.flops_before / 1e9:.2f} -> {self.flops_after / 1e9:.2f} "
            f"(x{self.flops_after / max(self.flops_before, 1):.3f}); {len(self.plan.low_rank)}/"
            f"{len(self.plan.entries)} linears low-rank; time "
            f"{', '.join(f'{stage} {seconds:.1f}s' for stage, seconds in t.items()) or '-'}"
            + (
                f"; peak memory +{m['calibrate_rss_increase'] / 2**20:.0f} MiB during calibration"
                if "calibrate_rss_increase" in m
                else ""
            )
        )


def measured_calibration(
    bundle, audio: Sequence, config: CalibrationConfig, timings: dict[str, float], memory: dict[str, int]
) -> ActivationStats:
    """calibrate(), recording its time in `timings` and its peak resident memory in `memory`."""
    start = time.perf_counter()
    with PeakMemory() as peak:
        stats = calibrate(bundle, audio, config)
    timings["calibrate"] = time.perf_counter() - start
    log.info("calibrate: %.1f s", timings["calibrate"])
    memory.update(
        calibrate_rss_peak=peak.peak, calibrate_rss_increase=peak.increase, calibrate_cuda_peak=peak.cuda_peak
    )
    return stats


def probe_sensitivities(bundle, stats: ActivationStats, audio: Sequence, multiple_of: int = 16) -> dict[str, float]:
    """Layer sensitivities as the budget method measures them (probes on a few calibration windows)."""
    return layer_sensitivities(
        bundle, stats, clip_features(bundle, audio, max_windows=PROBE_WINDOWS), multiple_of=multiple_of
    )


def _calibration_config(policy: Policy, config: CalibrationConfig | None) -> CalibrationConfig:
    """The given config, or the policy's default windowing (SizeBudget.windows; one clip per window for θ)."""
    if not isinstance(policy, (RankPolicy, SizeBudget)):
        raise PlanError(
            f"policy must be a RankPolicy (θ rule) or a SizeBudget (target size), got {type(policy).__name__}"
        )
    if not isinstance(policy, SizeBudget):
        return config or CalibrationConfig()
    if config is None:
        return CalibrationConfig(windowing=policy.windows)
    if config.windowing != policy.windows:
        raise PlanError(
            f"the calibration config packs windows by {config.windowing!r} but the budget says "
            f"windows={policy.windows!r}: set SizeBudget(windows=...) and leave it out of the config"
        )
    return config


def _timed(timings: dict[str, float], stage: str, fn, *args, **kwargs):
    """fn(*args, **kwargs), its time recorded in `timings[stage]` and logged as the stage ends."""
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    timings[stage] = time.perf_counter() - start
    log.info("%s: %.1f s", stage, timings[stage])
    return out


def _factorized(model, stats: ActivationStats, plan: RankPlan, inplace: bool, timings: dict[str, float]):
    target = model if inplace else copy.deepcopy(model)
    _timed(timings, "factorize", apply_plan, target, plan, stats)
    return target


def _budget_student(
    bundle,
    model,
    audio,
    stats,
    policy: SizeBudget,
    config: CalibrationConfig,
    weights: dict[str, float] | None,
    inplace: bool,
    timings: dict[str, float],
    recovery: dict,
):
    """(student model, plan, statistics) for a size budget: allocate, factorize (or fit sequentially), refit,
    refine (`recovery`: compress's refine_audio, recovery_dir and transcriber)."""
    needs_teacher = policy.refine is not None or policy.refit is not None
    teacher = copy.deepcopy(model) if inplace and needs_teacher else model
    plan = _timed(timings, "plan", plan_budget, stats, policy, encoder_params(model), weights)
    if policy.sequential:
        student = model if inplace else copy.deepcopy(model)
        plan, stats = _timed(timings, "sequential", compress_sequential, student, audio, plan, config)
    else:
        student = _factorized(model, stats, plan, inplace, timings)
    if policy.refit is not None:
        source = bundle if teacher is model else teacher  # the bundle's feature extractor
        _timed(timings, "refit", refit_factors, student, source, audio, config, ridge=policy.refit)
    if policy.refine is not None:
        clips = audio if recovery["refine_audio"] is None else recovery["refine_audio"]
        state_dir, transcriber = recovery["recovery_dir"], recovery["transcriber"]
        _timed(timings, "refine", recover, bundle, student, teacher, clips, policy.refine, state_dir, transcriber)
    return student, plan, stats


def compress(
    bundle,
    audio: Sequence | None = None,
    policy: Policy = RankPolicy(),
    *,
    stats: ActivationStats | None = None,
    config: CalibrationConfig | None = None,
    sensitivities: dict[str, float] | None = None,
    inplace: bool = False,
    refine_audio: Sequence | None = None,
    recovery_dir: str | Path | None = None,
    transcriber=None,
) -> CompressionResult:
    """Compress the encoder of `bundle` (a WhisperBundle or a Whisper model) with LiteASR.

    policy: RankPolicy (the paper's θ rule) or SizeBudget (ranks allocated for a target encoder size).
    audio: calibration clips (AudioItems, paths or arrays); `stats` (precomputed statistics) replace the
    calibration pass, e.g. for a θ sweep; a SizeBudget with sensitivity, sequential fitting or refinement still
    reads the audio. sensitivities: the layer weights of an earlier budget run on the same statistics and audio
    (`CompressionResult.sensitivities`), so a sweep over sizes probes once. config: how to calibrate (default:
    one clip per window for RankPolicy, SizeBudget.windows for a budget). refine_audio: the unlabeled clips a
    budget's refinement draws its windows from (default: the calibration audio); recovery_dir: where it keeps
    its labels and training state, so an interrupted run resumes (`recovery.recover`); transcriber: the one
    decoder (`litewhisper.transcribe`), which labels the windows of decoder-aware refinement. The input model is
    left untouched unless `inplace`.
    """
    model = unwrap_model(bundle)
    config = _calibration_config(policy, config)
    needs_audio = stats is None or (isinstance(policy, SizeBudget) and policy.needs_audio)
    if audio is None and needs_audio:
        raise CalibrationError(
            "give calibration audio or precomputed statistics (stats=...)"
            if stats is None
            else "calibration audio is needed (statistics alone serve only the plain budget method)"
        )
    params_before, flops_before = encoder_params(model), encoder_flops(model)
    timings: dict[str, float] = {}
    memory: dict[str, int] = {}
    if stats is None:
        stats = measured_calibration(bundle, audio, config, timings, memory)
    stats.check_matches(encoder_linears(find_encoder(model)))
    stats.check_enough_frames()  # before the probes and the plan: fail in seconds, not minutes
    recovery = dict(refine_audio=refine_audio, recovery_dir=recovery_dir, transcriber=transcriber)
    if isinstance(policy, SizeBudget):
        if policy.sensitivity and sensitivities is None:
            sensitivities = _timed(
                timings, "sensitivity", probe_sensitivities, bundle, stats, audio, policy.multiple_of
            )
        weights = sensitivities if policy.sensitivity else None
        target, plan, stats = _budget_student(
            bundle, model, audio, stats, policy, config, weights, inplace, timings, recovery
        )
    else:
        plan = _timed(timings, "plan", plan_ranks, stats, policy)
        target = _factorized(model, stats, plan, inplace, timings)
    result = CompressionResult(
        bundle if target is model else replace_model(bundle, target),
        plan,
        stats,
        timings,
        memory,
        params_before,
        encoder_params(target),
        flops_before,
        encoder_flops(target),
        sensitivities if isinstance(policy, SizeBudget) and policy.sensitivity else None,
    )
    log.debug("%s", result.summary())  # the CLI prints it once
    return result

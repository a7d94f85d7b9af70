"""The two ways to choose ranks, as frozen dataclasses validated in one place.

RankPolicy: the LiteASR paper's rule — each layer keeps the smallest rank (a multiple of `multiple_of`) whose
explained variance reaches θ (one θ for attention layers, one for MLP layers, optional per-layer overrides).
SizeBudget: litewhisper's budget method — ranks allocated across layers so the encoder reaches `target_size` of
its parameters, losing the least (sensitivity-weighted) variance; optionally fitted sequentially and refined.
`compression.api.compress(model, audio, policy)` takes either.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from litewhisper.compression.refine import RefineConfig
from litewhisper.constants import CALIBRATION_WINDOWS, REFIT_RIDGE
from litewhisper.errors import PlanError
from litewhisper.models.linears import layer_kind

__all__ = ["RankPolicy", "SizeBudget", "Policy", "PRESETS", "BUDGET_PRESETS"]

# --preset for the θ rule: (θ attention, θ MLP), the paper's pairs
PRESETS = {"acc": (0.999, 0.999), "balanced": (0.99, 0.999), "fast": (0.99, 0.995)}
# --preset for the budget method: target encoder size (fraction of the original parameters)
BUDGET_PRESETS = {"acc": 0.9, "balanced": 0.8, "fast": 0.7}


def _check_multiple_of(value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise PlanError(f"multiple_of must be an integer ≥ 1 (16 in the paper), got {value!r}")


def _check_override(pattern, value) -> None:
    if not isinstance(pattern, str):
        raise PlanError(f"override patterns are layer-name globs (str), got {pattern!r}")
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PlanError(f"override {pattern!r}: expected θ in (0, 1], a rank ≥ 1, or None (dense), got {value!r}")
    if isinstance(value, float) and not 0 < value <= 1:
        raise PlanError(f"override {pattern!r}: θ must be in (0, 1], got {value}")
    if isinstance(value, int) and value < 1:
        raise PlanError(f"override {pattern!r}: a fixed rank must be ≥ 1, got {value}")


@dataclass(frozen=True)
class RankPolicy:
    """Thresholds for attention (q/k/v/out) and MLP (fc1/fc2) layers, and per-layer overrides.

    overrides: (glob pattern, value) pairs matched against names like `layers.0.self_attn.q_proj`; the first
    match wins; value is a float θ, an int fixed rank, or None to keep the layer dense.
    """

    theta_attn: float = 0.999
    theta_mlp: float = 0.999
    multiple_of: int = 16
    overrides: tuple = ()

    def __post_init__(self) -> None:
        for label, theta in (("theta_attn", self.theta_attn), ("theta_mlp", self.theta_mlp)):
            if isinstance(theta, bool) or not isinstance(theta, (int, float)) or not 0 < theta <= 1:
                raise PlanError(f"{label} must be in (0, 1] (e.g. 0.99 keeps 99% of the variance), got {theta!r}")
        _check_multiple_of(self.multiple_of)
        overrides = (
            tuple(self.overrides.items())
            if isinstance(self.overrides, dict)
            else tuple(tuple(pair) for pair in self.overrides)
        )
        for pair in overrides:
            if len(pair) != 2:
                raise PlanError(f"each override is a (pattern, value) pair, got {pair!r}")
            _check_override(*pair)
        object.__setattr__(self, "overrides", overrides)

    @classmethod
    def preset(cls, name: str, **kwargs) -> RankPolicy:
        if name not in PRESETS:
            raise PlanError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}")
        theta_attn, theta_mlp = PRESETS[name]
        return cls(theta_attn=theta_attn, theta_mlp=theta_mlp, **kwargs)

    def target(self, name: str) -> float | int | None:
        """θ (float) or fixed rank (int) or None (dense) for a layer."""
        for pattern, value in self.overrides:
            if fnmatch.fnmatchcase(name, pattern):
                return value
        return self.theta_attn if layer_kind(name) == "attn" else self.theta_mlp

    def describe(self) -> str:
        return (
            f"theta_attn={self.theta_attn} theta_mlp={self.theta_mlp} multiple_of={self.multiple_of}"
            f"{' overrides=' + str(list(self.overrides)) if self.overrides else ''}"
        )


@dataclass(frozen=True)
class SizeBudget:
    """Compress the encoder to `target_size` × its parameters (positional table excluded).

    sensitivity: weight each layer's lost variance by its measured effect on the encoder output (one probe pass
      per layer on a few calibration windows); off = every layer alike (statistics alone suffice).
    windows: how calibration packs clips into 30-s windows when `compress` calibrates ("pack": end to end,
      measured better for this method; "clip": one clip per window, as the paper).
    sequential: fit each layer's basis on the outputs of the already compressed layers before it.
    refit: after factorizing, refit each low-rank layer in closed form on the compressed model's own inputs
      against the original's outputs (`compression.refit`); the value is the ridge strength (None: off).
    refine: encoder feature distillation of the factors afterwards (a RefineConfig, or a step count; 0/None: off).
    min_kept: a floor on each low-rank layer's kept variance.
    """

    target_size: float
    sensitivity: bool = True
    windows: str = "pack"
    sequential: bool = False
    refit: float | None = None
    refine: RefineConfig | None = None
    multiple_of: int = 16
    min_kept: float = 0.0

    def __post_init__(self) -> None:
        size = self.target_size
        if isinstance(size, bool) or not isinstance(size, (int, float)) or not 0.0 < size <= 1.0:
            raise PlanError(
                f"target size must be a fraction in (0, 1] of the encoder's parameters (e.g. 0.8), got {size!r}"
            )
        if self.windows not in CALIBRATION_WINDOWS:
            raise PlanError(f"windows must be one of {', '.join(CALIBRATION_WINDOWS)}, got {self.windows!r}")
        _check_multiple_of(self.multiple_of)
        if self.refit is not None and (
            isinstance(self.refit, bool) or not isinstance(self.refit, (int, float)) or not self.refit >= 0
        ):
            raise PlanError(f"refit is a ridge strength ≥ 0 (e.g. {REFIT_RIDGE}) or None (off), got {self.refit!r}")
        if not 0.0 <= self.min_kept < 1.0:
            raise PlanError(f"min_kept must be a fraction in [0, 1), got {self.min_kept!r}")
        refine = self.refine
        if isinstance(refine, int) and not isinstance(refine, bool):
            if refine < 0:
                raise PlanError(f"refine steps must be ≥ 0, got {refine}")
            object.__setattr__(self, "refine", RefineConfig(max_steps=refine) if refine else None)
        elif refine is not None and not isinstance(refine, RefineConfig):
            raise PlanError(f"refine must be a RefineConfig, a number of steps or None, got {refine!r}")

    @classmethod
    def preset(cls, name: str, **kwargs) -> SizeBudget:
        if name not in BUDGET_PRESETS:
            raise PlanError(f"unknown preset {name!r}: choose one of {', '.join(BUDGET_PRESETS)}")
        return cls(target_size=BUDGET_PRESETS[name], **kwargs)

    @property
    def needs_audio(self) -> bool:
        """Whether calibration audio is needed even when statistics are given."""
        return self.sensitivity or self.sequential or self.refit is not None or self.refine is not None

    def describe(self) -> str:
        return f"fixed rank per layer (budget allocation), multiple_of={self.multiple_of}"


Policy = RankPolicy | SizeBudget

"""Rank plan: PCA of each layer's output covariance, and the rank k each layer keeps under a policy.

k is the smallest multiple of `multiple_of` whose explained variance reaches θ (ratio ≥ θ). A layer stays dense
when k(D_in + D_out) ≥ D_in·D_out or when no multiple reaches θ: a plan never grows a layer.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from litewhisper.atomic import atomic_write_text
from litewhisper.compression.policy import PRESETS, Policy, RankPolicy, SizeBudget
from litewhisper.compression.refine import RefineConfig
from litewhisper.compression.stats import ActivationStats
from litewhisper.constants import ENCODER_POSITIONS
from litewhisper.errors import PlanError
from litewhisper.models.cost import linear_macs, linear_params
from litewhisper.models.linears import layer_index, short_name

__all__ = [
    "Spectrum",
    "decompose",
    "RankPolicy",
    "SizeBudget",
    "PRESETS",
    "LayerPlan",
    "plan_layer",
    "plan_ranks",
    "plan_fixed_ranks",
    "RankPlan",
]

log = logging.getLogger("litewhisper")


@dataclass(frozen=True)
class Spectrum:
    """Eigen-decomposition of one output covariance, eigenvalues descending."""

    eigenvalues: torch.Tensor  # (D,) float64, clamped at 0
    eigenvectors: torch.Tensor  # (D, D) float64, columns

    def explained(self) -> torch.Tensor:
        """(D,) fraction of variance kept by the top-k components, k = 1..D."""
        total = self.eigenvalues.sum()
        if total <= 0:
            return torch.ones_like(self.eigenvalues)
        return torch.cumsum(self.eigenvalues, 0) / total


def decompose(stats: ActivationStats, name: str) -> Spectrum:
    """Eigen-decomposition of a layer's output covariance, kept in `stats.spectra`."""
    cache = stats.spectra
    factor = stats.factors.get(name)  # (d_out, r) with Cov = A Aᵀ, set by calibrate()
    if name in cache:
        pass
    elif factor is not None:
        u, sv, _ = torch.linalg.svd(factor, full_matrices=True)  # u (d_out, d_out), sv (r,) descending
        evals = torch.zeros(u.shape[0], dtype=torch.float64)
        evals[: sv.shape[0]] = sv**2
        cache[name] = Spectrum(evals, u)
    else:
        evals, evecs = torch.linalg.eigh(stats.covariance(name))  # ascending
        cache[name] = Spectrum(evals.flip(0).clamp_min(0), evecs.flip(1))
    return cache[name]


@dataclass(frozen=True)
class LayerPlan:
    """One layer's decision. rank None = kept dense. Params count weights + bias; FLOPs per 30-s window."""

    name: str
    d_in: int
    d_out: int
    rank: int | None
    kept_variance: float
    target: float | int | None
    params_before: int
    params_after: int
    flops_before: int
    flops_after: int
    basis: torch.Tensor | None = field(default=None, repr=False, compare=False)  # (d_out, rank) float64


def _choose_rank(spectrum: Spectrum, d_in: int, d_out: int, target, multiple_of: int) -> tuple[int | None, float]:
    """(rank or None, variance kept). Never returns a rank that does not shrink the layer."""
    explained = spectrum.explained()
    if target is None:
        return None, 1.0
    if isinstance(target, int):
        rank = target
    else:
        candidates = [k for k in range(multiple_of, d_out + 1, multiple_of) if explained[k - 1] >= target]
        if not candidates:
            return None, 1.0
        rank = candidates[0]
    if rank > d_out or rank * (d_in + d_out) >= d_in * d_out:
        if isinstance(target, int):
            log.warning("fixed rank %d would not shrink a %dx%d layer: kept dense", rank, d_in, d_out)
        return None, 1.0
    return rank, float(explained[rank - 1])


def plan_layer(
    stats: ActivationStats, name: str, target: float | int | None, multiple_of: int, positions: int = ENCODER_POSITIONS
) -> LayerPlan:
    """One layer's plan for a target: θ (float), a fixed rank (int) or None (dense)."""
    layer = stats.layers[name]
    d_in, d_out = layer.d_in, layer.d_out
    spectrum = decompose(stats, name)
    rank, kept = _choose_rank(spectrum, d_in, d_out, target, multiple_of)
    basis = None if rank is None else spectrum.eigenvectors[:, :rank].contiguous()
    return LayerPlan(
        name,
        d_in,
        d_out,
        rank,
        kept,
        target,
        linear_params(d_in, d_out, None, layer.bias),
        linear_params(d_in, d_out, rank, layer.bias),
        2 * linear_macs(d_in, d_out, None, positions),
        2 * linear_macs(d_in, d_out, rank, positions),
        basis,
    )


def _plan_metadata(stats: ActivationStats) -> dict:
    return {k: stats.metadata[k] for k in ("model", "signature") if k in stats.metadata}


def plan_ranks(stats: ActivationStats, policy: RankPolicy = RankPolicy()) -> RankPlan:
    """Choose every layer's rank by the θ rule (eigendecompositions are cached on `stats`)."""
    stats.check_enough_frames()
    entries = tuple(plan_layer(stats, name, policy.target(name), policy.multiple_of) for name in stats.layers)
    return RankPlan(entries, policy, _plan_metadata(stats))


def plan_fixed_ranks(stats: ActivationStats, ranks: dict[str, int | None], policy: Policy) -> RankPlan:
    """The plan keeping each layer's given rank (None = dense), e.g. a budget allocation; `policy` is recorded."""
    stats.check_enough_frames()
    missing = sorted(set(stats.layers) - set(ranks))
    if missing:
        raise PlanError(f"no rank given for {len(missing)} layer(s), e.g. {missing[0]}")
    entries = tuple(plan_layer(stats, name, ranks[name], policy.multiple_of) for name in stats.layers)
    return RankPlan(entries, policy, _plan_metadata(stats))


@dataclass(frozen=True)
class RankPlan:
    entries: tuple[LayerPlan, ...]
    policy: Policy
    metadata: dict = field(default_factory=dict, compare=False)

    def __getitem__(self, name: str) -> LayerPlan:
        for entry in self.entries:
            if entry.name == name:
                return entry
        raise KeyError(name)

    @property
    def low_rank(self) -> tuple[LayerPlan, ...]:
        return tuple(e for e in self.entries if e.rank is not None)

    def totals(self) -> dict[str, int]:
        keys = ("params_before", "params_after", "flops_before", "flops_after")
        return {k: sum(getattr(e, k) for e in self.entries) for k in keys}

    def to_low_rank_config(self, num_layers: int | None = None) -> list[dict[str, int]]:
        """One {short_name: rank} dict per encoder layer (dense layers omitted), as lite-whisper's config."""
        if num_layers is None:
            num_layers = 1 + max((layer_index(e.name) for e in self.entries), default=-1)
        config: list[dict[str, int]] = [{} for _ in range(num_layers)]
        for e in self.low_rank:
            config[layer_index(e.name)][short_name(e.name)] = e.rank
        return config

    def table(self) -> str:
        head = f"{'layer':<28} {'D_in':>5} {'D_out':>5} {'rank':>5} {'kept':>8} {'params':>17} {'MFLOPs':>17}"
        lines = [head, "-" * len(head)]
        for e in self.entries:
            rank = "dense" if e.rank is None else str(e.rank)
            lines.append(
                f"{e.name:<28} {e.d_in:>5} {e.d_out:>5} {rank:>5} {e.kept_variance:>8.5f} "
                f"{e.params_before:>8}→{e.params_after:<8} "
                f"{e.flops_before / 1e6:>8.0f}→{e.flops_after / 1e6:<8.0f}"
            )
        t = self.totals()
        lines.append("-" * len(head))
        lines.append(
            f"{'total (linears)':<28} {'':>5} {'':>5} {len(self.low_rank):>5} {'':>8} "
            f"{t['params_before']:>8}→{t['params_after']:<8} "
            f"{t['flops_before'] / 1e6:>8.0f}→{t['flops_after'] / 1e6:<8.0f}"
        )
        lines.append(
            f"policy: {self.policy.describe()}; "
            f"{len(self.low_rank)}/{len(self.entries)} layers low-rank; "
            f"linear params x{t['params_after'] / max(t['params_before'], 1):.3f}"
        )
        return "\n".join(lines)

    def to_json(self) -> str:
        entries = [{k: v for k, v in asdict(replace(e, basis=None)).items() if k != "basis"} for e in self.entries]
        policy = asdict(self.policy)
        if isinstance(self.policy, RankPolicy):
            policy["overrides"] = [list(pair) for pair in self.policy.overrides]
        else:
            policy["kind"] = "size_budget"
        return json.dumps(
            {
                "metadata": self.metadata,
                "policy": policy,
                "layers": entries,
                "low_rank_config": self.to_low_rank_config(),
            },
            indent=2,
        )

    def save(self, path: str | os.PathLike) -> Path:
        return atomic_write_text(path, self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> RankPlan:
        """Read a plan saved by `save` (without eigenvectors: factorizing recomputes them from statistics)."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            policy = _policy_from_json(data["policy"])
            entries = tuple(LayerPlan(**e) for e in data["layers"])
        except (OSError, KeyError, TypeError, json.JSONDecodeError) as exc:
            raise PlanError(f"cannot read rank plan {path}: {exc}") from exc
        return cls(entries, policy, data.get("metadata", {}))


def _policy_from_json(data: dict) -> Policy:
    if data.get("kind") == "size_budget":
        fields = {k: v for k, v in data.items() if k != "kind"}
        if fields.get("refine") is not None:
            fields["refine"] = RefineConfig(**fields["refine"])
        return SizeBudget(**fields)
    return RankPolicy(**{**data, "overrides": tuple(map(tuple, data["overrides"]))})

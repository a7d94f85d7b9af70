"""Closed-form refit of the low-rank factors on the compressed model's own inputs (issue 30, item 2).

Output PCA fits each layer on the ORIGINAL model's inputs. In the compressed encoder a layer reads inputs x̃ that
already carry the errors of the layers before it. The refit walks the encoder block by block beside the original
(teacher) and, for each low-rank linear, solves for the factors that map the student's inputs x̃ to the TEACHER's
outputs y of that linear (SVD-LLM's sequential update, as reduced-rank ridge regression on float64 sums):

    M = (C_x̃x̃ + λI)⁻¹ (C_x̃y + λ M₀)            (D_in × D_out; M₀ = weight1·weight2, the factors' own map;
                                                ridge λ = ridge · tr(C_x̃x̃) / D_in pulls M toward M₀)
    V = top-k eigenvectors of Mᵀ C_x̃x̃ M          (the fitted outputs' principal subspace; basis="refit")
    weight1 = M V,  weight2 = Vᵀ,  bias = μ_y − μ_x̃ M V Vᵀ     (mean / bias correction)

With no error before a layer (x̃ = x, y = x Wᵀ + b) and λ → 0 this is the plain factorization. Ranks stay as
planned; q/k/v share one input Gram. `basis="keep"` keeps each layer's V and refits only weight1 and the bias.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from litewhisper.compression.calibration import CalibrationConfig, feature_extractor
from litewhisper.compression.sequential import GROUPS, prepare_windows, run_block
from litewhisper.constants import REFIT_RIDGE
from litewhisper.errors import CalibrationError
from litewhisper.models.linears import LowRankLinear, find_encoder
from litewhisper.progress import progress_bar

__all__ = ["REFIT_BASES", "refit_factors"]

log = logging.getLogger("litewhisper")

REFIT_BASES = ("refit", "keep")


@dataclass
class _Moments:
    """Sums over the counted positions of one group: inputs (shared) and each linear's targets."""

    n: int = 0
    sx: torch.Tensor | float = 0.0  # (D_in,)
    sxx: torch.Tensor | float = 0.0  # (D_in, D_in)
    sy: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> (D_out,)
    sxy: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> (D_in, D_out)

    def add(self, x: torch.Tensor, ys: dict[str, torch.Tensor]) -> None:
        """Add one batch of rows: products in float32 (a batch is a few thousand rows), sums in float64."""
        x = x.float()  # (N, D_in)
        self.n += x.shape[0]
        self.sx = self.sx + x.sum(0, dtype=torch.float64)
        self.sxx = self.sxx + (x.T @ x).double()
        for name, y in ys.items():
            y = y.float()  # (N, D_out)
            self.sy[name] = self.sy.get(name, 0.0) + y.sum(0, dtype=torch.float64)
            self.sxy[name] = self.sxy.get(name, 0.0) + (x.T @ y).double()


def _rows(t: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """(B, T, D) -> (N, D): the counted positions."""
    return t[mask] if mask is not None else t.reshape(-1, t.shape[-1])


class _Stop(Exception):
    pass


def _capture(block: nn.Module, names: Sequence[str], hidden: torch.Tensor, side: str) -> dict[str, torch.Tensor]:
    """Run `block` on `hidden` up to its linears `names`, returning their inputs (side="in") or outputs ("out")."""
    got: dict[str, torch.Tensor] = {}

    def hook(name):
        def grab(module, args, output):
            got[name] = args[0] if side == "in" else output
            if len(got) == len(names):
                raise _Stop  # the rest of the block is not needed

        return grab

    handles = [block.get_submodule(n).register_forward_hook(hook(n)) for n in names]
    try:
        run_block(block, hidden)
    except _Stop:
        pass
    finally:
        for h in handles:
            h.remove()
    return got


def _solve(m: _Moments, name: str, layer: LowRankLinear, ridge: float, basis: str) -> None:
    """Refit `layer` (in place) from the group's moments."""
    mx, my = m.sx / m.n, m.sy[name] / m.n
    cxx = m.sxx / m.n - torch.outer(mx, mx)  # (D_in, D_in)
    cxy = m.sxy[name] / m.n - torch.outer(mx, my)  # (D_in, D_out)
    lam = ridge * torch.trace(cxx) / cxx.shape[0]
    w1, w2 = layer.weight1.detach().to(torch.float64), layer.weight2.detach().to(torch.float64)
    eye = torch.eye(cxx.shape[0], dtype=cxx.dtype)
    fit = torch.linalg.solve(cxx + lam * eye, cxy + lam * (w1 @ w2))  # (D_in, D_out), pulled toward the factors
    if basis == "refit":
        _, vecs = torch.linalg.eigh(fit.T @ cxx @ fit)  # ascending
        v = vecs[:, -layer.weight1.shape[1] :].flip(-1)  # (D_out, k)
    else:
        v = w2.T  # (D_out, k), orthonormal columns from the factorization
    w1 = fit @ v  # (D_in, k)
    dtype = layer.weight1.dtype
    layer.weight1.data = w1.to(dtype)
    layer.weight2.data = v.T.contiguous().to(dtype)
    layer.bias.data = (my - (mx @ w1) @ v.T).to(dtype)


def _refit_group(index: int, student: nn.Module, teacher: nn.Module, names, batches, ridge, basis) -> int:
    low = [n for n in names if isinstance(student.get_submodule(n), LowRankLinear)]
    if not low:
        return 0
    m = _Moments()
    for t_hidden, batch in batches:
        ys = _capture(teacher, low, t_hidden, "out")
        xs = _capture(student, low[:1], batch.hidden, "in")  # the group's linears share their input
        if low[0] not in xs:
            raise CalibrationError(
                f"layers.{index}.{low[0]} was not called as a module (reduced-dimension attention reads its factors "
                "directly): refit a model loaded with attention='standard'"
            )
        m.add(_rows(xs[low[0]], batch.mask), {n: _rows(y, batch.mask) for n, y in ys.items()})
    for name in low:
        _solve(m, name, student.get_submodule(name), ridge, basis)
    return len(low)


@torch.no_grad()
def refit_factors(
    student,
    teacher,
    audio: Sequence,
    config: CalibrationConfig = CalibrationConfig(),
    ridge: float = REFIT_RIDGE,
    basis: str = "refit",
) -> int:
    """Refit every low-rank linear of `student`'s encoder IN PLACE against `teacher` (the original); returns how
    many were refitted. Only low-rank layers change; ranks stay as they are."""
    if basis not in REFIT_BASES:
        raise CalibrationError(f"basis must be one of {', '.join(REFIT_BASES)}, got {basis!r}")
    if not ridge >= 0:
        raise CalibrationError(f"ridge must be ≥ 0, got {ridge!r}")
    sources = list(audio)[: config.max_clips]
    if not sources:
        raise CalibrationError("the refit needs calibration audio: give at least one clip")
    s_enc, t_enc = find_encoder(student), find_encoder(teacher)
    modes = s_enc.training, t_enc.training
    s_enc.eval(), t_enc.eval()
    try:
        batches = [
            (b.hidden.clone(), b) for b in prepare_windows(s_enc, feature_extractor(teacher, t_enc), sources, config)
        ]
        done = 0
        blocks = zip(s_enc.layers, t_enc.layers, strict=True)
        for index, (s_block, t_block) in enumerate(
            progress_bar(blocks, total=len(s_enc.layers), desc="refit", unit="block")
        ):
            for group in GROUPS:
                done += _refit_group(index, s_block, t_block, group, batches, ridge, basis)
            for i, (t_hidden, batch) in enumerate(batches):
                batch.hidden = run_block(s_block, batch.hidden)
                batches[i] = (run_block(t_block, t_hidden), batch)
    finally:
        s_enc.train(modes[0]), t_enc.train(modes[1])
    log.info("refit %d low-rank layers on %d windows", done, sum(len(b.hidden) for _, b in batches))
    return done

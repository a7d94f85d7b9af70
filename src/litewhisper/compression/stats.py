"""Streaming activation statistics of the encoder's linear layers: count, sum and Gram matrix (float64).

Statistics describe each layer's OUTPUTS Y = X Wᵀ + b. They add up exactly, so shards computed separately merge
into the one-pass result, and they save to safetensors with metadata saying which model and data produced them.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from litewhisper.atomic import atomic_file
from litewhisper.constants import ENCODER_POSITIONS, WINDOW_S
from litewhisper.errors import CalibrationError

__all__ = ["FORMAT_VERSION", "Moments", "LayerStats", "ActivationStats"]

FORMAT_VERSION = "1"


# MKL splits the reduction of narrow float64 Gram products across threads, so their last bits depend on the
# thread count (torchrun workers run 1 thread, a lone process all cores). Up to this width the product runs on
# one thread (cheap there), so statistics are the same bytes however many workers and threads computed them.
_ONE_THREAD_GRAM_MAX_DIM = 767


def _gram(rows: torch.Tensor) -> torch.Tensor:
    """rows.T @ rows (D, D), bit-identical for any CPU thread count."""
    if rows.device.type != "cpu" or rows.shape[1] > _ONE_THREAD_GRAM_MAX_DIM:
        return rows.T @ rows
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return rows.T @ rows
    finally:
        torch.set_num_threads(threads)


@dataclass
class Moments:
    """First and second moments of a stream of D-dimensional vectors, in float64."""

    count: int
    sum: torch.Tensor  # (D,)
    gram: torch.Tensor  # (D, D) = Σ y yᵀ

    @classmethod
    def zeros(cls, dim: int, device: torch.device | str | None = None) -> Moments:
        return cls(
            0,
            torch.zeros(dim, dtype=torch.float64, device=device),
            torch.zeros(dim, dim, dtype=torch.float64, device=device),
        )

    @property
    def dim(self) -> int:
        return self.sum.shape[0]

    def add_(self, rows: torch.Tensor) -> None:
        """Accumulate rows (N, D) in float64."""
        rows = rows.to(self.sum.device, torch.float64)
        self.count += rows.shape[0]
        self.sum += rows.sum(0)
        self.gram += _gram(rows)

    def __add__(self, other: Moments) -> Moments:
        return Moments(self.count + other.count, self.sum + other.sum, self.gram + other.gram)

    @property
    def mean(self) -> torch.Tensor:  # (D,)
        return self.sum / max(self.count, 1)

    def covariance(self) -> torch.Tensor:
        """Population covariance (D, D), symmetrised."""
        mu = self.mean
        cov = self.gram / max(self.count, 1) - torch.outer(mu, mu)
        return (cov + cov.T) / 2

    def through(self, linear: nn.Linear) -> Moments:
        """Moments of Y = X Wᵀ + b given these moments of X (exact algebra in float64)."""
        w = linear.weight.detach().to("cpu", torch.float64)  # (out, in)
        ws = w @ self.sum  # (out,)
        gram = w @ self.gram @ w.T  # (out, out)
        total = ws
        if linear.bias is not None:
            b = linear.bias.detach().to("cpu", torch.float64)
            cross = torch.outer(ws, b)
            gram = gram + cross + cross.T + self.count * torch.outer(b, b)
            total = ws + self.count * b
        return Moments(self.count, total, (gram + gram.T) / 2)

    def output_factor(self, linear: nn.Linear) -> torch.Tensor:
        """A (out, in) with Cov(Y) = A Aᵀ for Y = X Wᵀ + b: A = W U Λ^½ from Cov(X) = U Λ Uᵀ.

        For a widening layer (in < out) the output PCA then needs an SVD of A instead of an out×out eigh.
        """
        w = linear.weight.detach().to("cpu", torch.float64)  # (out, in)
        evals, evecs = torch.linalg.eigh(self.covariance())  # (in,), (in, in)
        return w @ (evecs * evals.clamp_min(0).sqrt())


def _canonical_header(path: Path) -> None:
    """Rewrite a safetensors header with sorted keys (safetensors writes its metadata in hash order), so equal
    statistics give equal bytes; same length, padded with spaces as the format allows."""
    with open(path, "r+b") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
        text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
        if len(text) > size:  # cannot happen: the same JSON, reordered
            raise CalibrationError(f"cannot canonicalise the header of {path}")
        f.seek(8)
        f.write(text.ljust(size, b" "))


@dataclass
class LayerStats:
    """Output moments of one linear layer plus its shape (d_out = moments.dim)."""

    d_in: int
    bias: bool
    moments: Moments

    @property
    def d_out(self) -> int:
        return self.moments.dim


@dataclass
class ActivationStats:
    """Per-layer output statistics, keyed by name relative to the encoder (e.g. `layers.0.fc1`).

    metadata: model (name), signature (encoder shape), clips, windows, frames, windowing, frames_mode.
    factors: {layer: A (d_out, r)} with Cov(Y) = A Aᵀ for widening layers measured at their input (set by
      `calibrate`; a cheaper exact PCA); not saved, not merged.
    spectra: eigendecompositions computed by `plan.decompose`, kept here so a θ sweep decomposes once.
    """

    layers: dict[str, LayerStats]
    metadata: dict[str, str] = field(default_factory=dict)
    factors: dict[str, torch.Tensor] = field(default_factory=dict, repr=False, compare=False)
    spectra: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def frames(self) -> int:
        """Number of vectors each layer saw (the same for every layer)."""
        return min((s.moments.count for s in self.layers.values()), default=0)

    @property
    def clips(self) -> int:
        return int(self.metadata.get("clips", 0))

    def mean(self, name: str) -> torch.Tensor:
        return self.layers[name].moments.mean

    def covariance(self, name: str) -> torch.Tensor:
        return self.layers[name].moments.covariance()

    def merge(self, other: ActivationStats) -> ActivationStats:
        """Exact sum of two shards' statistics (same model, same layers, same windowing)."""
        for key in ("signature", "windowing", "frames_mode"):
            if self.metadata.get(key) != other.metadata.get(key):
                raise CalibrationError(
                    f"cannot merge statistics with different {key}: {self.metadata.get(key)!r} vs "
                    f"{other.metadata.get(key)!r}; calibrate both shards with the same model and settings"
                )
        if self.layers.keys() != other.layers.keys():
            raise CalibrationError(
                "cannot merge statistics over different layers: "
                f"{sorted(set(self.layers) ^ set(other.layers))[:5]} differ"
            )
        layers = {n: LayerStats(s.d_in, s.bias, s.moments + other.layers[n].moments) for n, s in self.layers.items()}
        meta = dict(self.metadata)
        for key in ("clips", "windows", "frames"):
            meta[key] = str(int(self.metadata.get(key, 0)) + int(other.metadata.get(key, 0)))
        return ActivationStats(layers, meta)

    def signature_of(self) -> dict[str, tuple[int, int]]:
        return {n: (s.d_in, s.d_out) for n, s in self.layers.items()}

    def check_matches(self, encoder_linears: dict[str, nn.Module]) -> None:
        """Raise CalibrationError unless these statistics cover exactly these layers with these shapes."""
        model_shapes = {n: (m.in_features, m.out_features) for n, m in encoder_linears.items()}
        mine = self.signature_of()
        if model_shapes != mine:
            diff = sorted(n for n in set(mine) | set(model_shapes) if mine.get(n) != model_shapes.get(n))
            example = diff[0] if diff else "?"
            raise CalibrationError(
                f"statistics do not match this model (from model {self.metadata.get('model', '?')!r}, "
                f"encoder {self.metadata.get('signature', '?')}): {len(diff)} layer(s) differ, e.g. {example}: "
                f"stats {mine.get(example)} vs model {model_shapes.get(example)}. "
                "Recalibrate with this model (litewhisper calibrate)."
            )

    def check_enough_frames(self) -> None:
        """Raise CalibrationError unless every layer saw at least as many frames as it has outputs (PCA needs
        them), saying how much calibration audio would be enough."""
        if not self.layers:
            raise CalibrationError("the statistics hold no layers")
        widest = max(self.layers, key=lambda n: self.layers[n].d_out)
        dim = self.layers[widest].d_out
        if self.frames >= dim:
            return
        counted = {
            "all": f"frames='all' counts each window's {ENCODER_POSITIONS} positions, padding included",
            "audio": "frames='audio' counts only the positions that carry audio",
        }.get(self.metadata.get("frames_mode"))
        windows = self.metadata.get("windows")
        raise CalibrationError(
            f"calibration gave {self.frames} frames"
            + (f" ({windows} window(s) of 30 s; {counted})" if windows and counted else "")
            + f" but the widest layer ({widest}) has {dim} outputs: PCA needs at least as many frames as "
            f"dimensions. Calibrate on {self._audio_for(dim)}."
        )

    def _audio_for(self, frames: int) -> str:
        """How much calibration audio yields `frames` frames, as these statistics count frames."""
        mode, windows = self.metadata.get("frames_mode"), int(self.metadata.get("windows", 0))
        if mode == "all":
            needed = math.ceil(frames / ENCODER_POSITIONS)
            if self.metadata.get("windowing") == "pack":
                return f"more than {(needed - 1) * WINDOW_S:g} s of audio in all (packed into {needed} windows)"
            return f"{needed} or more clips (each clip fills its own 30-s window, however short)"
        per_second = ENCODER_POSITIONS / WINDOW_S  # 50 encoder frames per second of audio
        seconds = math.ceil(10 * frames / per_second) / 10
        padded = mode == "audio" and frames <= windows * ENCODER_POSITIONS  # frames='all' would be enough
        return f"at least {seconds:g} s of audio ({per_second:g} frames per second)" + (
            ", or count the padding too with --frames all (frames='all' in Python)" if padded else ""
        )

    def save(self, path: str | os.PathLike) -> Path:
        """Write safetensors (atomically): `<name>.sum`, `<name>.gram`, `<name>.count` + JSON metadata."""
        from safetensors.torch import save_file

        tensors = {}
        for name, s in self.layers.items():
            tensors[f"{name}.sum"] = s.moments.sum.contiguous()
            tensors[f"{name}.gram"] = s.moments.gram.contiguous()
            tensors[f"{name}.count"] = torch.tensor([s.moments.count], dtype=torch.int64)
        meta = {k: str(v) for k, v in self.metadata.items()}
        meta["format"] = f"litewhisper-activation-stats/{FORMAT_VERSION}"
        meta["layers"] = json.dumps({n: [s.d_in, s.bias] for n, s in self.layers.items()})
        path = Path(path)
        with atomic_file(path) as tmp:
            save_file(tensors, str(tmp), metadata=meta)
            _canonical_header(tmp)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> ActivationStats:
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise CalibrationError(f"statistics file not found: {path}; create one with `litewhisper calibrate`")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = dict(f.metadata() or {})
                shapes = json.loads(meta.pop("layers"))
                layers = {
                    n: LayerStats(
                        int(d_in),
                        bool(bias),
                        Moments(
                            int(f.get_tensor(f"{n}.count")[0]), f.get_tensor(f"{n}.sum"), f.get_tensor(f"{n}.gram")
                        ),
                    )
                    for n, (d_in, bias) in shapes.items()
                }
        except Exception as exc:  # safetensors raises its own SafetensorError on a bad header
            raise CalibrationError(
                f"{path} is not a litewhisper statistics file ({exc}); create one with `litewhisper calibrate`"
            ) from exc
        if not meta.get("format", "").startswith("litewhisper-activation-stats/"):
            raise CalibrationError(f"{path} is not a litewhisper statistics file (format {meta.get('format')!r})")
        meta.pop("format")
        return cls(layers, meta)

"""Sequential calibration: each linear's statistics are collected on the model whose earlier layers are already
compressed, so every factorisation sees the errors before it (as GPTQ / SVD-LLM do).

One pass over the encoder, block by block: the inputs of the current block are cached for all calibration
windows (only one block's inputs in memory), then within the block the linears are calibrated and factorized
group by group — q/k/v (shared input), out_proj, fc1, fc2 — each on the outputs of the already compressed ones.
Ranks come from a RankPolicy (θ thresholds, chosen on the sequential statistics) or from a RankPlan (its fixed
ranks, e.g. a budget allocation from `budget.plan_budget`; only the bases are re-fitted).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from litewhisper.compression.calibration import (
    CalibrationConfig,
    batched,
    feature_extractor,
    iter_windows,
    moment_hooks,
    position_mask,
)
from litewhisper.compression.factorize import factorize_linear
from litewhisper.compression.plan import RankPlan, RankPolicy, plan_layer
from litewhisper.compression.stats import ActivationStats
from litewhisper.constants import SAMPLE_RATE
from litewhisper.errors import CalibrationError
from litewhisper.models.linears import encoder_signature, find_encoder, model_name
from litewhisper.progress import progress_bar
from litewhisper.swap import swap_modules

__all__ = ["GROUPS", "compress_sequential", "prepare_windows", "run_block"]

log = logging.getLogger("litewhisper")

GROUPS = (("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), ("self_attn.out_proj",), ("fc1",), ("fc2",))


@dataclass
class _Batch:
    hidden: torch.Tensor  # (B, positions, d_model) input of the current block
    mask: torch.Tensor | None  # (B, positions) positions counted in the statistics


class _Stop(Exception):
    pass


def _block_inputs(encoder: nn.Module, mel: torch.Tensor) -> torch.Tensor:
    """(B, positions, d_model): what the first encoder block receives (the encoder's own embedding code)."""
    captured = []

    def grab(module, args):
        captured.append(args[0])
        raise _Stop

    handle = encoder.layers[0].register_forward_pre_hook(grab)
    try:
        encoder(mel)
    except _Stop:
        pass
    finally:
        handle.remove()
    return captured[0]


def run_block(block: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    out = block(hidden, None)
    return out[0] if isinstance(out, tuple) else out


def _view(index: int, block: nn.Module, names: Sequence[str]) -> nn.Module:
    """A module exposing only `names` of block `index` as `layers.<index>.<name>` (same module objects)."""
    sub = nn.Module()
    for name in names:
        parent = sub
        *path, leaf = name.split(".")
        for part in path:
            if not hasattr(parent, part):
                parent.add_module(part, nn.Module())
            parent = getattr(parent, part)
        parent.add_module(leaf, block.get_submodule(name))
    view = nn.Module()
    view.layers = nn.ModuleList([nn.Identity() for _ in range(index)] + [sub])
    return view


def _group_stats(
    index: int, block: nn.Module, names: Sequence[str], batches: list[_Batch], config: CalibrationConfig
) -> ActivationStats:
    with moment_hooks(_view(index, block, names), config.share_inputs) as collector:
        for batch in batches:
            collector.mask = batch.mask
            run_block(block, batch.hidden)
        return ActivationStats(collector.layer_stats())


def prepare_windows(encoder: nn.Module, extractor, sources: Sequence, config: CalibrationConfig) -> list[_Batch]:
    positions = encoder.config.max_source_positions
    param = next(encoder.parameters())
    batches = []
    bar = progress_bar(sources, desc="embedding windows", unit="clip")
    for windows in batched(iter_windows(bar, config.windowing), config.batch_size):
        feats = extractor([w.samples for w in windows], sampling_rate=SAMPLE_RATE, return_tensors="pt")
        mel = feats.input_features.to(param.device, param.dtype)  # (B, n_mels, 3000)
        batches.append(
            _Batch(_block_inputs(encoder, mel), position_mask(windows, positions, config.frames, param.device))
        )
    return batches


@torch.no_grad()  # not inference_mode: the new factors must stay trainable (refine)
def compress_sequential(
    bundle_or_model,
    audio: Sequence,
    ranks: RankPolicy | RankPlan = RankPolicy(),
    config: CalibrationConfig = CalibrationConfig(),
) -> tuple[RankPlan, ActivationStats]:
    """Calibrate and factorize the encoder IN PLACE, layer by layer; returns the plan and the statistics.

    ranks: a RankPolicy (θ rule on each layer's sequential statistics) or a RankPlan (its ranks kept fixed).
    The statistics of each layer are those it was factorized from (collected with everything before it already
    compressed); with a policy that keeps every layer dense they equal plain `calibrate`'s.
    """
    policy = ranks.policy if isinstance(ranks, RankPlan) else ranks
    target = (lambda name: ranks[name].rank) if isinstance(ranks, RankPlan) else policy.target
    sources = list(audio)[: config.max_clips]
    if not sources:
        raise CalibrationError("the calibration set is empty: give at least one audio clip")
    encoder = find_encoder(bundle_or_model)
    was_training = encoder.training
    encoder.eval()
    try:
        batches = prepare_windows(encoder, feature_extractor(bundle_or_model, encoder), sources, config)
        entries, layers = [], {}
        for index, block in enumerate(progress_bar(encoder.layers, desc="sequential", unit="block")):
            for group in GROUPS:
                stats = _group_stats(index, block, group, batches, config)
                for name in group:
                    full = f"layers.{index}.{name}"
                    entry = plan_layer(stats, full, target(full), policy.multiple_of)
                    if entry.rank is not None:
                        mean, basis = stats.mean(full), entry.basis
                        swap_modules(
                            block,
                            lambda linear, _, mean=mean, basis=basis: factorize_linear(linear, mean, basis),
                            lambda _, n, name=name: n == name,
                        )
                    entries.append(entry)
                    layers[full] = stats.layers[full]
            for batch in batches:
                batch.hidden = run_block(block, batch.hidden)
    finally:
        encoder.train(was_training)
    meta = {
        "model": model_name(bundle_or_model),
        "signature": encoder_signature(encoder),
        "clips": str(len(sources)),
        "windows": str(sum(len(b.hidden) for b in batches)),
        "windowing": config.windowing,
        "frames_mode": config.frames,
        "sequential": "1",
    }
    stats = ActivationStats(layers, meta)
    meta["frames"] = str(stats.frames)
    return RankPlan(tuple(entries), policy, {k: meta[k] for k in ("model", "signature")}), stats

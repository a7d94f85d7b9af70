"""Finding the Whisper encoder and its linear layers by name (names are relative to the encoder)."""

from __future__ import annotations

import copy
import dataclasses
import re

from torch import nn

from litewhisper.errors import LiteWhisperError

# the low-rank linear of the lite-whisper format (defined once, in the shipped remote code)
from litewhisper.models.hf_lite.modeling_lite_whisper import LinearLowRank as LowRankLinear

__all__ = [
    "LowRankLinear",
    "ATTENTION_LAYERS",
    "MLP_LAYERS",
    "SHARED_INPUT",
    "unwrap_model",
    "replace_model",
    "find_encoder",
    "encoder_linears",
    "short_name",
    "layer_index",
    "layer_kind",
    "encoder_signature",
    "model_name",
]

ATTENTION_LAYERS = ("q_proj", "k_proj", "v_proj", "out_proj")
MLP_LAYERS = ("fc1", "fc2")
SHARED_INPUT = ("q_proj", "k_proj", "v_proj")  # siblings that read the same hidden states
_LAYER_INDEX = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def unwrap_model(bundle_or_model) -> nn.Module:
    """The torch model of a WhisperBundle, or the model itself."""
    model = bundle_or_model if isinstance(bundle_or_model, nn.Module) else getattr(bundle_or_model, "model", None)
    if not isinstance(model, nn.Module):
        raise LiteWhisperError(f"expected a WhisperBundle or a torch Whisper model, got {type(bundle_or_model)}")
    return model


def replace_model(bundle, model):
    """A bundle holding `model` (frozen dataclass bundles are copied), or the model itself."""
    if isinstance(bundle, nn.Module):
        return model
    if dataclasses.is_dataclass(bundle):
        return dataclasses.replace(bundle, model=model)
    new = copy.copy(bundle)
    new.model = model
    return new


def find_encoder(bundle_or_model) -> nn.Module:
    """The WhisperEncoder of a bundle, a WhisperForConditionalGeneration, a WhisperModel, or an encoder."""
    model = unwrap_model(bundle_or_model)
    if hasattr(model, "conv1") and hasattr(model, "layers"):
        return model
    if hasattr(model, "get_encoder"):
        return model.get_encoder()
    inner = getattr(model, "model", None)
    if inner is not None and hasattr(inner, "encoder"):
        return inner.encoder
    raise LiteWhisperError(f"cannot find a Whisper encoder in {type(model).__name__}")


def encoder_linears(encoder: nn.Module) -> dict[str, nn.Module]:
    """Every nn.Linear / LowRankLinear of the encoder's transformer layers, by name (`layers.0.fc1`)."""
    return {
        name: m
        for name, m in encoder.named_modules()
        if isinstance(m, (nn.Linear, LowRankLinear)) and _LAYER_INDEX.search(name)
    }


def short_name(name: str) -> str:
    """`layers.3.self_attn.q_proj` -> `q_proj`."""
    return name.rsplit(".", 1)[-1]


def layer_index(name: str) -> int:
    match = _LAYER_INDEX.search(name)
    if match is None:
        raise LiteWhisperError(f"layer name {name!r} has no `layers.N.` component")
    return int(match.group(1))


def layer_kind(name: str) -> str:
    """'attn' or 'mlp' from the layer's short name."""
    short = short_name(name)
    if short in ATTENTION_LAYERS:
        return "attn"
    if short in MLP_LAYERS:
        return "mlp"
    raise LiteWhisperError(f"unknown encoder layer {name!r}: expected one of {ATTENTION_LAYERS + MLP_LAYERS}")


def encoder_signature(encoder: nn.Module) -> str:
    """A short description of the encoder's shape, stored with statistics and plans."""
    cfg = encoder.config
    return (
        f"d_model={cfg.d_model},layers={cfg.encoder_layers},heads={cfg.encoder_attention_heads},"
        f"ffn={cfg.encoder_ffn_dim},mels={cfg.num_mel_bins}"
    )


def model_name(bundle_or_model) -> str:
    name = getattr(bundle_or_model, "name", None)
    if name:
        return str(name)
    cfg = getattr(unwrap_model(bundle_or_model), "config", None)
    return str(getattr(cfg, "_name_or_path", "") or "unnamed")

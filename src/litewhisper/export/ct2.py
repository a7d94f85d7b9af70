"""The (unchanged) Whisper decoder as a CTranslate2 model, for faster-whisper's decoding loop.

Compression touches only the encoder, so the decoder is converted from a standard Whisper built from the same
decoder weights with ctranslate2's own `WhisperLoader`. The encoder is not needed (the ONNX encoder replaces
it), so the CTranslate2 model keeps one encoder layer (CTranslate2 needs at least one); never run.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from litewhisper.errors import LiteWhisperError

__all__ = ["CT2_QUANTIZATION", "decoder_only_whisper", "export_ct2_decoder"]

log = logging.getLogger("litewhisper")

CT2_QUANTIZATION = {"int8": "int8", "none": "float32"}


def decoder_only_whisper(model: nn.Module) -> nn.Module:
    """A WhisperForConditionalGeneration with one (unused) encoder layer and `model`'s decoder and head."""
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    config = WhisperConfig(
        **{
            k: v
            for k, v in model.config.to_dict().items()
            if k not in ("model_type", "architectures", "auto_map", "low_rank_config")
        }
    )
    config.encoder_layers = 1  # CTranslate2 refuses an encoder without layers
    plain = WhisperForConditionalGeneration(config).eval()
    source = model.model
    plain.model.decoder.load_state_dict(source.decoder.state_dict())
    for name in ("conv1", "conv2", "layer_norm", "embed_positions"):
        getattr(plain.model.encoder, name).load_state_dict(getattr(source.encoder, name).state_dict())
    plain.generation_config = model.generation_config
    return plain


def export_ct2_decoder(model: nn.Module, tokenizer, out_dir: Path, quantize: str) -> Path:
    """Write `out_dir` (model.bin, config.json, vocabulary) with the decoder quantized as asked."""
    try:
        from ctranslate2.converters.transformers import TransformersConverter, WhisperLoader
    except ImportError as e:
        raise LiteWhisperError('the CTranslate2 decoder needs the "onnx" extra: pip install "litewhisper[onnx]"') from e
    plain = decoder_only_whisper(model)

    class _InMemory(TransformersConverter):
        def _load(self):  # the model is already in memory; skip AutoConfig/from_pretrained
            with torch.no_grad():
                return WhisperLoader()(plain, tokenizer)

    log.info("converting the decoder to CTranslate2 (%s)", CT2_QUANTIZATION[quantize])
    _InMemory("in-memory").convert(str(out_dir), quantization=CT2_QUANTIZATION[quantize], force=True)
    return out_dir

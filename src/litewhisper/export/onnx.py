"""Trace a Whisper (or lite-whisper) model into the three ONNX graphs Hugging Face's ONNX ecosystem uses.

    onnx/encoder_model.onnx            input_features (b, n_mels, W) -> last_hidden_state (b, W/2, d), any even
                                       W <= 3000 (traced inside models/encoder_window.py; W = 3000 is Whisper's)
    onnx/decoder_model.onnx            input_ids (b, t), encoder_hidden_states -> logits (b, t, vocab),
                                       present.{i}.decoder.key/value (b, h, t, d_head),
                                       present.{i}.encoder.key/value (b, h, 1500, d_head)
    onnx/decoder_with_past_model.onnx  input_ids (b, 1), past_key_values.{i}.{decoder,encoder}.{key,value}
                                       -> logits (b, 1, vocab), present.{i}.decoder.key/value

Names follow optimum's Whisper export; export_model then merges the two decoders into one graph
(export/merge.py: onnx/decoder_model_merged.onnx), so transformers.js / optimum runtimes load the directory as they
load an ordinary Whisper. A lite encoder's factorised linears trace as two MatMuls (x @ W1 @ W2 + b: a 3-D input
never becomes Gemm) and its reduced-dimension self-attention (attention/reduced.py) is traced where
`use_reduced_attention(mode="auto")` put it, i.e. where the ranks save FLOPs. The encoder's standard
self-attention is traced one head at a time (`per_head_attention`), so onnxruntime holds one head's scores.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from litewhisper.constants import WINDOW_FRAMES
from litewhisper.models.encoder_window import encoder_window
from litewhisper.progress import foreign_noise_silenced

__all__ = [
    "OPSET",
    "ENCODER_AXES",
    "per_head_attention",
    "export_encoder",
    "export_decoder",
    "export_decoder_with_past",
    "export_all",
]

log = logging.getLogger("litewhisper")

OPSET = 17
PER_HEAD = "litewhisper_per_head"


def _attend_per_head(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers' eager attention, one head at a time. q, k, v: (b, h, t, d) -> (b, t, h, d)."""
    scaling = query.size(-1) ** -0.5 if scaling is None else scaling
    heads = []
    for h in range(query.shape[1]):
        scores = torch.matmul(query[:, h : h + 1], key[:, h : h + 1].transpose(2, 3)) * scaling  # (b, 1, t, s)
        if attention_mask is not None:
            scores = scores + attention_mask
        heads.append(torch.matmul(scores.softmax(-1), value[:, h : h + 1]))  # (b, 1, t, d)
    return torch.cat(heads, dim=1).transpose(1, 2).contiguous(), None


@contextmanager
def per_head_attention(model: nn.Module) -> Iterator[None]:
    """Within: the model's standard attention runs head by head (same maths). Traced, the graph's peak memory
    holds one head's (b, 1, 1500, 1500) scores instead of all of them (base: 9 MiB instead of 72) and it runs a
    little faster in onnxruntime. Reduced-dimension attention keeps its own path."""
    from transformers import AttentionInterface

    AttentionInterface.register(PER_HEAD, _attend_per_head)
    previous = model.config._attn_implementation
    model.config._attn_implementation = PER_HEAD
    try:
        yield
    finally:
        model.config._attn_implementation = previous


class _Encoder(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.encoder = model.get_encoder()

    def forward(self, input_features: torch.Tensor) -> torch.Tensor:
        return self.encoder(input_features).last_hidden_state  # (b, W/2, d)


def _cache_tensors(cache, layers: int, cross: bool) -> list[torch.Tensor]:
    """[k0, v0, k1, v1, ...] of the self-attention (or cross-attention) half of an EncoderDecoderCache."""
    part = cache.cross_attention_cache if cross else cache.self_attention_cache
    out: list[torch.Tensor] = []
    for i in range(layers):
        out += [part.layers[i].keys, part.layers[i].values]
    return out


class _Decoder(nn.Module):
    """First step: the prompt attends to the encoder output; returns logits and both caches."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.decoder, self.proj_out = model.get_decoder(), model.proj_out
        self.layers = model.config.decoder_layers

    def forward(self, input_ids: torch.Tensor, encoder_hidden_states: torch.Tensor):
        from transformers.cache_utils import DynamicCache, EncoderDecoderCache

        cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        out = self.decoder(
            input_ids=input_ids, encoder_hidden_states=encoder_hidden_states, past_key_values=cache, use_cache=True
        )
        cache = out.past_key_values
        self_kv, cross_kv = _cache_tensors(cache, self.layers, False), _cache_tensors(cache, self.layers, True)
        present = [t for i in range(self.layers) for t in (*self_kv[2 * i : 2 * i + 2], *cross_kv[2 * i : 2 * i + 2])]
        return (self.proj_out(out.last_hidden_state), *present)  # logits (b, t, vocab)


class _DecoderWithPast(nn.Module):
    """Later steps: one new token per clip, both caches given; returns logits and the grown self cache.

    The encoder output is never read (cross-attention keys/values come from the cache), but Whisper's decoder
    skips cross-attention entirely when `encoder_hidden_states` is None, so a one-frame placeholder is passed.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.decoder, self.proj_out = model.get_decoder(), model.proj_out
        self.layers = model.config.decoder_layers

    def forward(self, input_ids: torch.Tensor, *past: torch.Tensor):
        from transformers.cache_utils import EncoderDecoderCache

        data = [tuple(past[4 * i : 4 * i + 4]) for i in range(self.layers)]  # (self k, self v, cross k, cross v)
        cache = EncoderDecoderCache(data)
        for i in range(self.layers):
            cache.is_updated[i] = True
        placeholder = past[2].new_zeros(input_ids.shape[0], 1, self.proj_out.in_features)  # (b, 1, d)
        # past self-attention length: positions of the new token start there
        offset = past[0].shape[2]
        positions = torch.arange(1, device=input_ids.device).unsqueeze(0) + offset  # (1, 1)
        out = self.decoder(
            input_ids=input_ids,
            encoder_hidden_states=placeholder,
            past_key_values=cache,
            use_cache=True,
            position_ids=positions,
        )
        present = _cache_tensors(out.past_key_values, self.layers, False)
        return (self.proj_out(out.last_hidden_state), *present)


def _kv_names(layers: int, prefix: str, parts: tuple[str, ...]) -> list[str]:
    return [f"{prefix}.{i}.{p}.{kv}" for i in range(layers) for p in parts for kv in ("key", "value")]


def _export(
    module: nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str], axes: dict[str, dict[int, str]]
) -> None:
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings(), foreign_noise_silenced():
        # tracing warns about every Python-level shape test; the graphs are checked against PyTorch instead
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=inputs,
            output_names=outputs,
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,
            do_constant_folding=True,
        )


ENCODER_AXES = {
    "input_features": {0: "batch_size", 2: "encoder_frames"},
    "last_hidden_state": {0: "batch_size", 1: "encoder_sequence_length"},
}


def export_encoder(model: nn.Module, path: Path) -> None:
    """The encoder with a dynamic time axis: it reads any even number of frames <= 3000 (DecodeOptions.window)."""
    features = torch.zeros(1, model.config.num_mel_bins, WINDOW_FRAMES)  # (1, n_mels, 3000)
    with per_head_attention(model), encoder_window(model):
        _export(_Encoder(model), (features,), path, ["input_features"], ["last_hidden_state"], ENCODER_AXES)


def _kv_axes(names: list[str], seq: str) -> dict[str, dict[int, str]]:
    return {n: {0: "batch_size", 2: "encoder_sequence_length" if ".encoder." in n else seq} for n in names}


def export_decoder(model: nn.Module, path: Path) -> None:
    cfg = model.config
    ids = torch.full((1, 3), cfg.decoder_start_token_id, dtype=torch.long)  # (1, t)
    states = torch.zeros(1, cfg.max_source_positions, cfg.d_model)  # (1, 1500, d)
    present = _kv_names(cfg.decoder_layers, "present", ("decoder", "encoder"))
    axes = {
        "input_ids": {0: "batch_size", 1: "decoder_sequence_length"},
        "encoder_hidden_states": {0: "batch_size", 1: "encoder_sequence_length"},
        "logits": {0: "batch_size", 1: "decoder_sequence_length"},
        **_kv_axes(present, "decoder_sequence_length"),
    }
    _export(_Decoder(model), (ids, states), path, ["input_ids", "encoder_hidden_states"], ["logits", *present], axes)


def export_decoder_with_past(model: nn.Module, path: Path) -> None:
    cfg = model.config
    heads, d_head = cfg.decoder_attention_heads, cfg.d_model // cfg.decoder_attention_heads
    ids = torch.full((1, 1), cfg.decoder_start_token_id, dtype=torch.long)  # (1, 1)
    past = []
    for _ in range(cfg.decoder_layers):
        past += [torch.randn(1, heads, 3, d_head) for _ in range(2)]  # self k, v: (1, h, past, d_head)
        past += [torch.randn(1, heads, cfg.max_source_positions, d_head) for _ in range(2)]  # cross k, v
    past_names = _kv_names(cfg.decoder_layers, "past_key_values", ("decoder", "encoder"))
    present = _kv_names(cfg.decoder_layers, "present", ("decoder",))
    axes = {
        "input_ids": {0: "batch_size"},
        "logits": {0: "batch_size"},
        **_kv_axes(past_names, "past_decoder_sequence_length"),
        **_kv_axes(present, "past_decoder_sequence_length + 1"),
    }
    _export(_DecoderWithPast(model), (ids, *past), path, ["input_ids", *past_names], ["logits", *present], axes)


def export_all(model: nn.Module, onnx_dir: Path, decoders: bool = True) -> list[Path]:
    """Write the three graphs (or only the encoder) into `onnx_dir`; returns their paths (encoder first)."""
    onnx_dir.mkdir(parents=True, exist_ok=True)
    graphs = [
        (export_encoder, onnx_dir / "encoder_model.onnx"),
        (export_decoder, onnx_dir / "decoder_model.onnx"),
        (export_decoder_with_past, onnx_dir / "decoder_with_past_model.onnx"),
    ][: 3 if decoders else 1]
    model = model.float().eval()
    for fn, path in graphs:
        log.info("exporting %s", path.name)
        fn(model, path)
    return [path for _, path in graphs]

"""Write a whisper.cpp (ggml, f16) model file from a Hugging Face Whisper directory, offline.

pywhispercpp downloads ggml models from the hub and ships no converter; whisper.cpp's own
`models/convert-h5-to-ggml.py` needs a clone of openai/whisper (for mel_filters.npz) and of whisper.cpp. This
writes the same legacy ggml layout from what is already here: hyper-parameters, the mel filter bank (from the
Hugging Face feature extractor), the byte-level BPE vocabulary (from tokenizer.json) and the weights under
openai-whisper names. Only dense Whisper checkpoints: whisper.cpp has no low-rank linears.

    PYTHONPATH=src python benchmarks/ggml_convert.py ~/.cache/litewhisper/base /tmp/ggml-base.bin
"""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import numpy as np

GGML_MAGIC = 0x67676D6C
TOP_LEVEL = {
    "encoder.layer_norm": "encoder.ln_post",
    "encoder.embed_positions.weight": "encoder.positional_embedding",
    "decoder.layer_norm": "decoder.ln",
    "decoder.embed_positions.weight": "decoder.positional_embedding",
    "decoder.embed_tokens.weight": "decoder.token_embedding.weight",
}
LAYER_PARTS = {
    "self_attn.q_proj": "attn.query",
    "self_attn.k_proj": "attn.key",
    "self_attn.v_proj": "attn.value",
    "self_attn.out_proj": "attn.out",
    "self_attn_layer_norm": "attn_ln",
    "encoder_attn.q_proj": "cross_attn.query",
    "encoder_attn.k_proj": "cross_attn.key",
    "encoder_attn.v_proj": "cross_attn.value",
    "encoder_attn.out_proj": "cross_attn.out",
    "encoder_attn_layer_norm": "cross_attn_ln",
    "fc1": "mlp.0",
    "fc2": "mlp.2",
    "final_layer_norm": "mlp_ln",
}
F32_NAMES = {"encoder.conv1.bias", "encoder.conv2.bias", "encoder.positional_embedding", "decoder.positional_embedding"}


def ggml_name(hf: str) -> str | None:
    """model.encoder.layers.3.fc1.weight -> encoder.blocks.3.mlp.0.weight; None for proj_out (tied)."""
    if not hf.startswith("model."):
        return None
    name = hf[len("model.") :]
    for prefix, new in TOP_LEVEL.items():
        if name.startswith(prefix):
            return new + name[len(prefix) :]
    side, rest = name.split(".", 1)
    if not rest.startswith("layers."):
        return name  # conv1 / conv2
    _, index, part = rest.split(".", 2)
    module, leaf = part.rsplit(".", 1)
    return f"{side}.blocks.{index}.{LAYER_PARTS[module]}.{leaf}"


def byte_decoder() -> dict[str, int]:
    """GPT-2's printable-unicode <-> byte table, inverted."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


def convert(model_dir: Path, out: Path) -> None:
    from safetensors.numpy import load_file
    from transformers import WhisperFeatureExtractor

    cfg = json.loads((model_dir / "config.json").read_text())
    vocab = json.loads((model_dir / "tokenizer.json").read_text())["model"]["vocab"]
    vocab.pop("<|endoftext|>", None)  # whisper.cpp adds the special tokens itself
    filters = WhisperFeatureExtractor(feature_size=cfg["num_mel_bins"]).mel_filters.T.astype(np.float32)  # (mels, 201)
    weights = load_file(str(model_dir / "model.safetensors"))
    dec = byte_decoder()
    with open(out, "wb") as f:
        f.write(
            struct.pack(
                "i" * 13,
                GGML_MAGIC,
                cfg["vocab_size"],
                cfg["max_source_positions"],
                cfg["d_model"],
                cfg["encoder_attention_heads"],
                cfg["encoder_layers"],
                cfg["max_target_positions"],
                cfg["d_model"],
                cfg["decoder_attention_heads"],
                cfg["decoder_layers"],
                cfg["num_mel_bins"],
                1,
                filters.shape[0],
            )
        )
        f.write(struct.pack("i", filters.shape[1]))
        f.write(filters.tobytes())
        f.write(struct.pack("i", len(vocab)))
        for token, _ in sorted(vocab.items(), key=lambda kv: kv[1]):
            text = bytes(dec[c] for c in token)
            f.write(struct.pack("i", len(text)) + text)
        for hf, tensor in weights.items():
            name = ggml_name(hf)
            if name is None:
                continue
            data = tensor.squeeze()
            if name.endswith(("conv1.bias", "conv2.bias")):
                data = data.reshape(-1, 1)
            f32 = data.ndim < 2 or name in F32_NAMES
            data = data.astype(np.float32 if f32 else np.float16)
            raw = name.encode()
            f.write(struct.pack("iii", data.ndim, len(raw), 0 if f32 else 1))
            f.write(struct.pack("i" * data.ndim, *reversed(data.shape)))
            f.write(raw + data.tobytes())


if __name__ == "__main__":
    convert(Path(sys.argv[1]).expanduser(), Path(sys.argv[2]))

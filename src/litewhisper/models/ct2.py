"""Read CTranslate2 `model.bin` files and map Whisper checkpoints onto Hugging Face `WhisperForConditionalGeneration`.

The binary layout is the one written by `ctranslate2/specs/model_spec.py` (`ModelSpec._serialize`), all
little-endian:

    u32 binary_version (6) | string spec_name | u32 revision | u32 num_variables
    num_variables x ( string name | u8 rank | rank x u32 dim | u8 dtype_id | u32 num_bytes | raw bytes )
    u32 num_aliases | num_aliases x ( string alias | string target )

where `string` is `u16 length_including_NUL | utf-8 bytes | NUL` and dtype ids follow CTranslate2's DataType enum
(float32, int8, int16, int32, float16, bfloat16). Whisper's fused projections are split back into q/k/v.
"""

from __future__ import annotations

import logging
import os
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from litewhisper.constants import MULTILINGUAL_VOCAB_SIZE
from litewhisper.errors import ModelSourceError

__all__ = [
    "BINARY_VERSION",
    "DTYPES",
    "FLOAT_DTYPES",
    "HEAD_DIM",
    "CT2Model",
    "read_model_bin",
    "whisper_state_dict",
    "whisper_config",
    "whisper_from_ct2",
    "load_ct2_directory",
]

logger = logging.getLogger("litewhisper")

BINARY_VERSION = 6
DTYPES = (torch.float32, torch.int8, torch.int16, torch.int32, torch.float16, torch.bfloat16)
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
HEAD_DIM = 64  # every OpenAI Whisper size uses 64-dimensional attention heads


@dataclass(frozen=True)
class CT2Model:
    """The parsed content of a CTranslate2 `model.bin`: variables by name (aliases resolved) and metadata."""

    spec: str
    revision: int
    version: int
    variables: dict[str, torch.Tensor] = field(repr=False)
    aliases: dict[str, str] = field(default_factory=dict)

    def scalar(self, name: str, default: int | None = None) -> int | None:
        value = self.variables.get(name)
        return default if value is None else int(value.reshape(-1)[0])


class _Reader:
    """Bounds-checked little-endian cursor over the bytes of a model.bin."""

    def __init__(self, buf: bytearray, path: str):
        self.buf, self.pos, self.path = buf, 0, path

    def take(self, n: int) -> int:
        start = self.pos
        if n < 0 or start + n > len(self.buf):
            raise ModelSourceError(
                f"{self.path} is truncated or corrupt: needed {n} bytes at offset {start}, file has "
                f"{len(self.buf)}; re-download or re-convert the CTranslate2 model"
            )
        self.pos += n
        return start

    def unpack(self, fmt: str) -> int:
        size = struct.calcsize("<" + fmt)
        return struct.unpack_from("<" + fmt, self.buf, self.take(size))[0]

    def string(self) -> str:
        n = self.unpack("H")
        start = self.take(n)
        raw = bytes(self.buf[start : start + n])
        if n == 0 or raw[-1] != 0:
            raise ModelSourceError(f"{self.path} is corrupt: bad string at offset {start}")
        try:
            return raw[:-1].decode("utf-8")
        except UnicodeDecodeError as e:
            raise ModelSourceError(f"{self.path} is corrupt: string at offset {start} is not UTF-8") from e


def _read_bytes(paths: Sequence[str | os.PathLike]) -> bytearray:
    """The concatenation of `paths` (a model.bin, or its parts) read into one preallocated buffer."""
    paths = [Path(p) for p in paths]
    for p in paths:
        if not p.is_file():
            raise ModelSourceError(f"model file {p} not found; expected a CTranslate2 model.bin")
    buf = bytearray(sum(p.stat().st_size for p in paths))
    view, offset = memoryview(buf), 0
    for p in paths:
        with open(p, "rb") as f:
            while n := f.readinto(view[offset:]):
                offset += n
    return buf


def read_model_bin(path: str | os.PathLike | Sequence[str | os.PathLike], dtype: torch.dtype | None = None) -> CT2Model:
    """Parse a CTranslate2 `model.bin` (or the ordered parts of one); float variables are cast to `dtype` if given."""
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    name = str(paths[0]) if len(paths) == 1 else " + ".join(map(str, paths))
    r = _Reader(_read_bytes(paths), name)
    version = r.unpack("I")
    if version != BINARY_VERSION:
        raise ModelSourceError(
            f"{name}: CTranslate2 binary version {version}, litewhisper reads version {BINARY_VERSION}; "
            "re-convert the model with a recent ctranslate2 (ct2-transformers-converter)"
        )
    spec, revision = r.string(), r.unpack("I")
    variables: dict[str, torch.Tensor] = {}
    for _ in range(r.unpack("I")):
        var_name, tensor = _read_variable(r)
        if dtype is not None and tensor.dtype in FLOAT_DTYPES:
            tensor = tensor.to(dtype)
        variables[var_name] = tensor
    aliases = {}
    for _ in range(r.unpack("I")):
        alias, target = r.string(), r.string()
        if target not in variables:
            raise ModelSourceError(f"{name} is corrupt: alias {alias} points to unknown variable {target}")
        aliases[alias] = target
        variables[alias] = variables[target]
    if r.pos != len(r.buf):
        raise ModelSourceError(f"{name} is corrupt: {len(r.buf) - r.pos} unexpected trailing bytes")
    return CT2Model(spec=spec, revision=revision, version=version, variables=variables, aliases=aliases)


def _read_variable(r: _Reader) -> tuple[str, torch.Tensor]:
    name = r.string()
    shape = [r.unpack("I") for _ in range(r.unpack("B"))]
    dtype_id, num_bytes = r.unpack("B"), r.unpack("I")
    if dtype_id >= len(DTYPES):
        raise ModelSourceError(f"{r.path} is corrupt: variable {name} has unknown dtype id {dtype_id}")
    dtype = DTYPES[dtype_id]
    count = 1
    for d in shape:
        count *= d
    if count * dtype.itemsize != num_bytes:
        raise ModelSourceError(
            f"{r.path} is corrupt: variable {name} of shape {shape} and dtype {dtype} declares {num_bytes} bytes"
        )
    start = r.take(num_bytes)
    # zero-copy view into the file buffer; the tensor keeps the buffer alive
    tensor = torch.frombuffer(r.buf, dtype=dtype, count=count, offset=start) if count else torch.empty(0, dtype=dtype)
    return name, tensor.reshape(shape)


# ---------------------------------------------------------------- Whisper: CT2 names -> Hugging Face names

_LAYER = re.compile(r"^(encoder|decoder)/layer_(\d+)/(.+)$")
_COMMON = {
    "self_attention/layer_norm": "self_attn_layer_norm",
    "self_attention/linear_1": "self_attn.out_proj",
    "attention/layer_norm": "encoder_attn_layer_norm",
    "attention/linear_0": "encoder_attn.q_proj",
    "attention/linear_2": "encoder_attn.out_proj",
    "ffn/layer_norm": "final_layer_norm",
    "ffn/linear_0": "fc1",
    "ffn/linear_1": "fc2",
}
_TOP = {
    "encoder/conv1": "model.encoder.conv1",
    "encoder/conv2": "model.encoder.conv2",
    "encoder/layer_norm": "model.encoder.layer_norm",
    "decoder/layer_norm": "model.decoder.layer_norm",
    "decoder/embeddings": "model.decoder.embed_tokens",
    "decoder/projection": "proj_out",
}
_POSITIONS = {
    "encoder/position_encodings/encodings": "model.encoder.embed_positions.weight",
    "decoder/position_encodings/encodings": "model.decoder.embed_positions.weight",
}
_LEAF = {"gamma": "weight", "beta": "bias", "weight": "weight", "bias": "bias"}
# fused projections: CT2 concatenates [q, k, v] (self-attention) and [k, v] (cross-attention) along dim 0
_FUSED = {
    "self_attention/linear_0": ("self_attn", ("q_proj", "k_proj", "v_proj")),
    "attention/linear_1": ("encoder_attn", ("k_proj", "v_proj")),
}


def _hf_prefix(ct2_module: str) -> str | None:
    """'encoder/layer_3/ffn/linear_0' -> 'model.encoder.layers.3.fc1' (None for fused or unknown modules)."""
    if ct2_module in _TOP:
        return _TOP[ct2_module]
    m = _LAYER.match(ct2_module)
    if m and m.group(3) in _COMMON:
        return f"model.{m.group(1)}.layers.{m.group(2)}.{_COMMON[m.group(3)]}"
    return None


def _split_fused(name: str, tensor: torch.Tensor, out: dict[str, torch.Tensor]) -> bool:
    """Split a fused q/k/v or k/v weight/bias into Hugging Face tensors; False if `name` is not fused."""
    m = _LAYER.match(name)
    if not m:
        return False
    module, _, leaf = m.group(3).rpartition("/")
    if module not in _FUSED:
        return False
    attn, parts = _FUSED[module]
    prefix = f"model.{m.group(1)}.layers.{m.group(2)}.{attn}"
    for part, chunk in zip(parts, tensor.chunk(len(parts), dim=0), strict=True):
        if leaf == "bias" and part == "k_proj":
            # Whisper's key projection has no bias; a key bias adds the same q.b to every score of a query
            # row, which softmax cancels, so dropping it is exact.
            continue
        out[f"{prefix}.{part}.{_LEAF[leaf]}"] = chunk.clone()
    return True


def whisper_state_dict(ct2: CT2Model) -> dict[str, torch.Tensor]:
    """The Hugging Face `WhisperForConditionalGeneration` state dict of a CTranslate2 Whisper model."""
    if ct2.spec != "WhisperSpec":
        raise ModelSourceError(f"model.bin holds a {ct2.spec}, not a Whisper model (WhisperSpec)")
    out: dict[str, torch.Tensor] = {}
    for name, tensor in ct2.variables.items():
        if tensor.dim() == 0:
            continue  # scalar options: num_heads, activation, pre_norm, alignment heads...
        _check_float(name, tensor)
        if name in _POSITIONS:
            out[_POSITIONS[name]] = tensor
        elif not _split_fused(name, tensor, out):
            module, _, leaf = name.rpartition("/")
            prefix = _hf_prefix(module)
            if prefix is None or leaf not in _LEAF:
                raise ModelSourceError(
                    f"unexpected variable {name} {list(tensor.shape)} in a Whisper model.bin; "
                    "expected a checkpoint converted from openai/whisper"
                )
            out[f"{prefix}.{_LEAF[leaf]}"] = tensor
    if "proj_out.bias" in out:
        raise ModelSourceError("this Whisper model.bin has an output-projection bias, which Whisper does not have")
    return _unshare(out)


def _unshare(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Clone tensors that CTranslate2 aliased (e.g. all-zero biases), so that no two parameters share memory;
    only the output projection stays tied to the token embedding."""
    seen: set[int] = set()
    for key, tensor in state.items():
        if key == "proj_out.weight":
            continue
        if tensor.numel() and tensor.data_ptr() in seen:
            state[key] = tensor.clone()
        seen.add(tensor.data_ptr())
    state.setdefault("proj_out.weight", state.get("model.decoder.embed_tokens.weight"))
    return state


def _check_float(name: str, tensor: torch.Tensor) -> None:
    if tensor.dtype in (torch.int8, torch.int16) or name.endswith("_scale"):
        raise ModelSourceError(
            f"int8 checkpoints are not supported yet: variable {name} is {tensor.dtype} (quantized). Use a "
            "float16 or float32 CTranslate2 model (ct2-transformers-converter --quantization float16), or a "
            "Hugging Face Whisper directory"
        )
    if tensor.dtype not in FLOAT_DTYPES:
        raise ModelSourceError(f"variable {name} has dtype {tensor.dtype}; expected float16/float32 weights")


def _count_layers(ct2: CT2Model, side: str) -> int:
    found = {int(m.group(2)) for n in ct2.variables if (m := _LAYER.match(n)) and m.group(1) == side}
    if found != set(range(len(found))):
        raise ModelSourceError(f"model.bin {side} layers are not numbered 0..n-1: {sorted(found)}")
    return len(found)


def whisper_config(ct2: CT2Model, eot_id: int | None = None, sot_id: int | None = None):
    """A `WhisperConfig` from the variable shapes (heads from the stored num_heads, else d_model / 64)."""
    from transformers import WhisperConfig

    v = ct2.variables
    try:
        d_model, n_mels, _ = v["encoder/conv1/weight"].shape
        vocab_size = v["decoder/embeddings/weight"].shape[0]
        cfg = dict(
            vocab_size=vocab_size,
            num_mel_bins=n_mels,
            d_model=d_model,
            encoder_layers=_count_layers(ct2, "encoder"),
            decoder_layers=_count_layers(ct2, "decoder"),
            encoder_attention_heads=ct2.scalar("encoder/num_heads", d_model // HEAD_DIM),
            decoder_attention_heads=ct2.scalar("decoder/num_heads", d_model // HEAD_DIM),
            encoder_ffn_dim=v["encoder/layer_0/ffn/linear_0/weight"].shape[0],
            decoder_ffn_dim=v["decoder/layer_0/ffn/linear_0/weight"].shape[0],
            max_source_positions=v["encoder/position_encodings/encodings"].shape[0],
            max_target_positions=v["decoder/position_encodings/encodings"].shape[0],
        )
    except KeyError as e:
        raise ModelSourceError(f"model.bin lacks Whisper variable {e}; expected a CTranslate2 Whisper model") from e
    if eot_id is None:  # multilingual vocabularies put <|endoftext|> at 50257
        eot_id = 50257 if vocab_size >= MULTILINGUAL_VOCAB_SIZE else 50256
    sot_id = eot_id + 1 if sot_id is None else sot_id
    tied = "decoder/projection/weight" not in v or torch.equal(
        v["decoder/projection/weight"], v["decoder/embeddings/weight"]
    )
    return WhisperConfig(
        **cfg,
        bos_token_id=eot_id,
        eos_token_id=eot_id,
        pad_token_id=eot_id,
        decoder_start_token_id=sot_id,
        tie_word_embeddings=tied,
    )


def whisper_from_ct2(ct2: CT2Model, config=None):
    """A `WhisperForConditionalGeneration` (eval mode) holding the weights of a CTranslate2 Whisper model."""
    from transformers import WhisperForConditionalGeneration

    config = config or whisper_config(ct2)
    state = whisper_state_dict(ct2)
    dtype = state["model.encoder.conv1.weight"].dtype
    with torch.device("meta"):
        model = WhisperForConditionalGeneration(config)
    expected = set(model.state_dict())
    if set(state) != expected:
        missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
        raise ModelSourceError(
            f"model.bin does not match a Whisper model: missing {missing[:5]}, unexpected {extra[:5]}"
        )
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as e:  # shape mismatches
        raise ModelSourceError(f"model.bin weights do not fit the Whisper shapes derived from it: {e}") from e
    if config.tie_word_embeddings:
        model.proj_out.weight = model.model.decoder.embed_tokens.weight
    return model.to(dtype).eval()


def load_ct2_directory(
    model_dir: str | os.PathLike,
    model_files: Sequence[str | os.PathLike] | None = None,
    dtype: torch.dtype | None = None,
):
    """(model, processor) from a CTranslate2 Whisper directory (`model.bin`, `config.json`, `tokenizer.json`).

    `model_files` overrides the weights file(s), e.g. the ordered parts of a split model.bin. `dtype` None keeps
    the stored float dtype.
    """
    from litewhisper.models.processor import build_processor, generation_config_from_ct2, read_ct2_config

    model_dir = Path(model_dir)
    ct2 = read_model_bin(model_files or [model_dir / "model.bin"], dtype=dtype)
    if ct2.spec != "WhisperSpec":
        raise ModelSourceError(f"{model_dir} holds a CTranslate2 {ct2.spec}, not a Whisper model (WhisperSpec)")
    shapes = whisper_config(ct2)
    processor = build_processor(model_dir, num_mel_bins=shapes.num_mel_bins, vocab_size=shapes.vocab_size)
    gen = generation_config_from_ct2(processor.tokenizer, read_ct2_config(model_dir), shapes.vocab_size)
    model = whisper_from_ct2(ct2, whisper_config(ct2, eot_id=gen.eos_token_id, sot_id=gen.decoder_start_token_id))
    model.generation_config = gen
    return model, processor

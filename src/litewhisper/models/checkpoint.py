"""Export and import checkpoints in the Hugging Face *lite-whisper* format.

A lite-whisper checkpoint is a Whisper checkpoint whose config says `model_type: "lite-whisper"` and lists, in
`low_rank_config`, one `{linear name: rank}` dict per encoder layer (dense linears omitted). Low-rank linears
are stored as `...q_proj.weight1` (in x k), `...q_proj.weight2` (k x out) and `...q_proj.bias`. The two
remote-code files from `litewhisper/hf_lite` travel with the checkpoint, so
`AutoModel.from_pretrained(dir, trust_remote_code=True)` works where litewhisper is not installed.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from litewhisper.atomic import atomic_directory
from litewhisper.errors import ModelSourceError
from litewhisper.models.hf_lite.modeling_lite_whisper import ATTENTION_NAMES, LOW_RANK_NAMES

__all__ = [
    "HF_LITE_DIR",
    "REMOTE_CODE_FILES",
    "ARCHITECTURE",
    "AUTO_MAP",
    "CheckpointError",
    "check_low_rank_config",
    "check_checkpoint",
    "load_lite_whisper_model",
    "low_rank_config_of",
    "verify_checkpoint",
    "save_checkpoint",
    "register_auto_classes",
    "stored_dtype",
    "weights_size",
    "safetensors_damage",
    "check_safetensors",
]

log = logging.getLogger("litewhisper")

HF_LITE_DIR = Path(__file__).resolve().parent / "hf_lite"
REMOTE_CODE_FILES = ("configuration_lite_whisper.py", "modeling_lite_whisper.py")
ARCHITECTURE = "LiteWhisperForConditionalGeneration"
AUTO_MAP = {
    "AutoConfig": "configuration_lite_whisper.LiteWhisperConfig",
    "AutoModel": f"modeling_lite_whisper.{ARCHITECTURE}",
    "AutoModelForSpeechSeq2Seq": f"modeling_lite_whisper.{ARCHITECTURE}",
}
# Config keys that describe the source checkpoint rather than the lite-whisper one.
_DROPPED_CONFIG_KEYS = (
    "model_type",
    "architectures",
    "auto_map",
    "low_rank_config",
    "transformers_version",
    "_name_or_path",
    "_commit_hash",
    "_attn_implementation_autoset",
)
# Largest accepted |reloaded - in-memory| / max(1, |in-memory|) of the encoder output after saving.
_VERIFY_TOLERANCE = {torch.float32: 1e-3, torch.float64: 1e-8, torch.float16: 1e-2, torch.bfloat16: 5e-2}


class CheckpointError(ModelSourceError):
    """A lite-whisper checkpoint that cannot be written, verified or loaded."""


def register_auto_classes() -> None:
    """Make transformers' Auto classes know `lite-whisper` as local code (done when this module is imported).

    Without it, AutoProcessor / AutoTokenizer.from_pretrained(checkpoint) read config.json's auto_map and ask
    interactively whether to run the shipped remote code, although the processor is a stock WhisperProcessor.
    """
    from transformers import AutoConfig, AutoModel, AutoModelForSpeechSeq2Seq

    from litewhisper.models.hf_lite.configuration_lite_whisper import LiteWhisperConfig
    from litewhisper.models.hf_lite.modeling_lite_whisper import LiteWhisperForConditionalGeneration

    AutoConfig.register(LiteWhisperConfig.model_type, LiteWhisperConfig, exist_ok=True)
    for auto in (AutoModel, AutoModelForSpeechSeq2Seq):
        auto.register(LiteWhisperConfig, LiteWhisperForConditionalGeneration, exist_ok=True)


register_auto_classes()


# ----------------------------------------------------------------------------------------------------- layout
def _linear_dims(config: Mapping[str, Any], name: str) -> tuple[int, int]:
    """(in_features, out_features) of encoder linear `name`."""
    d, f = int(config["d_model"]), int(config["encoder_ffn_dim"])
    return {"fc1": (d, f), "fc2": (f, d)}.get(name, (d, d))


def _linear_key(prefix: str, layer: int, name: str) -> str:
    sub = "self_attn." if name in ATTENTION_NAMES else ""
    return f"{prefix}encoder.layers.{layer}.{sub}{name}"


def _layout_problems(
    low_rank_config: Any, shapes: Mapping[str, tuple[int, ...]], config: Mapping[str, Any]
) -> list[str]:
    """Every disagreement between `low_rank_config` and the tensor names/shapes in `shapes`."""
    n_layers = int(config["encoder_layers"])
    if not isinstance(low_rank_config, list) or len(low_rank_config) != n_layers:
        got = len(low_rank_config) if isinstance(low_rank_config, list) else type(low_rank_config).__name__
        return [f"low_rank_config must be a list of {n_layers} dicts (one per encoder layer), got {got}"]
    prefix = "model." if any(k.startswith("model.encoder.") for k in shapes) else ""
    problems, expected = [], set()
    for i, ranks in enumerate(low_rank_config):
        if not isinstance(ranks, dict) or set(ranks) - set(LOW_RANK_NAMES):
            problems.append(f"low_rank_config[{i}] = {ranks!r}: expected a dict with keys among {LOW_RANK_NAMES}")
            continue
        for name in LOW_RANK_NAMES:
            key, (d_in, d_out) = _linear_key(prefix, i, name), _linear_dims(config, name)
            k = ranks.get(name)
            if k is None:
                want = {f"{key}.weight": (d_out, d_in)}
            elif not isinstance(k, int) or isinstance(k, bool) or k < 1:
                problems.append(f"low_rank_config[{i}][{name!r}] = {k!r}: expected a positive integer rank")
                continue
            else:
                want = {f"{key}.weight1": (d_in, k), f"{key}.weight2": (k, d_out), f"{key}.bias": (d_out,)}
            expected.update(want)
            for tensor, shape in want.items():
                if tensor not in shapes:
                    problems.append(f"{tensor}: missing (expected shape {shape})")
                elif tuple(shapes[tensor]) != shape:
                    problems.append(f"{tensor}: shape {tuple(shapes[tensor])}, expected {shape}")
            for other in (".weight", ".weight1", ".weight2"):
                if key + other in shapes and key + other not in want:
                    problems.append(
                        f"{key}{other}: present, but low_rank_config says {'rank ' + str(k) if k else 'dense'}"
                    )
    stray = sorted(k for k in shapes if k.endswith((".weight1", ".weight2")) and k not in expected)
    problems += [f"{k}: low-rank tensor outside the encoder linears the format allows" for k in stray]
    return problems


def check_low_rank_config(
    low_rank_config: Any, shapes: Mapping[str, tuple[int, ...]], config: Mapping[str, Any], source: str = "checkpoint"
) -> None:
    """Raise CheckpointError unless `low_rank_config` agrees exactly with the tensor names and shapes."""
    problems = _layout_problems(low_rank_config, shapes, config)
    if problems:
        shown = "\n  ".join(problems[:8]) + (f"\n  ... and {len(problems) - 8} more" if len(problems) > 8 else "")
        raise CheckpointError(
            f"{source}: low_rank_config does not match the weights ({len(problems)} problem(s)):\n  {shown}\n"
            "The config.json and the safetensors files come from different models; re-export the checkpoint "
            "with `litewhisper compress` or fix low_rank_config to list the rank of every low-rank linear."
        )


def safetensors_damage(file: str | Path) -> str | None:
    """Why a .safetensors file is unreadable (truncated, bad header), or None if its layout is whole.

    Reads only the header: the data section must be exactly as long as the tensors' offsets say.
    """
    file = Path(file)
    size = file.stat().st_size
    if size < 8:
        return f"{size} bytes, shorter than the 8-byte header length"
    with open(file, "rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        if 8 + header_len > size:
            return f"truncated: {size:,} bytes, the header alone needs {8 + header_len:,}"
        try:
            header = json.loads(f.read(header_len))
        except ValueError:
            return "the header is not valid JSON"
    ends = [
        entry["data_offsets"][1]
        for key, entry in header.items()
        if key != "__metadata__" and isinstance(entry, dict) and "data_offsets" in entry
    ]
    needed = 8 + header_len + max(ends, default=0)
    if size < needed:
        return f"truncated: {size:,} bytes of the {needed:,} its header describes"
    return None


def check_safetensors(path: str | Path, fix: str) -> None:
    """Raise CheckpointError naming every damaged .safetensors file of directory `path`, and `fix`."""
    damaged = [(f, why) for f in sorted(Path(path).glob("*.safetensors")) if (why := safetensors_damage(f))]
    if damaged:
        listing = "; ".join(f"{f} ({why})" for f, why in damaged)
        raise CheckpointError(f"damaged weights file: {listing}. {fix}")


def _safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape of a (possibly sharded) safetensors checkpoint, read from the headers only."""
    from safetensors import safe_open

    index = path / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (path / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        raise CheckpointError(
            f"{path}: no model.safetensors (or model.safetensors.index.json) found; "
            "a lite-whisper checkpoint stores its weights as safetensors"
        )
    shapes: dict[str, tuple[int, ...]] = {}
    for name in files:
        with safe_open(str(path / name), framework="pt") as f:
            for key in f.keys():
                shapes[key] = tuple(f.get_slice(key).get_shape())
    return shapes


def check_checkpoint(path: str | Path) -> dict[str, Any]:
    """Check a lite-whisper checkpoint directory's config against its tensors; return the config dict."""
    path = Path(path)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{path}: no config.json; expected a lite-whisper checkpoint directory")
    config = json.loads(config_file.read_text())
    if config.get("model_type") != "lite-whisper":
        raise CheckpointError(
            f"{path}: config.json has model_type {config.get('model_type')!r}, expected 'lite-whisper'"
        )
    check_safetensors(
        path,
        "The checkpoint was not completely written or copied: copy it again, or re-export it "
        "with `litewhisper compress`.",
    )
    check_low_rank_config(config.get("low_rank_config"), _safetensors_shapes(path), config, source=str(path))
    return config


# ------------------------------------------------------------------------------------------------------ load
def _as_dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    resolved = getattr(torch, str(dtype).removeprefix("torch."), None)
    if not isinstance(resolved, torch.dtype):
        raise CheckpointError(f"unknown dtype {dtype!r}; expected e.g. 'float32', 'float16' or 'bfloat16'")
    return resolved


def load_lite_whisper_model(
    path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | str = torch.float32
) -> nn.Module:
    """Load a lite-whisper checkpoint (ours or a published efficient-speech one) without remote code."""
    from litewhisper.models.hf_lite.modeling_lite_whisper import LiteWhisperForConditionalGeneration
    from litewhisper.progress import quiet_transformers

    path = Path(path)
    check_checkpoint(path)
    try:
        with quiet_transformers():  # no "model of type lite-whisper to instantiate a model of type ``"
            model = LiteWhisperForConditionalGeneration.from_pretrained(str(path), dtype=_as_dtype(dtype))
    except (OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: cannot load the lite-whisper checkpoint: {exc}") from exc
    return model.to(device).eval()


# ------------------------------------------------------------------------------------------------------ save
def low_rank_config_of(model: nn.Module) -> list[dict[str, int]]:
    """One {linear name: rank} dict per encoder layer; a linear is low-rank when it has weight1/weight2."""
    config = []
    for layer in _encoder(model).layers:
        ranks = {}
        for name in LOW_RANK_NAMES:
            module = getattr(layer.self_attn if name in ATTENTION_NAMES else layer, name)
            if hasattr(module, "weight1") and hasattr(module, "weight2"):
                ranks[name] = int(module.weight1.shape[1])
        config.append(ranks)
    return config


def _encoder(model: nn.Module) -> nn.Module:
    encoder = getattr(getattr(model, "model", None), "encoder", None)
    if encoder is None or not hasattr(encoder, "layers"):
        raise CheckpointError(
            f"expected a WhisperForConditionalGeneration (model.model.encoder.layers), got {type(model).__name__}"
        )
    return encoder


def _export_state_dict(
    model: nn.Module, low_rank_config: list[dict[str, int]], dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    """CPU tensors in the published layout (floating ones in `dtype`): every low-rank linear has a bias; the
    tied head is dropped."""
    state = {
        k: v.detach().to("cpu", dtype if v.is_floating_point() else v.dtype).contiguous()
        for k, v in model.state_dict().items()
    }
    for i, ranks in enumerate(low_rank_config):
        for name in ranks:
            bias_key = _linear_key("model.", i, name) + ".bias"
            if bias_key not in state:  # a bias-free low-rank linear gets an explicit zero bias
                weight2 = state[_linear_key("model.", i, name) + ".weight2"]
                state[bias_key] = torch.zeros(weight2.shape[1], dtype=weight2.dtype)
    if getattr(model.config, "tie_word_embeddings", True) and "proj_out.weight" in state:
        del state["proj_out.weight"]
    # Tensors that share storage (tied or aliased) must be written as separate copies.
    seen: set[int] = set()
    for key, value in state.items():
        ptr = value.untyped_storage().data_ptr()
        state[key] = value.clone() if ptr in seen else value
        seen.add(ptr)
    return state


def _lite_config(model: nn.Module, low_rank_config: list[dict[str, int]], dtype: torch.dtype):
    from litewhisper.models.hf_lite.configuration_lite_whisper import LiteWhisperConfig

    source = {k: v for k, v in model.config.to_dict().items() if k not in _DROPPED_CONFIG_KEYS}
    source["dtype"] = str(dtype).removeprefix("torch.")
    config = LiteWhisperConfig(low_rank_config=low_rank_config, **source)
    config.architectures = [ARCHITECTURE]
    config.auto_map = dict(AUTO_MAP)
    return config


def _write_checkpoint(model: nn.Module, out: Path, processor: Any, dtype: torch.dtype) -> None:
    from safetensors.torch import save_file
    from transformers import GenerationConfig

    low_rank_config = low_rank_config_of(model)
    config = _lite_config(model, low_rank_config, dtype)
    state = _export_state_dict(model, low_rank_config, dtype)
    check_low_rank_config(
        low_rank_config, {k: tuple(v.shape) for k, v in state.items()}, config.to_dict(), source="in-memory model"
    )
    config.to_json_file(str(out / "config.json"), use_diff=False)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    generation_config = getattr(model, "generation_config", None) or GenerationConfig.from_model_config(config)
    generation_config.save_pretrained(str(out))
    if processor is not None:
        processor.save_pretrained(str(out))
    else:
        log.warning("no processor given: the checkpoint will have no tokenizer or feature-extractor files")
    for name in REMOTE_CODE_FILES:
        shutil.copyfile(HF_LITE_DIR / name, out / name)


def _rounded_encoder(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """The encoder with its floating weights rounded to `dtype` (and back): what a `dtype` checkpoint holds."""
    encoder = _encoder(model)
    param = next(encoder.parameters())
    if dtype == param.dtype:
        return encoder
    rounded = copy.deepcopy(encoder)
    for tensor in list(rounded.parameters()) + list(rounded.buffers()):
        if tensor.is_floating_point():
            tensor.data = tensor.data.to(dtype).to(param.dtype)
    return rounded


@torch.no_grad()
def verify_checkpoint(model: nn.Module, path: str | Path, dtype: torch.dtype | None = None) -> float:
    """Reload `path` and compare one encoder forward pass with `model` (its weights rounded to the checkpoint's
    `dtype`, default the model's); return the relative max error."""
    param = next(model.parameters())
    config = model.config
    generator = torch.Generator().manual_seed(0)
    # (1, mel bins, 2 * max_source_positions): the fixed 30-s window the encoder expects
    features = torch.randn(1, config.num_mel_bins, 2 * config.max_source_positions, generator=generator)
    features = features.to(param.device, param.dtype)
    expected = _rounded_encoder(model, dtype or param.dtype)(features).last_hidden_state
    reloaded = load_lite_whisper_model(path, device=param.device, dtype=param.dtype)
    got = _encoder(reloaded)(features).last_hidden_state
    del reloaded
    error = ((got.float() - expected.float()).abs().max() / expected.float().abs().max().clamp(min=1.0)).item()
    tolerance = _VERIFY_TOLERANCE.get(param.dtype, 1e-2)
    if not error <= tolerance:
        raise CheckpointError(
            f"verification failed: the reloaded checkpoint's encoder output differs from the "
            f"in-memory model by {error:.3g} (relative max; tolerance {tolerance:g}); "
            "nothing was written"
        )
    return error


def stored_dtype(path: str | Path | None) -> torch.dtype | None:
    """The weights dtype a model directory's config.json declares (`dtype` / `torch_dtype`), if any."""
    if path is None:
        return None
    try:
        config = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    name = config.get("dtype") or config.get("torch_dtype") if isinstance(config, dict) else None
    value = getattr(torch, str(name), None) if name else None
    return value if value in (torch.float32, torch.float16, torch.bfloat16) else None


def weights_size(path: str | Path) -> int:
    """Bytes of a model directory's weight files (safetensors, pytorch_model*.bin or CTranslate2 model.bin)."""
    path = Path(path)
    files = [
        p
        for p in path.iterdir()
        if p.is_file()
        and (
            p.suffix == ".safetensors"
            or p.name == "model.bin"
            or p.name.startswith("pytorch_model")
            and p.suffix == ".bin"
        )
    ]
    return sum(p.stat().st_size for p in files)


def save_checkpoint(
    model_or_bundle: Any,
    out_dir: str | Path,
    processor: Any = None,
    overwrite: bool = False,
    dtype: torch.dtype | str | None = None,
) -> Path:
    """Write a lite-whisper checkpoint directory, reload it and check the encoder output matches.

    `model_or_bundle` is a WhisperForConditionalGeneration whose low-rank encoder linears have
    weight1/weight2 (e.g. LowRankLinear), or a WhisperBundle (its processor is used unless one is given).
    `dtype`: of the stored weights; default the source model's (a bundle's directory config, e.g. float16 for
    the built-in tiny.en, so the checkpoint is no bigger than its source), else the in-memory model's.
    The directory appears only when complete and verified; an existing non-empty one is refused
    unless `overwrite`.
    """
    model = _unwrap(model_or_bundle)
    if processor is None:
        processor = getattr(model_or_bundle, "processor", None)
    dtype = (
        _as_dtype(dtype)
        if dtype is not None
        else (stored_dtype(getattr(model_or_bundle, "path", None)) or next(model.parameters()).dtype)
    )
    out_dir = Path(out_dir)
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        _write_checkpoint(model, tmp, processor, dtype)
        error = verify_checkpoint(model, tmp, dtype)
    ranks = low_rank_config_of(model)
    log.info(
        "saved lite-whisper checkpoint %s (%s, %d low-rank linears; reload check: max relative error %.2g)",
        out_dir,
        str(dtype).removeprefix("torch."),
        sum(len(r) for r in ranks),
        error,
    )
    return out_dir


def _unwrap(model_or_bundle: Any) -> nn.Module:
    """The WhisperForConditionalGeneration itself, or the `.model` of a WhisperBundle."""
    for candidate in (model_or_bundle, getattr(model_or_bundle, "model", None)):
        if isinstance(candidate, nn.Module) and hasattr(getattr(candidate, "model", None), "encoder"):
            return candidate
    raise CheckpointError(
        f"expected a WhisperForConditionalGeneration or a WhisperBundle, got {type(model_or_bundle).__name__}"
    )

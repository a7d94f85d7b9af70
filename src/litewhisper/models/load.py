"""One resolver for every model source: `load_model(source, device=..., dtype=...) -> WhisperBundle`.

Sources, in the order they are tried:
  1. a built-in name (`tiny.en`, `base`): converted once into the cache, then loaded from there;
  2. a local directory: lite-whisper checkpoint (config.json model_type "lite-whisper"), CTranslate2 /
     faster-whisper (model.bin, converted in memory), or Hugging Face Whisper (from_pretrained);
  3. a Hugging Face hub id (`openai/whisper-large-v3-turbo`), when the network allows.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from litewhisper.constants import MULTILINGUAL_VOCAB_SIZE
from litewhisper.errors import LiteWhisperError, ModelSourceError
from litewhisper.models.builtin import BUILTIN_MODELS, builtin_model_dir, is_builtin

__all__ = ["HF_WEIGHT_FILES", "ATTENTION_MODES", "WhisperBundle", "load_model"]

logger = logging.getLogger("litewhisper")

HF_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
ATTENTION_MODES = ("auto", "standard")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class WhisperBundle:
    """A loaded Whisper model with its processor. `path` is the local directory it came from (None for hub ids)."""

    model: Any  # WhisperForConditionalGeneration (or the lite-whisper subclass)
    processor: Any  # WhisperProcessor
    name: str
    path: Path | None

    @property
    def encoder(self) -> torch.nn.Module:
        return self.model.get_encoder()

    @property
    def is_multilingual(self) -> bool:
        flag = getattr(self.model.generation_config, "is_multilingual", None)
        return bool(flag) if flag is not None else self.model.config.vocab_size >= MULTILINGUAL_VOCAB_SIZE

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype


def _check_device(device: str | torch.device) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise LiteWhisperError(f"device {device!r} is not a torch device; use 'cpu' or 'cuda'") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise LiteWhisperError(
            f"device {device!r} requested but CUDA is not available here: use --device cpu (device='cpu' in Python)"
        )
    return dev


def _check_dtype(dtype: torch.dtype | str) -> torch.dtype:
    value = getattr(torch, dtype, None) if isinstance(dtype, str) else dtype
    if value not in (torch.float32, torch.float16, torch.bfloat16):
        raise LiteWhisperError(f"dtype {dtype!r} is not supported; use float32, float16 or bfloat16")
    return value


def load_model(
    source: str | os.PathLike,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str = torch.float32,
    attention: str = "auto",
    threads: int | None = None,
):
    """Load a Whisper model + processor from a built-in name, a local directory or a hub id (see module doc).
    A `litewhisper export` directory loads as a `DeployedWhisper` (onnxruntime + CTranslate2; `threads`:
    intra-op threads) that the decoder runs like a bundle.

    attention: "auto" runs a lite-whisper encoder's self-attention in the reduced dimension wherever its ranks
    save FLOPs (`use_reduced_attention`, numerically the same); "standard" keeps the ordinary modules.
    """
    from litewhisper.models.deployed import is_export, load_deployed

    if not is_builtin(source) and is_export(Path(source).expanduser()):  # `litewhisper export` dir: no torch
        return load_deployed(Path(source).expanduser(), threads=threads)
    dev, dtype = _check_device(device), _check_dtype(dtype)
    if attention not in ATTENTION_MODES:
        raise LiteWhisperError(f"attention must be one of {ATTENTION_MODES}, got {attention!r}")
    if is_builtin(source):
        path = builtin_model_dir(str(source))
        model, processor = _load_hf_dir(path, dtype)
        return _bundle(model, processor, str(source), path, dev, attention)
    path = Path(source).expanduser()
    if path.exists():
        model, processor = _load_local(path, dev, dtype)
        return _bundle(model, processor, path.name, path, dev, attention)
    if _HUB_ID.match(str(source)) and not str(source).startswith((".", "~")):
        model, processor = _load_hub(str(source), dtype)
        return _bundle(model, processor, str(source), None, dev, attention)
    raise ModelSourceError(
        f"model source {str(source)!r} not found: expected a built-in name ({', '.join(BUILTIN_MODELS)}), an "
        "existing local Whisper directory (Hugging Face, CTranslate2 / faster-whisper, or lite-whisper), or a "
        "Hugging Face hub id like openai/whisper-large-v3-turbo"
    )


def _bundle(model, processor, name: str, path: Path | None, device: torch.device, attention: str) -> WhisperBundle:
    _ensure_generation_config(model, processor)
    if attention == "auto" and getattr(model.config, "model_type", None) == "lite-whisper":
        from litewhisper.attention.reduced import use_reduced_attention

        use_reduced_attention(model, mode="auto")
    return WhisperBundle(model=model.to(device).eval(), processor=processor, name=name, path=path)


def _read_config(path: Path) -> dict[str, Any]:
    """config.json of a model directory ({} if it has none); an unreadable one is an error, not "no model"."""
    file = path / "config.json"
    if not file.is_file():
        return {}
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ModelSourceError(
            f"{file} is unreadable: not valid JSON ({e.msg}: line {e.lineno}, column {e.colno}; the file "
            f"has {file.stat().st_size} bytes, truncated?); copy or save the model again"
        ) from e
    except (OSError, UnicodeDecodeError) as e:
        raise ModelSourceError(f"{file} is unreadable ({e}); check its permissions or copy the model again") from e
    if not isinstance(config, dict):
        raise ModelSourceError(f"{file} holds a JSON {type(config).__name__}, expected an object; copy the model again")
    return config


def _load_local(path: Path, device: torch.device, dtype: torch.dtype):
    """(model, processor) from a local directory of any supported layout."""
    if not path.is_dir():
        raise ModelSourceError(
            f"{path} is a file; expected a model directory (the folder that contains config.json and the weights)"
        )
    config = _read_config(path)
    if config.get("model_type") == "lite-whisper":
        from litewhisper.models.checkpoint import load_lite_whisper_model

        model = load_lite_whisper_model(path, device=device, dtype=dtype)
        return model, _load_processor(path, model.config)
    if (path / "model.bin").is_file():
        from litewhisper.models.ct2 import load_ct2_directory

        model, processor = load_ct2_directory(path, dtype=dtype)
        return model, processor
    if any((path / f).is_file() for f in HF_WEIGHT_FILES) and config:
        from litewhisper.models.checkpoint import check_safetensors

        check_safetensors(path, "The model was not completely written or copied: copy or save it again.")
        return _load_hf_dir(path, dtype)
    present = sorted(p.name for p in path.iterdir())[:10]
    raise ModelSourceError(
        f"{path} holds no model files (found: {present or 'nothing'}); expected a Hugging Face Whisper directory "
        "(config.json + model.safetensors), a CTranslate2 / faster-whisper directory (model.bin + config.json + "
        "tokenizer.json) or a lite-whisper checkpoint"
    )


def _load_hf_dir(path: Path, dtype: torch.dtype):
    from transformers import WhisperForConditionalGeneration

    expected = (
        "expected the output of WhisperForConditionalGeneration.save_pretrained, with weights whose "
        "shapes match config.json; re-save the model or pass the right directory"
    )
    try:
        model, info = WhisperForConditionalGeneration.from_pretrained(path, dtype=dtype, output_loading_info=True)
    except (OSError, ValueError, RuntimeError) as e:
        raise ModelSourceError(
            f"cannot load the Hugging Face Whisper model in {path}: {str(e)[:300]}; {expected}"
        ) from e
    if info.get("missing_keys"):  # transformers would silently leave them randomly initialised
        missing = sorted(info["missing_keys"])
        raise ModelSourceError(f"{path} lacks {len(missing)} weights (e.g. {missing[:3]}); {expected}")
    return model, _load_processor(path, model.config)


def _load_processor(path: Path, config):
    """The processor saved in `path`, else one built from its tokenizer.json."""
    from transformers import WhisperProcessor

    from litewhisper.models.processor import build_processor

    has_features = any((path / f).is_file() for f in ("preprocessor_config.json", "processor_config.json"))
    if has_features and (path / "tokenizer.json").is_file():
        try:
            # trust_remote_code=False: a lite-whisper config.json has an auto_map, and AutoTokenizer would
            # otherwise prompt interactively for 15 s before falling back to the plain config
            return WhisperProcessor.from_pretrained(path, trust_remote_code=False)
        except (OSError, ValueError) as e:
            logger.warning("processor files in %s unreadable (%s); rebuilding from tokenizer.json", path, e)
    return build_processor(path, num_mel_bins=config.num_mel_bins, vocab_size=config.vocab_size)


def _hub_offline() -> bool:
    return any(
        os.environ.get(v, "").lower() in ("1", "true", "yes", "on") for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _hub_reachable(timeout: float = 3.0) -> bool:
    """A quick TCP check of the hub endpoint, so an offline machine fails in seconds, not after retries."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True  # behind a proxy a direct connection proves nothing; let the hub client try
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def _from_hub(repo_id: str, dtype: torch.dtype, local_only: bool):
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    model = WhisperForConditionalGeneration.from_pretrained(repo_id, dtype=dtype, local_files_only=local_only)
    return model, WhisperProcessor.from_pretrained(repo_id, local_files_only=local_only)


def _load_hub(repo_id: str, dtype: torch.dtype):
    """A hub model from the local hub cache, else downloaded when the hub is reachable."""
    hint = (
        f"no local directory {repo_id!r} exists either; pass a local directory (e.g. one saved with "
        f"save_pretrained, or a CTranslate2 model) or a built-in name ({', '.join(BUILTIN_MODELS)})"
    )
    try:
        return _from_hub(repo_id, dtype, local_only=True)
    except Exception:  # not in the local hub cache
        pass
    if _hub_offline():
        raise ModelSourceError(
            f"cannot load {repo_id!r}: the Hugging Face hub is offline (HF_HUB_OFFLINE is "
            f"set) and the model is not in the local hub cache; {hint}"
        )
    if not _hub_reachable():
        raise ModelSourceError(
            f"cannot load {repo_id!r}: the Hugging Face hub is unreachable from this machine "
            f"(offline?) and the model is not in the local hub cache; {hint}"
        )
    try:
        return _from_hub(repo_id, dtype, local_only=False)
    except Exception as e:  # hub errors come in many types (OSError, HTTP, connection, timeout)
        raise ModelSourceError(
            f"cannot load {repo_id!r} from the Hugging Face hub ({type(e).__name__}: "
            f"{str(e)[:200]}); check the id, or {hint}"
        ) from e


def _ensure_generation_config(model, processor) -> None:
    """Give models without a Whisper generation config (e.g. bare HF dirs) one built from the tokenizer."""
    from litewhisper.models.processor import build_generation_config

    gen = model.generation_config
    if getattr(gen, "no_timestamps_token_id", None) is None:
        model.generation_config = build_generation_config(
            processor.tokenizer,
            vocab_size=model.config.vocab_size,
            suppress_tokens=getattr(gen, "suppress_tokens", None) or None,
            begin_suppress_tokens=getattr(gen, "begin_suppress_tokens", None) or None,
            alignment_heads=getattr(gen, "alignment_heads", None),
            max_length=model.config.max_target_positions,
        )

"""Progress reporting through one switch: bars are on unless a caller is inside `quiet()`.

Library functions never take a `progress` flag; they wrap long loops in `progress_bar(...)`. The CLI's
`--quiet` enters `quiet()` once, and so does any caller that nests one stage inside another; `quiet()` also turns
off the Hugging Face libraries' own bars ("Loading weights", "Writing model shards", downloads). Third-party
warnings that are not the user's business are silenced here too (`foreign_noise_silenced`).
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import sys
import warnings
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm

__all__ = ["progress_bar", "quiet", "progress_enabled", "quiet_transformers", "foreign_noise_silenced"]

T = TypeVar("T")
_ENABLED: contextvars.ContextVar[bool] = contextvars.ContextVar("litewhisper_progress", default=True)


def progress_enabled() -> bool:
    """True unless progress bars were switched off with `quiet()`."""
    return _ENABLED.get()


@contextlib.contextmanager
def quiet(enabled: bool = True) -> Iterator[None]:
    """Inside this context no progress bar is shown, litewhisper's or Hugging Face's (`quiet(False)`: no-op)."""
    if not enabled:
        yield
        return
    token = _ENABLED.set(False)
    try:
        with _hugging_face_bars_off():
            yield
    finally:
        _ENABLED.reset(token)


def progress_bar(iterable: Iterable[T] | None = None, **kwargs) -> tqdm:
    """A tqdm bar on stderr, disabled inside `quiet()`; same arguments as tqdm."""
    kwargs.setdefault("file", sys.stderr)
    kwargs["disable"] = kwargs.get("disable", False) or not progress_enabled()
    return tqdm(iterable, **kwargs)


_HF_BARS_ENV = "HF_HUB_DISABLE_PROGRESS_BARS"  # read by huggingface_hub (and so transformers) on import


@contextlib.contextmanager
def _hugging_face_bars_off() -> Iterator[None]:
    """transformers' and huggingface_hub's bars off: through their switches where they are imported, else through
    the variable they read on import (never imported here: a quiet command that does not need them stays light).
    A library first imported inside the block keeps its bars off."""
    hf, hub = sys.modules.get("transformers.utils.logging"), sys.modules.get("huggingface_hub.utils")
    hf_on = hf is not None and hf.is_progress_bar_enabled()
    hub_on = hub is not None and not hub.are_progress_bars_disabled()
    env = os.environ.get(_HF_BARS_ENV)
    os.environ[_HF_BARS_ENV] = "1"
    _switch(hf_on and hf.disable_progress_bar, hub_on and hub.disable_progress_bars)
    try:
        yield
    finally:
        if env is None:
            os.environ.pop(_HF_BARS_ENV, None)
        else:
            os.environ[_HF_BARS_ENV] = env
        _switch(hub_on and hub.enable_progress_bars, hf_on and hf.enable_progress_bar)


def _switch(*calls) -> None:
    """Call each switch (falsy: skip) without the hub's warning that its environment variable takes priority."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Cannot (en|dis)able progress bars", category=UserWarning)
        for call in calls:
            if call:
                call()


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' routine warnings (max_length vs max_new_tokens on every `generate`, "You are using
    a model of type lite-whisper to instantiate..." on loading); its errors still show."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


# Third-party warnings about their own internals: (category, message regex, module regex) for warnings.filterwarnings
FOREIGN_WARNINGS = (
    # transformers 5 renames WhisperDecoder.forward's past_key_values to cache; we pass past_key_values so that
    # older versions (>= 4.48) work too
    (FutureWarning, r"`past_key_values` is deprecated", r"transformers\."),
)
# onnxruntime's quantizer advises shape-inference pre-processing (for static quantization) on the root logger
_FOREIGN_LOG_RECORDS = (("onnxruntime", "pre-processing before quantization"),)  # (path part, message part)


class _ForeignLogFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not any(path in record.pathname and text in str(record.msg) for path, text in _FOREIGN_LOG_RECORDS)


@contextlib.contextmanager
def foreign_noise_silenced() -> Iterator[None]:
    """Inside this context the third-party warnings and log records listed above are dropped; nothing else is."""
    root, log_filter = logging.getLogger(), _ForeignLogFilter()
    root.addFilter(log_filter)
    try:
        with warnings.catch_warnings():
            for category, message, module in FOREIGN_WARNINGS:
                warnings.filterwarnings("ignore", message=message, category=category, module=module)
            yield
    finally:
        root.removeFilter(log_filter)

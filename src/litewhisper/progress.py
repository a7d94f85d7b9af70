"""Progress reporting through one switch: bars are on unless a caller is inside `quiet()`.

Library functions never take a `progress` flag; they wrap long loops in `progress_bar(...)`. The CLI's
`--quiet` enters `quiet()` once, and so does any caller that nests one stage inside another.
"""

from __future__ import annotations

import contextlib
import contextvars
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm

__all__ = ["progress_bar", "quiet", "progress_enabled", "quiet_transformers"]

T = TypeVar("T")
_ENABLED: contextvars.ContextVar[bool] = contextvars.ContextVar("litewhisper_progress", default=True)


def progress_enabled() -> bool:
    """True unless progress bars were switched off with `quiet()`."""
    return _ENABLED.get()


@contextlib.contextmanager
def quiet(enabled: bool = True) -> Iterator[None]:
    """Inside this context no litewhisper progress bar is shown (`quiet(False)` is a no-op)."""
    token = _ENABLED.set(False) if enabled else None
    try:
        yield
    finally:
        if token is not None:
            _ENABLED.reset(token)


def progress_bar(iterable: Iterable[T] | None = None, **kwargs) -> tqdm:
    """A tqdm bar on stderr, disabled inside `quiet()`; same arguments as tqdm."""
    kwargs.setdefault("file", sys.stderr)
    kwargs["disable"] = kwargs.get("disable", False) or not progress_enabled()
    return tqdm(iterable, **kwargs)


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

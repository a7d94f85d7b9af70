"""Write files and directories so that a failure never leaves a half-written result behind.

Temporaries live beside their target as `.NAME.<pid>-<random>.tmp` and are renamed onto it when complete; the
result gets the permissions of any new file (0o666 / 0o777 minus the umask), not tempfile's owner-only ones.
A process killed mid-write leaves its temporary behind; the next write of the same target removes those whose
writer is gone (its pid no longer runs; temporaries without a pid, from older versions, once an hour old).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from litewhisper.errors import LiteWhisperError

__all__ = ["atomic_write_text", "atomic_file", "atomic_directory", "check_output_dir", "sweep_stale_temporaries"]

log = logging.getLogger("litewhisper")

LEGACY_STALE_AFTER_S = 3600.0  # temporaries without a pid are swept once this old


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _prefix(path: Path) -> str:
    return f".{path.name}.{os.getpid()}-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _chmod_tree(root: Path, umask: int) -> None:
    """Give `root` and everything in it the modes of newly created files and directories."""
    os.chmod(root, 0o777 & ~umask)
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            os.chmod(os.path.join(folder, name), 0o777 & ~umask)
        for name in files:
            os.chmod(os.path.join(folder, name), 0o666 & ~umask)


def sweep_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove temporaries of `path` (`.NAME.[<pid>-]<random>.tmp|.old`) left by writers that are gone."""
    path = Path(path)
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.(?:(\d+)-)?[a-z0-9_]{{8}}\.(?:tmp|old)$")
    removed = []
    if not path.parent.is_dir():
        return removed
    for entry in path.parent.iterdir():
        match = pattern.match(entry.name)
        if match is None:
            continue
        pid = match.group(1)
        try:
            stale = (
                not _pid_alive(int(pid))
                if pid is not None
                else time.time() - entry.lstat().st_mtime > LEGACY_STALE_AFTER_S
            )
        except OSError:
            continue
        if not stale:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
        log.info("removed %s, left behind by an interrupted write", entry)
        removed.append(entry)
    return removed


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` to `path` via a temporary file in the same directory, then rename."""
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=_prefix(path), suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def check_output_dir(path: str | os.PathLike, overwrite: bool, flag: str = "overwrite=True") -> Path:
    """Refuse an existing non-empty directory unless `overwrite` is set (`flag`: how the caller spells it)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise LiteWhisperError(f"output path {path} exists and is not a directory; choose another path")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise LiteWhisperError(
            f"output directory {path} exists and is not empty; pass {flag} to replace it, or choose another path"
        )
    return path


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory beside `path`; it replaces `path` only if the block succeeds."""
    path = check_output_dir(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_temporaries(path)
    tmp = Path(tempfile.mkdtemp(prefix=_prefix(path), suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        _chmod_tree(tmp, _umask())  # mkdtemp creates 0700, some writers (safetensors) 0600 files
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=_prefix(path), suffix=".old", dir=path.parent))
            os.replace(path, old / "x")
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

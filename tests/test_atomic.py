"""Atomic writes: results respect the umask; temporaries left by killed writers are swept on the next write."""

import os
import subprocess
import sys
import time

import pytest

from litewhisper.atomic import atomic_directory, atomic_write_text, check_output_dir, sweep_stale_temporaries
from litewhisper.errors import LiteWhisperError


@pytest.fixture
def umask():
    old = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(old)


@pytest.mark.parametrize("mask, dir_mode, file_mode", [(0o022, 0o755, 0o644), (0o077, 0o700, 0o600)])
def test_results_follow_the_umask(tmp_path, umask, mask, dir_mode, file_mode):
    umask(mask)
    with atomic_directory(tmp_path / "out") as tmp:
        (tmp / "a.txt").write_text("a")
        (tmp / "a.txt").chmod(0o600)  # as safetensors writes its files
    text = atomic_write_text(tmp_path / "b.txt", "b")
    assert (tmp_path / "out").stat().st_mode & 0o777 == dir_mode  # tempfile would make it 0700
    assert (tmp_path / "out" / "a.txt").stat().st_mode & 0o777 == file_mode
    assert text.stat().st_mode & 0o777 == file_mode  # tempfile would make it 0600


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_stale_temporaries_are_swept_live_ones_kept(tmp_path):
    dead, live = tmp_path / f".out.{_dead_pid()}-abcd1234.tmp", tmp_path / f".out.{os.getpid()}-abcd1234.tmp"
    legacy_old, legacy_new = tmp_path / ".out.zz_zz_zz.tmp", tmp_path / ".out.yy_yy_yy.tmp"
    other = tmp_path / f".other.{_dead_pid()}-abcd1234.tmp"  # another target's: not ours to touch
    for path in (dead, live, legacy_old, legacy_new, other):
        path.mkdir()
        (path / "model.safetensors").write_bytes(b"x" * 100)
    two_hours_ago = time.time() - 7200
    os.utime(legacy_old, (two_hours_ago, two_hours_ago))
    with atomic_directory(tmp_path / "out") as tmp:
        (tmp / "a.txt").write_text("a")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["out", live.name, legacy_new.name, other.name])


def test_temporary_of_a_killed_writer_is_swept(tmp_path):
    code = (
        "import os, signal\nfrom litewhisper.atomic import atomic_directory\n"
        f"with atomic_directory({str(tmp_path / 'ckpt')!r}) as tmp:\n"
        "    (tmp / 'model.safetensors').write_bytes(b'x' * 1000)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    assert subprocess.run([sys.executable, "-c", code], env=env).returncode == -9
    left = [p for p in tmp_path.iterdir() if p.name.startswith(".ckpt.")]
    assert len(left) == 1 and left[0].name.endswith(".tmp")  # what SIGKILL leaves behind
    with atomic_directory(tmp_path / "ckpt") as tmp:
        (tmp / "model.safetensors").write_bytes(b"y")
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]
    assert sweep_stale_temporaries(tmp_path / "ckpt") == []


def test_output_dir_error_names_the_callers_flag(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "f").write_text("x")
    with pytest.raises(LiteWhisperError, match="pass --overwrite to replace") as exc:
        check_output_dir(tmp_path / "out", False, flag="--overwrite")
    assert "overwrite=True" not in str(exc.value)

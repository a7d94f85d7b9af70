"""CPU threads: as many as the cores other processes leave free, so a busy machine is not oversubscribed.

torch starts one OpenMP thread per core. When other jobs already keep those cores busy, every parallel region
waits at its barrier for a thread the scheduler has parked: measured here on tiny.en's encoder with ~6 other
runnable jobs on 2 cores, 2 threads took 2.2 s per window and 1 thread 1.35 s. `cpu_threads()` samples how busy
the machine is (/proc/stat over a fraction of a second) and runs torch on the cores left free, at least one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Iterator

__all__ = ["available_cpus", "cpu_model", "busy_cpus", "free_cpus", "cpu_threads"]

log = logging.getLogger("litewhisper")

_SAMPLE_S = 0.2  # how long the machine's load is sampled
_REUSE_S = 5.0  # a sample this recent is reused
_last_sample: tuple[float, float] | None = None  # (time.monotonic(), busy cores)


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask; cgroup quotas are not read)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo's "model name"), else platform.processor() or the machine type."""
    import platform

    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _cpu_times() -> tuple[float, float] | None:
    """(busy, total) jiffies of all CPUs since boot from /proc/stat; None where it cannot be read."""
    try:
        with open("/proc/stat") as f:
            fields = [float(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def busy_cpus(interval: float = _SAMPLE_S) -> float:
    """Cores kept busy by all processes, sampled over `interval` seconds (a sample of the last few seconds is
    reused); 0.0 where it cannot be measured."""
    global _last_sample
    if _last_sample is not None and time.monotonic() - _last_sample[0] < _REUSE_S:
        return _last_sample[1]
    before = _cpu_times()
    time.sleep(interval)
    after = _cpu_times()
    if before is None or after is None or after[1] <= before[1]:
        return 0.0
    busy = (after[0] - before[0]) / (after[1] - before[1]) * (os.cpu_count() or 1)
    _last_sample = (time.monotonic(), busy)
    return busy


def free_cpus(busy: float | None = None) -> int:
    """Cores of this process's set that other processes leave free (`busy`: measured now if None), at least 1."""
    busy = busy_cpus() if busy is None else busy
    return max(1, available_cpus() - int(busy + 0.5))


@contextlib.contextmanager
def cpu_threads(requested: int | None = None) -> Iterator[int]:
    """torch's intra-op threads inside the block: `requested`, else OMP_NUM_THREADS's choice, else the cores
    other processes leave free. Yields the count; restores the old setting on exit.

    torch not imported yet (a fresh CLI process, or one that never needs torch: the deployed runtime): the choice
    goes into OMP_NUM_THREADS, which torch reads when it loads; otherwise into torch.set_num_threads.
    """
    torch = sys.modules.get("torch")
    default = torch.get_num_threads() if torch is not None else available_cpus()
    if requested is None and os.environ.get("OMP_NUM_THREADS"):
        default = requested = int(os.environ["OMP_NUM_THREADS"])  # the user chose
    if requested is not None:
        threads = requested
    else:
        busy = busy_cpus()
        threads = min(default, free_cpus(busy))
        if threads < default:
            log.info(
                "other processes keep %.1f of %d cores busy: running on %d thread(s) instead of %d "
                "(set OMP_NUM_THREADS or --threads to choose)",
                busy,
                os.cpu_count() or 1,
                threads,
                default,
            )
    if threads == default:
        yield threads
        return
    old_env = os.environ.get("OMP_NUM_THREADS")
    if torch is not None:
        torch.set_num_threads(threads)
    else:
        os.environ["OMP_NUM_THREADS"] = str(threads)
    try:
        yield threads
    finally:
        if torch is not None:
            torch.set_num_threads(default)
        elif old_env is None:
            os.environ.pop("OMP_NUM_THREADS", None)

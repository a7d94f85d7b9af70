"""Several workers with torch.distributed: world detection, process group, shards, gathers, failure propagation.

`torchrun --nproc-per-node N -m litewhisper calibrate|evaluate|transcribe ...` starts N copies of the command;
each reads RANK / WORLD_SIZE / LOCAL_RANK from the environment. Without torchrun the world has one worker and
every helper here is a no-op, so the commands behave exactly as in a single process.

Work is cut into shards fixed by the clip list (contiguous clips of about `shard_seconds` of audio each), never
by the number of workers; round t gives shard t·W + r to rank r. Results are gathered to rank 0 round by round
in shard order, so sums come out the same (to the bit) for any number of workers.

Failures: every collective step first exchanges each rank's error (if any); a Python error on one rank makes all
ranks raise `WorkerError` naming it. A worker that dies outright is noticed through the broken connection or the
process group's timeout, and the survivors name the rank(s) that stopped reporting progress.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:  # torch is imported where a process group is used: a deployed export runs without it
    import torch

from litewhisper.errors import LiteWhisperError
from litewhisper.progress import quiet

__all__ = [
    "World",
    "WorkerError",
    "SHARD_SECONDS",
    "detect_world",
    "shard_seconds_from_env",
    "process_group",
    "plan_shards",
    "my_rounds",
    "all_or_none",
    "main_first",
    "exchange",
    "gather_objects",
    "broadcast_object",
    "add_in_rank_order",
    "map_shards",
]

log = logging.getLogger("litewhisper")
T = TypeVar("T")
R = TypeVar("R")

SHARD_SECONDS = 300.0  # audio per shard: ten 30-s windows
SHARD_ENV = "LITEWHISPER_SHARD_SECONDS"  # override for evaluate/transcribe (their results do not depend on it)
TIMEOUT_ENV = "LITEWHISPER_DIST_TIMEOUT_S"  # collective timeout; a hung worker fails the job after this long
DEFAULT_TIMEOUT_S = 1800.0
_STEP_KEY = "litewhisper/step/{}"


class WorkerError(LiteWhisperError):
    """Another worker of a torchrun job failed; the whole job stops."""


@dataclass(frozen=True)
class World:
    """This worker's place among `size` workers (rank 0 writes the shared outputs)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    def __post_init__(self) -> None:
        if self.size < 1 or not 0 <= self.rank < self.size or self.local_rank < 0:
            raise LiteWhisperError(
                f"invalid torchrun world: rank {self.rank}, world size {self.size}, local rank "
                f"{self.local_rank}; expected 0 <= RANK < WORLD_SIZE (start with torchrun)"
            )

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def detect_world(env: dict[str, str] | None = None) -> World:
    """The world torchrun describes in RANK / WORLD_SIZE / LOCAL_RANK; a world of one without torchrun."""
    env = os.environ if env is None else env
    try:
        return World(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))
    except ValueError as exc:
        raise LiteWhisperError(
            f"RANK/WORLD_SIZE/LOCAL_RANK must be integers (set by torchrun), got "
            f"{env.get('RANK')!r}/{env.get('WORLD_SIZE')!r}/{env.get('LOCAL_RANK')!r}"
        ) from exc


def _seconds_from_env(name: str, default: float) -> float:
    value = os.environ.get(name, str(default))
    try:
        seconds = float(value)
    except ValueError as exc:
        raise LiteWhisperError(f"{name} must be a number of seconds, got {value!r}") from exc
    if not seconds > 0:
        raise LiteWhisperError(f"{name} must be a positive number of seconds, got {value!r}")
    return seconds


def _timeout_s() -> float:
    return _seconds_from_env(TIMEOUT_ENV, DEFAULT_TIMEOUT_S)


@contextlib.contextmanager
def process_group(device: str | torch.device = "cpu", world: World | None = None) -> Iterator[World]:
    """Join the torchrun job for the duration of the block (gloo on CPU; NCCL for CUDA tensors).

    Ranks other than 0 run quietly: no progress bars, warnings and errors only.
    """
    world = world or detect_world()
    if not world.distributed:
        yield world
        return
    import torch
    import torch.distributed as dist

    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.set_device(world.local_rank)
    logger_level = log.level
    _steps.clear()
    dist.init_process_group("cpu:gloo,cuda:nccl" if cuda else "gloo", timeout=datetime.timedelta(seconds=_timeout_s()))
    try:
        with quiet(not world.is_main):
            if not world.is_main:
                log.setLevel(logging.WARNING)
            yield world
    finally:
        log.setLevel(logger_level)
        dist.destroy_process_group()


# ----------------------------------------------------------------------------------------------- shards


def shard_seconds_from_env() -> float:
    """Seconds of audio per shard: $LITEWHISPER_SHARD_SECONDS or SHARD_SECONDS."""
    return _seconds_from_env(SHARD_ENV, SHARD_SECONDS)


def plan_shards(durations: Sequence[float], shard_seconds: float = SHARD_SECONDS) -> list[list[int]]:
    """Contiguous runs of clip indices with about `shard_seconds` of audio each (balanced by duration).

    Depends only on the durations and `shard_seconds`, never on the number of workers.
    """
    if shard_seconds <= 0:
        raise LiteWhisperError(f"shard_seconds must be positive, got {shard_seconds}")
    seconds = [max(float(d), 0.0) for d in durations]
    total = sum(seconds)
    if not seconds:
        return []
    n = max(1, min(len(seconds), math.ceil(total / shard_seconds)))
    shards: list[list[int]] = [[] for _ in range(n)]
    before = 0.0
    for i, d in enumerate(seconds):  # a clip goes to the shard holding its midpoint
        shard = min(n - 1, int((before + d / 2) / total * n)) if total > 0 else i * n // len(seconds)
        shards[shard].append(i)
        before += d
    return [s for s in shards if s]


def my_rounds(n_shards: int, world: World) -> list[int | None]:
    """This rank's shard in each round (round t: shard t·size + rank), None where it has none."""
    rounds = math.ceil(n_shards / world.size)
    return [t * world.size + world.rank if t * world.size + world.rank < n_shards else None for t in range(rounds)]


# ----------------------------------------------------------------------------------------------- collectives


def _collective(world: World, what: str, fn: Callable[[], T]) -> T:
    """Run a collective; a lost worker (connection closed, timeout) becomes a WorkerError naming it."""
    import torch.distributed as dist

    store = _store()
    step = _mark_step(store, world)
    try:
        return fn()
    except (RuntimeError, dist.DistError) as exc:
        lagging = _lagging_ranks(store, world, step)
        who = (
            f"worker rank{'s' if len(lagging) > 1 else ''} {', '.join(map(str, lagging))}"
            if lagging
            else "another worker"
        )
        raise WorkerError(
            f"rank {world.rank}: lost contact with {who} during {what} ({str(exc).splitlines()[0]}); "
            f"the worker died or hung (timeout {_timeout_s():.0f}s, {TIMEOUT_ENV}); "
            "see torchrun's summary and that worker's log"
        ) from exc


def _store():
    try:
        from torch.distributed.distributed_c10d import _get_default_store

        return _get_default_store()
    except (ImportError, RuntimeError, ValueError):
        return None


_steps: dict[int, int] = {}


def _mark_step(store, world: World) -> int:
    step = _steps.get(world.rank, 0) + 1
    _steps[world.rank] = step
    if store is not None:
        with contextlib.suppress(Exception):
            store.set(_STEP_KEY.format(world.rank), str(step))
    return step


def _lagging_ranks(store, world: World, step: int) -> list[int]:
    """Ranks that did not reach this collective step (dead or stuck); [] if unknown."""
    if store is None:
        return []
    lagging = []
    try:
        for rank in range(world.size):
            key = _STEP_KEY.format(rank)
            if not store.check([key]) or int(store.get(key)) < step:
                lagging.append(rank)
    except Exception:  # the store lives on rank 0: unreachable means rank 0 is gone
        return [0] if world.rank != 0 else []
    return lagging


def exchange(world: World, value: Any, error: BaseException | None, what: str) -> list[Any]:
    """All ranks' `value`s (rank order); if any rank had an `error`, every rank raises, naming it."""
    if not world.distributed:
        if error is not None:
            raise error
        return [value]
    import torch.distributed as dist

    message = None if error is None else f"{type(error).__name__}: {error}"
    gathered: list[Any] = [None] * world.size
    _collective(world, what, lambda: dist.all_gather_object(gathered, (value, message)))
    failed = [(rank, msg) for rank, (_, msg) in enumerate(gathered) if msg is not None]
    if failed:
        if error is not None:
            raise error
        rank, msg = failed[0]
        raise WorkerError(
            f"worker rank {rank} of {world.size} failed during {what}: {msg}; the job stopped on "
            "every worker (nothing was written)"
        )
    return [v for v, _ in gathered]


@contextlib.contextmanager
def all_or_none(world: World, what: str) -> Iterator[None]:
    """Run the block on every rank; if it raises on any rank, it raises on all (naming the failing rank)."""
    error = None
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - reported to every rank, then re-raised here
        error = exc
    exchange(world, None, error, what)


def main_first(world: World, fn: Callable[[], T], what: str) -> T:
    """`fn()` on rank 0 first (e.g. a model conversion that fills a cache), then on the other ranks."""
    result = None
    with all_or_none(world, what):
        if world.is_main:
            result = fn()
    with all_or_none(world, what):
        if not world.is_main:
            result = fn()
    return result


def gather_objects(obj: Any, world: World, what: str = "gathering results") -> list[Any] | None:
    """Picklable objects of every rank, in rank order, on rank 0; None elsewhere."""
    if not world.distributed:
        return [obj]
    import torch.distributed as dist

    out: list[Any] | None = [None] * world.size if world.is_main else None
    _collective(world, what, lambda: dist.gather_object(obj, out, dst=0))
    return out


def broadcast_object(obj: Any, world: World, what: str = "sharing state") -> Any:
    """Rank 0's `obj` on every rank."""
    if not world.distributed:
        return obj
    import torch.distributed as dist

    box = [obj if world.is_main else None]
    _collective(world, what, lambda: dist.broadcast_object_list(box, src=0))
    return box[0]


def add_in_rank_order(
    totals: list[torch.Tensor], parts: list[torch.Tensor] | None, world: World, what: str = "adding statistics"
) -> None:
    """On rank 0: totals[i] += each rank's parts[i], rank by rank (ranks with parts=None are skipped).

    One tensor at a time travels, so rank 0 holds at most `size` copies of one tensor. Every rank passes
    `totals` (its shapes and device serve as templates elsewhere).
    """
    present = exchange(world, parts is not None, None, what)
    if not world.distributed:
        if parts is not None:
            for total, part in zip(totals, parts, strict=True):
                total += part
        return
    import torch
    import torch.distributed as dist

    for i, total in enumerate(totals):
        mine = parts[i] if parts is not None else torch.zeros_like(total)
        bucket = [torch.empty_like(total) for _ in range(world.size)] if world.is_main else None
        _collective(world, what, lambda mine=mine, bucket=bucket: dist.gather(mine.contiguous(), bucket, dst=0))
        if world.is_main:
            for rank, part in enumerate(bucket):
                if present[rank]:
                    total += part


def map_shards(
    shards: Sequence[Sequence[T]], fn: Callable[[list[T]], list[R]], world: World, what: str
) -> Iterator[list[R]]:
    """Run `fn` on this rank's shards round by round; yields each round's results in shard order on rank 0
    ([] on the others). A single process simply runs the shards in order."""
    for shard in my_rounds(len(shards), world):
        out: list[R] = []
        error = None
        try:
            out = fn(list(shards[shard])) if shard is not None else []
        except Exception as exc:  # noqa: BLE001 - reported to every rank by exchange
            error = exc
        exchange(world, None, error, what)
        gathered = gather_objects(out, world, what)
        yield [r for part in gathered for r in part] if gathered is not None else []

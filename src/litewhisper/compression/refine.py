"""Refinement: distillation of a compressed encoder's factors from the original model, on unlabeled audio.

Student = the compressed model, teacher = the original one. Two objectives:
- "encoder": mean squared error between their final encoder states (optionally also every intermediate
  layer's), relative to the teacher's mean square;
- "decoder": what the decoder does (`distill.py`): KL divergence of the next-token distributions, teacher-forced
  on the teacher's own transcripts of the audio, plus their cross-entropy.
Only the low-rank factors (weight1, weight2, bias) train by default, so the result keeps the lite-whisper
checkpoint layout. Early stopping on held-out windows; the best state is restored, and when no step beats the
starting point the student is left exactly as it was.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import torch
from torch import nn

from litewhisper.atomic import atomic_file
from litewhisper.compression.distill import decoder_loss, pseudo_labels, relative_mse
from litewhisper.constants import WINDOW_FLOOR_S, WINDOW_MARGIN_S, encoder_window_frames
from litewhisper.errors import LiteWhisperError
from litewhisper.models.linears import LowRankLinear, find_encoder
from litewhisper.progress import progress_bar

__all__ = [
    "RefineConfig",
    "RefineResult",
    "trainable_parameters",
    "relative_mse",
    "objective_for",
    "distillation_loss",
    "pull_distance",
    "refine",
]

log = logging.getLogger("litewhisper")

TRAINABLE = ("lowrank", "encoder")
OBJECTIVES = ("encoder", "decoder")
STUDENT_WINDOWS = ("full", "auto", "both")


@dataclass(frozen=True)
class RefineConfig:
    """How long and how hard to distil; defaults fit a few CPU minutes for tiny/base on ~100 windows."""

    max_steps: int = 200
    lr: float = 1e-4
    batch_size: int = 2  # 30-s windows per step
    val_fraction: float = 0.15  # held-out windows for early stopping
    eval_every: int = 20  # steps between validations
    patience: int = 3  # validations without improvement before stopping
    hidden_weight: float = 0.0  # encoder: intermediate layers' MSE weight; decoder: decoder layers' (ACFT's)
    trainable: str = "lowrank"  # "lowrank": only factors; "encoder": every encoder parameter
    max_minutes: float | None = None
    seed: int = 0
    objective: str = "encoder"  # "encoder": final-state MSE; "decoder": next-token KL on pseudo-labels (+ CE)
    ce_weight: float = 1.0  # decoder objective: weight of the pseudo-labels' cross-entropy beside the KL
    windows: int = 48  # calibration clips used (one clip per window)
    warmup: float = 0.0  # fraction of max_steps with a linear learning-rate warm-up (recipes: ~0.1)
    max_grad_norm: float | None = None  # gradient clipping (recipes: 1.0); None: none
    pull: float = 0.0  # weight of the L2 pull toward the initial factors: Σ‖p − p₀‖² / Σ‖p₀‖² (0: none)
    # decoder objective: the student's encoder reads whole 30-s windows ("full"), the frames `--window auto`
    # gives each window ("auto", max(seconds + margin, floor)), or both (the loss is their mean); the teacher
    # always reads full windows
    student_window: str = "full"
    window_floor: float = WINDOW_FLOOR_S
    window_margin: float = WINDOW_MARGIN_S

    def __post_init__(self) -> None:
        if self.max_steps < 1 or self.batch_size < 1 or self.eval_every < 1 or self.patience < 1:
            raise LiteWhisperError(
                "max_steps, batch_size, eval_every and patience must be ≥ 1, got "
                f"{self.max_steps}, {self.batch_size}, {self.eval_every}, {self.patience}"
            )
        if not 0.0 < self.val_fraction < 1.0:
            raise LiteWhisperError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.lr <= 0 or self.hidden_weight < 0:
            raise LiteWhisperError(f"lr must be > 0 and hidden_weight ≥ 0, got {self.lr}, {self.hidden_weight}")
        if self.trainable not in TRAINABLE:
            raise LiteWhisperError(f"trainable must be one of {TRAINABLE}, got {self.trainable!r}")
        if self.objective not in OBJECTIVES:
            raise LiteWhisperError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if not 0.0 <= self.warmup < 1.0 or (self.max_grad_norm is not None and not self.max_grad_norm > 0):
            raise LiteWhisperError(
                f"warmup must be in [0, 1) and max_grad_norm > 0 or None, got {self.warmup}, {self.max_grad_norm}"
            )
        if self.student_window not in STUDENT_WINDOWS or self.window_floor < 0 or self.window_margin < 0:
            raise LiteWhisperError(
                f"student_window must be one of {STUDENT_WINDOWS} and window floor/margin ≥ 0, got "
                f"{self.student_window!r}, {self.window_floor}, {self.window_margin}"
            )
        if self.student_window != "full" and self.objective != "decoder":
            raise LiteWhisperError("student_window 'auto' / 'both' needs the decoder objective")
        if self.max_minutes is not None and self.max_minutes < 0:
            raise LiteWhisperError(f"max_minutes must be ≥ 0 or None, got {self.max_minutes}")
        if self.ce_weight < 0 or self.windows < 2 or self.pull < 0:
            raise LiteWhisperError(
                f"ce_weight must be ≥ 0, windows ≥ 2 and pull ≥ 0, got {self.ce_weight}, {self.windows}, {self.pull}"
            )


@dataclass(frozen=True)
class RefineResult:
    initial_val: float
    best_val: float
    best_step: int
    steps: int
    seconds: float
    train_losses: list[float] = field(default_factory=list)
    val_losses: list[float] = field(default_factory=list)  # one per validation, the first at step 0
    moved: float = 0.0  # pull_distance of the kept (best) factors from the initial ones


def trainable_parameters(encoder: nn.Module, trainable: str = "lowrank") -> dict[str, nn.Parameter]:
    """Parameters refinement may change: the factors of every LowRankLinear, or the whole encoder."""
    if trainable == "encoder":
        return dict(encoder.named_parameters())
    params = {
        f"{name}.{p_name}": p
        for name, mod in encoder.named_modules()
        if isinstance(mod, LowRankLinear)
        for p_name, p in mod.named_parameters(recurse=False)
    }
    if not params:
        raise LiteWhisperError(
            "the student encoder has no low-rank layers to refine (every layer was kept dense): ask for a smaller "
            "--target-size or leave out --refine-steps (in Python: compress first or use trainable='encoder')"
        )
    return params


def _states(encoder: nn.Module, features: torch.Tensor, hidden: bool) -> list[torch.Tensor]:
    """[final] or [every intermediate..., final] hidden states, each (B, frames, d_model)."""
    out = encoder(features, output_hidden_states=hidden)
    if not hidden:
        return [out.last_hidden_state]
    return list(out.hidden_states[1:-1]) + [out.last_hidden_state]  # skip the embeddings (never compressed)


def _loss(student: list[torch.Tensor], teacher: list[torch.Tensor], hidden_weight: float) -> torch.Tensor:
    """Final-state relative MSE (+ hidden_weight × mean of the intermediate ones)."""
    rel = [relative_mse(s, t) for s, t in zip(student, teacher, strict=True)]
    loss = rel[-1]
    if len(rel) > 1:
        loss = loss + hidden_weight * torch.stack(rel[:-1]).mean()
    return loss


class _EncoderObjective:
    """Relative MSE of the student's encoder states against the teacher's (computed once, no_grad)."""

    def __init__(self, student: nn.Module, teacher: nn.Module, features: torch.Tensor, config: RefineConfig):
        self.student, self.features, self.weight = find_encoder(student), features, config.hidden_weight
        self.hidden = config.hidden_weight > 0
        with torch.no_grad():
            self.states = [
                _states(find_encoder(teacher), features[i : i + 1], self.hidden) for i in range(len(features))
            ]

    def targets(self, idx: list[int]) -> list[torch.Tensor]:
        return [torch.cat([self.states[i][j] for i in idx]) for j in range(len(self.states[idx[0]]))]

    def loss(self, idx: list[int]) -> torch.Tensor:
        return _loss(_states(self.student, self.features[idx], self.hidden), self.targets(idx), self.weight)


class _DecoderObjective:
    """Next-token KL (+ cross-entropy) on the teacher's transcripts of the windows (`distill.py`)."""

    def __init__(self, student, teacher, features: torch.Tensor, config: RefineConfig, labels, seconds=None):
        self.student, self.teacher, self.features, self.config = student, teacher, features, config
        if labels is None:
            raise LiteWhisperError(
                "the decoder objective needs the original model's transcripts of the windows "
                "(distill.window_transcripts): pass transcripts=..."
            )
        self.labels = pseudo_labels(teacher, features, labels)
        self.frames: list[list[int] | None] = [None]  # per mode: the student's mel frames per window
        if config.student_window != "full":
            if seconds is None or len(seconds) != len(features):
                raise LiteWhisperError(
                    f"student_window={config.student_window!r} needs the seconds of audio in each window: pass "
                    "seconds=[...] (one per window)"
                )
            short = [encoder_window_frames(s, config.window_floor, config.window_margin) for s in seconds]
            self.frames = [short] if config.student_window == "auto" else [None, short]

    def loss(self, idx: list[int]) -> torch.Tensor:
        c = self.config
        losses = [
            decoder_loss(self.student, self.teacher, self.labels, self.features, idx, c.ce_weight, f, c.hidden_weight)
            for f in self.frames
        ]
        return losses[0] if len(losses) == 1 else torch.stack(losses).mean()


def objective_for(
    student: nn.Module,
    teacher: nn.Module,
    features: torch.Tensor,
    config: RefineConfig,
    transcripts: list[torch.Tensor] | None = None,
    seconds: list[float] | None = None,
):
    """The loss `config.objective` names, with its targets computed once from the teacher (the decoder
    objective's labels: `transcripts`, one token sequence per window; `seconds` of audio per window for a
    short-window student)."""
    if config.objective == "decoder":
        return _DecoderObjective(student, teacher, features, config, transcripts, seconds)
    return _EncoderObjective(student, teacher, features, config)


def distillation_loss(objective, idx: list[int]) -> float:
    """Mean loss over windows `idx`, without gradients."""
    with torch.no_grad():
        return float(torch.stack([objective.loss([i]) for i in idx]).mean())


def _split(n: int, config: RefineConfig) -> tuple[list[int], list[int]]:
    if n < 2:
        raise LiteWhisperError(f"refinement needs at least 2 windows (train + validation), got {n}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(config.seed)).tolist()
    n_val = min(n - 1, max(1, round(n * config.val_fraction)))
    return order[n_val:], order[:n_val]


def refine(
    student: nn.Module,
    teacher: nn.Module,
    features: torch.Tensor,
    config: RefineConfig = RefineConfig(),
    transcripts: list[torch.Tensor] | None = None,
    state_file: str | Path | None = None,
    seconds: list[float] | None = None,
) -> RefineResult:
    """Distil `teacher` (the original model) into `student` (the compressed one) in place.

    student, teacher: whole Whisper models (the "decoder" objective needs them) or, for the "encoder" objective,
    their encoders. features: (N, n_mels, frames) log-mel windows of calibration audio, the encoder's input.
    transcripts: the decoder objective's labels, the original's transcript of each window as decoder tokens
    (`distill.window_transcripts`). state_file: the training state is saved there at every validation, and a
    run given the file of an interrupted run with the same settings resumes where it stopped. seconds: audio
    per window, for `config.student_window` 'auto' / 'both'.
    """
    start = time.monotonic()
    train_idx, val_idx = _split(len(features), config)
    teacher.eval(), student.eval()  # no dropout: the student is trained deterministically
    params = trainable_parameters(find_encoder(student), config.trainable)
    objective = objective_for(student, teacher, features, config, transcripts, seconds)
    frozen = [p for p in student.parameters() if all(p is not q for q in params.values())]
    saved_grad = {id(p): p.requires_grad for p in student.parameters()}
    for p in frozen:
        p.requires_grad_(False)
    for p in params.values():
        p.requires_grad_(True)
    try:
        result = _train(objective, train_idx, val_idx, params, config, start, state_file)
    finally:
        for p in student.parameters():
            p.requires_grad_(saved_grad[id(p)])
    log.info(
        "refinement (%s): validation loss %.4g -> %.4g (best at step %d of %d, %.0f s; factors moved %.2g)",
        config.objective,
        result.initial_val,
        result.best_val,
        result.best_step,
        result.steps,
        result.seconds,
        result.moved,
    )
    return result


def pull_distance(params: dict[str, nn.Parameter], initial: dict[str, torch.Tensor]) -> torch.Tensor:
    """Σ‖p − p₀‖² / Σ‖p₀‖²: how far the factors moved from where refinement started (0 there, 1 at zero)."""
    moved = sum(((p - initial[k]) ** 2).sum() for k, p in params.items())
    return moved / sum((p0**2).sum() for p0 in initial.values()).clamp_min(1e-12)


def _lr_factor(step: int, config: RefineConfig) -> float:
    """Linear warm-up over the first `warmup` of the steps, then cosine decay over the step budget."""
    warm = round(config.warmup * config.max_steps)
    if step < warm:
        return (step + 1) / warm
    return 0.5 * (1 + math.cos(math.pi * min(step, config.max_steps) / config.max_steps))


@dataclass
class _TrainState:
    """Everything the training loop changes, so a run can stop and resume (`state_file`)."""

    initial: dict[str, torch.Tensor]  # the factors refinement started from (the pull's anchor)
    best: dict[str, torch.Tensor]
    initial_val: float
    best_val: float
    best_step: int = 0
    bad: int = 0  # validations since the best one
    step: int = 0
    train_losses: list[float] = field(default_factory=list)
    val_losses: list[float] = field(default_factory=list)


def _settings(config: RefineConfig) -> dict:
    """What a resumed run must share with the interrupted one (a new time limit is fine)."""
    return {k: v for k, v in asdict(config).items() if k != "max_minutes"}


def _save_state(path: Path, state: _TrainState, params, optimizer, schedule, gen, config: RefineConfig) -> None:
    with atomic_file(path) as tmp:
        torch.save(
            {
                "config": _settings(config),
                "state": asdict(state),
                "params": {k: p.detach() for k, p in params.items()},
                "optimizer": optimizer.state_dict(),
                "schedule": schedule.state_dict(),
                "generator": gen.get_state(),
            },
            tmp,
        )


def _resume(path: Path | None, params, optimizer, schedule, gen, config: RefineConfig) -> _TrainState | None:
    """The state saved in `path` by a run with the same settings and factors (restored into params, optimizer,
    schedule and sampler), or None."""
    if path is None or not Path(path).is_file():
        return None
    saved = torch.load(path, weights_only=True)
    shapes = {k: tuple(p.shape) for k, p in params.items()}
    if saved["config"] != _settings(config) or {k: tuple(v.shape) for k, v in saved["params"].items()} != shapes:
        log.warning("%s was written by a refinement with other settings or factors: starting over", path)
        return None
    with torch.no_grad():
        for k, p in params.items():
            p.copy_(saved["params"][k])
    optimizer.load_state_dict(saved["optimizer"])
    schedule.load_state_dict(saved["schedule"])
    gen.set_state(saved["generator"])
    state = _TrainState(**saved["state"])
    log.info("refinement resumes at step %d of %d from %s", state.step, config.max_steps, path)
    return state


def _step(objective, idx: list[int], params, optimizer, schedule, state: _TrainState, config: RefineConfig) -> None:
    """One optimizer step on windows `idx` (+ the pull toward the initial factors)."""
    loss = objective.loss(idx)
    if config.pull:
        loss = loss + config.pull * pull_distance(params, state.initial)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if config.max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(params.values(), config.max_grad_norm)
    optimizer.step()
    schedule.step()
    state.train_losses.append(float(loss.detach()))


def _validate(objective, val_idx: list[int], params, state: _TrainState) -> None:
    val = distillation_loss(objective, val_idx)
    state.val_losses.append(val)
    if val < state.best_val:
        state.best_val, state.best_step, state.bad = val, state.step, 0
        state.best = {k: p.detach().clone() for k, p in params.items()}
    else:
        state.bad += 1


def _train(
    objective,
    train_idx: list[int],
    val_idx: list[int],
    params: dict[str, nn.Parameter],
    config: RefineConfig,
    start: float,
    state_file: Path | None = None,
) -> RefineResult:
    optimizer = torch.optim.Adam(params.values(), lr=config.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, partial(_lr_factor, config=config))
    gen = torch.Generator().manual_seed(config.seed)
    state = _resume(state_file, params, optimizer, schedule, gen, config)
    if state is None:
        initial_val = distillation_loss(objective, val_idx)
        initial = {k: p.detach().clone() for k, p in params.items()}
        state = _TrainState(initial, initial, initial_val, initial_val, val_losses=[initial_val])
    bar = progress_bar(total=config.max_steps, initial=state.step, desc="refine", unit="step", leave=False)
    while state.step < config.max_steps and state.bad < config.patience:
        pick = torch.randint(len(train_idx), (config.batch_size,), generator=gen).tolist()
        state.step += 1
        _step(objective, [train_idx[i] for i in pick], params, optimizer, schedule, state, config)
        bar.update(1)
        if state.step % config.eval_every and state.step != config.max_steps:
            continue
        _validate(objective, val_idx, params, state)
        bar.set_postfix(train=f"{state.train_losses[-1]:.4f}", val=f"{state.val_losses[-1]:.4f}")
        if state_file is not None:
            _save_state(Path(state_file), state, params, optimizer, schedule, gen, config)
        if config.max_minutes is not None and time.monotonic() - start > 60 * config.max_minutes:
            break
    bar.close()
    with torch.no_grad():
        for k, p in params.items():
            p.copy_(state.best[k])
        moved = float(pull_distance(params, state.initial))
    seconds = time.monotonic() - start
    s = state
    return RefineResult(s.initial_val, s.best_val, s.best_step, s.step, seconds, s.train_losses, s.val_losses, moved)

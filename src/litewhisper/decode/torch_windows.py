"""Per-window decoding limits inside Hugging Face's Whisper `generate`: the token budget
(`DecodeOptions.window_budget`) and the encoder window (`DecodeOptions.encoder_frames`).

transformers decodes each 30-s window of a batch in `generate_with_fallback` (the greedy pass, then the rows that
fall back re-decoded at the next temperature) and judges each decode in `_need_fallback`. `WindowPlan` wraps
both on the model instance for one `generate` call. Each window's limits come from the seconds of its clip it holds
(`window_seconds(duration, seek)`, as in the deployed runtime):
- budget: a stopping criterion stops each row at its budget in every pass, and a window whose kept decode holds its
  budget of tokens (text and timestamps, without end-of-text) is recorded as having hit the token limit — the rule
  the deployed runtime applies (`window_tokens >= budget`);
- encoder window: the encoder (within `encoder_window`) reads the first `encoder_frames` mel frames of the padded
  30-s window, the largest over the batch's rows (batches group clips of equal windows, `plan_batches`); language
  detection, before the first window, reads the first window's frames.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from litewhisper.constants import window_seconds
from litewhisper.decode.options import DecodeOptions
from litewhisper.models.encoder_window import encoder_window

__all__ = ["WindowPlan"]


class _BudgetStop(StoppingCriteria):
    """Stops each row of a `generate` call once it holds its budget of new tokens."""

    def __init__(self) -> None:
        self.budgets = torch.zeros(0, dtype=torch.long)  # per row of the current pass
        self.prompt_len = 0

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        rows = input_ids.shape[0]
        budgets = self.budgets.repeat_interleave(rows // max(len(self.budgets), 1))  # beams: rows per window
        if len(budgets) != rows:  # not a pass we planned (should not happen): never stop here
            return torch.zeros(rows, dtype=torch.bool, device=input_ids.device)
        return (input_ids.shape[-1] - self.prompt_len >= budgets).to(input_ids.device)


class WindowPlan:
    """Limits for one `model.generate` over clips of `durations` seconds; `hit[i]`: clip i hit its budget."""

    def __init__(self, model, durations: list[float], options: DecodeOptions) -> None:
        self.model, self.durations, self.options = model, durations, options
        self.eos = model.generation_config.eos_token_id
        self.stop = _BudgetStop()
        self.hit = [False] * len(durations)
        self._rows: list[int] = []  # the window's rows (0..cur_bsz-1) decoded in the current pass
        self._flags: list[bool] = []  # needs-fallback of the current pass's rows judged so far
        self._window_hit: list[bool] = []
        self.encoder = None  # the EncoderWindow while installed

    @property
    def stopping_criteria(self) -> StoppingCriteriaList:
        return StoppingCriteriaList([self.stop])

    def seconds(self, clips: list[int], seeks: list[int]) -> list[float]:
        """Seconds of each clip in its window (windows start at frames `seeks`)."""
        return [window_seconds(self.durations[c], s) for c, s in zip(clips, seeks, strict=True)]

    def encoder_frames(self, clips: list[int], seeks: list[int]) -> int:
        """Mel frames the encoder reads for a pass over `clips` whose windows start at frames `seeks`."""
        return max(self.options.encoder_frames(self.durations[c], s) for c, s in zip(clips, seeks, strict=True))

    @contextlib.contextmanager
    def installed(self) -> Iterator[WindowPlan]:
        """The model's `generate_with_fallback` / `_need_fallback` wrapped for the duration of one `generate`."""
        model = self.model
        outer, judge = model.generate_with_fallback, model._need_fallback
        model.generate_with_fallback = lambda **kw: self._window(outer, **kw)
        model._need_fallback = lambda *a, **kw: self._judge(judge, *a, **kw)
        try:
            with encoder_window(model) as self.encoder:
                clips = list(range(len(self.durations)))
                self.encoder.frames = self.encoder_frames(clips, [0] * len(clips))  # language detection
                yield self
        finally:
            del model.generate_with_fallback, model._need_fallback  # the class's methods again

    def _window(self, outer, **kw):
        """One window of each row in the batch: budgets from the audio it holds, then transformers' fallback."""
        seek, batch_idx_map, cur_bsz = kw["seek"], kw["batch_idx_map"], kw["cur_bsz"]
        clips = [batch_idx_map[i] for i in range(cur_bsz)]
        seeks = [int(seek[c]) for c in clips]
        budgets = [self.options.window_budget(s) for s in self.seconds(clips, seeks)]
        self.encoder.frames = self.encoder_frames(clips, seeks)
        self.stop.budgets = torch.tensor(budgets, dtype=torch.long)
        self.stop.prompt_len = kw["decoder_input_ids"].shape[-1]
        self._rows, self._flags, self._window_hit = list(range(cur_bsz)), [], [False] * cur_bsz
        out = outer(**kw)
        should_skip = out[2]
        for i, c in enumerate(clips):
            self.hit[c] = self.hit[c] or (self._window_hit[i] and not should_skip[i])
        return out

    def _judge(self, judge, seek_sequence, seek_outputs, index, *args, **kwargs):
        """transformers' fallback test on one row's decode, seeing a budget-stopped row as a limit hit: without
        the end-of-text that padding appended to it (as a row that reached max_new_tokens has none)."""
        budget = int(self.stop.budgets[index])
        ends = bool(len(seek_sequence)) and int(seek_sequence[-1]) == self.eos
        hit = not ends or len(seek_sequence) - 1 >= budget  # no end-of-text: stopped at a limit
        if hit and ends:
            seek_sequence = seek_sequence[:-1]
        self._window_hit[self._rows[index]] = hit  # the last pass's decode is the one kept
        needs_fallback, should_skip = judge(seek_sequence, seek_outputs, index, *args, **kwargs)
        self._flags.append(bool(needs_fallback))
        if len(self._flags) == len(self._rows):  # pass judged: the next pass re-decodes the rows falling back
            keep = [i for i, f in enumerate(self._flags) if f]
            self._rows, self._flags = [self._rows[i] for i in keep], []
            self.stop.budgets = self.stop.budgets[keep]
        return needs_fallback, should_skip

"""User-facing errors: each says what was received, what was expected, and how to fix it."""

from __future__ import annotations

__all__ = ["LiteWhisperError", "ModelSourceError", "AudioError", "CalibrationError", "PlanError"]


class LiteWhisperError(Exception):
    """Base class for errors caused by user input; the CLI prints them without a traceback."""


class ModelSourceError(LiteWhisperError):
    """A model name or directory that cannot be loaded."""


class AudioError(LiteWhisperError):
    """Audio that is missing, corrupt, empty or in an unsupported format."""


class CalibrationError(LiteWhisperError):
    """Calibration data or statistics that cannot be used."""


class PlanError(LiteWhisperError):
    """A rank policy or rank plan that is impossible."""

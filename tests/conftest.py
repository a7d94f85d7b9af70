import os

import pytest

from helpers import tiny_whisper

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture
def tiny_model():
    """A tiny random WhisperForConditionalGeneration (d_model 32, 2 layers, 4 heads)."""
    return tiny_whisper()

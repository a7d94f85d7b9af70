import os

import pytest

from helpers import tiny_whisper

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(autouse=True)
def no_layer_timing(monkeypatch):
    """int8 exports in tests never time linears on the CPU nor write ~/.cache: every factorised linear counts as
    twice as fast as dense (none merged). Tests of the timing pass their own table or patch this back."""
    from litewhisper.export import layer_timing

    def fixed(threads: int, path=None, rounds: int = 0):
        return lambda shape: layer_timing.PairTiming(dense_ms=2.0, factored_ms=1.0)

    monkeypatch.setattr(layer_timing, "cached_source", fixed)


@pytest.fixture
def tiny_model():
    """A tiny random WhisperForConditionalGeneration (d_model 32, 2 layers, 4 heads)."""
    return tiny_whisper()


@pytest.fixture(scope="session")
def litewhisper_cache(tmp_path_factory):
    """A fresh LITEWHISPER_CACHE for the whole session, so tests never depend on (or write) ~/.cache state."""
    path = tmp_path_factory.mktemp("litewhisper_cache")
    old = os.environ.get("LITEWHISPER_CACHE")
    os.environ["LITEWHISPER_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("LITEWHISPER_CACHE", None)
    else:
        os.environ["LITEWHISPER_CACHE"] = old


@pytest.fixture(scope="session")
def real_tiny_en(litewhisper_cache):
    """The real built-in tiny.en (float32, cpu) as a WhisperBundle, converted once into the session cache."""
    from litewhisper.models.load import load_model

    return load_model("tiny.en")


@pytest.fixture(scope="session")
def real_base(litewhisper_cache):
    """The real built-in multilingual base (float32, cpu) as a WhisperBundle, converted once per session."""
    from litewhisper.models.load import load_model

    return load_model("base")

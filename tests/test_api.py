"""The top-level names are the documented functions and classes, not same-named submodules."""
import inspect

import litewhisper


def test_public_names_resolve_to_callables():
    for name in litewhisper._EXPORTS:
        obj = getattr(litewhisper, name)
        assert not inspect.ismodule(obj), f"litewhisper.{name} is a module"
        assert callable(obj), name


def test_from_import_gives_functions():
    from litewhisper import calibrate, compress, transcribe  # noqa: F401 (after the submodules are imported)
    import litewhisper.compression.calibration  # noqa: F401
    assert inspect.isfunction(transcribe) and inspect.isfunction(calibrate) and inspect.isfunction(compress)
    assert litewhisper.transcribe is transcribe and litewhisper.compress is compress

"""The top-level names are the documented functions and classes, not same-named submodules; every name the
README's Python examples use imports."""

import ast
import importlib
import inspect
import re

import litewhisper
from helpers import REPO_ROOT


def test_public_names_resolve_to_callables():
    assert sorted(litewhisper.__all__) == sorted(litewhisper._EXPORTS)
    for name in litewhisper.__all__:
        obj = getattr(litewhisper, name)
        assert not inspect.ismodule(obj), f"litewhisper.{name} is a module"
        assert callable(obj), name


def test_from_import_gives_functions():
    import litewhisper.compression.calibration  # noqa: F401
    from litewhisper import calibrate, compress, transcribe  # noqa: F401 (after the submodules are imported)

    assert inspect.isfunction(transcribe) and inspect.isfunction(calibrate) and inspect.isfunction(compress)
    assert litewhisper.transcribe is transcribe and litewhisper.compress is compress


def _readme_python_blocks() -> list[ast.Module]:
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    return [ast.parse(block) for block in re.findall(r"```python\n(.*?)```", text, flags=re.S)]


def _litewhisper_names(tree: ast.Module) -> set[tuple[str, str]]:
    """(module, name) for `from litewhisper[.x] import name` and for attribute chains `litewhisper.a.b`."""
    used = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "litewhisper":
            used |= {(node.module, alias.name) for alias in node.names}
        elif isinstance(node, ast.Import):
            used |= {(alias.name, "") for alias in node.names if alias.name.split(".")[0] == "litewhisper"}
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "litewhisper":
            used.add(("litewhisper", node.attr))
    return used


def test_every_name_the_readme_uses_imports():
    blocks = _readme_python_blocks()
    used = set().union(*(_litewhisper_names(tree) for tree in blocks))
    assert ("litewhisper", "compress") in used and ("litewhisper", "SizeBudget") in used  # the parser works
    for module, name in sorted(used):
        mod = importlib.import_module(module)
        if name:
            assert hasattr(mod, name), f"README uses {module}.{name}, which does not import"
            if module == "litewhisper":
                assert name in litewhisper.__all__, f"README uses litewhisper.{name}, missing from __all__"


def test_every_public_module_declares_all():
    src = REPO_ROOT / "src" / "litewhisper"
    missing = []
    for path in sorted(src.rglob("*.py")):
        rel = path.relative_to(src)
        if path.name.startswith("_") or "hf_lite" in rel.parts or rel.parts[0] == "cli" or str(rel) in NOT_YET:
            continue
        if "__all__" not in path.read_text(encoding="utf-8"):
            missing.append(str(rel))
    assert not missing, f"modules without __all__: {missing}"


# rewritten by the decoding issue (12) in parallel; they get `__all__` there (remove them from this list on merge)
NOT_YET: tuple[str, ...] = ()


# stage order of the package: a module imports only from its own stage or the stages before it
STAGES = (
    "audio",
    "attention",
    "models",
    "compression",
    "export",
    "decode",
    "evaluation",
    "bench",
    "report",
    "ray",
    "cli",
)
# imported by any stage, import no stage
BASE = ("errors", "atomic", "constants", "progress", "swap", "distributed", "cpu")


def test_imports_point_down_the_stages():
    src = REPO_ROOT / "src" / "litewhisper"
    rank = {**{name: 0 for name in BASE}, **{name: i + 1 for i, name in enumerate(STAGES)}}
    upward = []
    for path in sorted(src.rglob("*.py")):
        stage = path.relative_to(src).parts[0].removesuffix(".py")
        if stage in ("__init__", "__main__"):
            continue
        for target in re.findall(r"^\s*(?:from|import) litewhisper\.(\w+)", path.read_text(encoding="utf-8"), re.M):
            if rank[target] > rank[stage] or (
                rank[stage] == 0
                and target in BASE
                and target != stage
                and target not in ("errors", "atomic", "progress")
            ):
                upward.append(f"{path.relative_to(src)} -> {target}")
    assert not upward, f"imports pointing up the stage order: {upward}"

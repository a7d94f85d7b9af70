"""One generic module swap, torchao `quantize_(model, config, filter_fn)` style, used by every stage that
replaces modules: factorisation, sequential calibration, sensitivity probes and reduced attention."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

__all__ = ["swap_modules"]

# make(module, name) -> the replacement, or None to leave the module as it is; filter(module, name) -> bool.
# `name` is the module's dotted path relative to `root` (torchao's argument order: module first, then name).
Make = Callable[[nn.Module, str], "nn.Module | None"]
Filter = Callable[[nn.Module, str], bool]


def swap_modules(root: nn.Module, make: Make, filter: Filter) -> list[str]:  # noqa: A002 (torchao's name)
    """Replace every submodule of `root` for which filter(module, name) holds by make(module, name), in place.

    Candidates are listed before any swap, so a replacement's own submodules are never visited. A `make` that
    returns None leaves that module in place. Returns the names of the swapped modules, in module order.
    """
    swapped = []
    for name, module in list(root.named_modules()):
        if not name or not filter(module, name):
            continue
        new = make(module, name)
        if new is None:
            continue
        parent_name, _, child = name.rpartition(".")
        setattr(root.get_submodule(parent_name) if parent_name else root, child, new)
        swapped.append(name)
    return swapped

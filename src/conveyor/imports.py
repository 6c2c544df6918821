"""Turn ``"pkg.mod:func"`` into a callable, and a callable back into such a path."""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from typing import Any

from conveyor.errors import GraphError


@functools.lru_cache(maxsize=4096)
def resolve_callable(path: str) -> Callable[..., Any]:
    """Import ``"pkg.mod:attr.sub"`` (or ``"pkg.mod.func"``) and check it is callable."""
    if ":" in path:
        module_name, _, attr = path.partition(":")
    else:
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise GraphError(f"fn {path!r} is not an import path like 'package.module:function'")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:
        raise GraphError(f"fn {path!r}: cannot import {module_name!r}: {exc}") from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise GraphError(f"fn {path!r}: {module_name!r} has no attribute {attr!r}") from None
    obj = getattr(obj, "__wrapped_task__", obj)
    if not callable(obj):
        raise GraphError(f"fn {path!r} is not callable (it is a {type(obj).__name__})")
    return obj  # type: ignore[no-any-return]


def import_path(fn: Callable[..., Any]) -> str | None:
    """``"module:qualname"`` when ``fn`` can be imported back by that path, else ``None``."""
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", None)
    if not module or not qualname or "<" in qualname or module == "__main__":
        return None
    return f"{module}:{qualname}"

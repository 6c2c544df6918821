"""What the dashboard and the report never show: ``env`` values, and values that look like
credentials (under a key named like one, or shaped like an API key or a bearer token). The one
home of that rule for every page."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

HIDDEN = "•••"
#: Keys whose values are hidden wherever they appear (kwargs, meta, worker info ...).
SECRET_KEY = re.compile(r"key|token|secret|passw|auth|credential|cookie|session", re.I)
#: Strings that are hidden wherever they appear: API keys (``sk-...``), bearer tokens, URLs
#: with a password.
SECRET_TEXT = re.compile(
    r"\b(?:sk|pk|rk|xox[abpr]|gh[pousr]|hf)[-_][A-Za-z0-9_\-]{8,}"
    r"|(?i:bearer)\s+[A-Za-z0-9._~+/=\-]{8,}"
    r"|(?<=://)[^/\s:@]+:[^/\s@]+(?=@)"
)


def text(value: str) -> str:
    """``value`` with anything shaped like a credential replaced."""
    return SECRET_TEXT.sub(HIDDEN, value)


def value(v: Any, key: str = "") -> Any:
    """A JSON-like value as shown: hidden under a secret-looking key, strings cleaned,
    containers walked."""
    if key and SECRET_KEY.search(key):
        return HIDDEN
    if isinstance(v, str):
        return text(v)
    if isinstance(v, Mapping):
        return {str(k): value(x, str(k)) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [value(x) for x in v]
    return v


def spec(fields: Mapping[str, Any]) -> dict[str, Any]:
    """A task's stored fields as shown: ``env`` names only (every value hidden), the rest
    through ``value``."""
    out: dict[str, Any] = {}
    for k, v in fields.items():
        if k == "env" and isinstance(v, Mapping):
            out[k] = dict.fromkeys(map(str, v), HIDDEN)
        else:
            out[k] = value(v, k)
    return out

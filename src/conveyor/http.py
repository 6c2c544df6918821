"""Classify HTTP responses and client exceptions into admission outcomes.

Knows httpx, the OpenAI SDK (and SDKs built like it: Anthropic's), aiohttp and anything with a
``status_code`` or ``status`` and ``headers``. Nothing is imported: an exception can only be an
``httpx`` or ``openai`` one if its module is already loaded, so this module looks it up in
``sys.modules`` and works (and costs nothing) when those packages are absent.

Retry-After comes from ``retry-after-ms`` (OpenAI, milliseconds) or ``Retry-After`` (seconds or
an HTTP date). A 429 is ``QUOTA_EXHAUSTED`` rather than ``RATE_LIMITED`` when the body or the
SDK error says ``insufficient_quota``: the account is out of credit and waiting will not help.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Mapping
from typing import Any

from conveyor.core.limiter import Outcome, Report, classify_status, parse_retry_after

__all__ = ["classify_exception", "classify_response", "classify_result", "retry_after_of"]

_QUOTA_MARK = "insufficient_quota"


def retry_after_of(headers: Any, *, wall_now: float) -> float | None:
    """Seconds from ``retry-after-ms`` or ``Retry-After`` headers; None when absent/unreadable."""
    if headers is None:
        return None
    getter = getattr(headers, "get", None)
    if getter is None:
        return None
    millis = getter("retry-after-ms") or getter("Retry-After-Ms")
    if millis is not None:
        seconds = parse_retry_after(millis, wall_now=wall_now)
        if seconds is not None:
            return seconds / 1000.0
    value = getter("retry-after")
    if value is None:
        value = getter("Retry-After")
    return parse_retry_after(value, wall_now=wall_now)


def _status_of(response: Any) -> int | None:
    for name in ("status_code", "status"):
        value = getattr(response, name, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def _body_says_quota(response: Any) -> bool:
    """True when a read JSON body carries ``insufficient_quota``. Never awaits a stream."""
    try:
        content = response.content  # httpx raises ResponseNotRead on an unread stream
    except Exception:
        return False
    if not isinstance(content, bytes | bytearray) or _QUOTA_MARK.encode() not in content:
        return False
    try:
        return _mentions_quota(json.loads(content))
    except ValueError:
        return True


def _mentions_quota(body: object) -> bool:
    if isinstance(body, Mapping):
        if body.get("code") == _QUOTA_MARK or body.get("type") == _QUOTA_MARK:
            return True
        return _mentions_quota(body.get("error"))
    return False


def classify_response(response: Any, *, wall_now: float) -> Report:
    """An outcome for a response object (httpx, aiohttp, requests, SDK raw responses)."""
    status = _status_of(response)
    if status is None:
        raise TypeError(f"cannot classify {type(response).__name__!r}: no status code")
    quota = status == 429 and _body_says_quota(response)
    outcome = classify_status(status, quota_exhausted=quota)
    headers = getattr(response, "headers", None)
    return Report(outcome, retry_after_of(headers, wall_now=wall_now))


def classify_result(result: object, *, wall_now: float) -> Report:
    """What a limited function returned: a response is classified, anything else succeeded."""
    if _status_of(result) is not None and hasattr(result, "headers"):
        return classify_response(result, wall_now=wall_now)
    return Report(Outcome.SUCCESS)


def classify_exception(exc: BaseException, *, wall_now: float) -> Report:
    """An outcome for an exception raised while calling an endpoint."""
    if isinstance(exc, asyncio.CancelledError | KeyboardInterrupt | GeneratorExit):
        return Report(Outcome.CANCELLED)
    report = _classify_openai(exc, wall_now) or _classify_httpx(exc, wall_now)
    if report is not None:
        return report
    if isinstance(exc, TimeoutError):
        return Report(Outcome.TIMEOUT)
    if isinstance(exc, ConnectionError):
        return Report(Outcome.SERVER_ERROR)
    # Duck typing covers SDKs shaped like OpenAI's (anthropic.APIStatusError and friends).
    status = getattr(exc, "status_code", None)
    if isinstance(status, int) and not isinstance(status, bool):
        response = getattr(exc, "response", None)
        quota = status == 429 and (_quota_in_error(exc) or _body_says_quota(response))
        headers = getattr(response, "headers", None)
        retry_after = retry_after_of(headers, wall_now=wall_now)
        return Report(classify_status(status, quota_exhausted=quota), retry_after)
    return Report(Outcome.ERROR)


def _quota_in_error(exc: BaseException) -> bool:
    return getattr(exc, "code", None) == _QUOTA_MARK or _mentions_quota(getattr(exc, "body", None))


def _classify_openai(exc: BaseException, wall_now: float) -> Report | None:
    openai = sys.modules.get("openai")
    if openai is None or not isinstance(exc, openai.OpenAIError):
        return None
    if isinstance(exc, openai.APITimeoutError):
        return Report(Outcome.TIMEOUT)
    if isinstance(exc, openai.APIConnectionError):
        return Report(Outcome.SERVER_ERROR)
    if isinstance(exc, openai.APIStatusError):
        quota = exc.status_code == 429 and _quota_in_error(exc)
        retry_after = retry_after_of(exc.response.headers, wall_now=wall_now)
        return Report(classify_status(exc.status_code, quota_exhausted=quota), retry_after)
    return Report(Outcome.ERROR)


def _classify_httpx(exc: BaseException, wall_now: float) -> Report | None:
    httpx = sys.modules.get("httpx")
    if httpx is None:
        return None
    if isinstance(exc, httpx.HTTPStatusError):
        return classify_response(exc.response, wall_now=wall_now)
    if isinstance(exc, httpx.TimeoutException):
        return Report(Outcome.TIMEOUT)
    if isinstance(exc, httpx.TransportError):
        return Report(Outcome.SERVER_ERROR)
    return None

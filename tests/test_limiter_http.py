"""The limiter against a real rate-limited HTTP server (aiohttp on 127.0.0.1), through httpx.

Bounded and quick: small C, 20 ms latency, a few hundred requests. No timed assertions: the
checks are about what happened (every request done, slots all back, limit near C, few 429s).
"""

from __future__ import annotations

import asyncio
import functools

import httpx
import pytest

from conveyor import http
from conveyor.core.limiter import Outcome
from conveyor.limiter import EndpointLimiter
from rate_limited_server import RateLimitedServer

KEY = "local/echo/work"


@pytest.fixture
def server():
    with RateLimitedServer(capacity=4, latency=0.02) as srv:
        yield srv


def run(test):
    @functools.wraps(test)
    def wrapper(*args, **kwargs):
        return asyncio.run(test(*args, **kwargs))

    return wrapper


async def drive(limiter: EndpointLimiter, url: str, callers: int, requests: int) -> dict:
    """``callers`` tasks share ``requests`` logical requests; 429s are retried as paced."""
    counts = {"ok": 0, "429": 0}
    todo = list(range(requests))
    async with httpx.AsyncClient(timeout=10) as client:

        async def caller() -> None:
            while todo:
                todo.pop()
                attempt = 0
                while True:
                    attempt += 1
                    async with limiter.acquire(KEY) as slot:
                        response = await client.get(url + "/work")
                        slot.report(response)
                    if response.status_code == 200:
                        counts["ok"] += 1
                        break
                    counts["429"] += 1
                    delay = slot.retry_delay(attempt)
                    assert delay is not None
                    await asyncio.sleep(delay)

        await asyncio.gather(*(caller() for _ in range(callers)))
    return counts


@run
async def test_limiter_finds_server_capacity_and_keeps_429s_rare(server):
    limiter = EndpointLimiter()
    counts = await drive(limiter, server.url, callers=16, requests=400)
    stats = limiter.key_statistics(KEY)
    assert counts["ok"] == 400
    assert stats.in_flight == 0 and stats.waiting == 0
    assert stats.admitted == stats.successes + stats.rate_limited
    assert stats.rate_limited == counts["429"]
    assert 3 <= stats.limit <= 5  # it found C = 4
    assert counts["429"] <= 0.05 * 400  # a few during slow start and probes
    assert server.served == 400


@run
async def test_limiter_follows_capacity_drop_during_run(server):
    limiter = EndpointLimiter()
    await drive(limiter, server.url, callers=16, requests=150)
    server.set_capacity(2)
    await drive(limiter, server.url, callers=16, requests=150)
    assert limiter.key_statistics(KEY).limit <= 3
    assert server.served == 300


def test_classify_real_httpx_responses(server):
    with httpx.Client(base_url=server.url, timeout=10) as client:
        wall = 1_700_000_000.0
        ok = http.classify_response(client.get("/work"), wall_now=wall)
        assert ok.outcome is Outcome.SUCCESS
        quota = http.classify_response(client.get("/quota"), wall_now=wall)
        assert quota.outcome is Outcome.QUOTA_EXHAUSTED
        busy = http.classify_response(client.get("/status/429?retry_after=7"), wall_now=wall)
        assert (busy.outcome, busy.retry_after) == (Outcome.RATE_LIMITED, 7.0)
        overloaded = http.classify_response(client.get("/status/529"), wall_now=wall)
        assert overloaded.outcome is Outcome.OVERLOADED
        assert http.classify_response(client.get("/status/404"), wall_now=wall).outcome is (
            Outcome.CLIENT_ERROR
        )
        response = client.get("/status/503?retry_after=2")
        with pytest.raises(httpx.HTTPStatusError) as info:
            response.raise_for_status()
        report = http.classify_exception(info.value, wall_now=wall)
        assert (report.outcome, report.retry_after) == (Outcome.OVERLOADED, 2.0)


def test_classify_httpx_transport_errors(server):
    wall = 0.0
    client = httpx.Client(timeout=httpx.Timeout(10, read=0.001))
    with client, pytest.raises(httpx.TimeoutException) as info:
        client.get(server.url + "/work")
    assert http.classify_exception(info.value, wall_now=wall).outcome is Outcome.TIMEOUT
    with httpx.Client() as client, pytest.raises(httpx.ConnectError) as info2:
        client.get("http://127.0.0.1:9/")  # the discard port: nothing listens
    assert http.classify_exception(info2.value, wall_now=wall).outcome is Outcome.SERVER_ERROR


def test_classify_openai_sdk_errors():
    openai = pytest.importorskip("openai")
    wall = 0.0
    request = httpx.Request("POST", "https://api.openai.com/v1/chat/completions")
    limited = httpx.Response(429, headers={"retry-after-ms": "1500"}, request=request)
    exc = openai.RateLimitError("slow down", response=limited, body=None)
    report = http.classify_exception(exc, wall_now=wall)
    assert (report.outcome, report.retry_after) == (Outcome.RATE_LIMITED, 1.5)
    body = {"error": {"code": "insufficient_quota", "type": "insufficient_quota"}}
    broke = openai.RateLimitError("quota", response=limited, body=body)
    assert http.classify_exception(broke, wall_now=wall).outcome is Outcome.QUOTA_EXHAUSTED
    timeout = openai.APITimeoutError(request=request)
    assert http.classify_exception(timeout, wall_now=wall).outcome is Outcome.TIMEOUT
    down = openai.InternalServerError(
        "overloaded", response=httpx.Response(503, request=request), body=None
    )
    assert http.classify_exception(down, wall_now=wall).outcome is Outcome.OVERLOADED
    assert http.classify_exception(ValueError("bug"), wall_now=wall).outcome is Outcome.ERROR

"""The fake OpenAI-compatible server (``conveyor.testing.fake_llm``) against the real ``openai``
SDK, sync and async, with the SDK's own retries off: the reply format, JSON-schema output, the
hidden capacity's 429s and their Retry-After, fail-rate 500s, the counters, and the CLI as a real
process. No mocks: every request crosses a socket on 127.0.0.1."""

from __future__ import annotations

import asyncio
import datetime
import enum
import json
import os
import queue
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import httpx
import pytest

openai = pytest.importorskip("openai")
pydantic = pytest.importorskip("pydantic")

from conveyor.core.limiter import Outcome  # noqa: E402
from conveyor.http import classify_exception  # noqa: E402
from conveyor.testing.fake_llm import FakeLLM, FakeLLMStats, main  # noqa: E402
from conveyor.testing.schema_example import example_for  # noqa: E402

SRC = Path(__file__).resolve().parents[1] / "src"
USER = [{"role": "user", "content": "Name a colour for a {{ fruit }}: banana"}]


def sync_client(llm: FakeLLM) -> openai.OpenAI:
    return openai.OpenAI(base_url=llm.url, api_key="unused", max_retries=0, timeout=30)


def async_client(llm: FakeLLM) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=llm.url, api_key="unused", max_retries=0, timeout=30)


@pytest.fixture
def llm() -> Iterator[FakeLLM]:
    with FakeLLM(capacity=4, latency=0.01) as server:
        yield server


# -- the reply --------------------------------------------------------------------------------


def test_fake_llm_completion_has_openai_format_and_usage(llm: FakeLLM) -> None:
    with sync_client(llm) as client:
        first = client.chat.completions.create(model="gpt-4o-mini", messages=USER)
        again = client.chat.completions.create(model="gpt-4o-mini", messages=USER)
        other = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "something else"}]
        )
    assert first.object == "chat.completion" and first.model == "gpt-4o-mini"
    assert first.id.startswith("chatcmpl-") and first.id != again.id
    assert abs(first.created - time.time()) < 60
    choice = first.choices[0]
    assert (choice.index, choice.finish_reason, choice.message.role) == (0, "stop", "assistant")
    assert choice.message.content is not None and "banana" in choice.message.content
    assert again.choices[0].message.content == choice.message.content  # a function of the prompt
    assert other.choices[0].message.content != choice.message.content
    usage = first.usage
    assert usage is not None and usage.prompt_tokens > 0 and usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_fake_llm_n_choices_differ(llm: FakeLLM) -> None:
    with sync_client(llm) as client:
        reply = client.chat.completions.create(model="m", messages=USER, n=3)
    contents = [c.message.content for c in reply.choices]
    assert [c.index for c in reply.choices] == [0, 1, 2] and len(set(contents)) == 3


def test_fake_llm_models_lists_its_model() -> None:
    with FakeLLM(latency=0, model="llama-fake") as llm, sync_client(llm) as client:
        assert [m.id for m in client.models.list()] == ["llama-fake"]


# -- JSON output ------------------------------------------------------------------------------


class Colour(enum.Enum):
    RED = "red"
    GREEN = "green"


class Address(pydantic.BaseModel):
    street: str = pydantic.Field(min_length=3, max_length=12)
    postcode: int = pydantic.Field(ge=10_000, le=99_999)


class Person(pydantic.BaseModel):
    name: str
    age: int = pydantic.Field(gt=0, lt=130)
    score: float = pydantic.Field(ge=0.0, le=1.0)
    step: int = pydantic.Field(multiple_of=5, ge=7)
    ratio: float = pydantic.Field(gt=0.0, lt=0.5)
    tags: list[str] = pydantic.Field(min_length=2, max_length=3)
    kind: Literal["customer", "supplier"]
    fixed: Literal["v1"]
    colour: Colour
    active: bool
    home: Address
    previous: list[Address]
    work: Address | None = None
    pair: tuple[int, str]
    counts: dict[str, int]
    born: datetime.date
    seen: datetime.datetime
    id: uuid.UUID


class Node(pydantic.BaseModel):  # recursive: the generator must end
    label: str
    children: list[Node]


def test_fake_llm_json_schema_output_validates_async(llm: FakeLLM) -> None:
    schema = Person.model_json_schema()
    fmt = {"type": "json_schema", "json_schema": {"name": "Person", "schema": schema}}

    async def ask(i: int) -> str | None:
        messages = [{"role": "user", "content": f"person number {i}"}]
        reply = await client.chat.completions.create(
            model="m", messages=messages, response_format=fmt
        )
        return reply.choices[0].message.content

    async def main_() -> list[str | None]:
        async with client:
            return await asyncio.gather(*(ask(i) for i in range(4)))

    client = async_client(llm)
    contents = asyncio.run(main_())
    people = [Person.model_validate_json(c or "") for c in contents]
    assert len({p.name for p in people}) > 1  # seeded by the prompt, not one fixed object


def test_fake_llm_sdk_parse_with_strict_schema(llm: FakeLLM) -> None:
    """``.parse(response_format=Model)`` sends the SDK's strict variant of the schema."""
    with sync_client(llm) as client:
        reply = client.chat.completions.parse(model="m", messages=USER, response_format=Address)
    assert isinstance(reply.choices[0].message.parsed, Address)


def test_fake_llm_json_object_mode_gives_an_object(llm: FakeLLM) -> None:
    with sync_client(llm) as client:
        reply = client.chat.completions.create(
            model="m", messages=USER, response_format={"type": "json_object"}
        )
    assert isinstance(json.loads(reply.choices[0].message.content or ""), dict)


@pytest.mark.parametrize("model", [Person, Node, Address])
def test_schema_example_validates_for_many_seeds(model: type[pydantic.BaseModel]) -> None:
    schema = model.model_json_schema()
    for seed in range(40):
        model.model_validate(example_for(schema, seed=seed))


def test_schema_example_bounds_and_drafts() -> None:
    assert example_for({"type": "integer", "minimum": 0, "exclusiveMinimum": True}) >= 1
    assert example_for({"type": "number", "exclusiveMinimum": 2, "exclusiveMaximum": 3}) == 2.5
    assert example_for({"type": ["null", "string"], "maxLength": 2}).__len__() <= 2
    assert example_for({"allOf": [{"properties": {"a": {"const": 1}}}, {"required": ["a"]}]}) == {
        "a": 1
    }
    for seed in range(20):  # bounds that leave one value, or few, whatever the seed picks
        assert (
            example_for(
                {"type": "integer", "exclusiveMinimum": 0, "exclusiveMaximum": 2}, seed=seed
            )
            == 1
        )
        assert example_for({"type": "integer", "minimum": 3, "maximum": 3}, seed=seed) == 3
        assert (
            example_for(
                {"type": "integer", "multipleOf": 5, "minimum": 7, "maximum": 14}, seed=seed
            )
            == 10
        )
        assert (
            0
            < example_for({"type": "number", "exclusiveMinimum": 0, "maximum": 1e-9}, seed=seed)
            <= 1e-9
        )
        assert len(example_for({"type": "string", "minLength": 40}, seed=seed)) >= 40
        assert example_for({"enum": ["only"]}, seed=seed) == "only"
    with pytest.raises(ValueError, match="cannot follow"):
        example_for({"$ref": "https://example.com/schema.json"})


def test_fake_llm_unfollowable_ref_is_a_400(llm: FakeLLM) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "#/nowhere"}}}
    with sync_client(llm) as client, pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="m", messages=USER, response_format=fmt)
    assert info.value.param == "response_format.json_schema.schema"


# -- capacity, Retry-After, failures ------------------------------------------------------------


def test_fake_llm_above_capacity_429_with_time_to_next_slot() -> None:
    """Two requests, 0.3 s apart, hold the two slots for 1 s each; a third, 0.3 s later still,
    is refused at once and told to come back when the *older* one finishes (about 0.4 s), and
    conveyor reads that as RATE_LIMITED with that delay. With the capacity cut to 1, a fourth
    is told to wait for the *younger* one (about 0.7 s). The bounds are measured on the same
    monotonic clock the server uses, so they hold on a slow machine too."""

    async def wait_in_flight(llm: FakeLLM, n: int) -> float:
        deadline = time.monotonic() + 30
        while llm.stats().in_flight < n:  # poll the server, bounded by a deadline
            assert time.monotonic() < deadline, f"{n} requests never got in"
            await asyncio.sleep(0.002)
        return time.monotonic()

    async def refused(client: openai.AsyncOpenAI) -> tuple[openai.RateLimitError, float, float]:
        asked = time.monotonic()
        with pytest.raises(openai.RateLimitError) as info:
            await client.chat.completions.create(model="m", messages=USER)
        return info.value, asked, time.monotonic()

    async def scenario(llm: FakeLLM) -> list[tuple[openai.RateLimitError, float, float]]:
        async with async_client(llm) as client:

            def hold() -> asyncio.Task[object]:
                call = client.chat.completions.create(model="m", messages=USER)
                return asyncio.create_task(call)

            sent_first = time.monotonic()
            holders = [hold()]
            seen_first = await wait_in_flight(llm, 1)
            await asyncio.sleep(0.3)  # the staggering is the scenario, not a synchronisation
            sent_second = time.monotonic()
            holders.append(hold())
            seen_second = await wait_in_flight(llm, 2)
            await asyncio.sleep(0.3)
            third = await refused(client)
            llm.set_capacity(1)
            fourth = await refused(client)
            await asyncio.gather(*holders)
            # a holder admitted in [sent, seen] frees 1 s later; a refused request arrived in
            # [asked, answered]: its wait lies in [sent + 1 - answered, seen + 1 - asked]
            return [
                (exc, sent + 1.0 - answered, seen + 1.0 - asked)
                for (exc, asked, answered), (sent, seen) in [
                    (third, (sent_first, seen_first)),
                    (fourth, (sent_second, seen_second)),
                ]
            ]

    with FakeLLM(capacity=2, latency=1.0) as llm:
        refusals = asyncio.run(scenario(llm))
        stats = llm.stats()
    waits = []
    for exc, earliest, latest in refusals:
        headers = exc.response.headers
        wait = int(headers["retry-after-ms"]) / 1000
        assert earliest - 0.001 <= wait <= latest + 0.001
        assert float(headers["retry-after"]) == pytest.approx(wait, abs=0.001)
        assert exc.code == "rate_limit_exceeded"
        report = classify_exception(exc, wall_now=time.time())
        assert report.outcome is Outcome.RATE_LIMITED and report.retry_after == pytest.approx(wait)
        waits.append(wait)
    assert waits[0] < 0.45 < waits[1]  # the staggering happened: two different answers
    assert (stats.requests, stats.served, stats.rate_limited, stats.max_in_flight) == (4, 2, 2, 2)
    assert stats.in_flight == 0


def test_fake_llm_stop_cuts_off_requests_in_flight() -> None:
    llm = FakeLLM(latency=60).start()
    errors: list[BaseException] = []

    def call() -> None:
        try:
            with sync_client(llm) as client:
                client.chat.completions.create(model="m", messages=USER)
        except openai.APIConnectionError as exc:
            errors.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    deadline = time.monotonic() + 30
    while llm.stats().in_flight == 0:
        assert time.monotonic() < deadline, "the request never got in"
        time.sleep(0.005)
    began = time.monotonic()
    llm.stop()
    caller.join(timeout=30)
    assert time.monotonic() - began < 10 and len(errors) == 1  # not the 60 s latency


def test_fake_llm_fixed_retry_after_and_set_capacity() -> None:
    with FakeLLM(capacity=0, latency=0, retry_after=1.5) as llm, sync_client(llm) as client:
        with pytest.raises(openai.RateLimitError) as info:
            client.chat.completions.create(model="m", messages=USER)
        headers = info.value.response.headers
        assert (headers["retry-after"], headers["retry-after-ms"]) == ("1.5", "1500")
        report = classify_exception(info.value, wall_now=time.time())
        assert (report.outcome, report.retry_after) == (Outcome.RATE_LIMITED, 1.5)
        llm.set_capacity(1)
        assert client.chat.completions.create(model="m", messages=USER).choices
        assert (llm.stats().rate_limited, llm.stats().served) == (1, 1)


def test_fake_llm_burst_never_exceeds_capacity() -> None:
    async def burst(llm: FakeLLM) -> list[str]:
        async with async_client(llm) as client:

            async def one() -> str:
                try:
                    await client.chat.completions.create(model="m", messages=USER)
                    return "ok"
                except openai.RateLimitError:
                    return "429"

            return await asyncio.gather(*(one() for _ in range(24)))

    with FakeLLM(capacity=4, latency=0.5) as llm:
        outcomes = asyncio.run(burst(llm))
        stats = llm.stats()
    assert stats.max_in_flight == 4 and outcomes.count("429") > 0
    assert (stats.served, stats.rate_limited) == (outcomes.count("ok"), outcomes.count("429"))


def run_pattern(seed: int) -> tuple[list[str], FakeLLMStats]:
    """Twenty sequential requests at fail_rate 0.5: which ones failed, and the counters."""
    pattern = []
    with FakeLLM(latency=0, fail_rate=0.5, seed=seed) as llm, sync_client(llm) as client:
        for _ in range(20):
            try:
                client.chat.completions.create(model="m", messages=USER)
                pattern.append("ok")
            except openai.InternalServerError as exc:
                assert exc.status_code == 500
                report = classify_exception(exc, wall_now=time.time())
                assert report.outcome is Outcome.SERVER_ERROR
                pattern.append("500")
        return pattern, llm.stats()


def test_fake_llm_fail_rate_500s_are_seeded_and_classified() -> None:
    pattern, stats = run_pattern(seed=7)
    assert 0 < pattern.count("500") < 20  # both happen at 0.5
    assert run_pattern(seed=7)[0] == pattern  # the same seed fails the same requests
    assert run_pattern(seed=8)[0] != pattern
    assert (stats.requests, stats.failed) == (20, pattern.count("500"))
    assert stats.served == 20 - stats.failed
    assert stats.tokens == stats.prompt_tokens + stats.completion_tokens > 0


def test_fake_llm_stats_endpoint_counts(llm: FakeLLM) -> None:
    with sync_client(llm) as client:
        reply = client.chat.completions.create(model="m", messages=USER)
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model="m", messages=[])
    assert reply.usage is not None
    stats = httpx.get(llm.url.removesuffix("/v1") + "/stats", timeout=30).json()
    assert stats == {
        "requests": 2,
        "served": 1,
        "rate_limited": 0,
        "failed": 0,
        "invalid": 1,
        "in_flight": 0,
        "max_in_flight": 1,
        "prompt_tokens": reply.usage.prompt_tokens,
        "completion_tokens": reply.usage.completion_tokens,
        "tokens": reply.usage.total_tokens,
    }


def test_fake_llm_stream_is_refused_clearly(llm: FakeLLM) -> None:
    with sync_client(llm) as client, pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="m", messages=USER, stream=True)
    assert info.value.param == "stream" and "not supported" in str(info.value)


# -- the command ------------------------------------------------------------------------------


def test_fake_llm_cli_prints_url_serves_and_stops_on_sigterm() -> None:
    argv = ["--port", "0", "--latency-ms", "5", "--capacity", "2", "--seed", "3"]
    # as a script or a benchmark starts it: stdout a pipe, so block-buffered unless flushed
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    env["PYTHONPATH"] = str(SRC)
    proc = subprocess.Popen(
        [sys.executable, "-m", "conveyor.testing.fake_llm", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout or ()], daemon=True).start()
    try:
        try:  # the deadline; returns as soon as the line is printed
            line = lines.get(timeout=60)
        except queue.Empty:
            pytest.fail("the server printed no URL line within 60 s (not flushed?)")
        prefix = "fake-llm listening on "
        assert line.startswith(prefix), line
        url = line.removeprefix(prefix).strip()
        assert url.startswith("http://127.0.0.1:") and url.endswith("/v1")
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=30)
        with client:
            reply = client.chat.completions.create(model="m", messages=USER)
        assert reply.usage is not None and reply.choices[0].finish_reason == "stop"
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    final = json.loads(err.split("fake-llm stopped: ", 1)[1])
    assert (final["requests"], final["served"]) == (1, 1)


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--fail-rate", "1.5"], "between 0 and 1"),
        (["--capacity", "-1"], "must be >= 0"),
        (["--latency-ms", "soon"], "invalid float value"),
    ],
)
def test_fake_llm_cli_bad_flag_exits_2(
    argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2 and says in capsys.readouterr().err


def test_fake_llm_cli_port_taken_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SystemExit) as info:
            main(["--port", str(port)])
    assert info.value.code == 2 and f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err

"""LLM columns against the fake OpenAI-compatible server, a real HTTP server on 127.0.0.1,
through the real ``openai`` SDK (no mocks of the client)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import BaseModel

import conveyor
from conveyor.errors import GraphError, UsageError
from conveyor.table.build import build
from conveyor.table.output import load
from conveyor.testing.fake_llm import FakeLLM


class Verdict(BaseModel):
    score: int
    label: str


@pytest.fixture
def llm(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeLLM]:
    monkeypatch.setenv("FAKE_KEY", "sk-test")
    with FakeLLM(capacity=8, latency=0.01) as server:
        yield server


def reviews(url: str, *, key_env: str = "FAKE_KEY") -> conveyor.Table:
    t = conveyor.Table("llm", row_group_size=20, seed=3)
    t.model("fast", model="fake-model", base_url=url, api_key_env=key_env,
            params={"temperature": 0.2})  # fmt: skip
    t.sampler("product", conveyor.category({"lamp": 1, "mug": 1}))
    t.add(conveyor.llm_text("Write a title for a {{ product }}.", model="fast"), name="title")
    t.add(conveyor.llm_text("Review {{ product }} titled {{ title }}.", model="fast"),
          name="review")  # fmt: skip
    t.add(conveyor.llm_structured("Score: {{ review }}", schema=Verdict, model="fast"),
          name="verdict")  # fmt: skip
    return t


def test_llm_columns_fill_a_table_and_count_tokens(tmp_path: Path, llm: FakeLLM) -> None:
    t = reviews(llm.url)
    assert [n.name for n in t.plan().nodes] == ["product", "title", "review", "verdict"]
    assert [n.deps for n in t.plan().nodes][1:] == [("product",), ("product", "title"),
                                                   ("review",)]  # fmt: skip
    s = build(t, 50, tmp_path / "o", format="jsonl")
    assert s.exit_code == 0 and s.rows_written == 50
    rows = load(tmp_path / "o")
    for r in rows:
        assert r["product"] in r["title"] or r["title"].startswith("Fake reply")
        assert r["review"].startswith("Fake reply")
        Verdict.model_validate(r["verdict"])  # parsed and validated
    assert s.tokens["title"]["calls"] == 50 and s.tokens["verdict"]["calls"] == 50
    assert all(v["prompt_tokens"] > 0 and v["completion_tokens"] > 0 for v in s.tokens.values())
    st = llm.stats()
    assert st.served == 150 and st.tokens == sum(
        v["prompt_tokens"] + v["completion_tokens"] for v in s.tokens.values()
    )
    assert list(s.endpoints) == ["openai/fake-model/chat"]  # the aliases share one limiter


def test_429s_reach_the_limiter_and_every_row_is_still_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A capacity of 2 with 32 slots: the server answers 429 beyond it; the SDK's own retries
    are off, so the limiter sees each one (with the SDK retrying, it saw none), and the rows
    all come through."""
    monkeypatch.setenv("FAKE_KEY", "sk-test")
    with FakeLLM(capacity=2, latency=0.02) as server:
        t = conveyor.Table("busy", row_group_size=20, seed=3)
        t.model("m", model="fake-model", base_url=server.url, api_key_env="FAKE_KEY")
        t.sampler("n", conveyor.integers(1, 9))
        t.add(conveyor.llm_text("Say {{ n }}.", model="m"), name="said", retries=10)
        s = build(t, 60, tmp_path / "o", format="jsonl", workers=32)
        st = server.stats()
    assert s.exit_code == 0 and s.rows_written == 60
    assert st.max_in_flight <= 2 and st.served == 60
    assert s.endpoints["openai/fake-model/chat"]["rate_limited"] == st.rate_limited


def test_bad_llm_input_is_refused_before_any_call(
    tmp_path: Path, llm: FakeLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    t = conveyor.Table("bad")
    t.model("fast", model="fake-model", base_url=llm.url, api_key_env="FAKE_KEY")
    t.sampler("x", conveyor.integers(1, 2))
    t.add(conveyor.llm_text("Hi {{ x }}", model="slow"), name="s")  # a models file may come later
    with pytest.raises(UsageError, match="column 's': unknown model alias 'slow' \\(fast\\)"):
        t.plan()
    t.columns.pop()
    with pytest.raises(UsageError, match="needs name="):
        t.add(conveyor.llm_text("Hi", model="fast"))
    with pytest.raises(UsageError, match="prompt template"):
        conveyor.llm_text("Hi {{ x ", model="fast")
    t.add(conveyor.llm_text("Hi {{ nobody }}", model="fast"), name="a")
    with pytest.raises(GraphError, match="'nobody', which no column fills"):
        t.plan()
    ok = conveyor.Table("nokey")
    ok.model("fast", model="fake-model", base_url=llm.url, api_key_env="NO_SUCH_KEY_VAR")
    ok.sampler("n", conveyor.integers(1, 2))
    ok.add(conveyor.llm_text("Hi {{ n }}", model="fast"), name="a")
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    with pytest.raises(UsageError, match="NO_SUCH_KEY_VAR"):
        build(ok, 5, tmp_path / "o", format="jsonl")
    assert llm.stats().requests == 0


def test_a_changed_prompt_is_a_changed_column(llm: FakeLLM) -> None:
    a, b = reviews(llm.url), reviews(llm.url)
    b.columns[-1].fn = conveyor.llm_structured("Rate: {{ review }}", schema=Verdict, model="fast")
    b.columns[-1].fn.bind(b.models["fast"])
    fa, fb = a.fingerprints(), b.fingerprints()
    assert [k for k in fa if fa[k] != fb[k]] == ["verdict"]


class Never(BaseModel):
    score: int

    @classmethod
    def model_validate_json(cls, *args: object, **kwargs: object) -> Never:  # type: ignore[override]
        raise ValueError("never valid")


def test_a_reply_that_never_validates_drops_the_row_as_invalid_output(
    tmp_path: Path, llm: FakeLLM
) -> None:
    t = conveyor.Table("inv", row_group_size=10)
    t.model("fast", model="fake-model", base_url=llm.url, api_key_env="FAKE_KEY")
    t.sampler("n", conveyor.integers(1, 9))
    t.add(conveyor.llm_structured("Rate {{ n }}", schema=Never, model="fast"), name="v")
    s = build(t, 5, tmp_path / "o", format="jsonl", in_flight=1)
    assert s.dropped["v"]["invalid_output"] >= 5 and s.rows_written == 0
    # asked 3 times each (a cell still asking when the build stopped adds its asks so far)
    calls, dropped = s.tokens["v"]["calls"], s.dropped["v"]["invalid_output"]
    assert 3 * dropped <= calls < 3 * dropped + 3 * 10  # (10: the cells of one row group)


def test_500s_and_timeouts_are_retried_as_the_limiter_classifies_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """500s (a share of the server's answers) are retried until the row comes through; a
    request that times out (the alias's ``timeout`` shorter than the server's latency) is
    retried too, then drops its row naming the SDK's timeout."""
    monkeypatch.setenv("FAKE_KEY", "sk-test")
    with FakeLLM(capacity=8, latency=0.2, fail_rate=0.3, seed=2) as server:
        t = conveyor.Table("flaky", row_group_size=10, seed=1)
        t.model("m", model="fake-model", base_url=server.url, api_key_env="FAKE_KEY")
        t.sampler("n", conveyor.integers(1, 9))
        t.add(conveyor.llm_text("Say {{ n }}.", model="m"), name="said", retries=20)
        s = build(t, 30, tmp_path / "ok", format="jsonl")
        st = server.stats()
    assert s.exit_code == 0 and s.rows_written == 30
    assert st.failed > 0 and st.served == 30  # every 500 was retried (served: 200s)

    with FakeLLM(capacity=256, latency=0.5) as server:  # room for the abandoned requests
        t = conveyor.Table("late", row_group_size=5, seed=1, early_stop=1.0)
        t.model("m", model="fake-model", base_url=server.url, api_key_env="FAKE_KEY",
                params={"timeout": 0.05})  # fmt: skip
        t.sampler("n", conveyor.integers(1, 9))
        t.add(conveyor.llm_text("Say {{ n }}.", model="m"), name="said", retries=1)
        s = build(t, 5, tmp_path / "late", format="jsonl")
        st = server.stats()
    assert s.rows_written == 0
    assert set(s.dropped["said"]) == {"error: APITimeoutError"}
    # timed-out requests were asked again (not retried: one request per dropped row; the
    # row groups that make up the drops ask more rows, so count per dropped row; 429s are
    # answered at once and asked again)
    assert st.requests - st.rate_limited > s.rows_dropped, st

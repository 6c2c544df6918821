"""``conveyor build`` on LLM specs as a real subprocess against the fake OpenAI-compatible
server (a real HTTP server on 127.0.0.1): ``--preview``, ``--models FILE``, tokens per second,
and bad input refused in one line (exit 2) before any row is generated."""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import conveyor
from conveyor.table.build import build, default_workers
from conveyor.table.output import load
from conveyor.testing.fake_llm import FakeLLM

CLI = [sys.executable, "-m", "conveyor.cli"]

SPEC = """
import conveyor
from pathlib import Path

t = conveyor.Table("mini", row_group_size=10, seed=5)
t.model("writer", model="fake-model", base_url={url!r}, api_key_env="FAKE_KEY", provider="local")
t.sampler("topic", conveyor.category({{"tea": 1, "rain": 1}}))
t.add(conveyor.llm_text({prompt!r}, model={alias!r}), name="line")
"""


@pytest.fixture
def llm() -> Iterator[FakeLLM]:
    with FakeLLM(capacity=8, latency=0.01) as server:
        yield server


def spec(folder: Path, url: str, *, prompt: str = "A line about {{ topic }}.",
         alias: str = "writer") -> Path:  # fmt: skip
    path = folder / "spec.py"
    path.write_text(SPEC.format(url=url, prompt=prompt, alias=alias))
    return path


def run(*args: str | Path, cwd: Path, env: dict[str, str] | None = None
        ) -> subprocess.CompletedProcess[str]:  # fmt: skip
    full = {**os.environ, "FAKE_KEY": "sk-test", "TMPDIR": str(cwd / "tmp"), **(env or {})}
    (cwd / "tmp").mkdir(exist_ok=True)
    full = {k: v for k, v in full.items() if v != ""}  # "" unsets
    return subprocess.run([*CLI, *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          env=full, timeout=120)  # fmt: skip


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("conveyor: error: "), proc.stderr
    return lines[0]


def test_preview_prints_rows_and_writes_nothing(tmp_path: Path, llm: FakeLLM) -> None:
    proc = run("build", spec(tmp_path, llm.url), "--preview", "3", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    table_rows = [ln for ln in proc.stdout.splitlines() if "Fake reply" in ln]
    assert len(table_rows) == 3  # one line per row: the replies are short
    assert "topic" in proc.stdout.splitlines()[1] and "line" in proc.stdout.splitlines()[1]
    assert "3 of 3 rows previewed, nothing written" in proc.stderr
    assert llm.stats().served == 3
    assert list((tmp_path / "tmp").iterdir()) == []  # its temporary directory is gone
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.py", "tmp"]


def test_preview_excludes_writing_options(tmp_path: Path, llm: FakeLLM) -> None:
    proc = run("build", spec(tmp_path, llm.url), "--preview", "3", "--out", "o", cwd=tmp_path)
    assert "--preview writes nothing: it excludes --out" in one_error_line(proc)


def test_models_file_points_the_spec_at_another_endpoint(tmp_path: Path, llm: FakeLLM) -> None:
    """The spec's alias names a port where nothing listens; the models file given with
    --models replaces the alias (its provider gives the URL and the key's variable)."""
    dead = spec(tmp_path, "http://127.0.0.1:9/v1")
    models = tmp_path / "models.yaml"
    models.write_text(
        "providers:\n"
        f"  fake: {{base_url: '{llm.url}', api_key_env: OTHER_KEY}}\n"
        "models:\n"
        "  writer: {provider: fake, model: fake-model, params: {temperature: 0.5}}\n"
    )
    proc = run("build", dead, "--records", "20", "--out", "o", cwd=tmp_path)
    assert proc.returncode == 2 and "cannot reach http://127.0.0.1:9/v1" in proc.stderr
    proc = run(
        "build",
        dead,
        "--records",
        "20",
        "--out",
        "o",
        "--summary",
        "s.json",
        "--models",
        models,
        cwd=tmp_path,
        env={"OTHER_KEY": "sk-other", "FAKE_KEY": ""},
    )
    assert proc.returncode == 0, proc.stderr
    assert len(load(tmp_path / "o")) == 20 and llm.stats().served == 20
    summary = json.loads((tmp_path / "s.json").read_text())
    assert list(summary["endpoints"]) == ["fake/fake-model/chat"]  # provider/model
    m = summary["models"]["writer"]
    assert m["calls"] == 20 and m["tokens_per_s"] > 0
    assert m["prompt_tokens"] + m["completion_tokens"] == llm.stats().tokens
    assert "model writer: 20 calls" in proc.stderr and "tokens/s" in proc.stderr
    assert "sk-other" not in proc.stderr + (tmp_path / "s.json").read_text()


class _Refuses(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(401)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def refusing_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Refuses)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    ("case", "wanted"),
    [
        ("alias", "column 'line': unknown model alias 'nobody' (writer)"),
        ("variable", "'line' depends on 'missing', which no column fills"),
        ("key", "the environment variable FAKE_KEY (its API key) is not set"),
        ("unreachable", "model 'writer': cannot reach http://127.0.0.1:9/v1"),
        ("refused", "refused the API key in FAKE_KEY (HTTP 401)"),
        ("yaml", "Object contains unknown field `tempreature`"),
        ("no-yaml", "models file nowhere.yaml: No such file or directory"),
        ("bad-url", "model 'writer': cannot reach http://[::1/v1"),
    ],
)
def test_bad_llm_input_one_line_exit_two_before_any_call(
    tmp_path: Path, llm: FakeLLM, refusing_server: str, case: str, wanted: str
) -> None:
    url = {"unreachable": "http://127.0.0.1:9/v1", "refused": refusing_server,
           "bad-url": "http://[::1/v1"}.get(case, llm.url)  # fmt: skip
    path = spec(
        tmp_path,
        url,
        prompt="About {{ missing }}." if case == "variable" else "A line about {{ topic }}.",
        alias="nobody" if case == "alias" else "writer",
    )
    extra: list[str] = []
    if case == "yaml":
        (tmp_path / "m.yaml").write_text("models:\n  writer: {model: x, tempreature: 1}\n")
        extra = ["--models", "m.yaml"]
    if case == "no-yaml":
        extra = ["--models", "nowhere.yaml"]
    proc = run("build", path, "--records", "5", "--out", "o", *extra, cwd=tmp_path,
               env={"FAKE_KEY": ""} if case == "key" else None)  # fmt: skip
    assert wanted in one_error_line(proc)
    assert llm.stats().requests == 0  # refused before any row was generated
    assert not (tmp_path / "o").exists()


def test_a_table_that_calls_endpoints_runs_more_cells_than_32(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An endpoint whose capacity is 48: with the old default of 32 cells at once it could
    never see more than 32 requests in flight; the default for endpoint tables lets the
    adaptive limit find 48."""
    monkeypatch.setenv("FAKE_KEY", "sk-test")
    with FakeLLM(capacity=48, latency=0.5) as server:
        t = conveyor.Table("wide", row_group_size=100, seed=1)
        t.model("m", model="fake-model", base_url=server.url, api_key_env="FAKE_KEY")
        t.sampler("n", conveyor.integers(1, 9))
        t.add(conveyor.llm_text("Say {{ n }}.", model="m"), name="said", retries=20)
        assert default_workers(t) > 48
        s = build(t, 400, tmp_path / "o", format="jsonl")
        st = server.stats()
    assert s.exit_code == 0 and s.rows_written == 400
    assert st.max_in_flight > 32, st


PROVIDER_SPEC = """
import conveyor

t = conveyor.Table("prov", row_group_size=10, seed=5)
t.provider("local", base_url="http://127.0.0.1:9/v1", api_key_env="FAKE_KEY")
t.model("writer", model="fake-model", provider={provider!r})
t.sampler("topic", conveyor.category({{"tea": 1, "rain": 1}}))
t.add(conveyor.llm_text("A line about {{{{ topic }}}}.", model="writer"{params}), name="line")
"""


def provider_spec(folder: Path, provider: str = "local", params: str = "") -> Path:
    path = folder / "spec.py"
    path.write_text(PROVIDER_SPEC.format(provider=provider, params=params))
    return path


def test_a_models_file_of_providers_only_moves_the_models_of_that_provider(
    tmp_path: Path, llm: FakeLLM
) -> None:
    """The spec's provider points at a port where nothing listens; a models file that only
    redeclares the provider moves the model there (models take their provider's URL and key
    variable when the table is planned, not when they are declared)."""
    (tmp_path / "p.yaml").write_text(f"providers:\n  local: {{base_url: '{llm.url}'}}\n")
    proc = run("build", provider_spec(tmp_path), "--records", "10", "--out", "o",
               "--models", "p.yaml", cwd=tmp_path, env={"OPENAI_API_KEY": "sk-x"})  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert llm.stats().served == 10


@pytest.mark.parametrize(
    ("provider", "params", "wanted"),
    [
        ("locl", "", "model 'writer': provider 'locl' is not declared (local)"),
        ("local", ", temprature=0.2",
         "unknown inference parameter 'temprature' (did you mean 'temperature'?)"),
        ("local", ", messages=[]", "parameter 'messages' is set by conveyor, not by params"),
    ],
)  # fmt: skip
def test_a_misspelt_provider_or_parameter_is_refused_before_any_call(
    tmp_path: Path, llm: FakeLLM, provider: str, params: str, wanted: str
) -> None:
    (tmp_path / "p.yaml").write_text(f"providers:\n  local: {{base_url: '{llm.url}'}}\n")
    proc = run("build", provider_spec(tmp_path, provider, params), "--records", "10", "--out",
               "o", "--models", "p.yaml", cwd=tmp_path,
               env={"OPENAI_API_KEY": "sk-x"})  # fmt: skip
    assert wanted in one_error_line(proc)
    assert llm.stats().requests == 0


class _Gateway(http.server.BaseHTTPRequestHandler):
    """Lists models, then answers every chat call 401 with the Authorization header echoed in
    the body (some gateways do), or, in ``wrong_json`` mode, 200 with a reply that breaks the
    JSON schema."""

    mode = "echo401"
    chats = 0

    def do_GET(self) -> None:
        self._send(200, {"object": "list", "data": []})

    def do_POST(self) -> None:
        type(self).chats += 1
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.mode == "echo401":
            auth = self.headers.get("Authorization", "")
            self._send(401, {"error": {"message": f"bad credentials: {auth}",
                                       "type": "invalid_request_error"}})  # fmt: skip
            return
        content = json.dumps({"n": "lots", "tags": 5})
        self._send(200, {"id": "x", "object": "chat.completion", "created": 0, "model": "m",
                         "choices": [{"index": 0, "finish_reason": "stop", "message":
                                      {"role": "assistant", "content": content}}],
                         "usage": {"prompt_tokens": 1, "completion_tokens": 1,
                                   "total_tokens": 2}})  # fmt: skip

    def _send(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def gateway() -> Iterator[tuple[str, type[_Gateway]]]:
    handler = type("Gateway", (_Gateway,), {"chats": 0})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", handler
    finally:
        server.shutdown()
        server.server_close()


def test_an_endpoint_that_refuses_every_call_stops_the_build_drops_nothing_leaks_no_key(
    tmp_path: Path, gateway: tuple[str, type[_Gateway]], llm: FakeLLM
) -> None:
    """A 401 on the chat call (the probe passed): the build stops at once, writes no row
    group and records no dropped row, and the key the gateway echoed is nowhere; with the
    endpoint fixed, the same command builds every row (rows 0-19, as a fresh build)."""
    url, handler = gateway
    secret = "sk-SECRETVALUE1234"
    path = spec(tmp_path, url)
    proc = run("build", path, "--records", "20", "--out", "o", "--summary", "s.json",
               "--events", "e.jsonl", cwd=tmp_path, env={"FAKE_KEY": secret})  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert "the endpoint refuses its calls" in proc.stderr
    assert handler.chats >= 1
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["rows_written"] == 0 and summary["dropped"] == {}
    assert "AuthenticationError" in json.dumps(summary["errors"])
    for text in (proc.stderr, proc.stdout, (tmp_path / "s.json").read_text(),
                 (tmp_path / "e.jsonl").read_text()):  # fmt: skip
        assert secret not in text
    assert "***" in json.dumps(summary["errors"])  # the echoed key, scrubbed
    assert not list((tmp_path / "o").glob("part-*"))
    path.write_text(path.read_text().replace(url, llm.url))
    proc = run("build", path, "--records", "20", "--out", "o", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert [r["line"].split(" to: ")[1] for r in load(tmp_path / "o")] == [
        r["line"].split(" to: ")[1] for r in _fresh(tmp_path, llm)
    ]


def _fresh(tmp_path: Path, llm: FakeLLM) -> list[dict[str, object]]:
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    proc = run("build", spec(fresh, llm.url), "--records", "20", "--out", "o", cwd=fresh)
    assert proc.returncode == 0, proc.stderr
    return load(fresh / "o")


def test_a_json_schema_dict_is_validated(
    tmp_path: Path, gateway: tuple[str, type[_Gateway]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reply is JSON but breaks the schema (a string for an integer, a number for an
    array): the row is asked again, then dropped as invalid_output, not stored."""
    url, handler = gateway
    handler.mode = "wrong_json"
    monkeypatch.setenv("FAKE_KEY", "sk-test")
    t = conveyor.Table("schema", row_group_size=5, seed=1, early_stop=1.0)
    t.model("m", model="fake-model", base_url=url, api_key_env="FAKE_KEY")
    t.sampler("n", conveyor.integers(1, 9))
    schema = {
        "type": "object",
        "required": ["n"],
        "additionalProperties": False,
        "properties": {
            "n": {"type": "integer"},
            "tags": {"type": "array", "items": {"type": "string"}},
        },
    }
    t.add(conveyor.llm_structured("Count {{ n }}", schema=schema, model="m"), name="v")
    s = build(t, 5, tmp_path / "o", format="jsonl")
    assert s.rows_written == 0 and set(s.dropped["v"]) == {"invalid_output"}
    assert handler.chats == 3 * s.rows_dropped  # asked three times each
    with pytest.raises(conveyor.errors.UsageError, match="not a valid JSON schema"):
        conveyor.llm_structured("x", schema={"type": "no-such-type"}, model="m")

"""LLM columns: a Jinja prompt over other columns, sent to an OpenAI-compatible endpoint.

``conveyor.llm_text(prompt, model="alias")`` and ``conveyor.llm_structured(prompt,
schema=..., model="alias")`` make generators for ``Table.add``; the model alias is declared
with ``Table.model``. The prompt's variables are the column's dependencies. Calls go through
the ``openai`` SDK's async client with its own retries off, so every 429 reaches the
endpoint's adaptive limiter (the column's endpoint is ``provider/model/chat``; aliases of one
model share it) and the engine retries with backoff after it. The API key is read from an
environment variable when the build starts and is never written anywhere.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from conveyor.core.limiter import Outcome
from conveyor.errors import DropRow, UsageError
from conveyor.runtime.context import current

__all__ = ["LLMGenerator", "Model", "llm_structured", "llm_text", "probe"]

OPENAI_BASE_URL = "https://api.openai.com/v1"
PROBE_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Model:
    """A model alias: which model, where, with which key and default parameters."""

    alias: str
    model: str
    base_url: str | None = None
    #: the environment variable holding the key (``None``: the provider's, else
    #: ``OPENAI_API_KEY``; ``Table.resolved`` fills it in)
    api_key_env: str | None = None
    provider: str = "openai"
    system: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)

    @property
    def key_env(self) -> str:
        return self.api_key_env or "OPENAI_API_KEY"

    @property
    def url(self) -> str:
        """Where requests go: ``base_url``, else the SDK's default (``OPENAI_BASE_URL``)."""
        return self.base_url or os.environ.get("OPENAI_BASE_URL") or OPENAI_BASE_URL

    @property
    def endpoint(self) -> str:
        """The adaptive limiter's key: every alias of one provider's model shares it."""
        return f"{self.provider}/{self.model}/chat"


def probe(models: Iterable[Model], timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Before a build starts: ask each distinct endpoint once (``GET {base_url}/models``) so
    an unreachable ``base_url`` or a refused key is one clear ``UsageError`` rather than a
    row group of failed cells. Any other answer (even a 404: not every gateway lists its
    models) counts as reachable."""
    import httpx

    seen: set[tuple[str, str]] = set()
    for m in models:
        if (m.url, m.key_env) in seen:
            continue
        seen.add((m.url, m.key_env))
        key = os.environ.get(m.key_env, "")
        try:
            reply = httpx.get(m.url.rstrip("/") + "/models", timeout=timeout_s,
                              headers={"Authorization": f"Bearer {key}"})  # fmt: skip
        except (httpx.HTTPError, httpx.InvalidURL, ValueError) as exc:
            why = str(exc) or type(exc).__name__
            raise UsageError(f"model {m.alias!r}: cannot reach {m.url}: {why}") from None
        if reply.status_code in (401, 403):
            raise UsageError(f"model {m.alias!r}: {m.url} refused the API key in"
                             f" {m.key_env} (HTTP {reply.status_code})")  # fmt: skip


class LLMGenerator:
    """A column's generator that renders ``prompt`` with the row's values and asks a model."""

    structured = False
    #: it takes its endpoint's limiter slot itself, around each request only (the cell does
    #: not hold one around the whole call)
    takes_slot = True

    def __init__(self, prompt: str, *, model: str, system: str | None = None,
                 **params: Any) -> None:  # fmt: skip
        try:
            import jinja2
            import jinja2.meta
        except ImportError:  # pragma: no cover - the extra is missing
            raise UsageError("LLM columns need the llm extra: pip install -e '.[llm]'") from None
        env = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False)
        try:
            parsed = env.parse(prompt)
        except jinja2.TemplateSyntaxError as exc:
            raise UsageError(f"prompt template, line {exc.lineno}: {exc.message}") from None
        self.prompt = prompt
        self.alias = model
        self.system = system
        self.params = params
        self.variables = tuple(sorted(jinja2.meta.find_undeclared_variables(parsed)))
        self._template = env.from_string(prompt)
        self.bound: Model | None = None
        self._client: Any = None
        self.calls = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.alias!r}, prompt={self.prompt[:40]!r})"

    def bind(self, model: Model) -> None:
        self.bound = model

    def fingerprint(self) -> list[Any]:
        """What the column's fingerprint covers: the prompt, the system prompt, the model
        and every parameter (a changed prompt regenerates the column with ``--update``)."""
        m = self.bound
        return [type(self).__name__, self.prompt, self.system, sorted(self.params.items()),
                None if m is None else [m.model, m.provider, m.system,
                                        sorted(m.params.items())]]  # fmt: skip

    def check(self) -> None:
        """Before the build starts: the key's environment variable is set."""
        m = self.bound
        if m is None:
            raise UsageError(f"model alias {self.alias!r} is not bound to a table")
        if not os.environ.get(m.key_env):
            raise UsageError(f"model {m.alias!r}: the environment variable {m.key_env}"
                             " (its API key) is not set")  # fmt: skip
        _check_params(m.alias, {**m.params, **self.params})

    def _client_of(self, m: Model) -> Any:
        """One client per event loop (its connections belong to the loop), closed on that
        loop before the engine stops it."""
        import asyncio

        loop = asyncio.get_running_loop()
        if self._client is None or self._client[0] is not loop:
            import openai

            from conveyor.runtime.executors import close_with_loop

            client = openai.AsyncOpenAI(
                base_url=m.base_url,
                api_key=os.environ.get(m.key_env, ""),
                max_retries=0,
                http_client=_http_client(openai),
            )
            close_with_loop(client.close)
            self._client = (loop, client)
        return self._client[1]

    def request(self, text: str) -> dict[str, Any]:
        m = self.bound
        assert m is not None
        messages = []
        system = self.system or m.system
        if system:
            messages.append({"role": "system", "content": system})
        messages.append({"role": "user", "content": text})
        return {"model": m.model, "messages": messages, **m.params, **self.params}

    async def __call__(self, **values: Any) -> Any:
        m = self.bound
        assert m is not None
        request = self.request(self._template.render(**values))
        client = self._client_of(m)
        # The endpoint's slot is held for the request alone: rendering the prompt before it
        # and parsing the reply after it hold none (held around the whole generator, the
        # endpoint saw ~14.5 of 16 slots busy)
        async with current().acquire() as slot:
            try:
                reply = await client.chat.completions.create(**request)
            except Exception as exc:
                _scrub(exc, os.environ.get(m.key_env, ""))
                raise  # leaving the block classifies it for the limiter (a 429 cuts)
            slot.report(Outcome.SUCCESS)
        self.calls += 1
        usage = getattr(reply, "usage", None)
        if usage is not None:
            self.prompt_tokens += usage.prompt_tokens or 0
            self.completion_tokens += usage.completion_tokens or 0
        return self.parse(reply.choices[0].message.content or "")

    def parse(self, content: str) -> Any:
        return content


def _scrub(exc: BaseException, secret: str) -> None:
    """Take the API key out of an error's text (some gateways echo the Authorization header
    in their error bodies), so that it reaches no summary, event or log."""
    if len(secret) < 4:
        return
    exc.args = tuple(a.replace(secret, "***") if isinstance(a, str) else a for a in exc.args)
    for attr in ("message", "body"):
        value = getattr(exc, attr, None)
        if isinstance(value, str) and secret in value:
            setattr(exc, attr, value.replace(secret, "***"))
        elif isinstance(value, dict | list) and secret in json.dumps(value, default=str):
            setattr(exc, attr, json.loads(json.dumps(value, default=str).replace(secret, "***")))


#: Request fields conveyor sets itself: a parameter may not replace them.
_OWN_FIELDS = frozenset({"messages", "model", "stream"})


def _check_params(alias: str, params: Mapping[str, Any]) -> None:
    """Every inference parameter is one the SDK's ``chat.completions.create`` takes (a typo
    would otherwise fail every row); ``extra_body`` passes provider-specific ones."""
    import difflib
    import inspect

    from openai.resources.chat.completions import AsyncCompletions

    known = set(inspect.signature(AsyncCompletions.create).parameters) - {"self"}
    for name in params:
        if name in _OWN_FIELDS:
            raise UsageError(f"model {alias!r}: parameter {name!r} is set by conveyor, not"
                             " by params")  # fmt: skip
        if name not in known:
            near = difflib.get_close_matches(name, sorted(known), n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else " (extra_body={...} passes"
            hint += "" if near else " provider-specific ones)"
            raise UsageError(f"model {alias!r}: unknown inference parameter {name!r}{hint}")


def _http_client(openai: Any) -> Any:
    """The SDK's aiohttp transport when aiohttp is installed (``conveyor[llm]`` has it): it
    costs about a third less CPU per request than the default httpx one (2.5-3.3 ms against
    3.8-5.0 ms measured here), and one process's CPU is what bounds a fast endpoint.
    ``None`` (the SDK's default client) otherwise."""
    try:
        return openai.DefaultAioHttpClient()
    except (AttributeError, RuntimeError):  # an older SDK, or aiohttp missing
        return None


class LLMStructured(LLMGenerator):
    """Asks for JSON under ``schema`` (a pydantic model or a JSON schema dict) and returns the
    parsed object (a dict). A reply that does not validate drops the row (``invalid_output``)
    after ``invalid_retries`` more tries."""

    structured = True

    def __init__(self, prompt: str, *, schema: Any, model: str, system: str | None = None,
                 invalid_retries: int = 2, **params: Any) -> None:  # fmt: skip
        super().__init__(prompt, model=model, system=system, **params)
        self.schema = schema
        self.invalid_retries = invalid_retries
        self._validator: Any = None
        if isinstance(schema, Mapping):
            self.json_schema: dict[str, Any] = dict(schema)
            self._validator = _validator_for(self.json_schema)
        elif hasattr(schema, "model_json_schema"):
            self.json_schema = schema.model_json_schema()
        else:
            raise UsageError(f"schema must be a pydantic model or a JSON schema dict, got"
                             f" {type(schema).__name__}")  # fmt: skip

    def fingerprint(self) -> list[Any]:
        return [*super().fingerprint(), self.json_schema]

    def request(self, text: str) -> dict[str, Any]:
        out = super().request(text)
        out["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "output", "schema": self.json_schema},
        }
        return out

    async def __call__(self, **values: Any) -> Any:
        for _ in range(self.invalid_retries + 1):
            try:
                return await super().__call__(**values)
            except _Invalid:
                continue
        raise DropRow("invalid_output")

    def parse(self, content: str) -> Any:
        try:
            if hasattr(self.schema, "model_validate_json"):
                return self.schema.model_validate_json(content).model_dump()
            value = json.loads(content)
        except ValueError:  # pydantic's ValidationError is a ValueError
            raise _Invalid from None
        if not self._validator.is_valid(value):
            raise _Invalid
        return value


def _validator_for(schema: dict[str, Any]) -> Any:
    """A ``jsonschema`` validator of ``schema`` (its draft from ``$schema``, else the
    latest); a schema that is not one is a ``UsageError``."""
    try:
        import jsonschema
    except ImportError:  # pragma: no cover - the extra is missing
        raise UsageError("JSON-schema columns need the llm extra: pip install -e '.[llm]'"
                         ) from None  # fmt: skip
    cls = jsonschema.validators.validator_for(schema)
    try:
        cls.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise UsageError(f"schema is not a valid JSON schema: {exc.message}") from None
    return cls(schema)


class _Invalid(Exception):
    """A reply that does not validate against the schema."""


def llm_text(prompt: str, *, model: str, system: str | None = None, **params: Any) -> LLMGenerator:
    """A column whose value is the model's reply to ``prompt`` (a Jinja template over other
    columns); ``params`` (temperature, max_tokens, ...) go with each request."""
    return LLMGenerator(prompt, model=model, system=system, **params)


def llm_structured(prompt: str, *, schema: Any, model: str, system: str | None = None,
                   **params: Any) -> LLMStructured:  # fmt: skip
    """A column whose value is the model's JSON reply under ``schema``, parsed and validated."""
    return LLMStructured(prompt, schema=schema, model=model, system=system, **params)

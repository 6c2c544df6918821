"""What the fake LLM server answers to a chat completion request: pure, no I/O, no clock.

``parse_chat_request(body)`` checks a decoded ``POST /v1/chat/completions`` body (raising
``BadRequest`` with OpenAI's message and ``param`` for the 400) and ``completion_body(...)``
builds the reply in OpenAI's response format. The content is a function of the request alone:

- text: ``"Fake reply <8 hex> to: <the last user message's first words>"``, where the hex digits
  are a hash of the model and every message, so equal prompts get equal replies;
- ``response_format`` ``{"type": "json_schema", "json_schema": {"schema": S}}``: a JSON object
  valid under ``S`` (``conveyor.testing.schema_example``), seeded by the same hash;
- ``{"type": "json_object"}``: ``{"reply": <the text reply>}``.

Tokens are counted the way OpenAI's cookbook estimates them: a token per 4 characters (at least
one), 3 more per message and 3 for the reply's priming.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from conveyor.testing.schema_example import example_for

__all__ = ["BadRequest", "ChatRequest", "completion_body", "count_tokens", "parse_chat_request"]

_SNIPPET_WORDS = 12  # enough of the prompt to recognise it in a preview, short enough to chain
_MAX_CHOICES = 128  # OpenAI's own limit on ``n``


class BadRequest(ValueError):
    """A request OpenAI would answer with 400 ``invalid_request_error``."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message, self.param = message, param


@dataclass(frozen=True, slots=True)
class ChatRequest:
    model: str
    messages: tuple[tuple[str, str], ...]  # (role, text) with content parts joined
    n: int
    json_mode: str | None  # None (text), "json_object" or "json_schema"
    schema: Mapping[str, Any] | None


def count_tokens(text: str) -> int:
    return max(1, round(len(text) / 4))


def parse_chat_request(body: object) -> ChatRequest:
    if not isinstance(body, Mapping):
        raise BadRequest("We could not parse the JSON body of your request.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("you must provide a model parameter", "model")
    if body.get("stream"):
        raise BadRequest("stream=true is not supported by conveyor's fake server", "stream")
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise BadRequest("'messages' must be a non-empty array", "messages")
    messages = tuple(_message(m, i) for i, m in enumerate(raw))
    n = body.get("n", 1)
    if n is None:
        n = 1
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= _MAX_CHOICES:
        raise BadRequest(f"'n' must be an integer from 1 to {_MAX_CHOICES}", "n")
    json_mode, schema = _response_format(body.get("response_format"))
    return ChatRequest(model, messages, n, json_mode, schema)


def _message(message: object, index: int) -> tuple[str, str]:
    param = f"messages[{index}]"
    if not isinstance(message, Mapping) or not isinstance(message.get("role"), str):
        raise BadRequest(f"{param} must be an object with a 'role'", param)
    content = message.get("content")
    if content is None or isinstance(content, str):
        return message["role"], content or ""
    if isinstance(content, list):  # content parts: the text ones count, images and audio not
        texts = [p.get("text", "") for p in content if isinstance(p, Mapping)]
        return message["role"], "\n".join(t for t in texts if isinstance(t, str))
    raise BadRequest(f"{param}.content must be a string or an array of parts", f"{param}.content")


def _response_format(fmt: object) -> tuple[str | None, Mapping[str, Any] | None]:
    if fmt is None:
        return None, None
    kind = fmt.get("type") if isinstance(fmt, Mapping) else None
    if kind == "text":
        return None, None
    if kind == "json_object":
        return "json_object", None
    if kind == "json_schema":
        spec = fmt.get("json_schema") if isinstance(fmt, Mapping) else None
        schema = spec.get("schema") if isinstance(spec, Mapping) else None
        if not isinstance(schema, Mapping):
            raise BadRequest(
                "response_format.json_schema.schema must be a JSON Schema object",
                "response_format.json_schema.schema",
            )
        return "json_schema", schema
    raise BadRequest(
        "response_format.type must be 'text', 'json_object' or 'json_schema'",
        "response_format.type",
    )


def request_digest(request: ChatRequest) -> str:
    """A hash of what decides the reply: the model and every message, roles included."""
    text = json.dumps([request.model, request.messages], ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def reply_content(request: ChatRequest, choice: int = 0) -> str:
    digest = request_digest(request)
    last_user = next((t for r, t in reversed(request.messages) if r == "user"), "")
    words = last_user.split()
    snippet = " ".join(words[:_SNIPPET_WORDS]) + (" ..." if len(words) > _SNIPPET_WORDS else "")
    suffix = f" (choice {choice})" if choice else ""
    text = f"Fake reply {digest[:8]}{suffix} to: {snippet}"
    if request.json_mode == "json_object":
        return json.dumps({"reply": text}, ensure_ascii=False)
    if request.json_mode == "json_schema":
        assert request.schema is not None
        seed = int(digest[:16], 16) + choice
        return json.dumps(example_for(request.schema, seed=seed), ensure_ascii=False)
    return text


def prompt_tokens(request: ChatRequest) -> int:
    return 3 + sum(3 + count_tokens(text) for _role, text in request.messages)


def completion_body(request: ChatRequest, *, serial: int, created: int) -> dict[str, Any]:
    """The 200 body; ``serial`` makes the id unique, ``created`` is the Unix time in seconds.

    Raises ``BadRequest`` when the schema has a ``$ref`` that cannot be followed."""
    try:
        contents = [reply_content(request, i) for i in range(request.n)]
    except ValueError as exc:
        raise BadRequest(str(exc), "response_format.json_schema.schema") from None
    prompt = prompt_tokens(request)
    completion = sum(count_tokens(c) for c in contents)
    return {
        "id": f"chatcmpl-fake{serial:012d}",
        "object": "chat.completion",
        "created": created,
        "model": request.model,
        "choices": [
            {
                "index": i,
                "message": {"role": "assistant", "content": content, "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
            for i, content in enumerate(contents)
        ],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        },
    }

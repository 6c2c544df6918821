"""Providers and model aliases from a YAML file (``Table.models_from``, ``conveyor build
--models FILE``), so one spec can run against a local fake server, a gateway or a hosted API.

    providers:
      local: {base_url: "http://127.0.0.1:8000/v1", api_key_env: FAKE_LLM_KEY}
    models:
      writer: {provider: local, model: fake-model, params: {temperature: 0.7}}
      judge: {provider: local, model: fake-model, system: "You are a strict judge."}

A provider names where models live and which environment variable holds the key; a model
alias names the provider's model, a system prompt and inference parameters. The key itself is
never in the file (nor in a log or an event): only the variable's name.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import msgspec

from conveyor.errors import UsageError

__all__ = ["ModelSpec", "ModelsFile", "ProviderSpec", "read_models"]


class ProviderSpec(msgspec.Struct, forbid_unknown_fields=True):
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"


class ModelSpec(msgspec.Struct, forbid_unknown_fields=True):
    model: str
    provider: str = "openai"
    base_url: str | None = None
    api_key_env: str | None = None
    system: str | None = None
    params: dict[str, Any] = msgspec.field(default_factory=dict)


class ModelsFile(msgspec.Struct, forbid_unknown_fields=True):
    providers: dict[str, ProviderSpec] = msgspec.field(default_factory=dict)
    models: dict[str, ModelSpec] = msgspec.field(default_factory=dict)


def read_models(path: str | os.PathLike[str]) -> ModelsFile:
    """Read and check a models file; every problem is one ``UsageError`` line naming it."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise UsageError(f"models file {p}: {exc.strerror or exc}") from None
    try:
        got = msgspec.yaml.decode(raw, type=ModelsFile)
    except msgspec.ValidationError as exc:
        raise UsageError(f"models file {p}: {exc}") from None
    except msgspec.DecodeError as exc:
        raise UsageError(f"models file {p}: not YAML: {exc}") from None
    if got.models == {} and got.providers == {}:
        raise UsageError(f"models file {p}: declares no providers and no models")
    return got

"""Provider kinds: the adapters that know each kind's URLs, auth and keys.

Which kinds exist, which wire format each speaks and which caller dialects pass through to
it is one table, ``wire/pairs.py``. Adapters are imported when a config first uses their
kind: a sidecar whose routes all lead to OpenAI never loads the Anthropic or Gemini translators.
"""

from __future__ import annotations

from importlib import import_module

from ..wire.pairs import KINDS
from .base import ProviderAdapter


def adapter_class(kind: str) -> type[ProviderAdapter]:
    module, name = KINDS[kind].adapter.split(":")
    cls: type[ProviderAdapter] = getattr(import_module(f"{__name__}.{module}"), name)
    return cls

"""Provider adapters: canonical request -> upstream HTTP request -> canonical response.

Adapters are imported when a config first uses their kind: a sidecar whose routes all
lead to OpenAI never loads the Anthropic or Gemini translators.
"""

from __future__ import annotations

from importlib import import_module

from .base import ProviderAdapter

# kind -> (module under providers/, class)
_ADAPTERS: dict[str, tuple[str, str]] = {
    "openai": ("openai", "OpenAIAdapter"),
    "openai-compatible": ("openai", "OpenAICompatibleAdapter"),
    "azure-openai": ("openai", "AzureOpenAIAdapter"),
    "anthropic": ("anthropic", "AnthropicAdapter"),
    "gemini": ("gemini", "GeminiAdapter"),
    "mock": ("mock", "MockAdapter"),
}
KINDS = frozenset(_ADAPTERS)


def adapter_class(kind: str) -> type[ProviderAdapter]:
    module, name = _ADAPTERS[kind]
    cls: type[ProviderAdapter] = getattr(import_module(f"{__name__}.{module}"), name)
    return cls

"""Provider adapters: canonical request -> upstream HTTP request -> canonical response."""

from __future__ import annotations

from .base import ProviderAdapter
from .openai import AzureOpenAIAdapter, OpenAIAdapter, OpenAICompatibleAdapter

ADAPTERS: dict[str, type[ProviderAdapter]] = {
    "openai": OpenAIAdapter,
    "openai-compatible": OpenAICompatibleAdapter,
    "azure-openai": AzureOpenAIAdapter,
}

"""Upstream URLs of the surface's operations, per upstream kind (pure).

OpenAI and OpenAI-compatible servers: ``{baseURL}/{path}``. Azure OpenAI: per-model
operations under the deployment, ``{baseURL}/openai/deployments/{deployment}/{path}
?api-version=V``, and the account-wide files and batches at ``{baseURL}/openai/{path}
?api-version=V``; with ``apiVersion: v1``, ``{baseURL}/openai/v1/{path}`` for both.
"""

from __future__ import annotations

from urllib.parse import urlencode

from ..config import ProviderKeyConfig
from ..syntax import path_segment

AZURE_DEFAULT_API_VERSION = "2024-10-21"  # GA: images, audio, completions, files, batches


def model_url(pk: ProviderKeyConfig, path: str, model: str) -> str:
    if pk.provider != "azure-openai":
        return f"{pk.base_url}/{path}"
    version = pk.api_version or AZURE_DEFAULT_API_VERSION
    if version == "v1":
        return f"{pk.base_url}/openai/v1/{path}"
    return f"{pk.base_url}/openai/deployments/{path_segment(model)}/{path}?api-version={version}"


def account_url(pk: ProviderKeyConfig, path: str, query: dict[str, str] | None = None) -> str:
    """An account-wide resource (files, batches); ``path`` segments are already escaped."""
    params = dict(query or {})
    if pk.provider != "azure-openai":
        base = f"{pk.base_url}/{path}"
    else:
        version = pk.api_version or AZURE_DEFAULT_API_VERSION
        if version == "v1":
            base = f"{pk.base_url}/openai/v1/{path}"
        else:
            base = f"{pk.base_url}/openai/{path}"
            params["api-version"] = version
    return f"{base}?{urlencode(params)}" if params else base

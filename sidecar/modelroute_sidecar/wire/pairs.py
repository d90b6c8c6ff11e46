"""What happens to a request, for every caller dialect and every upstream kind: the one table.

``KINDS`` has one row per provider kind: the adapter that knows the kind's URLs and auth
(under ``providers/``), the wire format it is spoken to in (a package under ``wire/``), and
one path per caller dialect, in the order of ``DIALECTS``:

``PASS``
    The caller's body goes upstream as sent, only the model replaced; the answer comes back as
    sent. ``wire/<format>/caller.py``'s tap (``Dialect.native_tap``/``native_usage``) reads
    usage and in-band errors on the way.
``TRANSLATE``
    The caller's format -> the canonical form (``wire/<dialect's format>/caller.py``,
    ``to_canonical``) -> the kind's format (``wire/<kind's format>/upstream.py``,
    ``build_request``); the answer back the same way (``parse_response`` or the stream
    decoder, then the caller's ``from_canonical`` or stream encoder).
``BRIDGE``
    ``PASS`` while the upstream has a Responses API; ``TRANSLATE`` (to Chat Completions) once
    its ProviderKey says ``responsesAPI: bridge`` or it answered 404/405 on ``/responses``.
``BY_MODEL``
    ``PASS`` to the kind's models that speak the dialect (Claude on Bedrock and Vertex for
    Anthropic callers, Gemini on Vertex for Gemini callers: ``adapter.speaks_for``),
    ``TRANSLATE`` for its others. A kind whose models speak several formats names them all
    in ``wire``, joined by ``+``.

So "a Claude Code request on a Gemini route" is row ``gemini``, column ``anthropic-messages``:
``TRANSLATE``, through ``wire/anthropic/caller.py`` and ``wire/gemini/upstream.py``.

A new wire format is a package under ``wire/``; a new kind is an adapter under ``providers/``
and one row here. Nothing else decides pass-through or translation: the engine asks
:func:`passes`. This module imports nothing heavy: it is read at start-up.
"""

# ruff: noqa: E501 - the table below reads as a table only on wide lines
from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from ..providers.base import ProviderAdapter


class Path(StrEnum):
    PASS = "pass-through"
    TRANSLATE = "translated"
    BRIDGE = "pass-through, or bridged to Chat Completions"
    BY_MODEL = "pass-through to the models that speak it, else translated"


PASS, TRANSLATE, BRIDGE, BY_MODEL = Path.PASS, Path.TRANSLATE, Path.BRIDGE, Path.BY_MODEL

# The caller dialects (Dialect.name) and the wire package that holds each one's caller side.
DIALECTS: dict[str, str] = {
    "openai-chat": "openai_chat",
    "openai-responses": "openai_responses",
    "anthropic-messages": "anthropic",
    "gemini": "gemini",
}


class Kind(NamedTuple):
    adapter: str  # "module:Class" under providers/
    wire: str  # the package under wire/ whose upstream.py builds its translated requests
    paths: tuple[Path, Path, Path, Path]  # per caller dialect, in the order of DIALECTS


KINDS: dict[str, Kind] = {
    #                                                                  openai-chat  openai-responses  anthropic-messages  gemini
    "openai":            Kind("openai:OpenAIAdapter",           "openai_chat", (PASS,      BRIDGE,    TRANSLATE, TRANSLATE)),
    "openai-compatible": Kind("openai:OpenAICompatibleAdapter", "openai_chat", (PASS,      BRIDGE,    TRANSLATE, TRANSLATE)),
    "azure-openai":      Kind("openai:AzureOpenAIAdapter",      "openai_chat", (PASS,      TRANSLATE, TRANSLATE, TRANSLATE)),
    "anthropic":         Kind("anthropic:AnthropicAdapter",     "anthropic",   (TRANSLATE, TRANSLATE, PASS,      TRANSLATE)),
    "gemini":            Kind("gemini:GeminiAdapter",           "gemini",      (TRANSLATE, TRANSLATE, TRANSLATE, PASS)),
    # In-process, deterministic; answers in Chat Completions (its "translation" from an
    # openai-chat caller is the identity).
    "mock":              Kind("mock:MockAdapter",               "openai_chat", (TRANSLATE, TRANSLATE, TRANSLATE, TRANSLATE)),
    # Converse for every model; Claude's InvokeModel takes Anthropic callers' bodies as sent.
    "bedrock":           Kind("bedrock:BedrockAdapter",         "bedrock_converse", (TRANSLATE, TRANSLATE, BY_MODEL, TRANSLATE)),
    # Google's publisher models speak Gemini, Anthropic's (claude-*) the Messages format.
    "vertex":            Kind("vertex:VertexAdapter",           "gemini+anthropic", (TRANSLATE, TRANSLATE, BY_MODEL, BY_MODEL)),
}  # fmt: skip

# (dialect, kind) -> path, flattened once at import for the engine's per-attempt look-up.
PATHS: dict[tuple[str, str], Path] = {
    (dialect, kind): row.paths[i] for kind, row in KINDS.items() for i, dialect in enumerate(DIALECTS)
}


def path(dialect: str, kind: str) -> Path:
    return PATHS[(dialect, kind)]


def passes(dialect: str, adapter: ProviderAdapter, model: str = "") -> bool:
    """Whether a request in ``dialect`` goes to ``adapter``'s upstream (for ``model``) untranslated, now."""
    p = PATHS[(dialect, adapter.kind)]
    return (p is PASS or (p is BRIDGE and not adapter.responses_bridged)
            or (p is BY_MODEL and adapter.speaks_for(dialect, model)))


def via(dialect: str, kind: str) -> str:
    """The modules a request takes, for people: the README's table is made of these."""
    p = PATHS[(dialect, kind)]
    caller = DIALECTS[dialect]
    upstreams = " or ".join(f"`wire/{u}/upstream.py`" for u in KINDS[kind].wire.split("+"))
    translated = f"`wire/{caller}/caller.py` → canonical → {upstreams}"
    if p is PASS:
        return f"pass-through (`wire/{caller}`)"
    if p is BRIDGE:
        return f"pass-through (`wire/{caller}`); bridged: {translated}"
    if p is BY_MODEL:
        return f"pass-through (`wire/{caller}`) to the models that speak it; others: {translated}"
    return f"translated: {translated}"

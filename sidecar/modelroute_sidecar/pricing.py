"""Built-in prices (USD per million tokens) and cost of one request's usage.

Prices are looked up once per backend model at config load: exact name first, then
the longest known prefix, so dated snapshots (``gpt-4o-2024-08-06``,
``claude-sonnet-4-20250514``) price like their family. Config ``prices`` override.
Figures are list prices for standard (non-batch) use as published by each provider.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from .canonical import Usage
from .config import Price


def _p(inp: float, out: float, cache_read: float | None = None, cache_write: float | None = None) -> Price:
    return Price(input=inp, output=out, cache_read=cache_read, cache_write=cache_write)


BUILTIN_PRICES: dict[str, Price] = {
    # OpenAI
    "gpt-5": _p(1.25, 10.0, 0.125),
    "gpt-5-mini": _p(0.25, 2.0, 0.025),
    "gpt-5-nano": _p(0.05, 0.40, 0.005),
    "gpt-4.1": _p(2.0, 8.0, 0.50),
    "gpt-4.1-mini": _p(0.40, 1.60, 0.10),
    "gpt-4.1-nano": _p(0.10, 0.40, 0.025),
    "gpt-4o": _p(2.50, 10.0, 1.25),
    "gpt-4o-mini": _p(0.15, 0.60, 0.075),
    "o1": _p(15.0, 60.0, 7.50),
    "o3": _p(2.0, 8.0, 0.50),
    "o3-mini": _p(1.10, 4.40, 0.55),
    "o4-mini": _p(1.10, 4.40, 0.275),
    "gpt-3.5-turbo-instruct": _p(1.50, 2.0),  # legacy /v1/completions
    "davinci-002": _p(2.0, 2.0),
    "babbage-002": _p(0.40, 0.40),
    "gpt-image-1": _p(5.0, 40.0),  # text input, image output tokens (image input tokens cost $10/M)
    "gpt-image-1-mini": _p(2.0, 8.0),
    "gpt-4o-transcribe": _p(6.0, 10.0),  # audio input, text output tokens
    "gpt-4o-mini-transcribe": _p(3.0, 5.0),
    "omni-moderation": _p(0.0, 0.0),  # free
    "text-embedding-3-small": _p(0.02, 0.0),
    "text-embedding-3-large": _p(0.13, 0.0),
    # Anthropic (cache write priced at the 5-minute TTL rate)
    "claude-opus-4-5": _p(5.0, 25.0, 0.50, 6.25),
    "claude-opus-4-1": _p(15.0, 75.0, 1.50, 18.75),
    "claude-opus-4": _p(15.0, 75.0, 1.50, 18.75),
    "claude-sonnet-4-5": _p(3.0, 15.0, 0.30, 3.75),
    "claude-sonnet-4": _p(3.0, 15.0, 0.30, 3.75),
    "claude-3-7-sonnet": _p(3.0, 15.0, 0.30, 3.75),
    "claude-haiku-4-5": _p(1.0, 5.0, 0.10, 1.25),
    "claude-3-5-haiku": _p(0.80, 4.0, 0.08, 1.0),
    # Google (prompts up to 200k tokens)
    "gemini-2.5-pro": _p(1.25, 10.0, 0.31),
    "gemini-2.5-flash": _p(0.30, 2.50, 0.075),
    "gemini-2.5-flash-lite": _p(0.10, 0.40, 0.025),
    "gemini-2.0-flash": _p(0.10, 0.40, 0.025),
    "text-embedding-004": _p(0.0, 0.0),
    # DeepSeek, Mistral, Groq-hosted open models
    "deepseek-chat": _p(0.28, 0.42, 0.028),
    "deepseek-reasoner": _p(0.28, 0.42, 0.028),
    "mistral-large-latest": _p(2.0, 6.0),
    "mistral-small-latest": _p(0.10, 0.30),
    "llama-3.3-70b-versatile": _p(0.59, 0.79),
    "llama-3.1-8b-instant": _p(0.05, 0.08),
    # Amazon Nova on Bedrock (us-east-1 on-demand)
    "nova-premier": _p(2.50, 12.50),
    "nova-pro": _p(0.80, 3.20, 0.20),
    "nova-lite": _p(0.06, 0.24, 0.015),
    "nova-micro": _p(0.035, 0.14, 0.00875),
}

# Bedrock ids name a model with a cross-region profile and a vendor in front and a version
# behind (us.anthropic.claude-sonnet-4-5-20250929-v1:0, amazon.nova-pro-v1:0, or an ARN
# ending in one); Vertex's Claude ids end in @<date> (claude-sonnet-4-5@20250929).
_CLOUD_ID = re.compile(r"^(?:arn:[^/]+/)?(?:(?:us|eu|apac|jp|au|ca|us-gov|global)\.)?"
                       r"(?:(?:anthropic|amazon|meta|mistral|cohere|ai21|deepseek|openai|qwen|writer)\.)?"
                       r"(.+?)(?:-v\d+(?::\d+)?|@[0-9a-z-]+)?$")


def list_name(model: str) -> str:
    """The provider's own name in a Bedrock or Vertex model id (any other name as it is)."""
    m = _CLOUD_ID.match(model)
    return m.group(1) if m else model


def find_price(model: str, overrides: Mapping[str, Price] | None = None) -> Price | None:
    """The price of ``model``: its exact name, then the longest known prefix; then the same
    for its provider's name inside a Bedrock or Vertex id (an override by the full id wins)."""
    price = _find(model, overrides)
    if price is None and (name := list_name(model)) != model:
        price = _find(name, overrides)
    return price


def _find(model: str, overrides: Mapping[str, Price] | None) -> Price | None:
    for table in (overrides or {}, BUILTIN_PRICES):
        if model in table:
            return table[model]
    best: str | None = None
    for table in (overrides or {}, BUILTIN_PRICES):
        for name in table:
            if model.startswith(name + "-") and (best is None or len(name) > len(best)):
                best = name
        if best is not None:
            return table[best]
    return None


def cost_usd(price: Price | None, usage: Usage) -> float:
    if price is None:
        return 0.0
    cache_read = usage.cache_read_tokens
    cache_write = usage.cache_write_tokens
    fresh = max(usage.input_tokens - cache_read - cache_write, 0)
    total = (
        fresh * price.input
        + cache_read * (price.cache_read if price.cache_read is not None else price.input)
        + cache_write * (price.cache_write if price.cache_write is not None else price.input)
        + usage.output_tokens * price.output
    )
    return total / 1_000_000

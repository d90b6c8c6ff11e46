"""Small pieces several translators share: data URLs, tool arguments, ids, text of parts.

Pure helpers with no provider knowledge; each provider module decides what to do with
what they return.
"""

from __future__ import annotations

import os
import re
from typing import Any

import orjson

_DATA_URL = re.compile(r"^data:([^;,]*)((?:;[^;,]*)*),(.*)$", re.S)


def split_data_url(url: str) -> tuple[str, str] | None:
    """``data:<mime>;base64,<data>`` -> (mime, base64 data); None for any other URL.

    Only base64 data URLs are useful to providers, which all want base64 payloads.
    """
    if not url.startswith("data:"):
        return None
    m = _DATA_URL.match(url)
    if m is None or ";base64" not in m.group(2):
        return None
    return (m.group(1) or "application/octet-stream", m.group(3))


def parse_arguments(arguments: Any) -> dict[str, Any]:
    """OpenAI's tool-call ``arguments`` string -> the object providers want.

    Models occasionally emit invalid or non-object JSON; providers that need an object
    then get the raw text under ``_raw`` rather than an error, so the turn survives.
    """
    if isinstance(arguments, dict):
        return arguments
    if not arguments:
        return {}
    try:
        value = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        return {"_raw": arguments}
    return value if isinstance(value, dict) else {"_raw": arguments}


def dump_arguments(value: Any) -> str:
    return orjson.dumps(value if value is not None else {}).decode()


def new_id(prefix: str) -> str:
    return prefix + os.urandom(12).hex()


def content_text(content: Any) -> str:
    """The text of an OpenAI message ``content`` (string, or a list of parts)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    out: list[str] = []
    for part in content:
        if isinstance(part, dict):
            text = part.get("text")
            if isinstance(text, str):
                out.append(text)
            elif part.get("type") == "refusal" and isinstance(part.get("refusal"), str):
                out.append(part["refusal"])
        elif isinstance(part, str):
            out.append(part)
    return "".join(out)


def stop_list(stop: Any) -> list[str]:
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop]
    return [s for s in stop if isinstance(s, str)]

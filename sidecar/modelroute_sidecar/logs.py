"""Structured (JSON lines) logging.

Log calls pass their fields in ``extra={"fields": {...}}``; the formatter merges them
into one JSON object per line. Nothing in this module ever sees a key: callers log
key *labels* (``openai#2``), and upstream error text is redacted before it gets here.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import orjson


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if fields:
            out.update(fields)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


class TextFormatter(logging.Formatter):
    """One line for people: the message, then the same fields as the JSON format, as k=v."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        fields = getattr(record, "fields", None)
        if fields:
            line += "".join(f" {k}={_text_value(v)}" for k, v in fields.items() if v is not None)
        return line


def _text_value(v: Any) -> str:
    if isinstance(v, bool | int | float) or (isinstance(v, str) and v and not any(c in v for c in ' "=')):
        return str(v)
    return orjson.dumps(v, default=str).decode()


def setup(level: str = "info", json: bool = True) -> None:
    handler = logging.StreamHandler(sys.stderr)
    plain = TextFormatter("%(asctime)s %(levelname)s %(name)s %(message)s")
    handler.setFormatter(JSONFormatter() if json else plain)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's own access log would duplicate ours, without route or backend.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)

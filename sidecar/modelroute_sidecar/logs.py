"""Structured (JSON lines) logging.

Log calls pass their fields in ``extra={"fields": {...}}``; the formatter merges them
into one JSON object per line. Callers log key *labels* (``openai#2``), and the engine
redacts upstream error text before logging it; a filter on the handler redacts every
record once more (message, fields, exception text) as the last line of defence.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from typing import Any

import orjson

from .redact import Redactor


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
        elif record.exc_text:
            out["exc"] = record.exc_text
        return orjson.dumps(out, default=str).decode()


class RedactingFilter(logging.Filter):
    """Keys out of every record the handler writes (see redact.py); set per config load."""

    def __init__(self) -> None:
        super().__init__()
        self.redactor: Redactor | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        r = self.redactor
        if not r:
            return True
        record.msg, record.args = r.text(record.getMessage()), None
        fields = getattr(record, "fields", None)
        if fields:
            record.fields = _redact_value(r, fields)
        if record.exc_info:
            # Exception messages can quote upstream text: format now, redact, keep the text.
            record.exc_text = r.text(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        elif record.exc_text:
            record.exc_text = r.text(record.exc_text)
        return True


def _redact_value(r: Redactor, v: Any) -> Any:
    if isinstance(v, str):
        return r.text(v)
    if isinstance(v, dict):
        return {k: _redact_value(r, x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_redact_value(r, x) for x in v]
    return v


redacting_filter = RedactingFilter()


def redact_with(redactor: Redactor) -> None:
    """Use ``redactor`` for every log record from now on (called at each config load)."""
    redacting_filter.redactor = redactor


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
    handler.addFilter(redacting_filter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    access_log.configure(level, json)
    # aiohttp's own access log would duplicate ours, without route or backend.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


class AccessLog:
    """One line per request, off the ``logging`` machinery.

    A LogRecord, its formatting and a write per line cost more than the rest of a
    proxied request's own work; lines are encoded with orjson and written to stderr in
    one batch per event-loop pass instead. Text format and levels above INFO fall back
    to (or switch off) the ordinary logger, so the output stays what ``setup`` chose.
    """

    def __init__(self) -> None:
        self.enabled = True
        self.json = True
        self._buf: list[bytes] = []
        self._second = 0
        self._stamp = ""
        self._logger = logging.getLogger("modelroute.access")

    def configure(self, level: str, json: bool) -> None:
        self.enabled = logging.getLevelName(level.upper()) <= logging.INFO
        self.json = json

    def write(self, msg: str, fields: dict[str, Any]) -> None:
        if not self.json:
            self._logger.info(msg, extra={"fields": fields})
            return
        now = time.time()
        second = int(now)
        if second != self._second:  # formatting a date costs more than the rest of the line
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        line = orjson.dumps({"ts": f"{self._stamp}.{int(now * 1000) % 1000:03d}Z", "level": "info",
                             "logger": "modelroute.access", "msg": msg, **fields}, default=str) + b"\n"
        if not self._buf:
            try:
                asyncio.get_running_loop().call_soon(self.flush)
            except RuntimeError:  # no loop: write at once
                self._buf.append(line)
                self.flush()
                return
        self._buf.append(line)

    def flush(self) -> None:
        if not self._buf:
            return
        data = b"".join(self._buf)
        self._buf.clear()
        try:
            sys.stderr.flush()  # keep order with anything the logging module wrote
            fd = sys.stderr.fileno()
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        except (OSError, ValueError):
            pass  # stderr closed: nothing sensible to do with a log line


access_log = AccessLog()

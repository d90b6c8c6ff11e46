"""The redactor as a pure function: what it replaces, and what it leaves alone."""

from __future__ import annotations

import json
import logging
from urllib.parse import quote

import pytest

from modelroute_sidecar import logs
from modelroute_sidecar.redact import Redactor

KEY = "sk-proj-Ab3dEfGh1jKlMnOp+/QrStUvWxYz0123456789~XY~"
R = Redactor([KEY, "AIzaSyD-9tSrke72PouQMnMX-a7eZSW0jkFMBWY", "short1"])


def escaped(s: str) -> str:
    return "".join(f"\\u{ord(c):04x}" for c in s)


@pytest.mark.parametrize(("text", "expected"), [
    (f"Incorrect API key provided: {KEY}. See https://x.example/keys.",
     "Incorrect API key provided: [redacted]. See https://x.example/keys."),
    (f"key {KEY[:16]} refused", "key [redacted] refused"),
    (f"key ends {KEY[-16:]}", "key ends [redacted]"),
    (f"a middle piece {KEY[12:24]} here", "a middle piece [redacted] here"),
    (f"sk-pr{'*' * 20}{KEY[-4:]}.", f"sk-pr{'*' * 24}."),
    (f'{{"message": "bad key {escaped(KEY)}"}}', '{"message": "bad key [redacted]"}'),
    (json.dumps({"m": json.dumps({"m": escaped(KEY[:12])})}), json.dumps({"m": json.dumps({"m": "[redacted]"})})),
    (f"/v1?key={quote(KEY, safe='')}&x=1", "/v1?key=[redacted]&x=1"),
    (f"twice {quote(quote(KEY, safe=''), safe='')}", "twice [redacted]"),
    ("x-goog-api-key AIzaSyD-9tSrke72 is invalid", "x-goog-api-key [redacted] is invalid"),
    ("the key short1 is too short", "the key [redacted] is too short"),
])
def test_keys_and_their_pieces_are_replaced(text: str, expected: str) -> None:
    assert R.text(text) == expected
    assert R.body(text.encode()) == expected.encode()


@pytest.mark.parametrize("text", [
    "Rate limit reached for gpt-4o in organization org-abc on tokens per min (TPM): Limit 30000, 100% used",
    "Invalid 'messages[0].content': string too long. Expected a string with maximum length 1048576",
    '{"error": {"message": "\\u00e9t\\u00e9 %zz \\\\q", "type": "invalid_request_error"}}',
    "sk-proj", KEY[:7], KEY[-3:], "~XY~ without a mask before it", "",
])
def test_other_text_is_left_exactly_as_it_was(text: str) -> None:
    assert R.text(text) == text
    assert R.body(text.encode()) == text.encode()


def test_no_keys_no_work_and_union() -> None:
    assert not Redactor([]) and Redactor([]).text(KEY) == KEY
    both = Redactor([KEY]) | Redactor(["another-secret-value-1234"])
    assert both.text(f"{KEY} another-secret-value-1234") == "[redacted] [redacted]"


def test_the_log_filter_redacts_messages_fields_and_tracebacks(capsys: pytest.CaptureFixture[str]) -> None:
    """The last line of defence: whatever reaches a log record, the handler writes it redacted."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        for json_lines in (True, False):
            logs.setup("debug", json=json_lines)
            logs.redact_with(R)
            log = logging.getLogger("modelroute.test")
            log.debug("upstream said %s", KEY, extra={"fields": {"error": f"key {KEY[:16]}", "n": [KEY[-12:]]}})
            try:
                raise RuntimeError(f"boom {escaped(KEY)}")
            except RuntimeError:
                log.exception("failed")
            out = capsys.readouterr().err
            assert "upstream said [redacted]" in out and "boom [redacted]" in out and "RuntimeError" in out, out
            for piece in (KEY[:8], KEY[-8:], KEY[12:20], escaped(KEY[:2])):
                assert piece not in out, (piece, out)
    finally:
        logs.redact_with(Redactor([]))
        root.handlers[:], level = saved
        root.setLevel(level)


def test_many_echoes_in_a_large_body_are_all_replaced() -> None:
    text = " ".join(f"{i} {KEY} {KEY[i % 20:i % 20 + 9]} {escaped(KEY[-10:])}" for i in range(3000))
    out = R.text(text)
    assert out.count("[redacted]") == 3 * 3000
    for i in range(len(KEY) - 7):
        assert KEY[i:i + 8] not in out

"""A bug of the gateway's own is a 500 in the caller's dialect, logged with its traceback;
never aiohttp's plain-text page. (The fuzz test shows bad input never gets here.)"""

from __future__ import annotations

import logging
from typing import Any

import aiohttp
import pytest

from modelroute_sidecar import app as app_module
from modelroute_sidecar.wire.anthropic import caller as anthropic_messages
from modelroute_sidecar.wire.anthropic.caller import AnthropicMessages
from modelroute_sidecar.wire.gemini import caller as gemini_generate
from modelroute_sidecar.wire.openai_chat.caller import OpenAIChat
from modelroute_sidecar.wire.openai_responses.caller import OpenAIResponses
from tests.fakes.openai import FakeOpenAI
from tests.gateway.harness import FAST, model_route, provider_key, running_gateway

GOOD = {"/v1/chat/completions": {"model": "chat", "messages": [{"role": "user", "content": "hi"}]},
        "/v1/messages": {"model": "chat", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]},
        "/v1/messages/count_tokens": {"model": "chat", "messages": [{"role": "user", "content": "hi"}]},
        "/v1/responses": {"model": "chat", "input": "hi"},
        "/v1/embeddings": {"model": "chat", "input": "hi"},
        "/v1beta/models/chat:generateContent": {"contents": [{"parts": [{"text": "hi"}]}]},
        "/v1beta/models/chat:streamGenerateContent?alt=sse": {"contents": [{"parts": [{"text": "hi"}]}]},
        "/v1beta/models/chat:countTokens": {"contents": [{"parts": [{"text": "hi"}]}]}}


def boom(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError("a bug planted by the test")


@pytest.mark.parametrize("path", sorted(GOOD))
async def test_an_unexpected_exception_is_a_500_in_the_callers_dialect(
        path: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    async with FakeOpenAI() as up, running_gateway([*provider_key("openai", "openai", up.base_url),
                                                    model_route("chat", ("openai", "gpt-4o"), **FAST)]) as gw:
        # Every endpoint's first step after reading the body.
        # (app imports count_tokens' parser, like the Anthropic dialect, on first use)
        monkeypatch.setattr(anthropic_messages, "parse_count_tokens", boom)
        monkeypatch.setattr(app_module, "parse_embeddings", boom)
        monkeypatch.setattr(gemini_generate, "parse_generate", boom)
        monkeypatch.setattr(gemini_generate, "parse_count", boom)
        for dialect in (OpenAIChat, AnthropicMessages, OpenAIResponses):
            monkeypatch.setattr(dialect, "parse", boom)
        caplog.set_level(logging.ERROR)
        async with aiohttp.ClientSession() as s, s.post(gw.root + path, json=GOOD[path]) as r:
            assert r.status == 500
            assert r.content_type == "application/json"
            body = await r.json()
        if path.startswith("/v1/messages"):
            assert body["type"] == "error" and body["error"]["type"] == "api_error"
        elif path.startswith("/v1beta/"):
            assert body["error"]["code"] == 500 and body["error"]["status"] == "INTERNAL"
        else:
            assert set(body["error"]) == {"message", "type", "param", "code"}
        message = body["error"]["message"]
        assert "Internal gateway error" in message and "planted" not in message  # no internals to the caller
        logged = [rec for rec in caplog.records if rec.getMessage() == "internal error"]
        assert logged and logged[0].exc_info is not None and "planted" in str(logged[0].exc_info[1])
        assert up.requests == []

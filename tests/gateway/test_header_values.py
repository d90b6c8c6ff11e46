"""Headers are validated where they enter (issue 9, class 8).

At the HTTP layer, with raw sockets against the real `modelroute serve`: a caller header
the gateway echoes (``x-request-id``) or forwards upstream (``anthropic-beta``,
``anthropic-version``) holding bytes beyond ASCII is a 400 in the caller's dialect, and a
glob-routed model name with a newline is a 400 too; nothing reaches the upstream and the
connection stays usable. A ProviderKey whose extra header holds CR/LF is refused when the
configuration is compiled (`serve` says which document and field), never at request time.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
import yaml

from modelroute_sidecar.config import ConfigInvalid, GatewayConfig, from_data
from modelroute_sidecar.syntax import HEADER_NAME_PATTERN, HEADER_VALUE_PATTERN
from tests.fakes.anthropic import FakeAnthropic
from tests.fakes.openai import FakeOpenAI
from tests.gateway.harness import free_port, provider_key
from tests.gateway.procs import modelroute
from tests.gateway.rawhttp import RawResponse, head, read_response

CHAT = orjson.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]})
MESSAGES = orjson.dumps({"model": "claude-haiku-4-5", "max_tokens": 16,
                         "messages": [{"role": "user", "content": "hi"}]})


def request(path: str, body: bytes, headers: dict[str, str]) -> bytes:
    return head("POST", path, headers, length=len(body)) + body


async def on_one_connection(port: int, *requests: bytes) -> list[RawResponse]:
    """Each request in turn on one keep-alive connection: a refusal must not cost the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        out = []
        async with asyncio.timeout(30):
            for data in requests:
                writer.write(data)
                await writer.drain()
                out.append(await read_response(reader))
        return out
    finally:
        writer.close()


@pytest.mark.parametrize(("path", "body", "header", "value"), [
    ("/v1/chat/completions", CHAT, "x-request-id", "caf\xe9"),
    ("/v1/chat/completions", CHAT, "x-request-id", "\xff\xfe"),
    ("/v1/chat/completions", CHAT, "x-request-id", "x" * 2000),
    ("/v1/messages", MESSAGES, "x-request-id", "caf\xe9"),
    ("/v1/messages", MESSAGES, "anthropic-beta", "tools-2024\xe9"),
    ("/v1/messages", MESSAGES, "anthropic-version", "2023-06-01\xa0"),
], ids=["latin1-request-id", "binary-request-id", "long-request-id", "request-id-on-messages",
        "latin1-anthropic-beta", "nbsp-anthropic-version"])
async def test_a_header_the_gateway_would_echo_or_forward_is_checked_first(tmp_path: Path, path: str, body: bytes,
                                                                           header: str, value: str) -> None:
    async with FakeOpenAI(keys=["sk-test"]) as oai, FakeAnthropic(keys=["sk-ant-test"]) as ant:
        cfg = tmp_path / "routes.yaml"
        cfg.write_text(yaml.safe_dump_all([*provider_key("openai", "openai", oai.base_url, ["sk-test"]),
                                           *provider_key("anthropic", "anthropic", ant.base_url, ["sk-ant-test"])]))
        with modelroute(tmp_path, "serve", "-f", str(cfg)) as gp:
            bad, good = await on_one_connection(gp.port, request(path, body, {header: value}),
                                                request(path, body, {"x-request-id": "req-42"}))
            log = gp.logs()
        assert bad.status == 400, (bad.status, bad.body)
        err = bad.json()
        if path == "/v1/messages":
            assert isinstance(err, dict) and err["type"] == "error", err
            assert err["error"]["type"] == "invalid_request_error" and header in err["error"]["message"]
        else:
            assert isinstance(err, dict) and err["error"]["code"] == "invalid_header"
            assert err["error"]["param"] == header
        assert "x-request-id" not in bad.headers or bad.headers["x-request-id"].isascii()
        # Nothing was sent upstream for the refused request; the next one on the connection works.
        assert good.status == 200 and good.headers["x-request-id"] == "req-42", good.body
        assert len(oai.requests) + len(ant.requests) == 1
        assert "internal error" not in log


async def test_control_bytes_in_a_header_never_reach_the_application(tmp_path: Path) -> None:
    """CR, LF, NUL and other controls are refused by the HTTP parser itself (aiohttp/llhttp), before
    the gateway's code: a 400 or a closed connection, nothing upstream, and the gateway serves on."""
    async with FakeOpenAI(keys=["sk-test"]) as oai:
        cfg = tmp_path / "routes.yaml"
        cfg.write_text(yaml.safe_dump_all(provider_key("openai", "openai", oai.base_url, ["sk-test"])))
        with modelroute(tmp_path, "serve", "-f", str(cfg)) as gp:
            for value in ("a\x01b", "a\x00b", "a\rb", "a\x1bb", "a\x7fb"):
                try:
                    (answer,) = await on_one_connection(gp.port, request("/v1/chat/completions", CHAT,
                                                                         {"x-request-id": value}))
                    assert answer.status == 400, (value, answer.status)
                except ConnectionError:
                    pass  # the parser may also just close: the request never existed
                (good,) = await on_one_connection(gp.port, request("/v1/chat/completions", CHAT, {}))
                assert good.status == 200
            log = gp.logs()
        assert len(oai.requests) == 5  # the good ones only
        assert "internal error" not in log


async def test_a_model_name_with_a_newline_is_refused_before_the_upstream_is_paid(tmp_path: Path) -> None:
    async with FakeOpenAI(keys=["sk-test"]) as oai:
        cfg = tmp_path / "routes.yaml"
        cfg.write_text(yaml.safe_dump_all(provider_key("openai", "openai", oai.base_url, ["sk-test"])))
        with modelroute(tmp_path, "serve", "-f", str(cfg)) as gp:
            hostile = [orjson.dumps({"model": name, "messages": [{"role": "user", "content": "hi"}]})
                       for name in ("gpt-x\nfoo", "gpt-x\r\nX-Injected: 1", "gpt-x\u2028y", "gpt-\x00")]
            answers = await on_one_connection(gp.port, *[request("/v1/chat/completions", b, {}) for b in hostile],
                                              request("/v1/chat/completions", CHAT, {}))
        for refused in answers[:-1]:
            assert refused.status == 400, refused.body
            err = refused.json()
            assert isinstance(err, dict) and err["error"]["code"] == "invalid_model_name"
            # The response header naming the backend is absent, not broken.
            assert "x-modelroute-backend" not in refused.headers
        assert answers[-1].status == 200
        assert len(oai.requests) == 1  # only the good one


def test_a_provider_key_header_with_a_line_break_is_refused_at_compile(tmp_path: Path) -> None:
    for value in ("team-a\r\nX-Injected: 1", "team-a\nb", "caf\u00e9", "a\x00b"):
        cfg = tmp_path / "routes.yaml"
        cfg.write_text(yaml.safe_dump_all(provider_key("openai", "openai", "http://127.0.0.1:9/v1", ["sk-test"],
                                                       headers={"X-Team": value})))
        proc = subprocess.run([sys.executable, "-m", "modelroute_sidecar", "serve", "-f", str(cfg),
                               "--port", str(free_port()), "--metrics-port", "0"],
                              capture_output=True, text=True, timeout=30)
        out = proc.stdout + proc.stderr
        assert proc.returncode != 0, out
        assert "ProviderKey openai" in out and "spec.headers" in out and "visible ASCII" in out, out


def test_a_compiled_config_with_such_a_header_does_not_load() -> None:
    """The sidecar's own config (config.json, from the operator or written by hand) is checked too."""
    pk = {"name": "openai", "provider": "openai", "baseURL": "http://127.0.0.1:9/v1"}
    from_data({"providerKeys": {"openai": {**pk, "headers": {"X-Team": "a b\tc"}}}}, GatewayConfig)
    for headers in ({"X-Team": "a\r\nX-Injected: 1"}, {"X-Team": "caf\u00e9"}, {"X Team": "a"}):
        with pytest.raises(ConfigInvalid, match="cannot be sent"):
            from_data({"providerKeys": {"openai": {**pk, "headers": headers}}}, GatewayConfig)


def test_the_crd_states_the_same_header_rules() -> None:
    crd = yaml.safe_load((Path(__file__).resolve().parents[2] / "crds" / "providerkeys.yaml").read_text())
    headers = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["headers"]
    assert headers["additionalProperties"]["pattern"] == HEADER_VALUE_PATTERN
    assert any(f"h.matches('{HEADER_NAME_PATTERN}')" in v["rule"] for v in headers["x-kubernetes-validations"])

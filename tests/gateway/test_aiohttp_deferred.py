"""aiohttp's client is imported when used, not with the server (aiohttp_client_deferred).

The package registered with its ``__init__`` deferred must behave as aiohttp to every
importer: submodules as ever, the version, and the whole package on the first use of a
top-level name. A real gateway process serving real upstreams (OpenAI and Anthropic fakes on
loopback, the official SDKs as callers, token counting included) never loads the client; one
told to use aiohttp's client loads it on its first request and answers as ever.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import anthropic
import openai
import pytest

from modelroute_sidecar.compile import compile_resources
from tests.fakes.anthropic import FakeAnthropic
from tests.fakes.openai import FakeOpenAI
from tests.gateway.harness import model_route, provider_key, user
from tests.gateway.procs import GatewayProcess, modelroute

# The client's own modules (client_exceptions is the server's too: aiohttp.web imports it).
CLIENT = {"aiohttp.client", "aiohttp.client_reqrep", "aiohttp.connector", "aiohttp.cookiejar", "aiohttp.tracing",
          "aiohttp.resolver"}


def test_the_deferred_package_is_aiohttp_to_its_importers() -> None:
    script = textwrap.dedent("""
        import importlib.metadata, sys
        from modelroute_sidecar.aiohttp_client_deferred import client_loaded, defer_client
        assert defer_client()
        assert not defer_client()  # once only: aiohttp is registered now
        from aiohttp import web, hdrs
        import aiohttp.web_exceptions
        from aiohttp.client_exceptions import ClientError
        import aiohttp
        assert aiohttp.__version__ == importlib.metadata.version("aiohttp")
        assert aiohttp.web is web and aiohttp.hdrs is hdrs
        assert not client_loaded(), sorted(m for m in sys.modules if m.startswith("aiohttp"))
        assert "aiohttp.connector" not in sys.modules
        assert web.HTTPNotFound().status == 404
        session_class = aiohttp.ClientSession  # the first top-level name runs the __init__
        assert client_loaded()
        import aiohttp.client
        assert session_class is aiohttp.client.ClientSession
        assert aiohttp.ClientError is ClientError
        from aiohttp import ClientTimeout, TCPConnector
        assert ClientTimeout(total=1).total == 1
        try:
            aiohttp.no_such_name
        except AttributeError as e:
            assert "no_such_name" in str(e)
        else:
            raise AssertionError("an unknown name must raise AttributeError")
        assert "ClientSession" in aiohttp.__all__
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_defer_leaves_an_imported_aiohttp_alone() -> None:
    done = subprocess.run([sys.executable, "-c", "import aiohttp\nfrom modelroute_sidecar.aiohttp_client_deferred "
                           "import defer_client\nassert not defer_client()\nassert aiohttp.ClientSession"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def loaded(gp: GatewayProcess) -> set[str]:
    return set(re.findall(r"^import time:\s+\d+ \|\s+\d+ \|\s*(\S+)$", gp.logs(), re.M))


@pytest.fixture
def upstreams() -> Iterator[tuple[FakeOpenAI, FakeAnthropic]]:
    with FakeOpenAI(keys=["sk-o"]) as oai, FakeAnthropic(keys=["sk-ant"]) as ant:
        yield oai, ant


def config_dir(root: Path, oai: FakeOpenAI, ant: FakeAnthropic) -> Path:
    docs = [*provider_key("oai", "openai", oai.base_url, keys=["sk-o"]),
            *provider_key("ant", "anthropic", ant.base_url, keys=["sk-ant"]),
            model_route("gpt", ("oai", "gpt-4o")), model_route("claude", ("ant", "claude-sonnet-4-5"))]
    result = compile_resources(docs)
    assert result.ok, result.statuses
    (root / "config").mkdir(parents=True)
    (root / "keys").mkdir()
    (root / "config" / "config.json").write_text(result.config.dump_json())
    for name, keys in result.keys.items():
        (root / "keys" / name).write_text("\n".join(keys))
    return root


def traffic(gp: GatewayProcess) -> None:
    oai = openai.OpenAI(base_url=gp.url, api_key="x", max_retries=0)
    assert oai.chat.completions.create(model="gpt", messages=user("hi")).choices[0].message.content
    assert any(c.usage for c in oai.chat.completions.create(model="gpt", messages=user("hi"), stream=True,
                                                            stream_options={"include_usage": True}))
    ant = anthropic.Anthropic(base_url=gp.url.removesuffix("/v1"), api_key="x", max_retries=0)
    assert ant.messages.create(model="claude", max_tokens=20, messages=user("hi")).content
    with ant.messages.stream(model="claude", max_tokens=20, messages=user("hi")) as stream:
        assert stream.get_final_message().content
    counted = ant.messages.count_tokens(model="claude", messages=user("hello there"))
    assert counted.input_tokens > 0


def test_serving_real_upstreams_never_imports_aiohttps_client(
        tmp_path: Path, upstreams: tuple[FakeOpenAI, FakeAnthropic]) -> None:
    cfg = config_dir(tmp_path / "pod", *upstreams)
    with modelroute(tmp_path, "sidecar", "--config-dir", str(cfg), "--upstream-client", "lean",
                    env={"PYTHONPROFILEIMPORTTIME": "1"}) as gp:
        assert "aiohttp.web" in loaded(gp)  # the log is there
        traffic(gp)
        assert len(upstreams[1].requests) >= 3  # the Anthropic fake counted the tokens itself
        assert not loaded(gp) & CLIENT


def test_a_gateway_on_aiohttps_client_imports_it_on_first_use(
        tmp_path: Path, upstreams: tuple[FakeOpenAI, FakeAnthropic]) -> None:
    cfg = config_dir(tmp_path / "pod", *upstreams)
    with modelroute(tmp_path, "sidecar", "--config-dir", str(cfg), "--upstream-client", "aiohttp",
                    env={"PYTHONPROFILEIMPORTTIME": "1"}) as gp:
        assert "aiohttp.web" in loaded(gp) and not loaded(gp) & CLIENT
        traffic(gp)
        assert loaded(gp) >= CLIENT

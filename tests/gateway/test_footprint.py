"""What the sidecar loads: only what the pod uses (issue 13).

The sidecar runs in every pod, so what it imports is paid for by each. A real
`modelroute sidecar` process, started as a pod starts it (a config dir), with Python's own
import log (PYTHONPROFILEIMPORTTIME, which names every module as it loads, at start-up or on
a later request): serving good requests in every dialect, and a scrape of /metrics, loads
neither pydantic nor YAML, the resource compiler or the operator's dependencies (prometheus_client
among them), nor the dialects nobody called, nor
the budget package in a pod without a ModelBudget, nor the credential classes without
workload identity; a bad request then loads pydantic, which words its 400 as ever.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import anthropic
import openai
import pytest

from modelroute_sidecar.compile import compile_resources
from tests.gateway.harness import model_route, provider_key, user
from tests.gateway.procs import GatewayProcess, modelroute, scrape

NEVER = ("yaml", "kopf", "kubernetes", "cryptography", "modelroute_operator", "modelroute_sidecar.compile",
         "modelroute_sidecar.resources", "modelroute_sidecar.pydantic_schema",
         "prometheus_client",  # the operator's; the sidecar writes its /metrics page itself
         "msgspec")  # config.json is read by our own records (config.py says why)


def loaded(gp: GatewayProcess) -> set[str]:
    return set(re.findall(r"^import time:\s+\d+ \|\s+\d+ \|\s*(\S+)$", gp.logs(), re.M))


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    docs = [*provider_key("mock", "mock", None, keys=None), model_route("chat", ("mock", "m"))]
    result = compile_resources(docs)
    assert result.ok, result.statuses
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.json").write_text(result.config.dump_json())
    return tmp_path


def test_the_sidecar_loads_only_what_its_requests_need(tmp_path: Path, config_dir: Path) -> None:
    with modelroute(tmp_path, "sidecar", "--config-dir", str(config_dir), env={"PYTHONPROFILEIMPORTTIME": "1"}) as gp:
        started = loaded(gp)
        assert "modelroute_sidecar.app" in started and "uvloop" in started  # the log is there
        assert not {m for m in started if m.startswith(NEVER)}
        assert not {m for m in started if m.startswith(("pydantic", "modelroute_sidecar.wire.anthropic",
                                                       "modelroute_sidecar.wire.gemini",
                                                       "modelroute_sidecar.wire.openai_responses",
                                                       "modelroute_sidecar.budget",  # no ModelBudget here
                                                       "modelroute_sidecar.credentials."))}  # nor identity

        client = openai.OpenAI(base_url=gp.url, api_key="x", max_retries=0)
        assert client.chat.completions.create(model="chat", messages=user("hi")).choices[0].message.content
        stream = client.chat.completions.create(model="chat", messages=user("hi"), stream=True,
                                                stream_options={"include_usage": True}, temperature=1)
        assert any(c.usage for c in stream)
        assert client.embeddings.create(model="chat", input=["a", "b"]).data
        assert client.responses.create(model="chat", input="hi").output_text
        ant = anthropic.Anthropic(base_url=gp.url.removesuffix("/v1"), api_key="x", max_retries=0)
        assert ant.messages.create(model="chat", max_tokens=20, messages=user("hi")).content
        assert 'modelroute_requests_total{model="m",provider="mock",route="chat",status="200"} 5.0' in scrape(gp)
        after = loaded(gp)
        assert "modelroute_sidecar.wire.anthropic.caller" in after  # loaded on its first caller
        # decimal came with msgspec; now only pydantic brings it, for a bad request's words.
        assert not {m for m in after if m.startswith(("pydantic", "decimal")) or m.startswith(NEVER)}, \
            sorted(after - started)

        with pytest.raises(openai.BadRequestError) as e:  # a bad request: pydantic judges and words it
            client.chat.completions.create(model="chat", messages=user("hi"), extra_body={"max_tokens": "5"})
        assert e.value.body["message"] == "Invalid type for 'max_tokens': Input should be a valid integer."  # type: ignore[index]
        assert any(m.startswith("pydantic") for m in loaded(gp))
        assert not {m for m in loaded(gp) if m.startswith(NEVER)}


def test_the_collection_after_ready_scans_neither_modules_nor_config(tmp_path: Path) -> None:
    """Start-up runs with the collector paused, then collects once, just after ready, on the
    event loop. The first config is frozen when loaded, as a reload's is: a collection over a big
    one held the loop for 0.6 s at 40,000 routes. The caches only start-up filled are released
    first: attrs' generated source lines in linecache, typing's generics."""
    result = compile_resources([*provider_key("mock", "mock", None, keys=None),
                                *(model_route(f"m{i}", ("mock", "m"), name=f"m{i}") for i in range(2000))])
    assert result.ok, result.statuses
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.json").write_text(result.config.dump_json())
    script = tmp_path / "probe.py"
    script.write_text(f"""
import gc, linecache, os, sys, typing
from modelroute_sidecar import cli
generic = typing.Literal["start-up"]
release = cli.release_startup_memory
def probe():
    scanned = len(gc.get_objects())
    release()
    attrs_lines = sum(k.startswith("<attrs generated") for k in linecache.cache)
    print(scanned, attrs_lines, typing.Literal["start-up"] is generic)
    os._exit(0)
cli.release_startup_memory = probe
sys.exit(cli.main(["sidecar", "--config-dir", {str(tmp_path)!r}, "--port", "0", "--metrics-port", "0"]))
""")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    scanned, attrs_lines, cached = out.stdout.split()[-3:]
    assert int(scanned) < 5000, out.stdout + out.stderr  # 2,000 routes are ~50,000 objects, the modules ~40,000
    assert (attrs_lines, cached) == ("0", "False"), out.stdout + out.stderr


def test_request_shapes_are_built_without_compiling_their_annotations() -> None:
    """A TypedDict turns each string annotation (``from __future__ import annotations``) into a
    ForwardRef, compiling it at import: ~1 ms and ~25 KiB per request shape module, in every pod."""
    script = """
import importlib, sys, typing
import typing_extensions
from modelroute_sidecar.wire.pairs import DIALECTS
for name in ["modelroute_sidecar.app", "modelroute_sidecar.surface.files", "modelroute_sidecar.surface.operations",
             *(f"modelroute_sidecar.wire.{w}.validation" for w in DIALECTS.values())]:
    importlib.import_module(name)
shapes = [v for n, m in list(sys.modules.items()) if n.startswith("modelroute_sidecar") for v in vars(m).values()
          if isinstance(v, type) and v.__module__ == n and typing_extensions.is_typeddict(v)]
print(len(shapes), sorted({t.__qualname__ for t in shapes for a in t.__annotations__.values()
                           if isinstance(a, (str, typing.ForwardRef))}))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    count, compiled = out.stdout.split(" ", 1)
    assert int(count) > 50 and compiled.strip() == "[]", out.stdout + out.stderr

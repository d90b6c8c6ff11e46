"""Provider keys never leave the gateway: not in its logs, its metrics, or anything a client gets.

The real `modelroute serve` runs as a subprocess with distinctive keys from every source
(a Secret's stringData, a Secret's base64 data, MODELROUTE_KEY_<NAME>, OPENAI_API_KEY), and is
driven through successes, a refused key whose masked form the upstream echoes (as OpenAI
does), 400/403/429/500 answers, a stream that dies, bad input, and reloads (a good one and a
broken one whose syntax error sits on the key's line). Then the whole log, the /metrics
scrape and every response body and header are searched for any key, any part of one, and
any Authorization header value.
"""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import string
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.fakes.base import wait_until
from tests.fakes.openai import FakeOpenAI
from tests.fakes.openai_wire import mask_key
from tests.gateway.harness import FAST, free_port, model_route, provider_key
from tests.gateway.procs import GatewayProcess, modelroute, scrape

API = "modelroute.dev/v1alpha1"
SPEC: dict[str, Any] = FAST
MSG: Any = [{"role": "user", "content": "hello"}]


def new_key(prefix: str = "sk-live-SECRET-") -> str:
    """Random and recognisable to the last character: '~XY~' ends it, so its last four are unique."""
    tail = "".join(secrets.choice(string.ascii_uppercase) for _ in range(2))
    return f"{prefix}{secrets.token_hex(12)}~{tail}~"


class Keys:
    def __init__(self) -> None:
        self.good = new_key()  # Secret stringData, first line
        self.revoked = new_key()  # Secret stringData, second line: the upstream refuses it
        self.b64 = new_key()  # Secret data (base64)
        self.named_env = new_key()  # MODELROUTE_KEY_FROMENV
        self.openai_env = new_key()  # OPENAI_API_KEY
        self.dead = new_key()  # the only key of a ProviderKey the upstream refuses
        self.rotated = new_key()  # arrives with a reload
        self.broken = new_key()  # in a YAML file that does not parse
        self.client = new_key("sk-client-SECRET-")  # what the app sends the gateway as its API key

    def all(self) -> dict[str, str]:
        return {k: v for k, v in vars(self).items() if isinstance(v, str)}

    def accepted(self) -> list[str]:
        return [self.good, self.b64, self.named_env, self.openai_env, self.rotated]


def forms(key: str) -> list[str]:
    """Every way a key, or a recognisable piece of it, could show up in text."""
    random_part = key.split("SECRET-")[1][:24]
    return [key, mask_key(key), "*" + key[-4:], key[-4:], random_part, random_part[:12], random_part[-12:],
            base64.b64encode(key.encode()).decode()]


def leaks(text: str, keys: Keys) -> list[str]:
    return [f"{name}: {form!r}" for name, key in keys.all().items() for form in forms(key) if form in text]


def secret(name: str, *, string_data: dict[str, str] | None = None, data: dict[str, str] | None = None) -> dict:
    doc: dict[str, Any] = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}}
    if string_data is not None:
        doc["stringData"] = string_data
    if data is not None:
        doc["data"] = data
    return doc


def pk(name: str, base_url: str, secret_name: str | None) -> dict:
    spec: dict[str, Any] = {"provider": "openai", "baseURL": base_url, "models": []}
    if secret_name:
        spec["secretRef"] = {"name": secret_name}
    return {"apiVersion": API, "kind": "ProviderKey", "metadata": {"name": name}, "spec": spec}


def documents(up: FakeOpenAI, keys: Keys, primary: list[str]) -> list[dict[str, Any]]:
    return [
        secret("primary-key", string_data={"apiKey": "\n".join(primary)}),
        pk("primary", up.base_url, "primary-key"),
        secret("archive-key", data={"apiKey": base64.b64encode(keys.b64.encode()).decode()}),
        pk("archive", up.base_url, "archive-key"),
        pk("fromenv", up.base_url, None),  # MODELROUTE_KEY_FROMENV
        pk("fallback", up.base_url, "not-applied-yet"),  # Secret absent: OPENAI_API_KEY
        *provider_key("dead", "openai", up.base_url, [keys.dead], models=[]),
        model_route("chat", ("primary", "gpt-4o"), **SPEC),
        model_route("embed", ("primary", "text-embedding-3-small"), **SPEC),
        model_route("archive-chat", ("archive", "gpt-4o"), **SPEC),
        model_route("env-chat", ("fromenv", "gpt-4o"), **SPEC),
        model_route("fallback-chat", ("fallback", "gpt-4o"), **SPEC),
        model_route("dead-chat", ("dead", "gpt-4o"), **SPEC),
    ]


def sample(metrics: str, name: str, **labels: str) -> float:
    return sum(s.value for fam in text_string_to_metric_families(metrics) for s in fam.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def write_broken(cfg: Path, keys: Keys) -> None:
    """Saved in place, as editors do, with a syntax error on a line that holds a key."""
    cfg.write_text(yaml.safe_dump(secret("primary-key", string_data={"apiKey": keys.good}))
                   + f"  other: {keys.broken}: oops\n")


def get(url: str) -> tuple[int, Any, str]:
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.status, r.headers, r.read().decode()


def write_yaml(path: Path, docs: list[dict[str, Any]]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump_all(docs))
    os.replace(tmp, path)


class Seen:
    """Everything the client got back: status lines, headers, bodies, stream bytes, SDK messages."""

    def __init__(self) -> None:
        self.parts: list[str] = []

    def response(self, status: int, headers: Any, text: str) -> None:
        self.parts.append(f"HTTP {status}\n" + "".join(f"{k}: {v}\n" for k, v in headers.items()) + text)

    def error(self, e: openai.APIStatusError) -> None:
        self.response(e.status_code, e.response.headers, e.response.text)
        self.parts.append(str(e))

    @property
    def text(self) -> str:
        return "\n".join(self.parts)


async def chat(client: openai.AsyncOpenAI, seen: Seen, model: str, **kw: Any) -> int:
    """One non-streaming chat request; records what came back; returns the status."""
    try:
        raw = await client.chat.completions.with_raw_response.create(model=model, messages=MSG, **kw)
    except openai.APIStatusError as e:
        seen.error(e)
        return e.status_code
    seen.response(raw.status_code, raw.headers, raw.http_response.text)
    return raw.status_code


async def stream(client: openai.AsyncOpenAI, seen: Seen, model: str) -> str:
    """A streamed chat request, read as raw SSE lines."""
    async with client.chat.completions.with_streaming_response.create(
            model=model, messages=[{"role": "user", "content": "one two three four five six"}], stream=True) as r:
        lines = [line async for line in r.iter_lines()]
        seen.response(r.status_code, r.headers, "\n".join(lines))
        return "\n".join(lines)


async def drive(gp: GatewayProcess, up: FakeOpenAI, keys: Keys, cfg: Path, seen: Seen) -> None:
    client = openai.AsyncOpenAI(base_url=gp.url, api_key=keys.client, max_retries=0)
    # Successes from every key source; "chat" rotates onto the revoked key and recovers.
    for model in ("chat", "chat", "chat", "archive-chat", "env-chat", "fallback-chat"):
        assert await chat(client, seen, model) == 200, seen.parts[-1]
    emb = await client.embeddings.with_raw_response.create(model="embed", input="hello")
    seen.response(emb.status_code, emb.headers, emb.http_response.text)
    used = {r.headers.get("authorization") for r in up.requests}
    assert {f"Bearer {k}" for k in (keys.good, keys.revoked, keys.b64, keys.named_env, keys.openai_env)} <= used

    # A key the upstream refuses outright: the client gets a 502, the upstream echoed the masked key.
    assert await chat(client, seen, "dead-chat") == 502
    # The upstream blames the request and quotes the masked key (as some providers do on 400).
    up.faults.fail_next(1, 400, message=f"Incorrect API key provided: {mask_key(keys.b64)}. Check your key.")
    assert await chat(client, seen, "archive-chat") == 400
    # 403 quoting the whole key: the key rests, the retry gets through.
    up.faults.fail_next(1, 403, message=f"Key {keys.named_env} is not allowed to use gpt-4o")
    assert await chat(client, seen, "env-chat") == 200
    # 429 then fine; 429 for good (Retry-After beyond what the gateway waits); 500s everywhere.
    up.faults.fail_next(1, 429, retry_after=0)
    assert await chat(client, seen, "fallback-chat") == 200
    up.faults.fail_next(10, 429, retry_after=60)
    assert await chat(client, seen, "fallback-chat") == 429
    up.faults.clear()
    up.faults.fail_next(10, 500)
    assert await chat(client, seen, "archive-chat") in (502, 503)
    up.faults.clear()
    # A stream that dies mid-way ends with an error event.
    up.faults.die_mid_stream(after_chunks=2)
    assert '"error"' in await stream(client, seen, "chat")
    up.faults.clear()
    assert "[DONE]" in await stream(client, seen, "chat")
    # Bad input, unknown model, other surfaces.
    try:
        await client.post("/chat/completions", cast_to=object, content=b'{"model": "chat", "messages": [',
                          options={"headers": {"content-type": "application/json"}})
    except openai.APIStatusError as e:
        seen.error(e)
    assert await chat(client, seen, "no-such-model") == 404
    assert await chat(client, seen, "chat", max_tokens="lots") == 400
    models = await client.models.with_raw_response.list()
    seen.response(models.status_code, models.headers, models.http_response.text)

    # Reload: the good key is rotated out for a new one.
    write_yaml(cfg, documents(up, keys, [keys.rotated, keys.revoked]))
    deadline = time.monotonic() + 20
    while not any(r.headers.get("authorization") == f"Bearer {keys.rotated}" for r in up.requests):
        assert time.monotonic() < deadline, "the reload did not bring the rotated key"
        assert await chat(client, seen, "chat") == 200
        await asyncio.sleep(0.05)
    # A broken edit, the syntax error on the key's own line: the last good config keeps serving.
    write_broken(cfg, keys)
    await wait_until(lambda: 'modelroute_config_reloads_total{result="error"}' in scrape(gp), within=20)
    assert await chat(client, seen, "chat") == 200
    await client.close()


@pytest.mark.parametrize(("log_level", "log_format"), [("info", "json"), ("debug", "json"), ("debug", "text")])
async def test_keys_never_reach_logs_metrics_or_clients(tmp_path: Path, log_level: str, log_format: str) -> None:
    keys = Keys()
    async with FakeOpenAI(keys=keys.accepted()) as up:
        # The masked-key echo this test relies on: the upstream does put the key's tail in its 401.
        probe = openai.AsyncOpenAI(base_url=up.base_url, api_key=keys.dead, max_retries=0)
        with pytest.raises(openai.AuthenticationError) as refused:
            await probe.models.list()
        assert "*" + keys.dead[-4:] in refused.value.message
        up.requests.clear()

        cfg = tmp_path / "routes.yaml"
        write_yaml(cfg, documents(up, keys, [keys.good, keys.revoked]))
        env = {"MODELROUTE_KEY_FROMENV": keys.named_env, "OPENAI_API_KEY": keys.openai_env}
        seen = Seen()
        with modelroute(tmp_path, "serve", "-f", str(cfg), "--reload-interval", "0.1", "--log-level", log_level,
                        "--log-format", log_format, env=env) as gp:
            await drive(gp, up, keys, cfg, seen)
            metrics = scrape(gp)
            for path in ("/healthz", "/readyz"):
                seen.response(*get(f"http://127.0.0.1:{gp.metrics_port}{path}"))
        assert gp.proc.returncode == 0
        log = gp.logs()

    # The places searched did see the sensitive moments (so the searches below mean something).
    assert "refused the gateway's credentials" in log and "config reload failed" in log
    assert "mapping values are not allowed" in log  # PyYAML: "here"; libyaml: "in this context"
    assert sample(metrics, "modelroute_requests_total", route="dead-chat", status="401") >= 1
    assert "refused the gateway's credentials" in seen.text and "[DONE]" in seen.text

    assert leaks(log, keys) == [], "keys in the gateway's log"
    assert leaks(metrics, keys) == [], "keys in /metrics"
    assert leaks(seen.text, keys) == [], "keys in what the client got"
    for where, text in (("log", log), ("metrics", metrics), ("responses", seen.text)):
        assert "bearer" not in text.lower() and "api-key:" not in text.lower(), f"an auth header in the {where}"
    # The caller's own credential is not forwarded upstream either.
    sent = {r.headers.get("authorization") for r in up.requests}
    assert sent <= {f"Bearer {k}" for k in (*keys.accepted(), keys.revoked, keys.dead)}, sent


def test_a_broken_secret_file_at_start_does_not_print_the_key(tmp_path: Path) -> None:
    keys = Keys()
    cfg = tmp_path / "broken.yaml"
    cfg.write_text(yaml.safe_dump(secret("k", string_data={"apiKey": keys.good}))
                   + f"  second: \"{keys.broken}\n")  # an unterminated quote on the key's line
    cfg2 = tmp_path / "broken2.yaml"
    cfg2.write_text(f"apiVersion: v1\nkind: Secret\nmetadata: {{name: k2}}\nstringData:\n  apiKey: {keys.b64}: x\n")
    for f in (cfg, cfg2):
        proc = subprocess.run(
            [sys.executable, "-m", "modelroute_sidecar", "serve", "-f", str(f), "--port", str(free_port()),
             "--metrics-port", "0"], capture_output=True, text=True, timeout=30)
        out = proc.stdout + proc.stderr
        assert proc.returncode != 0 and str(f) in out and "invalid YAML" in out, out
        assert "line " in out  # it still says where
        assert leaks(out, keys) == [], out

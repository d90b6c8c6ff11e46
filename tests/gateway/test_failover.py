"""Failover, retries, key rotation, circuit breaking and strategies, through the openai SDK."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import aiohttp
import openai
import pytest

from modelroute_sidecar.config import GatewayConfig, from_data
from tests.fakes.base import closed_port, wait_until
from tests.fakes.openai import FakeOpenAI
from tests.gateway.harness import FAST, ManualClock, RunningGateway, model_route, provider_key, running_gateway, user

MSG: Any = user("ping")


def two_backends(a: FakeOpenAI, b: FakeOpenAI, **spec: object) -> list[dict]:
    return [*provider_key("a", "openai", a.base_url), *provider_key("b", "openai", b.base_url),
            model_route("chat", ("a", "gpt-4o"), ("b", "gpt-4o-mini"), **{**FAST, **spec})]


@pytest.mark.parametrize("status", [500, 502, 503, 529])
async def test_server_errors_fail_over_to_next_backend(status: int) -> None:
    async with FakeOpenAI() as a, FakeOpenAI() as b, running_gateway(two_backends(a, b)) as gw:
        a.faults.fail_next(1, status)
        raw = await gw.client().chat.completions.with_raw_response.create(model="chat", messages=MSG)
        assert raw.parse().choices[0].message.content == "echo: ping"
        assert raw.headers["x-modelroute-backend"] == "b/gpt-4o-mini"
        assert raw.headers["x-modelroute-attempts"] == "2"
        assert await gw.metric("modelroute_failovers_total", route="chat", from_backend="a/gpt-4o",
                               to_backend="b/gpt-4o-mini", reason="server_error") == 1
        assert await gw.metric("modelroute_requests_total", route="chat", model="gpt-4o", status=str(status)) == 1


async def test_connection_refused_fails_over() -> None:
    async with FakeOpenAI() as b, running_gateway([
        *provider_key("a", "openai", f"http://127.0.0.1:{closed_port()}/v1"),
        *provider_key("b", "openai", b.base_url),
        model_route("chat", ("a", "gpt-4o"), ("b", "gpt-4o"), **FAST),
    ]) as gw:
        raw = await gw.client().chat.completions.with_raw_response.create(model="chat", messages=MSG)
        assert raw.headers["x-modelroute-backend"] == "b/gpt-4o"
        assert await gw.metric("modelroute_failovers_total", reason="connect_error") == 1


async def test_slow_first_byte_times_out_and_fails_over() -> None:
    spec = {**FAST, "timeouts": {**FAST["timeouts"], "firstByteSeconds": 0.3}}
    async with FakeOpenAI() as a, FakeOpenAI() as b, running_gateway(two_backends(a, b, **spec)) as gw:
        a.faults.slow_first_byte(3)
        started = time.monotonic()
        raw = await gw.client().chat.completions.with_raw_response.create(model="chat", messages=MSG)
        assert raw.headers["x-modelroute-backend"] == "b/gpt-4o-mini"
        assert time.monotonic() - started < 2.5
        assert await gw.metric("modelroute_failovers_total", reason="timeout") == 1
        # Streams too: nothing reached the caller, so the stream fails over as well.
        stream = await gw.client().chat.completions.create(model="chat", messages=MSG, stream=True)
        assert "".join([c.choices[0].delta.content or "" async for c in stream if c.choices]) == "echo: ping"


async def test_rate_limit_retry_after_is_honoured_on_a_single_backend() -> None:
    async with FakeOpenAI() as a, running_gateway([
        *provider_key("a", "openai", a.base_url), model_route("chat", ("a", "gpt-4o"), **FAST)
    ]) as gw:
        a.faults.fail_next(1, 429, retry_after=0.4)
        started = time.monotonic()
        raw = await gw.client().chat.completions.with_raw_response.create(model="chat", messages=MSG)
        assert raw.headers["x-modelroute-attempts"] == "2"
        assert time.monotonic() - started >= 0.4


async def test_rate_limit_everywhere_is_a_429_with_retry_after() -> None:
    async with FakeOpenAI() as a, running_gateway([
        *provider_key("a", "openai", a.base_url), model_route("chat", ("a", "gpt-4o"), **FAST)
    ]) as gw:
        a.faults.fail_next(10, 429, retry_after=60)  # longer than maxRetryAfterSeconds: not waited for
        with pytest.raises(openai.RateLimitError) as e:
            await gw.client().chat.completions.create(model="chat", messages=MSG)
        assert e.value.status_code == 429
        assert e.value.response.headers["retry-after"] == "60"
        assert e.value.code == "rate_limit_exceeded"


async def test_key_rotation_and_cooldown_of_a_bad_key() -> None:
    async with FakeOpenAI(keys=["sk-good"]) as a, running_gateway([
        *provider_key("a", "openai", a.base_url, ["sk-revoked", "sk-good"]),
        model_route("chat", ("a", "gpt-4o"), **FAST)
    ]) as gw:
        raw = await gw.client().chat.completions.with_raw_response.create(model="chat", messages=MSG)
        assert raw.parse().choices[0].message.content == "echo: ping"
        # The refused key rests; from now on every request goes to the good one first time.
        for _ in range(4):
            raw = await gw.client().chat.completions.with_raw_response.create(model="chat", messages=MSG)
            assert raw.headers["x-modelroute-attempts"] == "1"
        used = [r.headers["authorization"] for r in a.requests]
        assert used.count("Bearer sk-revoked") == 1 and used.count("Bearer sk-good") == 5


async def test_keys_are_used_in_turn_and_a_rate_limited_key_rests() -> None:
    async with FakeOpenAI(keys=["k1", "k2", "k3"]) as a, running_gateway([
        *provider_key("a", "openai", a.base_url, ["k1", "k2", "k3"]), model_route("chat", ("a", "gpt-4o"), **FAST)
    ]) as gw:
        for _ in range(6):
            await gw.client().chat.completions.create(model="chat", messages=MSG)
        used = Counter(r.headers["authorization"] for r in a.requests)
        assert used == {"Bearer k1": 2, "Bearer k2": 2, "Bearer k3": 2}
        a.requests.clear()
        a.faults.fail_next(1, 429, retry_after=30)
        raw = await gw.client().chat.completions.with_raw_response.create(model="chat", messages=MSG)
        assert raw.headers["x-modelroute-attempts"] == "2"  # the next key, at once: no 30 s wait
        limited = a.requests[0].headers["authorization"]
        for _ in range(6):
            await gw.client().chat.completions.create(model="chat", messages=MSG)
        assert [r.headers["authorization"] for r in a.requests[2:]].count(limited) == 0


async def test_all_keys_refused_fails_over_then_reports_without_the_key() -> None:
    async with FakeOpenAI(keys=["sk-other"]) as a, running_gateway([
        *provider_key("a", "openai", a.base_url, ["sk-secret-value-123456"]),
        model_route("chat", ("a", "gpt-4o"), **FAST)
    ]) as gw:
        with pytest.raises(openai.APIStatusError) as e:
            await gw.client().chat.completions.create(model="chat", messages=MSG)
        assert e.value.status_code == 502
        assert "refused the gateway's credentials" in e.value.message
        assert "sk-secret" not in e.value.response.text and "3456" not in e.value.response.text


async def test_caller_errors_are_not_failed_over() -> None:
    async with FakeOpenAI() as a, FakeOpenAI() as b, running_gateway(two_backends(a, b)) as gw:
        with pytest.raises(openai.BadRequestError) as e:
            # The fake rejects unknown parameters the way OpenAI does.
            await gw.client().chat.completions.create(model="chat", messages=MSG,
                                                      extra_body={"not_a_param": 1})
        assert e.value.status_code == 400
        assert "not_a_param" in e.value.message
        assert b.requests == []


async def test_everything_down_is_a_502_in_openai_shape() -> None:
    async with FakeOpenAI() as a, FakeOpenAI() as b, running_gateway(two_backends(a, b)) as gw:
        a.faults.fail_next(10, 500)
        b.faults.fail_next(10, 503)
        with pytest.raises(openai.APIStatusError) as e:
            await gw.client().chat.completions.create(model="chat", messages=MSG)
        assert e.value.status_code in (502, 503)
        body = e.value.body
        assert isinstance(body, dict) and set(body) >= {"message", "type", "param", "code"}
        assert e.value.response.headers["x-modelroute-attempts"] == "3"  # a, b, then a again (maxAttempts 3)


async def test_stream_dying_before_output_fails_over() -> None:
    async with FakeOpenAI() as a, FakeOpenAI() as b, running_gateway(two_backends(a, b)) as gw:
        a.faults.die_mid_stream(after_chunks=0)
        stream = await gw.client().chat.completions.create(model="chat", messages=MSG, stream=True)
        assert "".join([c.choices[0].delta.content or "" async for c in stream if c.choices]) == "echo: ping"
        # Aborted after headers (stream_error) or before them (connect_error): either way, failed over.
        assert await gw.metric("modelroute_failovers_total", route="chat") == 1


async def test_stream_dying_mid_way_ends_with_an_error_event_not_a_hang() -> None:
    async with FakeOpenAI() as a, FakeOpenAI() as b, running_gateway(two_backends(a, b)) as gw:
        a.faults.die_mid_stream(after_chunks=2)
        stream = await gw.client().chat.completions.create(
            model="chat", messages=user("a b c d e f"), stream=True)
        got = ""
        with pytest.raises(openai.APIError) as e:
            async with asyncio.timeout(10):
                async for c in stream:
                    got += c.choices[0].delta.content or "" if c.choices else ""
        assert got and got != "echo: a b c d e f"
        assert "ended its stream" in str(e.value.message) or "broke off" in str(e.value.message)
        assert b.requests == []  # bytes had reached the caller: no failover
        assert await gw.metric("modelroute_requests_total", route="chat", status="stream_error") == 1


async def test_stream_stalling_mid_way_times_out_with_an_error_event() -> None:
    spec = {**FAST, "timeouts": {**FAST["timeouts"], "betweenChunksSeconds": 0.3}}
    async with FakeOpenAI() as a, FakeOpenAI() as b, running_gateway(two_backends(a, b, **spec)) as gw:
        a.faults.slow_stream(2.0)
        started = time.monotonic()
        stream = await gw.client().chat.completions.create(model="chat", messages=MSG, stream=True)
        with pytest.raises(openai.APIError) as e:
            async for _ in stream:
                pass
        # The very first event was slow too, so this one failed over; a stall after output errors out.
        assert time.monotonic() - started < 5
        assert "stopped sending" in str(e.value.message) or b.requests


async def test_client_disconnect_cancels_the_upstream_request() -> None:
    async with FakeOpenAI() as a, running_gateway([
        *provider_key("a", "openai", a.base_url), model_route("chat", ("a", "gpt-4o"), **FAST)
    ]) as gw:
        a.faults.slow_stream(0.2)
        async with aiohttp.ClientSession() as s:
            resp = await s.post(gw.url + "/chat/completions", json={
                "model": "chat", "messages": [{"role": "user", "content": " ".join(["w"] * 50)}], "stream": True})
            await resp.content.readline()  # first bytes arrived: the stream is live
            assert a.active_streams == 1
            resp.close()  # the caller goes away
        await wait_until(lambda: a.active_streams == 0, within=5)
        await wait_until(lambda: a.cancelled >= 1, within=5)
        await wait_until(lambda: a.streams_completed == 0 and a.cancelled == 1, within=5)


BREAKER = from_data({"circuitBreaker": {"failureThreshold": 2, "openSeconds": 30}}, GatewayConfig)


async def open_circuit_of_a(gw: RunningGateway, a: FakeOpenAI) -> None:
    a.faults.fail_next(2, 500)
    for _ in range(2):
        await gw.client().chat.completions.create(model="chat", messages=MSG)
    assert await gw.metric("modelroute_backend_up", route="chat", backend="a/gpt-4o") == 0


async def test_circuit_breaker_opens_probes_and_closes() -> None:
    clock = ManualClock()
    async with FakeOpenAI() as a, FakeOpenAI() as b, running_gateway(two_backends(a, b), BREAKER, clock) as gw:
        await open_circuit_of_a(gw, a)
        n = len(a.requests)
        clock.advance(29)  # still open: not even tried
        raw = await gw.client().chat.completions.with_raw_response.create(model="chat", messages=MSG)
        assert raw.headers["x-modelroute-backend"] == "b/gpt-4o-mini"
        assert raw.headers["x-modelroute-attempts"] == "1"
        assert len(a.requests) == n
        clock.advance(2)  # half-open: the next request probes a, and its success closes the circuit
        raw = await gw.client().chat.completions.with_raw_response.create(model="chat", messages=MSG)
        assert raw.headers["x-modelroute-backend"] == "a/gpt-4o"
        assert await gw.metric("modelroute_backend_up", route="chat", backend="a/gpt-4o") == 1


async def test_half_open_circuit_admits_one_probe_at_a_time() -> None:
    clock = ManualClock()
    async with FakeOpenAI() as a, FakeOpenAI() as b, running_gateway(two_backends(a, b), BREAKER, clock) as gw:
        await open_circuit_of_a(gw, a)
        n, m = len(a.requests), len(b.requests)
        clock.advance(31)
        a.faults.hang()
        client = gw.client()
        probe = asyncio.ensure_future(client.chat.completions.with_raw_response.create(model="chat", messages=MSG))
        await wait_until(lambda: len(a.requests) == n + 1, within=5)
        # While the probe is out, everything else goes to b, concurrent requests included.
        raws = await asyncio.gather(*[client.chat.completions.with_raw_response.create(model="chat", messages=MSG)
                                      for _ in range(16)])
        assert {r.headers["x-modelroute-backend"] for r in raws} == {"b/gpt-4o-mini"}
        assert len(a.requests) == n + 1 and len(b.requests) == m + 16
        a.faults.clear()
        assert (await probe).headers["x-modelroute-backend"] == "a/gpt-4o"
        raw = await client.chat.completions.with_raw_response.create(model="chat", messages=MSG)
        assert raw.headers["x-modelroute-backend"] == "a/gpt-4o"


async def test_failed_probe_reopens_and_a_lost_probe_does_not_wedge_the_circuit() -> None:
    clock = ManualClock()
    async with FakeOpenAI() as a, FakeOpenAI() as b, running_gateway(two_backends(a, b), BREAKER, clock) as gw:
        await open_circuit_of_a(gw, a)
        client = gw.client()
        clock.advance(31)
        a.faults.fail_next(1, 500)  # the probe fails: open again for a whole period
        raw = await client.chat.completions.with_raw_response.create(model="chat", messages=MSG)
        assert raw.headers["x-modelroute-attempts"] == "2"
        n = len(a.requests)
        clock.advance(29)
        await client.chat.completions.create(model="chat", messages=MSG)
        assert len(a.requests) == n
        clock.advance(2)
        a.faults.hang()  # a probe that never answers holds a for at most one open period
        probe = asyncio.create_task(client.chat.completions.create(model="chat", messages=MSG))
        await wait_until(lambda: len(a.requests) == n + 1, within=5)
        await client.chat.completions.create(model="chat", messages=MSG)
        assert len(a.requests) == n + 1
        clock.advance(31)
        second = asyncio.create_task(client.chat.completions.create(model="chat", messages=MSG))
        await wait_until(lambda: len(a.requests) == n + 2, within=5)
        a.faults.clear()
        await asyncio.gather(probe, second)
        assert await gw.metric("modelroute_backend_up", route="chat", backend="a/gpt-4o") == 1


async def test_weighted_strategy_splits_traffic_by_weight() -> None:
    async with FakeOpenAI() as a, FakeOpenAI() as b, running_gateway([
        *provider_key("a", "openai", a.base_url), *provider_key("b", "openai", b.base_url),
        model_route("ab", {"providerKey": "a", "model": "m1", "weight": 3}, {"providerKey": "b", "model": "m2",
                                                                             "weight": 1}, strategy="weighted", **FAST),
    ]) as gw:
        client = gw.client()
        for _ in range(200):
            await client.chat.completions.create(model="ab", messages=MSG)
        # Expected 150/50; the bounds are > 6 standard deviations wide.
        assert 110 < len(a.requests) < 185 and len(a.requests) + len(b.requests) == 200


async def test_latency_strategy_prefers_the_faster_backend() -> None:
    async with FakeOpenAI() as a, FakeOpenAI() as b, running_gateway([
        *provider_key("a", "openai", a.base_url), *provider_key("b", "openai", b.base_url),
        model_route("fast", ("a", "m"), ("b", "m"), strategy="latency", **FAST),
    ]) as gw:
        a.faults.slow_first_byte(0.05)
        client = gw.client()
        for _ in range(40):
            await client.chat.completions.create(model="fast", messages=MSG)
        assert len(b.requests) > 30


async def test_gemini_bad_key_400_counts_as_a_refused_key() -> None:
    """Gemini answers a bad key with 400 API_KEY_INVALID, not 401: still a key problem, rotated."""
    from tests.fakes.gemini import FakeGemini

    async with FakeGemini(keys=["g-good"]) as g, running_gateway([
        *provider_key("gemini", "gemini", g.url, ["g-bad", "g-good"]),
        model_route("chat", ("gemini", "gemini-2.5-flash"), **FAST),
    ]) as gw:
        raw = await gw.client().chat.completions.with_raw_response.create(model="chat", messages=MSG)
        assert raw.parse().choices[0].message.content == "echo: ping"
        assert raw.headers["x-modelroute-attempts"] == "2"
        raw = await gw.client().chat.completions.with_raw_response.create(model="chat", messages=MSG)
        assert raw.headers["x-modelroute-attempts"] == "1"

"""The `mock` provider through a real `modelroute serve`, with the official SDKs as callers.

No key and no network: answers derived from the request (the same request, the same
answer), every dialect, streams, tool calls, embeddings of the requested size, usage,
zero cost, and injected latency and failures that fail over like real ones.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import pytest
import yaml

from modelroute_sidecar.compile import compile_resources
from tests.gateway.harness import API, model_route
from tests.gateway.procs import GatewayProcess, modelroute, scrape

FAST_TIMEOUTS = {"connectSeconds": 2, "firstByteSeconds": 0.5, "betweenChunksSeconds": 5, "totalSeconds": 20}
FAST_RETRIES = {"maxAttempts": 2, "backoffBaseSeconds": 0.01, "backoffMaxSeconds": 0.02}


def mock_key(name: str, **mock: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"provider": "mock"}
    if mock:
        spec["mock"] = mock
    return {"apiVersion": API, "kind": "ProviderKey", "metadata": {"name": name}, "spec": spec}


DOCS = [
    mock_key("mock"),
    mock_key("down", failureRate=1, failStatus=503),
    mock_key("half", failureRate=0.5, failStatus=500),
    mock_key("slow", firstByteMs=3000),
    mock_key("broken", failAfterChunks=3),
    mock_key("paced", chunkIntervalMs=40),
    mock_key("fixed", reply="Always this."),
    model_route("demo", ("mock", "mock-1")),
    model_route("gpt-4o", ("mock", "gpt-4o")),  # a priced name: the mock still costs nothing
    model_route("drill", ("down", "mock-down"), ("mock", "mock-1"), retries=FAST_RETRIES),
    model_route("half", ("half", "mock-half"), retries={"maxAttempts": 1}),
    model_route("slow-first", ("slow", "mock-slow"), ("mock", "mock-1"), timeouts=FAST_TIMEOUTS,
                retries=FAST_RETRIES),
    model_route("broken", ("broken", "mock-broken"), ("mock", "mock-1"), retries=FAST_RETRIES),
    model_route("paced", ("paced", "mock-paced")),
    model_route("fixed", ("fixed", "mock-fixed")),
]


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    tmp = tmp_path_factory.mktemp("mock")
    path = tmp / "mock.yaml"
    path.write_text(yaml.safe_dump_all(DOCS))
    env = {"OPENAI_API_KEY": "", "ANTHROPIC_API_KEY": ""}
    with modelroute(tmp, "serve", "-f", str(path), env=env) as proc:
        yield proc


def oai(gw: GatewayProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url, api_key="unused", max_retries=0)


def claude(gw: GatewayProcess) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=f"http://127.0.0.1:{gw.port}", api_key="unused", max_retries=0)


def metric(text: str, name: str, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


def test_compiles_ready_without_a_key_and_refuses_mock_settings_elsewhere() -> None:
    result = compile_resources(DOCS, env={})
    assert not result.errors
    st = result.statuses[("ProviderKey", "mock")]
    assert st.ready and st.reason == "NoKeyRequired"
    assert result.config.provider_keys["down"].mock is not None
    assert result.config.provider_keys["down"].mock.failure_rate == 1
    bad = {**mock_key("x", failureRate=1), "spec": {"provider": "openai", "mock": {"failureRate": 1}}}
    errors = compile_resources([bad], env={}).errors
    assert errors and "spec.mock is only for provider mock" in errors[0]


def test_chat_answers_from_the_prompt_the_same_every_time(gw: GatewayProcess) -> None:
    client = oai(gw)
    messages: Any = [{"role": "user", "content": "What is the capital of France?"}]
    first = client.chat.completions.with_raw_response.create(model="demo", messages=messages)
    again = client.chat.completions.create(model="demo", messages=messages)
    answer = first.parse()
    text = answer.choices[0].message.content
    assert text is not None and "What is the capital of France?" in text
    assert again.choices[0].message.content == text
    assert first.headers["x-modelroute-backend"] == "mock/mock-1"
    assert answer.usage is not None and answer.usage.prompt_tokens > 0
    assert answer.usage.completion_tokens == len(text.split())
    other = client.chat.completions.create(model="demo", messages=[{"role": "user", "content": "Something else"}])
    assert other.choices[0].message.content != text


def test_streams_in_word_chunks_with_usage(gw: GatewayProcess) -> None:
    stream = oai(gw).chat.completions.create(
        model="demo", stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "one two three four five"}])
    pieces, usage = [], None
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        if chunk.usage:
            usage = chunk.usage
    assert "".join(pieces).endswith("You said: one two three four five")
    assert len(pieces) >= 8  # a word at a time, not one blob
    assert usage is not None and usage.completion_tokens == len(pieces)


def test_max_tokens_cuts_the_answer(gw: GatewayProcess) -> None:
    answer = oai(gw).chat.completions.create(model="demo", max_tokens=3,
                                             messages=[{"role": "user", "content": "a b c d e f g"}])
    assert answer.choices[0].finish_reason == "length"
    assert answer.usage is not None and answer.usage.completion_tokens == 3


def test_fixed_reply(gw: GatewayProcess) -> None:
    answer = oai(gw).chat.completions.create(model="fixed", messages=[{"role": "user", "content": "hi"}])
    assert answer.choices[0].message.content == "Always this."


WEATHER_TOOL: Any = {"name": "get_weather", "description": "Weather in a city",
                     "input_schema": {"type": "object", "required": ["city", "days", "unit"],
                                      "properties": {"city": {"type": "string"}, "days": {"type": "integer"},
                                                     "unit": {"type": "string", "enum": ["c", "f"]}}}}


def test_anthropic_tool_call_when_the_prompt_names_the_tool_then_text_after_the_result(gw: GatewayProcess) -> None:
    client = claude(gw)
    ask: Any = [{"role": "user", "content": "Please call get_weather for Paris"}]
    msg = client.messages.create(model="demo", max_tokens=100, tools=[WEATHER_TOOL], messages=ask)
    assert msg.stop_reason == "tool_use"
    call = next(b for b in msg.content if b.type == "tool_use")
    assert call.name == "get_weather"
    args: Any = call.input
    assert isinstance(args["city"], str) and args["days"] == 1 and args["unit"] == "c"
    follow: Any = [*ask, {"role": "assistant", "content": [call.model_dump()]},
                   {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id,
                                                 "content": "sunny, 21 C"}]}]
    done = client.messages.create(model="demo", max_tokens=100, tools=[WEATHER_TOOL], messages=follow)
    assert done.stop_reason == "end_turn"
    assert done.content[0].type == "text" and "sunny, 21 C" in done.content[0].text
    # A prompt that does not name a tool gets text, tools offered or not.
    plain = client.messages.create(model="demo", max_tokens=100, tools=[WEATHER_TOOL],
                                   messages=[{"role": "user", "content": "hello"}])
    assert plain.stop_reason == "end_turn"


def test_anthropic_stream_with_a_tool_call(gw: GatewayProcess) -> None:
    with claude(gw).messages.stream(model="demo", max_tokens=100, tools=[WEATHER_TOOL],
                                    messages=[{"role": "user", "content": "use get_weather"}]) as stream:
        final = stream.get_final_message()
    call = next(b for b in final.content if b.type == "tool_use")
    assert call.name == "get_weather" and isinstance(call.input, dict) and set(call.input) == {"city", "days", "unit"}
    assert final.usage.output_tokens > 0


def test_openai_forced_tool_choice(gw: GatewayProcess) -> None:
    tools: Any = [{"type": "function", "function": {"name": "lookup", "parameters": {
        "type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}}}]
    answer = oai(gw).chat.completions.create(model="demo", tools=tools, tool_choice="required",
                                             messages=[{"role": "user", "content": "anything"}])
    calls = answer.choices[0].message.tool_calls
    assert answer.choices[0].finish_reason == "tool_calls" and calls
    assert calls[0].function.name == "lookup" and '"q"' in calls[0].function.arguments  # type: ignore[union-attr]


def test_responses_api_plain_and_streamed(gw: GatewayProcess) -> None:
    client = oai(gw)
    resp = client.responses.create(model="demo", input="hello responses")
    assert "hello responses" in resp.output_text
    with client.responses.stream(model="demo", input="hello stream") as stream:
        final = stream.get_final_response()
    assert "hello stream" in final.output_text


@pytest.mark.parametrize("fmt", ["float", "base64"])
def test_embeddings_of_the_requested_size_unit_length_and_stable(gw: GatewayProcess, fmt: Any) -> None:
    client = oai(gw)
    out = client.embeddings.create(model="demo", input=["alpha", "beta"], dimensions=64, encoding_format=fmt)
    if fmt == "base64":
        import base64
        import struct

        vecs = [list(struct.unpack("<64f", base64.b64decode(str(d.embedding)))) for d in out.data]
    else:
        vecs = [d.embedding for d in out.data]
    assert [len(v) for v in vecs] == [64, 64]
    assert all(abs(math.sqrt(sum(x * x for x in v)) - 1) < 1e-3 for v in vecs)
    again = client.embeddings.create(model="demo", input="alpha", dimensions=64)
    assert [round(x, 5) for x in again.data[0].embedding] == [round(x, 5) for x in vecs[0]]
    assert vecs[0] != vecs[1]
    assert out.usage.prompt_tokens > 0
    default = client.embeddings.create(model="demo", input="x")
    assert len(default.data[0].embedding) == 1536


def test_embeddings_with_bad_dimensions_are_a_400(gw: GatewayProcess) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        oai(gw).embeddings.create(model="demo", input="x", dimensions=0)
    assert "dimensions" in str(e.value)


def test_failure_injection_fails_over_and_the_metrics_show_it(gw: GatewayProcess) -> None:
    before = scrape(gw)
    raw = oai(gw).chat.completions.with_raw_response.create(model="drill",
                                                            messages=[{"role": "user", "content": "drill"}])
    assert raw.headers["x-modelroute-backend"] == "mock/mock-1" and raw.headers["x-modelroute-attempts"] == "2"
    after = scrape(gw)
    labels = {"route": "drill", "from_backend": "down/mock-down", "to_backend": "mock/mock-1"}
    assert metric(after, "modelroute_failovers_total", **labels) == metric(
        before, "modelroute_failovers_total", **labels) + 1
    assert metric(after, "modelroute_requests_total", route="drill", status="503") >= 1


def test_failure_rate_picks_requests_by_content(gw: GatewayProcess) -> None:
    client = oai(gw)
    outcomes = {}
    for i in range(40):
        msgs: Any = [{"role": "user", "content": f"question {i}"}]
        try:
            client.chat.completions.create(model="half", messages=msgs)
            outcomes[i] = 200
        except openai.APIStatusError as e:
            outcomes[i] = e.status_code
    assert set(outcomes.values()) <= {200, 502}
    failed = sum(1 for s in outcomes.values() if s != 200)
    assert 8 <= failed <= 32, outcomes  # about half; a binomial(40, 0.5) stays in here
    for i in (0, 1, 2, 3):  # the same request meets the same fate
        msgs = [{"role": "user", "content": f"question {i}"}]
        try:
            client.chat.completions.create(model="half", messages=msgs)
            status = 200
        except openai.APIStatusError as e:
            status = e.status_code
        assert status == outcomes[i]


def test_first_byte_latency_times_out_and_fails_over(gw: GatewayProcess) -> None:
    raw = oai(gw).chat.completions.with_raw_response.create(model="slow-first",
                                                            messages=[{"role": "user", "content": "hi"}])
    assert raw.headers["x-modelroute-backend"] == "mock/mock-1"
    assert metric(scrape(gw), "modelroute_requests_total", route="slow-first", status="timeout") >= 1


def test_a_stream_broken_before_output_fails_over_and_after_output_ends_with_an_error(gw: GatewayProcess) -> None:
    # failAfterChunks 3: the role chunk and two words go out, then the connection resets.
    with pytest.raises(openai.APIError):
        stream = oai(gw).chat.completions.create(model="broken", stream=True,
                                                 messages=[{"role": "user", "content": "a long enough prompt"}])
        for _ in stream:
            pass
    assert metric(scrape(gw), "modelroute_requests_total", route="broken", status="stream_error") >= 1
    # Without a stream the whole answer would need more than 3 chunks: it breaks, and fails over.
    raw = oai(gw).chat.completions.with_raw_response.create(model="broken",
                                                            messages=[{"role": "user", "content": "long prompt"}])
    assert raw.headers["x-modelroute-backend"] == "mock/mock-1"


def test_chunk_interval_paces_the_stream(gw: GatewayProcess) -> None:
    import time

    stream = oai(gw).chat.completions.create(model="paced", stream=True,
                                             messages=[{"role": "user", "content": "one two three"}])
    stamps = [time.monotonic() for c in stream if c.choices and c.choices[0].delta.content]
    assert len(stamps) >= 5
    assert stamps[-1] - stamps[0] >= 0.04 * (len(stamps) - 1) * 0.9


def test_priced_at_zero(gw: GatewayProcess) -> None:
    oai(gw).chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "free?"}])
    text = scrape(gw)
    assert metric(text, "modelroute_tokens_total", route="gpt-4o", type="input") > 0
    assert metric(text, "modelroute_cost_usd_total", route="gpt-4o") == 0


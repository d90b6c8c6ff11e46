"""The fakes as coding agents' upstreams: scripted tool calls, and what the current CLIs send."""

from __future__ import annotations

from typing import Any

import anthropic
import openai

from tests.fakes.anthropic import FakeAnthropic
from tests.fakes.behaviour import Prompt, respond
from tests.fakes.openai import FakeOpenAI
from tests.fakes.test_fakes import ANTHROPIC_HEADERS, post

TOOL_LINE = 'look at it\ntool-call: Read {"file_path": "a.txt"}'


def test_a_tool_call_line_scripts_the_call() -> None:
    prompt = Prompt(texts=[TOOL_LINE], last_user_text=TOOL_LINE, tools=["Bash", "Read"])
    reply = respond(prompt, agent=True)
    assert reply.tool_call is not None
    assert (reply.tool_call.name, reply.tool_call.args) == ("Read", {"file_path": "a.txt"})
    # Agent mode: offered tools alone never make a call; plain mode calls the first one.
    plain = Prompt(texts=["hi"], last_user_text="hi", tools=["Bash"])
    assert respond(plain, agent=True).text == "echo: hi"
    assert respond(plain).tool_call is not None
    # A tool the request does not offer is not called.
    assert respond(Prompt(last_user_text=TOOL_LINE, tools=["Bash"]), agent=True).tool_call is None


async def test_anthropic_accepts_what_claude_code_sends() -> None:
    """Adaptive thinking (no budget), output effort, and system messages after a user turn."""
    async with FakeAnthropic(keys=["sk-ant"]) as up:
        body: dict[str, Any] = {
            "model": "claude-opus-5-5", "max_tokens": 128000, "thinking": {"type": "adaptive", "display": "omitted"},
            "output_config": {"effort": "medium"}, "context_management": {"edits": []},
            "messages": [{"role": "user", "content": "hello there"},
                         {"role": "system", "content": [{"type": "text", "text": "answer briefly"}]}]}
        r = await post(up.url + "/v1/messages", body, ANTHROPIC_HEADERS)
        assert r.status == 200, r.json
        assert r.json["content"][-1]["text"] == "echo: hello there"
        assert r.json["usage"]["input_tokens"] == 4  # the system message counts
        first = {**body, "messages": [body["messages"][1], body["messages"][0]]}
        r = await post(up.url + "/v1/messages", first, ANTHROPIC_HEADERS)
        assert r.status == 400 and 'Unexpected role "system"' in r.json["error"]["message"]
        client = anthropic.AsyncAnthropic(base_url=up.url, api_key="sk-ant", max_retries=0)
        up.agent = True
        msg = await client.messages.create(model="claude-opus-5-5", max_tokens=100, messages=[
            {"role": "user", "content": TOOL_LINE}], tools=[
            {"name": "Read", "input_schema": {"type": "object", "properties": {"file_path": {"type": "string"}}}}])
        assert [(b.type, getattr(b, "input", None)) for b in msg.content] == [("tool_use", {"file_path": "a.txt"})]


async def test_openai_responses_namespaced_and_freeform_tools() -> None:
    """Codex's default model gets its tools in an `additional_tools` item, in namespaces;
    a freeform tool is called with raw input (`custom_tool_call`), stream and not."""
    async with FakeOpenAI(keys=["k"]) as up:
        up.agent = True
        client = openai.AsyncOpenAI(base_url=up.base_url, api_key="k", max_retries=0)
        line = 'run\ntool-call: exec {"input": "text(1)"}'
        items: Any = [
            {"type": "additional_tools", "role": "developer", "tools": [
                {"type": "namespace", "name": "functions", "description": "", "tools": [
                    {"type": "custom", "name": "exec", "description": "JS"}]}]},
            {"role": "user", "content": line}]
        resp = await client.responses.create(model="gpt-6.2-sol", input=items)
        [call] = resp.output
        assert call.type == "custom_tool_call" and call.input == "text(1)" and call.name == "exec"
        assert resp.model_dump()["output"][0]["namespace"] == "functions"
        async with client.responses.stream(model="gpt-6.2-sol", input=items) as s:
            kinds = [e.type async for e in s]
            final = await s.get_final_response()
        assert "response.custom_tool_call_input.done" in kinds
        assert final.output[0].type == "custom_tool_call"
        items += [{"type": "custom_tool_call", "call_id": call.call_id, "name": "exec", "input": "text(1)"},
                  {"type": "custom_tool_call_output", "call_id": call.call_id,
                   "output": [{"type": "input_text", "text": "1"}]}]
        resp = await client.responses.create(model="gpt-6.2-sol", input=items)
        assert resp.output_text == "tool said: 1"


async def test_openai_compatible_without_responses_is_a_404() -> None:
    async with FakeOpenAI(keys=["k"], responses_api=False) as up:
        r = await post(up.base_url + "/responses", {"model": "m", "input": "hi"}, {"authorization": "Bearer k"})
        assert r.status == 404 and "Invalid URL" in r.json["error"]["message"]

// The official OpenAI Node SDK as a gateway's caller: one scenario, its outcome as JSON on stdout.
//
//   node client.mjs BASE_URL MODEL SCENARIO
//
// SCENARIO is chat|responses, then -tool (a function tool is offered, the model's call is
// answered with the tool's result "a router", and the second answer is reported) and/or
// -stream (the SDK's stream helper; its text deltas are reported as received).
// MODELROUTE_OPENAI_NODE names the node_modules directory holding the pinned SDK
// (tests/clis/install.sh openai-node); ESM ignores NODE_PATH, so it is imported by path.
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const [baseURL, model, scenario] = process.argv.slice(2);
const { default: OpenAI } = await import(
  pathToFileURL(join(process.env.MODELROUTE_OPENAI_NODE, "openai", "index.mjs")).href
);
const client = new OpenAI({ baseURL, apiKey: "modelroute-placeholder", maxRetries: 0, timeout: 20_000 });
const api = scenario.split("-")[0];
const stream = scenario.includes("-stream");
const tool = scenario.includes("-tool");
const PROMPT = tool ? "please call lookup for gw" : "hello there node";
const PARAMETERS = {
  type: "object",
  properties: { echo: { type: "string" } },
  required: ["echo"],
  additionalProperties: false,
};

async function chat() {
  const messages = [{ role: "user", content: PROMPT }];
  const body = {
    model,
    messages,
    ...(tool ? { tools: [{ type: "function", function: { name: "lookup", parameters: PARAMETERS } }] } : {}),
  };
  const deltas = [];
  let done;
  if (stream) {
    const s = client.chat.completions.stream({ ...body, stream_options: { include_usage: true } });
    s.on("content", (delta) => deltas.push(delta));
    done = await s.finalChatCompletion();
  } else {
    done = await client.chat.completions.create(body);
  }
  const choice = done.choices[0];
  const out = {
    text: choice.message.content ?? null,
    deltas,
    finish: choice.finish_reason,
    usage: done.usage ? { input: done.usage.prompt_tokens, output: done.usage.completion_tokens } : null,
    calls: (choice.message.tool_calls ?? []).map((c) => ({ name: c.function.name, arguments: c.function.arguments })),
  };
  if (tool && choice.message.tool_calls?.length) {
    const call = choice.message.tool_calls[0];
    messages.push(
      { role: "assistant", content: null, tool_calls: [call] },
      { role: "tool", tool_call_id: call.id, content: "a router" },
    );
    out.after_tool = (await client.chat.completions.create(body)).choices[0].message.content;
  }
  return out;
}

async function responses() {
  const input = [{ role: "user", content: [{ type: "input_text", text: PROMPT }] }];
  const body = {
    model,
    input,
    store: false,
    ...(tool ? { tools: [{ type: "function", name: "lookup", parameters: PARAMETERS, strict: false }] } : {}),
  };
  const deltas = [];
  let done;
  if (stream) {
    const s = client.responses.stream(body);
    s.on("response.output_text.delta", (e) => deltas.push(e.delta));
    done = await s.finalResponse();
  } else {
    done = await client.responses.create(body);
  }
  const calls = done.output.filter((o) => o.type === "function_call");
  const out = {
    text: done.output_text || null,
    deltas,
    finish: done.status,
    usage: done.usage ? { input: done.usage.input_tokens, output: done.usage.output_tokens } : null,
    calls: calls.map((c) => ({ name: c.name, arguments: c.arguments })),
  };
  if (tool && calls.length) {
    const c = calls[0];
    input.push(
      { type: "function_call", call_id: c.call_id, name: c.name, arguments: c.arguments },
      { type: "function_call_output", call_id: c.call_id, output: "a router" },
    );
    out.after_tool = (await client.responses.create(body)).output_text;
  }
  return out;
}

try {
  const out = await (api === "chat" ? chat() : responses());
  process.stdout.write(JSON.stringify({ ok: true, ...out }) + "\n");
} catch (e) {
  // An SDK error (APIError carries status and the parsed body) is an outcome to report.
  process.stdout.write(JSON.stringify({ ok: false, error: String(e), status: e?.status ?? null, body: e?.error ?? null }) + "\n");
}

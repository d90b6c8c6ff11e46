"""OpenAI's surface beyond chat, as the real API answers it (shapes per the API reference):
images, audio speech and transcriptions (multipart), moderations, legacy completions, files
and batches; and rerank in the Jina/Cohere shape that vLLM and Jina serve.

A mixin of `FakeOpenAI` (and so of `FakeAzureOpenAI`). Transcripts quote the uploaded
file's name, size and SHA-256, so a test can tell the bytes arrived intact.
"""

from __future__ import annotations

import email.parser
import email.policy
import hashlib
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from .base import FakeUpstream, json_response, rand_id
from .openai_wire import OpenAIError, invalid_value, missing, require_model, require_object

MODERATION_CATEGORIES = ("harassment", "harassment/threatening", "hate", "hate/threatening", "illicit",
                         "illicit/violent", "self-harm", "self-harm/intent", "self-harm/instructions", "sexual",
                         "sexual/minors", "violence", "violence/graphic")
SPEECH_FORMATS = {"mp3": "audio/mpeg", "opus": "audio/ogg", "aac": "audio/aac", "flac": "audio/flac",
                  "wav": "audio/wav", "pcm": "audio/pcm"}
FILE_PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
BATCH_ENDPOINTS = ("/v1/responses", "/v1/chat/completions", "/v1/embeddings", "/v1/completions", "/v1/moderations")


@dataclass
class FormPart:
    name: str
    filename: str | None
    content_type: str | None
    data: bytes


def speech_bytes(text: str, size: int = 48_000) -> bytes:
    """Deterministic 'audio' for a text: a tag, then bytes derived from it (size bytes)."""
    seed = hashlib.sha256(text.encode()).digest()
    return (b"FAKEAUDIO" + seed * (size // len(seed) + 1))[:size]


class SurfaceRoutes(FakeUpstream):
    """The routes; `FakeOpenAI` supplies auth, model checks and headers."""

    rerank_api = False  # vLLM / Jina / Cohere-compatible servers have POST /rerank

    def authenticate(self, request: web.Request) -> None:
        raise NotImplementedError

    def check_model(self, model: str) -> None:
        raise NotImplementedError

    def served(self, model: str) -> str:
        raise NotImplementedError

    def response_headers(self) -> dict[str, str]:
        raise NotImplementedError

    def surface_init(self) -> None:
        self.files: dict[str, tuple[dict[str, Any], bytes]] = {}
        self.batches: dict[str, dict[str, Any]] = {}

    def add_model_routes(self, app: web.Application, prefix: str) -> None:
        g = self._surface_guard
        app.router.add_post(f"{prefix}/images/generations", g(self.images))
        app.router.add_post(f"{prefix}/audio/speech", g(self.speech))
        app.router.add_post(f"{prefix}/audio/transcriptions", g(self.transcriptions))
        app.router.add_post(f"{prefix}/audio/translations", g(self.transcriptions))
        app.router.add_post(f"{prefix}/moderations", g(self.moderations))
        app.router.add_post(f"{prefix}/completions", g(self.completions))
        if self.rerank_api:
            app.router.add_post(f"{prefix}/rerank", g(self.rerank))

    def add_account_routes(self, app: web.Application, prefix: str) -> None:
        g = self._surface_guard
        app.router.add_post(f"{prefix}/files", g(self.create_file))
        app.router.add_get(f"{prefix}/files", g(self.list_files))
        app.router.add_get(f"{prefix}/files/{{id}}", g(self.get_file))
        app.router.add_delete(f"{prefix}/files/{{id}}", g(self.delete_file))
        app.router.add_get(f"{prefix}/files/{{id}}/content", g(self.file_content))
        app.router.add_post(f"{prefix}/batches", g(self.create_batch))
        app.router.add_get(f"{prefix}/batches", g(self.list_batches))
        app.router.add_get(f"{prefix}/batches/{{id}}", g(self.get_batch))
        app.router.add_post(f"{prefix}/batches/{{id}}/cancel", g(self.cancel_batch))

    def _guard(self, route: Any) -> Any:
        """FakeOpenAI's: an OpenAIError becomes its error response."""
        raise NotImplementedError

    def surface_check(self, request: web.Request) -> None:
        """Checks before any surface route (Azure: its api-version)."""

    def _surface_guard(self, route: Any) -> Any:
        async def checked(request: web.Request) -> web.StreamResponse:
            self.surface_check(request)
            result: web.StreamResponse = await route(request)
            return result

        return self._guard(checked)

    def model_for(self, request: web.Request, body_model: str | None) -> str:
        """The model a request is for (Azure's deployment routes override this)."""
        if not body_model:
            raise OpenAIError("you must provide a model parameter")
        self.check_model(body_model)
        return self.served(body_model)

    # ---- bodies ----------------------------------------------------------------------
    def json_body(self, request: web.Request) -> dict[str, Any]:
        from .base import JSON_BODY

        return require_object(request[JSON_BODY])

    async def form(self, request: web.Request) -> list[FormPart]:
        ctype = request.headers.get("Content-Type", "")
        if not ctype.startswith("multipart/form-data"):
            raise OpenAIError(f"Invalid Content-Type header ({ctype}), expected multipart/form-data. (HINT: If "
                              "you're using curl, you can pass -F 'file=@<file_path>' to upload a file.)")
        raw = await request.read()
        msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            b"Content-Type: " + ctype.encode() + b"\r\n\r\n" + raw)
        if not msg.is_multipart() or msg.defects:
            raise OpenAIError("Could not parse multipart form")
        parts = []
        for part in msg.iter_parts():
            name = part.get_param("name", header="content-disposition")
            data = part.get_payload(decode=True)
            parts.append(FormPart(str(name), part.get_filename(), part.get_content_type(),
                                  data if isinstance(data, bytes) else b""))
        return parts

    @staticmethod
    def field(parts: list[FormPart], name: str) -> str | None:
        for p in parts:
            if p.name == name and p.filename is None:
                return p.data.decode()
        return None

    # ---- images -----------------------------------------------------------------------
    async def images(self, request: web.Request) -> web.StreamResponse:
        self.authenticate(request)
        body = self.json_body(request)
        model = self.model_for(request, require_model(body))
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            raise missing("prompt")
        n = 1 if body.get("n") is None else body["n"]
        if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 10:
            raise OpenAIError(f"Invalid 'n': expected an integer between 1 and 10, but got {n!r} instead.",
                              param="n", code="invalid_value")
        picture = hashlib.sha256(prompt.encode()).hexdigest()
        if model.startswith("gpt-image"):
            tokens = max(1, len(prompt.split()))
            out: dict[str, Any] = {
                "created": int(time.time()), "background": "opaque", "output_format": "png", "quality": "high",
                "size": body.get("size", "1024x1024"), "data": [{"b64_json": picture} for _ in range(n)],
                "usage": {"input_tokens": tokens, "input_tokens_details": {"text_tokens": tokens, "image_tokens": 0},
                          "output_tokens": 1056, "total_tokens": tokens + 1056}}
        else:
            fmt = body.get("response_format", "url")
            if fmt not in ("url", "b64_json"):
                raise invalid_value("response_format", fmt, ("url", "b64_json"))
            item = {"url": f"https://images.example/{picture}.png"} if fmt == "url" else {"b64_json": picture}
            out = {"created": int(time.time()), "data": [{**item, "revised_prompt": prompt} for _ in range(n)]}
        return json_response(out, headers=self.response_headers())

    # ---- audio ------------------------------------------------------------------------
    async def speech(self, request: web.Request) -> web.StreamResponse:
        self.authenticate(request)
        body = self.json_body(request)
        self.model_for(request, require_model(body))
        for name in ("input", "voice"):
            if name not in body:
                raise missing(name)
        fmt = body.get("response_format", "mp3")
        if fmt not in SPEECH_FORMATS:
            raise invalid_value("response_format", fmt, SPEECH_FORMATS)
        audio = speech_bytes(str(body["input"]))
        resp = web.StreamResponse(status=200, headers={**self.response_headers(), "Content-Type": SPEECH_FORMATS[fmt]})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for n, i in enumerate(range(0, len(audio), 8192)):  # as the API does: audio in chunks, as it is made
            if self.faults.die_after is not None and n >= self.faults.die_after:
                if request.transport is not None:
                    request.transport.abort()  # a crash mid-body: no final chunk
                self.streams_died += 1
                return resp
            await resp.write(audio[i:i + 8192])
        await resp.write_eof()
        return resp

    async def transcriptions(self, request: web.Request) -> web.StreamResponse:
        self.authenticate(request)
        parts = await self.form(request)
        model = self.model_for(request, self.field(parts, "model"))
        upload = next((p for p in parts if p.name == "file" and p.filename is not None), None)
        if upload is None:
            raise missing("file")
        digest = hashlib.sha256(upload.data).hexdigest()
        text = f"{upload.filename} {len(upload.data)} {digest}"
        fmt = self.field(parts, "response_format") or "json"
        if self.field(parts, "stream") == "true":
            if model.startswith("whisper"):
                raise OpenAIError("Streaming is not supported for the whisper-1 model.", param="stream")
            return await self.transcript_stream(request, text)
        if fmt in ("text", "srt", "vtt"):
            return web.Response(text=text + "\n", content_type="text/plain", headers=self.response_headers())
        usage: dict[str, Any]
        if model.startswith("whisper"):
            usage = {"type": "duration", "seconds": 3}
        else:
            usage = {"type": "tokens", "input_tokens": 40, "output_tokens": 12, "total_tokens": 52,
                     "input_token_details": {"text_tokens": 0, "audio_tokens": 40}}
        out: dict[str, Any] = {"text": text, "usage": usage}
        if fmt == "verbose_json":
            out = {"task": "transcribe", "language": "english", "duration": 3.0, "text": text, "segments": [],
                   "usage": usage}
        return json_response(out, headers=self.response_headers())

    async def transcript_stream(self, request: web.Request, text: str) -> web.StreamResponse:
        """`stream=true` (gpt-4o-transcribe and later): text deltas, then the whole text with usage."""
        words = text.split(" ")
        usage = {"type": "tokens", "input_tokens": 40, "output_tokens": 12, "total_tokens": 52,
                 "input_token_details": {"text_tokens": 0, "audio_tokens": 40}}

        def frames() -> Iterator[bytes]:
            for i, w in enumerate(words):
                yield sse({"type": "transcript.text.delta", "delta": w if i == 0 else " " + w, "logprobs": None})
            yield sse({"type": "transcript.text.done", "text": text, "logprobs": None, "usage": usage})

        return await self.stream(request, frames(), headers=self.response_headers())

    # ---- moderations ----------------------------------------------------------------
    async def moderations(self, request: web.Request) -> web.StreamResponse:
        self.authenticate(request)
        body = self.json_body(request)
        model = self.model_for(request, str(body.get("model", "omni-moderation-latest")))
        if "input" not in body:
            raise missing("input")
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        results = []
        for item in inputs:
            bad = "attack" in str(item).lower()  # the fake's one rule: a word that flags violence
            results.append({
                "flagged": bad, "categories": {c: bad and c == "violence" for c in MODERATION_CATEGORIES},
                "category_scores": {c: 0.9 if bad and c == "violence" else 0.0001 for c in MODERATION_CATEGORIES},
                "category_applied_input_types": {c: ["text"] for c in MODERATION_CATEGORIES}})
        return json_response({"id": "modr-" + secrets.token_hex(12), "model": model, "results": results},
                             headers=self.response_headers())

    # ---- legacy completions ---------------------------------------------------------
    async def completions(self, request: web.Request) -> web.StreamResponse:
        self.authenticate(request)
        body = self.json_body(request)
        model = self.model_for(request, require_model(body))
        if "prompt" not in body:
            raise missing("prompt")
        prompt = body["prompt"] if isinstance(body["prompt"], str) else " ".join(map(str, body["prompt"]))
        words = ["Echo:", *prompt.split()][: int(body.get("max_tokens") or 16)]
        usage = {"prompt_tokens": max(1, len(prompt.split())), "completion_tokens": len(words),
                 "total_tokens": max(1, len(prompt.split())) + len(words)}
        head = {"id": rand_id("cmpl-", 29), "object": "text_completion", "created": int(time.time()), "model": model,
                "system_fingerprint": None}
        if not body.get("stream"):
            choice = {"text": " ".join(words), "index": 0, "logprobs": None, "finish_reason": "stop"}
            return json_response({**head, "choices": [choice], "usage": usage}, headers=self.response_headers())

        def frames() -> Iterator[bytes]:
            for i, w in enumerate(words):
                text = w if i == 0 else " " + w
                yield sse({**head, "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": None}]})
            yield sse({**head, "choices": [{"text": "", "index": 0, "logprobs": None, "finish_reason": "stop"}]})
            if (body.get("stream_options") or {}).get("include_usage"):
                yield sse({**head, "choices": [], "usage": usage})
            yield b"data: [DONE]\n\n"

        return await self.stream(request, frames(), headers=self.response_headers())

    # ---- rerank (Jina / Cohere shape) ----------------------------------------------
    async def rerank(self, request: web.Request) -> web.StreamResponse:
        self.authenticate(request)
        body = self.json_body(request)
        model = self.model_for(request, require_model(body))
        query = body.get("query")
        docs = body.get("documents")
        if not isinstance(query, str):
            raise missing("query")
        if not isinstance(docs, list) or not docs:
            raise missing("documents")
        texts = [d if isinstance(d, str) else str(d.get("text", "")) for d in docs]
        q = set(query.lower().split())
        scored = sorted(((len(q & set(t.lower().split())) / (len(q) or 1), i) for i, t in enumerate(texts)),
                        key=lambda s: (-s[0], s[1]))
        top = body.get("top_n") or len(texts)
        results = [{"index": i, "relevance_score": s, **({"document": {"text": texts[i]}}
                                                          if body.get("return_documents", True) else {})}
                   for s, i in scored[:top]]
        tokens = len(query.split()) + sum(len(t.split()) for t in texts)
        return json_response({"model": model, "usage": {"total_tokens": tokens}, "results": results},
                             headers=self.response_headers())

    # ---- files ------------------------------------------------------------------------
    def _file(self, request: web.Request) -> tuple[dict[str, Any], bytes]:
        ident = request.match_info["id"]
        if ident not in self.files:
            raise OpenAIError(f"No such File object: {ident}", status=404, param="id")
        return self.files[ident]

    async def create_file(self, request: web.Request) -> web.StreamResponse:
        self.authenticate(request)
        parts = await self.form(request)
        purpose = self.field(parts, "purpose")
        if purpose is None:
            raise missing("purpose")
        if purpose not in FILE_PURPOSES:
            raise invalid_value("purpose", purpose, FILE_PURPOSES)
        upload = next((p for p in parts if p.name == "file" and p.filename is not None), None)
        if upload is None:
            raise missing("file")
        obj = {"id": rand_id("file-", 22), "object": "file", "bytes": len(upload.data), "created_at": int(time.time()),
               "filename": upload.filename, "purpose": purpose, "status": "processed", "expires_at": None,
               "status_details": None}
        self.files[str(obj["id"])] = (obj, upload.data)
        return json_response(obj, headers=self.response_headers())

    async def list_files(self, request: web.Request) -> web.StreamResponse:
        self.authenticate(request)
        purpose = request.query.get("purpose")
        objs = [o for o, _ in self.files.values() if purpose is None or o["purpose"] == purpose]
        return json_response(page(objs, request), headers=self.response_headers())

    async def get_file(self, request: web.Request) -> web.StreamResponse:
        self.authenticate(request)
        return json_response(self._file(request)[0], headers=self.response_headers())

    async def delete_file(self, request: web.Request) -> web.StreamResponse:
        self.authenticate(request)
        obj, _ = self._file(request)
        del self.files[obj["id"]]
        return json_response({"id": obj["id"], "object": "file", "deleted": True}, headers=self.response_headers())

    async def file_content(self, request: web.Request) -> web.StreamResponse:
        self.authenticate(request)
        _, data = self._file(request)
        return web.Response(body=data, content_type="application/octet-stream", headers=self.response_headers())

    # ---- batches ----------------------------------------------------------------------
    def _batch(self, request: web.Request) -> dict[str, Any]:
        ident = request.match_info["id"]
        if ident not in self.batches:
            raise OpenAIError(f"No batch found with id '{ident}'.", status=404, param="batch_id")
        return self.batches[ident]

    async def create_batch(self, request: web.Request) -> web.StreamResponse:
        self.authenticate(request)
        body = self.json_body(request)
        for name in ("input_file_id", "endpoint", "completion_window"):
            if name not in body:
                raise missing(name)
        if body["endpoint"] not in BATCH_ENDPOINTS:
            raise invalid_value("endpoint", body["endpoint"], BATCH_ENDPOINTS)
        if body["completion_window"] != "24h":
            raise invalid_value("completion_window", body["completion_window"], ("24h",))
        if body["input_file_id"] not in self.files:
            raise OpenAIError(f"No such File object: {body['input_file_id']}", status=404, param="input_file_id")
        now = int(time.time())
        batch = {"id": rand_id("batch_", 32), "object": "batch", "endpoint": body["endpoint"], "errors": None,
                 "input_file_id": body["input_file_id"], "completion_window": "24h", "status": "validating",
                 "output_file_id": None, "error_file_id": None, "created_at": now, "in_progress_at": None,
                 "expires_at": now + 86400, "finalizing_at": None, "completed_at": None, "failed_at": None,
                 "expired_at": None, "cancelling_at": None, "cancelled_at": None,
                 "request_counts": {"total": 0, "completed": 0, "failed": 0}, "metadata": body.get("metadata"),
                 "model": None, "usage": None}
        self.batches[str(batch["id"])] = batch
        return json_response(batch, headers=self.response_headers())

    async def list_batches(self, request: web.Request) -> web.StreamResponse:
        self.authenticate(request)
        return json_response(page(list(self.batches.values()), request), headers=self.response_headers())

    async def get_batch(self, request: web.Request) -> web.StreamResponse:
        self.authenticate(request)
        return json_response(self._batch(request), headers=self.response_headers())

    async def cancel_batch(self, request: web.Request) -> web.StreamResponse:
        self.authenticate(request)
        batch = self._batch(request)
        if batch["status"] not in ("validating", "in_progress"):
            raise OpenAIError(f"Cannot cancel a batch with status '{batch['status']}'.", status=409)
        batch.update({"status": "cancelling", "cancelling_at": int(time.time())})
        return json_response(batch, headers=self.response_headers())


def sse(obj: Any) -> bytes:
    import orjson

    return b"data: " + orjson.dumps(obj) + b"\n\n"


def page(objs: list[dict[str, Any]], request: web.Request) -> dict[str, Any]:
    objs = sorted(objs, key=lambda o: o["created_at"], reverse=request.query.get("order", "desc") == "desc")
    after = request.query.get("after")
    if after is not None:
        ids = [o["id"] for o in objs]
        objs = objs[ids.index(after) + 1:] if after in ids else []
    limit = int(request.query.get("limit", "20"))
    data = objs[:limit]
    return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None, "has_more": len(objs) > limit}

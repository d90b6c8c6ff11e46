"""Files and batches of a ``mock`` ProviderKey: kept in memory (bounded), in OpenAI's shapes.

A batch is run when it is first read back after it was created: each line of its input
file is answered as the mock answers that endpoint (chat completions, embeddings), into
an output file, so the whole create, poll, download cycle can be tried with no key.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import orjson

from ..config import MockSettings
from ..providers.base import ProviderAdapter
from ..providers.mock import Answer, embeddings_response
from .files import Action

MAX_FILES = 256
MAX_STORED_BYTES = 64 * 1024 * 1024
BATCH_ENDPOINTS = ("/v1/chat/completions", "/v1/embeddings")
JSON = "application/json"
Answered = tuple[int, str, bytes]


@dataclass
class Store:
    files: dict[str, tuple[dict[str, Any], bytes]] = field(default_factory=dict)
    batches: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def stored(self) -> int:
        return sum(len(content) for _, content in self.files.values())


_STORES: dict[str, Store] = {}


def _error(status: int, message: str, param: str | None = None) -> Answered:
    return status, JSON, orjson.dumps({"error": {"message": message, "type": "invalid_request_error",
                                                 "param": param, "code": None}})


def _ok(obj: Any) -> Answered:
    return 200, JSON, orjson.dumps(obj)


def _listing(items: list[dict[str, Any]], query: dict[str, str]) -> dict[str, Any]:
    items = sorted(items, key=lambda o: o["created_at"], reverse=True)
    if "after" in query:
        ids = [o["id"] for o in items]
        items = items[ids.index(query["after"]) + 1:] if query["after"] in ids else []
    limit = int(query["limit"]) if query.get("limit", "").isdigit() else 20
    page = items[:limit]
    return {"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None, "has_more": len(items) > limit}


def _new_file(store: Store, filename: str, purpose: str, content: bytes) -> dict[str, Any] | None:
    if len(store.files) >= MAX_FILES or store.stored + len(content) > MAX_STORED_BYTES:
        return None
    ident = "file-" + os.urandom(12).hex()
    obj = {"id": ident, "object": "file", "bytes": len(content),
           "created_at": int(time.time()), "filename": filename, "purpose": purpose, "status": "processed",
           "expires_at": None, "status_details": None}
    store.files[ident] = (obj, content)
    return obj


def _run(store: Store, batch: dict[str, Any], settings: MockSettings) -> None:
    """Answer every line of the batch's input file into its output file."""
    _, content = store.files.get(batch["input_file_id"], ({}, b""))
    out: list[bytes] = []
    done = failed = inp = outp = 0
    for line in content.splitlines():
        if not line.strip():
            continue
        try:
            item = orjson.loads(line)
            body, url = item["body"], item["url"]
            if url != batch["endpoint"]:
                raise ValueError(f"the line's url {url} is not the batch's endpoint")
            if url == "/v1/chat/completions":
                answer: dict[str, Any] = dict(Answer(body, line, settings).completion())
            else:
                status, answer = embeddings_response(body)
                if status != 200:
                    raise ValueError(answer["error"]["message"])
            usage = answer.get("usage") or {}
            inp += int(usage.get("prompt_tokens") or 0)
            outp += int(usage.get("completion_tokens") or 0)
            out.append(orjson.dumps({"id": "batch_req_" + os.urandom(12).hex(), "custom_id": item.get("custom_id"),
                                     "response": {"status_code": 200, "request_id": os.urandom(16).hex(),
                                                  "body": answer}, "error": None}))
            done += 1
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            failed += 1
            custom = item.get("custom_id") if isinstance(locals().get("item"), dict) else None
            out.append(orjson.dumps({"id": "batch_req_" + os.urandom(12).hex(), "custom_id": custom,
                                     "response": None, "error": {"code": "invalid_request", "message": str(e)}}))
    now = int(time.time())
    output = _new_file(store, "batch_output.jsonl", "batch_output", b"\n".join(out) + b"\n")
    batch.update({"status": "completed", "in_progress_at": now, "finalizing_at": now, "completed_at": now,
                  "output_file_id": output["id"] if output else None,
                  "request_counts": {"total": done + failed, "completed": done, "failed": failed},
                  "usage": {"input_tokens": inp, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": outp,
                            "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": inp + outp}})


def answer(adapter: ProviderAdapter, action: Action) -> Answered:
    store = _STORES.setdefault(adapter.pk.name, Store())
    settings = getattr(adapter, "settings", None) or MockSettings()
    parts = [unquote(p) for p in action.path.split("/")]
    kind, ident = parts[0], parts[1] if len(parts) > 1 else None
    if kind == "files":
        if action.name == "files.create":
            assert action.form is not None
            f = action.form.file("file")
            assert f is not None
            obj = _new_file(store, f.filename or "file", action.form.field("purpose") or "", b"".join(f.chunks))
            return _ok(obj) if obj else _error(400, f"mock: at most {MAX_FILES} files of {MAX_STORED_BYTES} bytes")
        if action.name == "files.list":
            objs = [o for o, _ in store.files.values()
                    if "purpose" not in action.query or o["purpose"] == action.query["purpose"]]
            return _ok(_listing(objs, action.query))
        if ident not in store.files:
            return _error(404, f"No such File object: {ident}", "id")
        obj, content = store.files[ident]
        if action.name == "files.content":
            return 200, "application/octet-stream", content
        if action.name == "files.delete":
            del store.files[ident]
            return _ok({"id": ident, "object": "file", "deleted": True})
        return _ok(obj)
    if action.name == "batches.create":
        req = orjson.loads(action.body or b"{}")
        if req["input_file_id"] not in store.files:
            return _error(400, f"No such File object: {req['input_file_id']}", "input_file_id")
        if req["endpoint"] not in BATCH_ENDPOINTS:
            return _error(400, f"mock: batches of {', '.join(BATCH_ENDPOINTS)} only", "endpoint")
        now = int(time.time())
        batch = {"id": "batch_" + os.urandom(12).hex(), "object": "batch", "endpoint": req["endpoint"],
                 "errors": None, "input_file_id": req["input_file_id"],
                 "completion_window": req["completion_window"], "status": "validating", "output_file_id": None,
                 "error_file_id": None, "created_at": now, "in_progress_at": None, "expires_at": now + 86400,
                 "finalizing_at": None, "completed_at": None, "failed_at": None, "expired_at": None,
                 "cancelling_at": None, "cancelled_at": None,
                 "request_counts": {"total": 0, "completed": 0, "failed": 0}, "metadata": req.get("metadata")}
        store.batches[batch["id"]] = batch
        return _ok(batch)
    if action.name == "batches.list":
        return _ok(_listing(list(store.batches.values()), action.query))
    found = store.batches.get(ident or "")
    if found is None:
        return _error(404, f"No such Batch object: {ident}", "batch_id")
    batch = found
    if action.name == "batches.cancel":
        if batch["status"] not in ("validating", "in_progress"):
            return _error(409, f"Cannot cancel a batch with status '{batch['status']}'.")
        batch.update({"status": "cancelling", "cancelling_at": int(time.time())})
        return _ok(batch)
    if batch["status"] == "validating":
        _run(store, batch, settings)
    elif batch["status"] == "cancelling":
        batch.update({"status": "cancelled", "cancelled_at": int(time.time())})
    return _ok(batch)

"""Amazon Bedrock upstream: Converse/ConverseStream, and InvokeModel for Claude pass-through.

Which API a request uses:

* Anthropic Messages callers on a Claude model (``anthropic.claude-*``, or an inference
  profile such as ``us.anthropic.claude-*`` or its ARN) go through ``InvokeModel`` /
  ``InvokeModelWithResponseStream`` with the caller's own Messages body
  (``anthropic_version: bedrock-2023-05-31``, ``anthropic-beta`` moved into
  ``anthropic_beta``): extended thinking with its signatures, ``cache_control`` with TTLs,
  documents and citations reach Claude exactly as sent, which Converse cannot promise.
* Every other request goes through the canonical form to ``Converse`` /
  ``ConverseStream``, which serves every Bedrock model with one request shape.

Authentication per key line of the Secret: ``ACCESS_KEY_ID:SECRET_ACCESS_KEY`` or
``ACCESS_KEY_ID:SECRET_ACCESS_KEY:SESSION_TOKEN`` signs each request with SigV4
(service ``bedrock``, the ProviderKey's region); a line without ``:`` is a Bedrock API
key, sent as ``Authorization: Bearer``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any, ClassVar

import orjson

from ..canonical import ChatRequest, ChatResponse
from ..config import ProviderKeyConfig
from ..credentials import AwsCredentials, Credential, CredentialSource, StaticSource
from ..syntax import path_segment
from ..wire.anthropic.upstream import THINKING_BUDGETS, THINKING_MODELS, signed_messages
from ..wire.aws_eventstream import CONTENT_TYPE as EVENTSTREAM
from ..wire.aws_eventstream import EventStreamParser
from ..wire.base import StreamDecoder, UpstreamErrorInfo
from ..wire.bedrock_converse.upstream import ConverseStreamDecoder, build_request, error_info, parse_response
from .aws_sigv4 import parse_key_line, sign
from .base import EventParser, PreparedRequest, ProviderAdapter

ANTHROPIC_VERSION = "bedrock-2023-05-31"
SERVICE = "bedrock"  # the SigV4 signing name of bedrock-runtime
# Characters of a model id kept as they are in the path: HTTP clients send them unencoded
# whatever they are given, and the signature must cover the path as sent (see syntax.py).
_PATH_SAFE = ":@+~"
_GEO_PREFIX = re.compile(r"^(?:us|eu|apac|jp|au|ca|us-gov|global)\.(?=anthropic\.)")
_CLAUDE = re.compile(r"(?:^|[./])anthropic\.(claude-[^/]*)$")


@lru_cache(maxsize=512)
def claude_name(model: str) -> str | None:
    """``claude-sonnet-4-5-20250929-v1:0`` for any id, profile or ARN of a Claude model, else None."""
    m = _CLAUDE.search(model)
    return m.group(1) if m else None


def _thinking(req: ChatRequest, model: str) -> dict[str, Any] | None:
    """An OpenAI reasoning effort as Claude's extended thinking (Converse carries it in
    ``additionalModelRequestFields``), where the model thinks and no tool is forced."""
    name = claude_name(model)
    effort = req.get("reasoning_effort")
    if name is None or not isinstance(effort, str) or effort not in THINKING_BUDGETS or not THINKING_MODELS.match(name):
        return None
    choice = req.get("tool_choice")
    if choice == "required" or isinstance(choice, dict):
        return None
    return {"type": "enabled", "budget_tokens": THINKING_BUDGETS[effort]}


class BedrockAdapter(ProviderAdapter):
    kind = "bedrock"
    # Bedrock's errors are AWS's ({"message": ...}): rendered in the caller's dialect, never passed on.
    native_errors: ClassVar[bool] = False

    def __init__(self, pk: ProviderKeyConfig) -> None:
        super().__init__(pk)
        self.region = pk.region or "us-east-1"
        self.model_url = pk.base_url.rstrip("/") + "/model/"
        self.headers = {"content-type": "application/json", "accept": "application/json", **pk.headers}
        self.stream_headers = {**self.headers, "accept": EVENTSTREAM}

    def _url(self, model: str, operation: str) -> str:
        return self.model_url + path_segment(model, _PATH_SAFE) + "/" + operation

    def speaks_for(self, dialect: str, model: str) -> bool:
        return dialect == "anthropic-messages" and claude_name(model) is not None

    # ---------------------------------------------------------------- credentials

    def auth_headers(self, key: str) -> dict[str, str]:
        return {} if self._credentials(key) is not None else {"authorization": "Bearer " + key}

    def key_source(self, key: str) -> CredentialSource[Any] | None:
        creds = self._credentials(key)
        return None if creds is None else StaticSource(creds, "static AWS access key")

    def credential_headers(self, credential: Credential, prepared: PreparedRequest) -> Mapping[str, str]:
        """SigV4 for AWS credentials (static, or from workload identity), signed at each
        attempt; a bearer token (a Bedrock API key) as ``Authorization: Bearer``."""
        if isinstance(credential, AwsCredentials):
            return sign(credential, self.region, SERVICE, prepared.url, prepared.headers, prepared.body)
        return {"authorization": f"Bearer {credential.token}"}

    def secrets_of(self, key: str) -> list[str]:
        creds = self._credentials(key)
        if creds is None:
            return [key]
        return [key, creds.secret_access_key, *([creds.session_token] if creds.session_token else [])]

    @staticmethod
    def _credentials(key: str) -> AwsCredentials | None:
        try:
            return parse_key_line(key)
        except ValueError:
            return None  # compile refuses such lines; from elsewhere, Bedrock answers 403

    # -------------------------------------------------------------------- Converse

    def chat(self, req: ChatRequest, model: str, stream: bool) -> PreparedRequest:
        body = build_request(req, thinking=_thinking(req, model))
        inference = body.get("inferenceConfig")
        if inference and "temperature" in inference and "topP" in inference and claude_name(model):
            del inference["topP"]  # Claude 4.5 and later refuse both at once; temperature says more
        if stream:
            return PreparedRequest(self._url(model, "converse-stream"), orjson.dumps(body), self.stream_headers)
        return PreparedRequest(self._url(model, "converse"), orjson.dumps(body), self.headers)

    def parse_chat(self, body: bytes, model: str) -> ChatResponse:
        return parse_response(orjson.loads(body), model)

    def stream_decoder(self, model: str) -> StreamDecoder:
        return ConverseStreamDecoder(model)

    def stream_parser(self, model: str, native: bool) -> EventParser:
        # Pass-through streams come from InvokeModelWithResponseStream: Claude's own events,
        # each wrapped in a base64 "chunk".
        return EventStreamParser(unwrap_chunks=native)

    # ------------------------------------------------------------------ InvokeModel

    def native(self, dialect: str, req: dict[str, Any], model: str, stream: bool) -> PreparedRequest:
        if dialect != "anthropic-messages":
            raise NotImplementedError(dialect)
        body = dict(req)  # shallow: the caller's blocks pass untouched
        body.pop("model", None)  # the model is the path; streaming is the operation
        body.pop("stream", None)
        body["anthropic_version"] = ANTHROPIC_VERSION
        if isinstance(body.get("messages"), list):  # unsigned thinking: refused by Claude anywhere
            body["messages"] = signed_messages(body["messages"])
        if stream:
            return PreparedRequest(self._url(model, "invoke-with-response-stream"), orjson.dumps(body),
                                   self.stream_headers)
        return PreparedRequest(self._url(model, "invoke"), orjson.dumps(body), self.headers)

    def with_forwarded(self, prepared: PreparedRequest, headers: dict[str, str]) -> PreparedRequest:
        """Bedrock takes Anthropic betas in the body (``anthropic_beta``); the API version is
        fixed by ``anthropic_version`` there."""
        betas = [b.strip() for b in headers.get("anthropic-beta", "").split(",") if b.strip()]
        if not betas:
            return prepared
        body = orjson.loads(prepared.body)
        body.setdefault("anthropic_beta", betas)
        return prepared._replace(body=orjson.dumps(body))

    def count_tokens(self, messages: dict[str, Any], canonical: Callable[[], ChatRequest],
                     model: str) -> PreparedRequest | None:
        """Bedrock's CountTokens (Claude models), with the InvokeModel body the request would be;
        it takes the foundation model, so a geographic profile's prefix is dropped."""
        if claude_name(model) is None:
            return None
        body = {k: v for k, v in messages.items() if k not in ("model", "stream")}
        body["anthropic_version"] = ANTHROPIC_VERSION
        body.setdefault("max_tokens", 1)  # required in an InvokeModel body; counts nothing
        request = {"input": {"invokeModel": {"body": orjson.dumps(body).decode()}}}
        return PreparedRequest(self._url(_GEO_PREFIX.sub("", model), "count-tokens"), orjson.dumps(request),
                               self.headers)

    def token_count(self, body: bytes) -> int:
        return int(orjson.loads(body)["inputTokens"])

    def error_info(self, status: int, body: bytes) -> UpstreamErrorInfo:
        return error_info(status, body)

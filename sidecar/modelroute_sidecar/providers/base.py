"""What every provider adapter offers the engine.

An adapter is built once per ProviderKey at config load (URLs and static headers
precomputed), and then turns canonical requests into upstream HTTP requests and
upstream answers back into canonical ones. Translation lives in pure functions in each
provider's module; the adapter class only binds them to a ProviderKey.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple, Protocol

from aiohttp.helpers import BasicAuth, get_env_proxy_for_url
from yarl import URL

from ..canonical import ChatRequest, ChatResponse
from ..config import ProviderKeyConfig
from ..sse import SSEEvent, SSEParser
from ..wire.base import StreamDecoder, UpstreamErrorInfo

if TYPE_CHECKING:  # loaded with the first workload identity or signing key, not at start
    from ..credentials.base import Credential, CredentialSource


def env_proxy(url: str) -> tuple[str | None, BasicAuth | None]:
    try:
        proxy, auth = get_env_proxy_for_url(URL(url))
    except LookupError:
        return None, None
    return str(proxy), auth


class PreparedRequest(NamedTuple):
    url: str
    body: bytes
    headers: Mapping[str, str]  # without authentication; see ProviderAdapter.auth_headers


class EventParser(Protocol):
    """Upstream stream bytes -> events (SSE, or another framing read as SSE events)."""

    def feed(self, chunk: bytes) -> list[SSEEvent]: ...

    def read(self, chunk: bytes) -> tuple[list[SSEEvent], Exception | None]:
        """Like ``feed``, but a failure after some complete events is returned with them."""
        ...


class ProviderAdapter(ABC):
    kind: ClassVar[str]
    # In-process adapters (the mock) answer through respond() instead of the network.
    in_process: ClassVar[bool] = False
    priced: ClassVar[bool] = True  # False: usage costs nothing, whatever the model's name
    # Whether a pass-through request's 4xx body is in the caller's dialect (passed on as is);
    # False for upstreams whose errors have their own shape (AWS, Google front ends).
    native_errors: ClassVar[bool] = True

    def __init__(self, pk: ProviderKeyConfig) -> None:
        self.pk = pk
        self.base_url = pk.base_url
        # HTTP(S)_PROXY / NO_PROXY, resolved once per ProviderKey: asking aiohttp to do it
        # per request (trust_env) costs two thread-pool round trips on every call.
        self.proxy, self.proxy_auth = env_proxy(pk.base_url)
        # For kinds whose Responses path is BRIDGE (wire/pairs.py): Responses requests are
        # translated to Chat Completions, by configuration or since the upstream had no /responses.
        self.responses_bridged = pk.responses_api == "bridge"

    @property
    def probes_responses(self) -> bool:
        """Whether a 404/405 on a passed-through Responses request means "no Responses API here".
        Still so once bridged: a request that left before the bridge started meets its own 404."""
        return self.pk.responses_api == "auto"

    def bridge_responses(self) -> None:
        """Translate Responses requests to Chat Completions from now on."""
        self.responses_bridged = True

    def speaks_for(self, dialect: str, model: str) -> bool:
        """For a ``BY_MODEL`` cell of the pair table: whether ``model`` speaks ``dialect``
        (Bedrock and Vertex pass Anthropic callers through only to Claude models)."""
        return False

    @abstractmethod
    def auth_headers(self, key: str) -> dict[str, str]:
        """Headers that authenticate with ``key`` (computed once per key at load)."""

    def credential_headers(self, credential: Credential, prepared: PreparedRequest) -> Mapping[str, str]:
        """Headers that authenticate ``prepared`` with a credential from workload identity
        (a ProviderKey's CredentialSource). A bearer token goes as ``Authorization: Bearer``;
        adapters that sign requests (SigV4) override this."""
        from ..credentials.base import BearerToken, CredentialError  # loaded already, with the source

        if isinstance(credential, BearerToken):
            return {"authorization": f"Bearer {credential.token}"}
        raise CredentialError(f"provider {self.kind} cannot authenticate with AWS credentials")

    def key_source(self, key: str) -> CredentialSource[Any] | None:
        """A static key that authenticates each request itself (AWS access keys sign with
        SigV4): its credential source, read by :meth:`credential_headers`; else None, and
        :meth:`auth_headers` is all it takes."""
        return None

    def secrets_of(self, key: str) -> list[str]:
        """The secret strings in a key line, for the redactor (a line may hold several)."""
        return [key]

    def stream_parser(self, model: str, native: bool) -> EventParser:
        """The parser of this upstream's stream framing for ``model``."""
        return SSEParser()

    def with_forwarded(self, prepared: PreparedRequest, headers: dict[str, str]) -> PreparedRequest:
        """A pass-through request with the caller headers its dialect forwards (``anthropic-beta``)."""
        return prepared._replace(headers={**prepared.headers, **headers})

    @abstractmethod
    def chat(self, req: ChatRequest, model: str, stream: bool) -> PreparedRequest: ...

    @abstractmethod
    def parse_chat(self, body: bytes, model: str) -> ChatResponse: ...

    @abstractmethod
    def stream_decoder(self, model: str) -> StreamDecoder: ...

    def embeddings(self, req: dict[str, Any], model: str) -> PreparedRequest:
        from ..errors import bad_request

        raise bad_request(f"provider {self.kind} does not serve embeddings", "model", "unsupported_operation")

    def parse_embeddings(self, body: bytes, model: str) -> dict[str, Any]:
        raise NotImplementedError

    def native(self, dialect: str, req: dict[str, Any], model: str, stream: bool) -> PreparedRequest:
        """The pass-through request of a dialect whose path to this kind is PASS (wire/pairs.py)."""
        raise NotImplementedError

    def count_tokens(self, messages: dict[str, Any], canonical: Callable[[], ChatRequest],
                     model: str) -> PreparedRequest | None:
        """The upstream request that counts the input tokens of an Anthropic ``count_tokens``
        body (``canonical`` translates it), or None when this upstream cannot count."""
        return None

    def token_count(self, body: bytes) -> int:
        """The count from the answer to :meth:`count_tokens`."""
        raise NotImplementedError

    @abstractmethod
    def error_info(self, status: int, body: bytes) -> UpstreamErrorInfo: ...

    async def respond(self, prepared: PreparedRequest) -> InProcessResponse:
        """The answer of an :attr:`in_process` adapter, read by the engine like an upstream's."""
        raise NotImplementedError


class _Content(Protocol):
    async def readany(self) -> bytes: ...


class InProcessResponse(Protocol):
    """What the engine reads of an upstream response, for adapters that answer in-process."""

    @property
    def status(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    @property
    def content(self) -> _Content: ...

    async def read(self) -> bytes: ...

    def close(self) -> None: ...

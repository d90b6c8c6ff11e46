"""Shared machinery for the fake upstream providers.

Every fake is a real aiohttp server on 127.0.0.1 so the gateway exercises its
real HTTP client, connection pool, timeouts and SSE parsing against it.  The
provider modules only describe routes and wire shapes; everything that is the
same for all providers (lifecycle, request recording, auth key set, fault
switches, stream pacing and counters) lives here.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Self

import orjson
from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _BadJson:
    """Marker stored as the parsed body when the request body is not JSON."""

    def __repr__(self) -> str:
        return "<invalid JSON>"


BAD_JSON: Any = _BadJson()
JSON_BODY = web.RequestKey("fake_json_body", object)  # the body parsed once by the middleware


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the fake saw it, for assertions in tests."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-cased names; last value wins
    body: Any  # parsed JSON, None when empty, BAD_JSON when unparsable
    raw: bytes


@dataclass(frozen=True)
class Failure:
    """One queued failure from `Faults.fail_next`."""

    status: int
    retry_after: float | None
    message: str | None
    body: Any  # replaces the provider's error body when not None (dict -> JSON, bytes/str raw)
    headers: Mapping[str, str] | None = None  # added to the error response


class Rejected(Exception):
    """Raised by handlers to return a provider error response from anywhere."""

    def __init__(self, response: web.Response) -> None:
        super().__init__(response.status)
        self.response = response


class StreamAborted(Exception):
    """Raised by `SseWriter.send` when a fault ended the stream early."""


class Faults:
    """Switches a test flips at any time (from any thread) to make the fake misbehave.

    `fail_next` is consumed request by request; the other switches stay on until
    `clear()` so a test does not race the gateway's retries.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._failures: list[Failure] = []
        self._drops = 0
        self.first_byte_delay = 0.0
        self.event_delay = 0.0
        self.die_after: int | None = None
        self.error_after: int | None = None
        self.error_message: str | None = None  # the in-stream error's message, instead of the provider's
        self.garbage: tuple[int, bytes] | None = None
        self.burst: tuple[int, ...] | None = None
        self.hanging = False

    def fail_next(
        self,
        n: int = 1,
        status: int = 500,
        retry_after: float | None = None,
        *,
        message: str | None = None,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """The next `n` requests get `status` in the provider's own error shape."""
        failure = Failure(status=status, retry_after=retry_after, message=message, body=body, headers=headers)
        with self._lock:
            self._failures.extend([failure] * n)

    def drop_next(self, n: int = 1) -> None:
        """The next `n` requests get no response at all: the TCP connection is aborted."""
        with self._lock:
            self._drops += n

    def slow_first_byte(self, seconds: float) -> None:
        """Delay every response (headers included) by `seconds`."""
        self.first_byte_delay = seconds

    def slow_stream(self, seconds_per_event: float) -> None:
        """Sleep before each streamed event, so a stream stays open long enough to interrupt."""
        self.event_delay = seconds_per_event

    def die_mid_stream(self, after_chunks: int = 1) -> None:
        """Streams send `after_chunks` events, then the TCP connection is aborted (no terminator)."""
        self.die_after = after_chunks

    def error_mid_stream(self, after_chunks: int = 1, message: str | None = None) -> None:
        """Streams send `after_chunks` events, then the provider's in-stream error event, then end."""
        self.error_after = after_chunks
        self.error_message = message

    def garbage_mid_stream(self, after_chunks: int = 0, raw: bytes = b"data: {not json}\n\n") -> None:
        """Streams send `after_chunks` events, then the bytes `raw` (not a valid event), then carry on."""
        self.garbage = (after_chunks, raw)

    def one_write(self, cuts: Iterable[int] = ()) -> None:
        """Streams go out in one write, events and their end or in-stream error together (as one
        TCP segment would carry them); ``cuts`` splits that write at these byte offsets instead."""
        self.burst = tuple(sorted(set(cuts)))

    def hang(self) -> None:
        """Never answer (until `clear()` or shutdown), for timeout tests."""
        self.hanging = True

    def clear(self) -> None:
        with self._lock:
            self._failures.clear()
            self._drops = 0
        self.first_byte_delay = 0.0
        self.event_delay = 0.0
        self.die_after = None
        self.error_after = None
        self.error_message = None
        self.garbage = None
        self.burst = None
        self.hanging = False

    @property
    def pending_failures(self) -> int:
        with self._lock:
            return len(self._failures)

    def take_drop(self) -> bool:
        with self._lock:
            if self._drops:
                self._drops -= 1
                return True
            return False

    def take_failure(self) -> Failure | None:
        with self._lock:
            return self._failures.pop(0) if self._failures else None


def closed_port() -> int:
    """A loopback port with nothing listening: connecting gets 'connection refused'."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        # Bound but never listening; once closed the kernel refuses connections to it.
        return int(s.getsockname()[1])


async def wait_until(predicate: Callable[[], bool], within: float = 5.0, interval: float = 0.01) -> None:
    """Poll `predicate` until true or raise TimeoutError at the deadline (no fixed sleeps in tests)."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {within:.1f}s")
        await asyncio.sleep(interval)


def wait_until_sync(predicate: Callable[[], bool], within: float = 5.0, interval: float = 0.01) -> None:
    """Thread-blocking twin of `wait_until` for sync tests."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {within:.1f}s")
        time.sleep(interval)


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj)


def json_response(obj: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(body=dumps(obj), status=status, content_type="application/json", headers=headers)


def retry_after_value(seconds: float) -> str:
    return str(int(seconds)) if float(seconds).is_integer() else str(seconds)


class SseWriter:
    """Writes one SSE stream, applying the stream faults and keeping the counters honest."""

    def __init__(
        self,
        upstream: FakeUpstream,
        request: web.Request,
        response: web.StreamResponse,
        error_frame: Callable[[int], bytes],
    ) -> None:
        self.upstream = upstream
        self.error_frame = error_frame
        self.request = request
        self.response = response
        self.sent = 0
        self.pending: list[bytes] = []  # held back for one write (Faults.one_write)

    async def flush(self) -> None:
        data, self.pending = b"".join(self.pending), []
        start = 0
        for cut in [c for c in self.upstream.faults.burst or () if 0 < c < len(data)] + [len(data)]:
            if data[start:cut]:
                await self.response.write(data[start:cut])
            start = cut

    async def send(self, frame: bytes) -> None:
        """Send one already-framed SSE event (the provider decides framing)."""
        faults = self.upstream.faults
        if faults.die_after is not None and self.sent >= faults.die_after:
            # Abort rather than close: the client must see a truncated chunked body,
            # exactly what a provider crash or a dropped connection looks like.
            if self.request.transport is not None:
                self.request.transport.abort()
            self.upstream.streams_died += 1
            raise StreamAborted
        if faults.error_after is not None and self.sent >= faults.error_after:
            self.pending.append(self.error_frame(self.sent))
            await self.flush()
            raise StreamAborted
        if faults.burst is not None:
            self.pending.append(frame)
            self.sent += 1
            return
        if faults.event_delay:
            await asyncio.sleep(faults.event_delay)
        if faults.garbage is not None and self.sent == faults.garbage[0]:
            await self.response.write(faults.garbage[1])
        await self.response.write(frame)
        self.sent += 1


class FakeUpstream:
    """Base of every fake provider: an aiohttp app on a free loopback port.

    Use `async with FakeX(keys=[...]) as up:` inside a test's event loop, or
    `up.start_in_thread()` / `up.stop()` (also `with FakeX() as up:`) to serve
    from a background thread with its own loop, for sync clients and subprocesses.
    """

    provider: ClassVar[str] = "fake"
    stream_content_type: ClassVar[str] = "text/event-stream"
    # Where it listens; a test node's fakes listen on the node's address, which pods reach.
    host: str = "127.0.0.1"

    def __init__(self, keys: Iterable[str] = ("test-key",), *, models: Iterable[str] | None = None) -> None:
        self.keys: set[str] = set(keys)
        # None means "serve any model name"; a list makes unknown models a provider 404.
        self.models: list[str] | None = list(models) if models is not None else None
        self.requests: list[RecordedRequest] = []
        self.faults = Faults()
        self.active_streams = 0
        self.streams_started = 0
        self.streams_completed = 0
        self.streams_died = 0
        self.cancelled = 0  # handlers that saw their client go away mid-request
        # Agent mode (tests/clis): tools are called only when a ``tool-call:`` line asks
        # (see behaviour.respond), since coding agents offer tools on every turn.
        self.agent = False
        self.malformed = 0  # requests whose body the fake could not read (answered 400)
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._stopping: asyncio.Event | None = None
        self._closing = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    # ---- provider hooks -------------------------------------------------
    def add_routes(self, app: web.Application) -> None:
        raise NotImplementedError

    def error_response(
        self, status: int, message: str | None = None, *, retry_after: float | None = None
    ) -> web.Response:
        """The provider's error body for `status` (used by faults and auth failures)."""
        raise NotImplementedError

    def not_found_response(self, request: web.Request) -> web.Response:
        return self.error_response(404, f"Invalid URL ({request.method} {request.path})")

    def stream_error_frame(self, sent: int) -> bytes:
        """The provider's in-stream error event after `sent` events (used by `error_mid_stream`)."""
        raise NotImplementedError

    # ---- conveniences for tests ------------------------------------------
    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def last_request(self) -> RecordedRequest:
        return self.requests[-1]

    def reset(self) -> None:
        """Forget recorded requests, zero the counters and clear every fault."""
        self.requests.clear()
        self.faults.clear()
        self.streams_started = self.streams_completed = self.streams_died = self.cancelled = 0

    def requests_to(self, path_suffix: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path.endswith(path_suffix)]

    # ---- lifecycle ----------------------------------------------------------
    async def start(self) -> Self:
        app = web.Application(middlewares=[self._middleware], client_max_size=64 * 1024 * 1024)
        self.add_routes(app)
        self._stopping = asyncio.Event()
        self._closing = False
        # handler_cancellation: a client that disconnects cancels its handler, like a real
        # server noticing the reset; that is what `cancelled` counts.
        self._runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.5, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        return self

    async def close(self) -> None:
        self._closing = True
        if self._stopping is not None:
            self._stopping.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def start_in_thread(self) -> Self:
        """Serve from a daemon thread with its own event loop; returns once listening."""
        ready = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self.start())
            except BaseException as e:  # surface bind errors to the caller
                errors.append(e)
                ready.set()
                loop.close()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self.close())
            loop.close()

        self._thread = threading.Thread(target=run, name=f"fake-{self.provider}", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise TimeoutError("fake upstream did not start")
        if errors:
            raise errors[0]
        return self

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop = None
        self._thread = None

    def __enter__(self) -> Self:
        return self.start_in_thread()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- request pipeline ---------------------------------------------------
    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        raw = await request.read()
        body: Any = None
        if raw:
            try:
                body = orjson.loads(raw)
            except orjson.JSONDecodeError:
                body = BAD_JSON
        request[JSON_BODY] = body
        self.requests.append(
            RecordedRequest(
                method=request.method,
                path=request.path,
                query=dict(request.query),
                headers={k.lower(): v for k, v in request.headers.items()},
                body=body,
                raw=raw,
            )
        )
        try:
            if self.faults.hanging:
                await self._hang(request)
            if self.faults.first_byte_delay:
                await asyncio.sleep(self.faults.first_byte_delay)
            if self.faults.take_drop():
                if request.transport is not None:
                    request.transport.abort()
                return web.Response(status=599)  # never reaches the client: the socket is gone
            failure = self.faults.take_failure()
            if failure is not None:
                return self._failure_response(failure)
            try:
                return await handler(request)
            except Rejected as r:
                return r.response
            except (web.HTTPNotFound, web.HTTPMethodNotAllowed):
                return self.not_found_response(request)
            except (TypeError, AttributeError, KeyError, IndexError, ValueError) as e:
                # A body of a shape the fake's reader did not expect: the real API validates
                # everything and answers a malformed request with a 400, never a 500.
                self.malformed += 1
                return self.error_response(400, f"Invalid request body ({type(e).__name__}: {e})")
        except asyncio.CancelledError:
            if not self._closing:
                self.cancelled += 1
            raise

    async def _hang(self, request: web.Request) -> None:
        assert self._stopping is not None
        while self.faults.hanging and not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), 0.05)
        if self._stopping.is_set() and request.transport is not None:
            request.transport.abort()

    def _failure_response(self, failure: Failure) -> web.Response:
        if failure.body is None:
            resp = self.error_response(failure.status, failure.message, retry_after=failure.retry_after)
        elif isinstance(failure.body, bytes | str):
            resp = web.Response(body=failure.body, status=failure.status)
        else:
            resp = json_response(failure.body, status=failure.status)
        if failure.retry_after is not None:
            resp.headers["retry-after"] = retry_after_value(failure.retry_after)
        resp.headers.update(failure.headers or {})
        return resp

    def body_of(self, request: web.Request) -> Any:
        return request[JSON_BODY]

    # ---- streaming ------------------------------------------------------------
    async def stream(
        self,
        request: web.Request,
        frames: Iterable[bytes],
        headers: Mapping[str, str] | None = None,
        error_frame: Callable[[int], bytes] | None = None,
    ) -> web.StreamResponse:
        """Send pre-framed SSE events, honouring the stream faults and counters."""
        resp = web.StreamResponse(status=200, headers=headers)
        resp.content_type = self.stream_content_type
        resp.headers["cache-control"] = "no-cache"
        await resp.prepare(request)
        writer = SseWriter(self, request, resp, error_frame or self.stream_error_frame)
        self.active_streams += 1
        self.streams_started += 1
        try:
            for frame in frames:
                await writer.send(frame)
            await writer.flush()
            self.streams_completed += 1
        except StreamAborted:
            pass
        except ConnectionResetError:
            # The client went away between events: same meaning as a cancellation.
            if not self._closing:
                self.cancelled += 1
        finally:
            self.active_streams -= 1
        return resp


_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def rand_id(prefix: str, length: int = 24) -> str:
    """Provider-style opaque id (e.g. chatcmpl-..., msg_01..., toolu_01...)."""
    return prefix + "".join(secrets.choice(_ALPHABET) for _ in range(length))

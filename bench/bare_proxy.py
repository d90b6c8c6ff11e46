"""The floor: a bare pass-through proxy on the gateway's own stack (aiohttp + uvloop).

It reads the request, forwards the body to the upstream over one shared ClientSession,
and returns the body or streams the chunks back. No routing, validation, metrics or
logging: what any aiohttp proxy pays, and so the least the gateway can cost.

Run: ``python -m bench.bare_proxy --port 9101 --upstream http://127.0.0.1:9100``.
"""

from __future__ import annotations

import argparse

import aiohttp
from aiohttp import web

UPSTREAM = web.AppKey("upstream", str)
SESSION = web.AppKey("session", aiohttp.ClientSession)


async def proxy(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    headers = {"content-type": "application/json", "authorization": "Bearer sk-bench"}
    async with request.app[SESSION].post(request.app[UPSTREAM] + request.path, data=body, headers=headers) as up:
        if not up.content_type.startswith("text/event-stream"):
            return web.Response(body=await up.read(), status=up.status, content_type=up.content_type)
        resp = web.StreamResponse(status=up.status, headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        async for chunk in up.content.iter_any():
            await resp.write(chunk)
        await resp.write_eof()
        return resp


def make_app(upstream: str) -> web.Application:
    app = web.Application()
    app[UPSTREAM] = upstream.rstrip("/")

    async def session_ctx(app: web.Application):  # type: ignore[no-untyped-def]
        app[SESSION] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), auto_decompress=False)
        yield
        await app[SESSION].close()

    app.cleanup_ctx.append(session_ctx)
    app.router.add_post("/{tail:.*}", proxy)
    return app


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9101)
    p.add_argument("--upstream", default="http://127.0.0.1:9100")
    args = p.parse_args(argv)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    web.run_app(make_app(args.upstream), host=args.host, port=args.port, access_log=None, print=None,
                backlog=4096, handler_cancellation=True)


if __name__ == "__main__":
    main()

"""``modelroute serve | sidecar | operator``."""

from __future__ import annotations

import argparse
import asyncio
import gc
import ipaddress
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from .aiohttp_client_deferred import defer_client
from .config import (
    DEFAULT_BODY_TIMEOUT,
    DEFAULT_CONFIG_DIR,
    DEFAULT_HEADER_TIMEOUT,
    DEFAULT_METRICS_PORT,
    DEFAULT_PORT,
)

if TYPE_CHECKING:
    from .budget.holder import Budgets

log = logging.getLogger("modelroute")


def _port(text: str) -> int:
    # Checked here: uvloop wraps an out-of-range port (99999 listens on 34463) without a word.
    port = int(text) if text.strip().lstrip("-").isdigit() else -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a TCP port (0-65535)")
    return port


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:  # 0 would poll the config in a busy loop
        raise argparse.ArgumentTypeError(f"{text} is not a positive number of seconds")
    return value


# Modules of the `operator` extra; without them `modelroute operator` says what to install.
OPERATOR_EXTRA = frozenset({"kopf", "kubernetes", "cryptography", "prometheus_client"})


def loopback(host: str) -> bool:
    """Whether ``host`` names only this machine: ``localhost`` or a loopback address."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name other than localhost, or "" (every interface)


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("modelroute")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


class _Version(argparse.Action):
    """``--version``, looked up only when asked (importlib.metadata is not free at start-up)."""

    def __call__(self, parser: argparse.ArgumentParser, *args: object, **kw: object) -> None:
        print(f"modelroute {version()}")
        parser.exit()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="modelroute", description="Kubernetes-native gateway to LLM providers.")
    p.add_argument("-V", "--version", action=_Version, nargs=0, help="print the version and exit")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--host", default="127.0.0.1",
                        help="API address (default 127.0.0.1: only the pod's own containers may call it)")
        sp.add_argument("--port", type=_port, default=DEFAULT_PORT, help=f"API port (default {DEFAULT_PORT})")
        sp.add_argument("--metrics-host", default="0.0.0.0", help="address of /metrics, /healthz, /readyz")
        sp.add_argument("--metrics-port", type=_port, default=DEFAULT_METRICS_PORT,
                        help=f"metrics port (default {DEFAULT_METRICS_PORT}; 0 to disable)")
        sp.add_argument("--reload-interval", type=_seconds, default=1.0, help="seconds between config checks")
        sp.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
        sp.add_argument("--log-format", default="json", choices=["json", "text"])
        sp.add_argument("--upstream-client", default=None, choices=["lean", "aiohttp"],
                        help="HTTP client for upstream calls: lean (modelroute's own HTTP/1.1 client, the "
                             "default) or aiohttp (its ClientSession, as before)")
        sp.add_argument("--header-timeout", type=_seconds, default=DEFAULT_HEADER_TIMEOUT,
                        help="seconds a connection may take to send a complete request head, counted from its "
                             "start or its last response (so also the idle keep-alive time); then it is closed "
                             f"(default {DEFAULT_HEADER_TIMEOUT:g})")
        sp.add_argument("--body-timeout", type=_seconds, default=DEFAULT_BODY_TIMEOUT,
                        help="seconds a request body may take to arrive in full; then the caller gets a 408 and "
                             "the connection is closed "
                             f"(default {DEFAULT_BODY_TIMEOUT:g})")

    serve = sub.add_parser("serve", help="run the gateway without a cluster, from ModelRoute/ProviderKey YAML")
    serve.add_argument("-f", "--filename", action="append", required=True, metavar="FILE_OR_DIR",
                       help="YAML with ModelRoute, ProviderKey and Secret documents (repeatable). Keys not in "
                            "a Secret document come from MODELROUTE_KEY_<PROVIDERKEY_NAME> or the provider's "
                            "usual variable (OPENAI_API_KEY, ANTHROPIC_API_KEY, GEMINI_API_KEY, ...)")
    serve.add_argument("--caller-keys", metavar="FILE",
                       help="a Secret document whose data (or stringData) keys are caller names and values "
                            "their keys, one per line; callers then send one as 'Authorization: Bearer' or "
                            "'x-api-key', and a caller's name is its ServiceAccount in allowedServiceAccounts")
    serve.add_argument("--state-dir", metavar="DIR",
                       help="where ModelBudget spend is kept across restarts (a journal, budgets.journal); "
                            "without it the spend starts from zero at each start")
    serve.add_argument("--allow-unauthenticated", action="store_true",
                       help="listen on a non-loopback --host without --caller-keys (anyone who reaches it "
                            "spends the provider keys)")
    common(serve)
    sidecar = sub.add_parser("sidecar", help="the in-pod gateway, reading the mounted ConfigMap and Secret")
    sidecar.add_argument("--config-dir", default=DEFAULT_CONFIG_DIR,
                         help=f"directory with config/ and keys/ (default {DEFAULT_CONFIG_DIR})")
    sidecar.add_argument("--service-account", default=os.environ.get("MODELROUTE_SERVICE_ACCOUNT") or None,
                         help="the pod's ServiceAccount: every caller of the 127.0.0.1 API is it "
                              "(default: $MODELROUTE_SERVICE_ACCOUNT, which the webhook sets)")
    common(sidecar)
    sub.add_parser("operator", help="the Kubernetes operator (kopf); see `modelroute operator --help`",
                   add_help=False)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["operator"]:
        return _operator(args_list[1:])
    args = _parser().parse_args(args_list)
    if args.command == "serve" and not (args.caller_keys or args.allow_unauthenticated or loopback(args.host)):
        print(f"modelroute: refusing to serve on {args.host!r} without --caller-keys: anyone who reaches it "
              "would spend the provider keys. Give --caller-keys FILE, bind a loopback address "
              "(--host 127.0.0.1), or say --allow-unauthenticated.", file=sys.stderr)
        return 2
    # Start-up allocates much and frees little: no collections until it is done (each would
    # scan every module's objects again); release_startup_memory collects once, just after
    # ready, and resumes.
    gc.disable()
    try:
        defer_client()  # before anything imports aiohttp: the gateway serves without its client
        return _serve(args)
    finally:
        gc.enable()


def _serve(args: argparse.Namespace) -> int:
    from . import logs

    logs.setup(args.log_level, json=args.log_format == "json")
    from .loader import ConfigDirSource, ConfigError, FileSource, Source

    source: Source = FileSource(args.filename, caller_keys=args.caller_keys) if args.command == "serve" \
        else ConfigDirSource(args.config_dir)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    try:
        return asyncio.run(run(source, args, strict=args.command == "serve"))
    except ConfigError as e:
        print(f"modelroute: invalid configuration:\n{e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"modelroute: {e}", file=sys.stderr)
        return 1


def _operator(argv: list[str]) -> int:
    try:
        from modelroute_operator.cli import main as operator_main  # kopf only where it is used

        return operator_main(argv)
    except ModuleNotFoundError as e:
        missing = (e.name or "").partition(".")[0]
        if missing not in OPERATOR_EXTRA:
            raise
        print(f"modelroute operator needs the operator extra (module {missing!r} is missing): "
              "pip install 'modelroute[operator]'", file=sys.stderr)
        return 1


# Seconds after the listeners open that start-up's garbage is collected: past the first
# readiness probes, so they are not kept waiting on it.
STARTUP_RELEASE_DELAY = 0.2


def release_startup_memory() -> None:
    """Collect once what start-up made after the first config was frozen with the modules
    (run() loads it in long_lived()), run the collector again (main paused it for start-up),
    and freeze what is left out of its scans.

    Caches that only start-up filled go first (~0.15 MiB of idle RSS): the source lines attrs
    registers in linecache for the classes it generates (aiohttp's; read only to print a
    traceback) and typing's caches of the generics imports subscripted (refilled on use). No
    malloc_trim: ctypes, loaded for it alone, costs more resident memory than the trim gives
    back (0.3 MiB more at idle, measured against the bench's floor)."""
    import linecache
    import typing

    linecache.clearcache()
    for clear in getattr(typing, "_cleanups", ()):  # private; what the stdlib's own tests call
        clear()
    gc.collect()
    gc.freeze()
    gc.enable()


def _callers_summary(callers: object) -> str:
    """For the start-up line: who the callers are; names only, never a key."""
    from .identity import Callers

    assert isinstance(callers, Callers)
    if callers.by_digest is not None:
        return f"caller keys of {', '.join(n for n in callers.names if n)}"
    return f"ServiceAccount {callers.fixed}" if callers.fixed else "anonymous (no caller keys)"


def _budgets(args: argparse.Namespace) -> Budgets:
    """Where budget leases come from: the operator's lease server in a pod that has one, else
    this process (serve: the journal under --state-dir)."""
    from .budget.holder import Budgets

    url = os.environ.get("MODELROUTE_BUDGET_URL")
    if args.command == "sidecar" and url:
        from .budget.client import RemoteGranter

        return Budgets(RemoteGranter.from_env(url, os.environ))
    from .budget.journal import LocalGranter

    if args.command == "sidecar":
        log.info("no MODELROUTE_BUDGET_URL: this pod's ModelBudgets are enforced by this process alone")
    return Budgets(LocalGranter(getattr(args, "state_dir", None)))


async def run(source: object, args: argparse.Namespace, strict: bool) -> int:
    from aiohttp import web

    from .app import DEFAULT_UPSTREAM_CLIENT, Gateway, admin_app, api_runner
    from .identity import Callers
    from .loader import ConfigError, FileSource, Source, long_lived, watch

    src: Source = source  # type: ignore[assignment]
    if isinstance(src, FileSource):
        file_source = src
        callers: Callable[[], Callers] = lambda: file_source.callers  # what its last load read  # noqa: E731
    else:
        pod = Callers(fixed=getattr(args, "service_account", None))
        callers = lambda: pod  # noqa: E731
    gateway = Gateway(upstream_client=getattr(args, "upstream_client", None) or DEFAULT_UPSTREAM_CLIENT,
                      header_timeout=args.header_timeout, body_timeout=args.body_timeout, callers=callers,
                      budgets=lambda: _budgets(args))
    last_sig = src.signature()
    try:
        # Frozen as a reload is: release_startup_memory's collection must not scan a big config
        # (0.6 s with the loop held at 40,000 routes). The price: what cyclic garbage imports left
        # (aiohttp's, mostly; ~0.4 MiB of Python objects, <0.1 MiB of idle RSS) is frozen with it;
        # collecting it first would add ~10 ms to every start.
        with long_lived():
            gateway.apply(*src.load())
        gateway.metrics.config_reloads.labels("success").inc()
    except ConfigError as e:
        if strict:
            raise
        # In a pod the volumes may be populated after start: serve "not ready" until they are.
        log.warning(f"no usable config yet, waiting for it: {e}")
        last_sig = None
    await gateway.start()
    runners: list[web.AppRunner] = []
    try:
        api = api_runner(gateway)
        await api.setup()
        await web.TCPSite(api, args.host, args.port, backlog=1024).start()
        runners.append(api)
        if args.metrics_port:
            admin = web.AppRunner(admin_app(gateway), access_log=None)
            await admin.setup()
            await web.TCPSite(admin, args.metrics_host, args.metrics_port).start()
            runners.append(admin)
        # Not on the way to ready: a full collection of start-up's objects takes tens of ms.
        asyncio.get_running_loop().call_later(STARTUP_RELEASE_DELAY, release_startup_memory)
        log.info("modelroute listening", extra={"fields": {
            "api": f"http://{args.host}:{args.port}/v1", "metrics": args.metrics_port or None,
            "ready": gateway.ready, "callers": _callers_summary(callers())}})
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        watcher = asyncio.create_task(watch(
            src, gateway.prepare, gateway.install, lambda r: gateway.metrics.config_reloads.labels(r).inc(),
            args.reload_interval, last_sig))
        await stop.wait()
        gateway.draining = True
        watcher.cancel()
    finally:
        for r in reversed(runners):
            await r.cleanup()  # waits for requests in flight
        await gateway.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""aiohttp's server half at start-up; its client only when something uses it.

``import aiohttp`` (or ``from aiohttp import web``) runs the package's ``__init__``, which imports
the whole client - session, connector, cookie jar, tracing, resolvers - and builds two TLS
contexts, reading the system CA store twice: 5.2 MiB of resident memory and about 45 ms of
start-up in every pod (VmRSS and ``-X importtime`` after asyncio, CPython 3.11, aiohttp 3.14).
The gateway serves with ``aiohttp.web`` and calls upstreams with its own client
(:mod:`.upstream`); aiohttp's client serves only ProviderKeys behind a proxy, the
``--upstream-client aiohttp`` option and a few rarely used endpoints.

:func:`defer_client` registers the ``aiohttp`` package without running its ``__init__``.
Submodules import as ever (``aiohttp.web`` and the modules it imports), and the first use
of a name only the ``__init__`` defines (``aiohttp.ClientSession``) runs it then, in the
same module object, so every importer sees the whole package from that moment on. Nothing
changes for code that uses aiohttp: it costs memory only when it does. The gateway's own
modules import what they use from the submodules that define it
(``aiohttp.client_exceptions``, ``aiohttp.helpers``), so serving needs no client.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
import threading
from types import ModuleType

_VERSION = re.compile(rb"""^__version__\s*=\s*["']([^"']+)["']""", re.M)


def defer_client() -> bool:
    """Register aiohttp with its ``__init__`` deferred; False (nothing done) when aiohttp is
    imported already or its package does not look as expected, which leaves the usual import."""
    if "aiohttp" in sys.modules:
        return False
    spec = importlib.util.find_spec("aiohttp")
    if spec is None or spec.loader is None or not spec.origin or not spec.submodule_search_locations:
        return False
    try:
        with open(spec.origin, "rb") as f:
            found = _VERSION.search(f.read())
        names = {entry.name.split(".", 1)[0] for d in spec.submodule_search_locations for entry in os.scandir(d)
                 if entry.name.endswith((".py", ".so")) or os.path.exists(os.path.join(entry.path, "__init__.py"))}
    except OSError:
        return False
    if found is None:
        return False
    package = importlib.util.module_from_spec(spec)
    package.__dict__["__version__"] = found.group(1).decode()  # aiohttp.http reads it (Server header)
    lock = threading.Lock()
    loader = spec.loader

    def __getattr__(name: str) -> object:
        if name in names:  # a submodule: import it alone, as `from . import hdrs` inside aiohttp does
            __import__(f"aiohttp.{name}")  # the import statement's way (-X importtime logs it)
            return sys.modules[f"aiohttp.{name}"]
        if name.startswith("__") and name != "__all__":  # e.g. inspect's probes; `import *` reads __all__
            raise AttributeError(f"module 'aiohttp' has no attribute {name!r}")
        with lock:
            if package.__dict__.get("__getattr__") is __getattr__:
                del package.__dict__["__getattr__"]  # the __init__ may define its own
                loader.exec_module(package)
        return _attribute(package, name)

    package.__getattr__ = __getattr__  # type: ignore[method-assign]
    sys.modules["aiohttp"] = package
    return True


def _attribute(module: ModuleType, name: str) -> object:
    try:
        return module.__dict__[name]
    except KeyError:
        pass
    hook = module.__dict__.get("__getattr__")  # aiohttp's own, for its lazily imported workers
    if hook is not None:
        return hook(name)
    raise AttributeError(f"module 'aiohttp' has no attribute {name!r}")


def client_loaded() -> bool:
    """Whether aiohttp's client was imported (by use, or by an importer before the gateway)."""
    return "aiohttp.client" in sys.modules

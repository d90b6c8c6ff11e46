"""Where config comes from, and noticing when it changes.

Two sources, one shape: each can ``load()`` a (config, keys) pair and report a cheap
``signature()`` that changes when the files do. :func:`watch` polls the signature and
applies a new config only when it loads cleanly, so a bad edit leaves the last good
config serving. Polling a few ``stat`` calls a second costs nothing measurable and,
unlike inotify, follows kubelet's ``..data`` symlink swaps without special cases.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar

from . import gcpause
from .config import (
    CONFIG_FILE,
    CONFIG_SUBDIR,
    KEYS_SUBDIR,
    ConfigInvalid,
    GatewayConfig,
    Keys,
    format_config_error,
    from_json,
    split_keys,
)
from .identity import CallerKeysError, Callers, load_caller_keys

if TYPE_CHECKING:
    from .compile import SourceDoc  # the compiler (and the CR models) load only in `serve`

log = logging.getLogger("modelroute.config")

YAML_SUFFIXES = (".yaml", ".yml", ".json")


class ConfigError(Exception):
    """The config could not be loaded; the message names the file, document and field."""


class Source(Protocol):
    # Whether signature() is a few syscalls, fit to run on the event loop. A thread for it
    # would keep an executor thread (and its malloc arena) alive in every idle pod.
    quick_signature: bool

    def load(self) -> tuple[GatewayConfig, Keys]: ...

    def signature(self) -> object: ...


def _files(paths: Sequence[str | Path]) -> list[Path]:
    """Every YAML file ``paths`` name. A source that is gone or unreadable is an error, never an
    empty config: a deleted file or directory must not take every route down with it."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found: list[Path] = []
            for root, dirs, files in os.walk(p, onerror=_raise):
                dirs[:] = [d for d in dirs if not d.startswith(".")]  # kubelet's ..data and friends
                for name in files:
                    if name.startswith(".") or not name.endswith(YAML_SUFFIXES):
                        continue
                    f = Path(root, name)
                    if not f.is_file():
                        raise ConfigError(f"{f}: not a readable file (a dangling symlink?)")
                    found.append(f)
            if not found:
                raise ConfigError(f"{p}: no YAML files ({', '.join(YAML_SUFFIXES)}) in this directory")
            out.extend(sorted(found))
        elif p.is_file():
            out.append(p)
        elif p.exists():
            raise ConfigError(f"{p}: not a regular file")
        else:
            raise ConfigError(f"{p}: no such file or directory")
    return out


def _raise(e: OSError) -> None:
    raise ConfigError(f"{e.filename}: unreadable ({e.strerror})")


def _yaml_loader() -> type:
    """libyaml's loader when PyYAML was built with it: about ten times the pure-Python speed."""
    import yaml

    return getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def read_documents(paths: Sequence[str | Path]) -> list[SourceDoc]:
    import yaml  # only `serve` reads YAML; the sidecar never pays for the import

    from .compile import SourceDoc

    loader = _yaml_loader()
    docs: list[SourceDoc] = []
    for f in _files(paths):
        try:
            text = f.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise ConfigError(f"{f}: not UTF-8 text") from None
        try:
            loaded = list(yaml.load_all(text, Loader=loader))
        except yaml.YAMLError as e:
            raise ConfigError(f"{f}: invalid YAML: {_yaml_problem(e)}") from None
        for i, body in enumerate(loaded):
            if body is None:
                continue
            if not isinstance(body, dict):
                raise ConfigError(f"{f}: document {i + 1} is not a mapping")
            kind = body.get("kind")
            items = body.get("items") if isinstance(kind, str) and kind.endswith("List") else None
            if items is not None and not isinstance(items, list):
                raise ConfigError(f"{f}: document {i + 1} ({kind}): items is not a list")
            for j, item in enumerate(items or [body]):
                if not isinstance(item, dict):
                    raise ConfigError(f"{f}: document {i + 1} item {j + 1} is not a mapping")
                meta = item.get("metadata") or {}
                name = meta.get("name", "?") if isinstance(meta, dict) else "?"
                where = f"{f}: document {i + 1}" + (f" item {j + 1}" if items else "")
                docs.append(SourceDoc(f"{where} ({item.get('kind', '?')} {name})", item))
    return docs


def _yaml_problem(e: Exception) -> str:
    """What is wrong and where, without PyYAML's quote of the offending line: in a Secret
    document that line is an API key, and this message goes to stderr and the log."""
    import yaml

    if not isinstance(e, yaml.MarkedYAMLError):
        return type(e).__name__
    mark = e.problem_mark or e.context_mark
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    text = "; ".join(p for p in (e.context, e.problem) if p)
    # Some problems quote a scalar ("found undefined alias 'sk-...'"); keep only token names.
    return re.sub(r"'(?!<)[^'\s]{3,}'", "'...'", text) + where


class FileSource:
    """`modelroute serve -f ...`: the YAML one would `kubectl apply`, keys from Secrets or env."""

    quick_signature = False  # walks the directories given: any size

    def __init__(self, paths: Sequence[str | Path], env: Mapping[str, str] | None = None,
                 base: GatewayConfig | None = None, caller_keys: str | Path | None = None) -> None:
        self.paths = list(paths)
        self.env = dict(os.environ) if env is None else dict(env)
        self.base = base
        self.caller_keys = Path(caller_keys) if caller_keys is not None else None
        # The callers of the last load (without caller keys: one anonymous caller).
        self.callers = Callers()

    def load(self) -> tuple[GatewayConfig, Keys]:
        from .compile import compile_resources

        callers = self.callers
        if self.caller_keys is not None:
            try:
                callers = load_caller_keys(self.caller_keys)
            except CallerKeysError as e:
                raise ConfigError(f"caller keys: {e}") from None
        docs = read_documents(self.paths)
        _warn_redefined(docs)
        result = compile_resources(docs, env=self.env, base=self.base)
        if result.errors:
            raise ConfigError("\n".join(result.errors))
        for status in result.statuses.values():
            if not status.ready:
                log.warning(f"{status.kind} {status.name} not ready: {status.reason}: {status.message}",
                            extra={"fields": {"kind": status.kind, "name": status.name, "reason": status.reason}})
        config = result.config
        if not config.routes and not any(pk.models for pk in config.provider_keys.values()):
            files = ", ".join(map(str, self.paths))
            what = "no ModelRoute and no ProviderKey" if not result.statuses else "no route and no usable ProviderKey"
            log.warning(f"{files} define {what}: every request will be a 404 (see examples/quickstart.yaml)")
        self.callers = callers  # only with a config that loaded: they are installed together
        return config, result.keys

    def signature(self) -> object:
        try:
            files = _files(self.paths)
        except ConfigError as e:
            return ("unusable", str(e))  # load() says what is wrong, once, as a failed reload
        if self.caller_keys is not None:
            files = [*files, self.caller_keys]
        sig: list[object] = []
        for f in files:
            try:
                st = f.stat()
            except OSError as e:
                sig.append((str(f), type(e).__name__))
                continue
            sig.append((str(f), st.st_mtime_ns, st.st_size))
        return tuple(sig)


def _warn_redefined(docs: Sequence[SourceDoc]) -> None:
    """Say so when two documents define the same object; the compiler keeps the last."""
    first: dict[tuple[str, str], str] = {}
    for d in docs:
        kind, meta = d.body.get("kind"), d.body.get("metadata")
        name = meta.get("name") if isinstance(meta, dict) else None
        if kind not in ("ModelRoute", "ProviderKey", "Secret") or not isinstance(name, str):
            continue
        if (kind, name) in first:
            log.warning(f"{d.origin} redefines {kind} {name} of {first[(kind, name)]}; the last definition is used")
        else:
            first[(kind, name)] = d.origin


class ConfigDirSource:
    """`modelroute sidecar --config-dir DIR`: the mounted ConfigMap and Secret.

    ``DIR/config/config.json`` and ``DIR/keys/<ProviderKey>`` in kubelet's atomic-writer
    layout, where an update is a rename of the ``..data`` symlink: the signature is the
    two symlink targets (or file mtimes, for a plain directory).
    """

    quick_signature = True  # two readlinks

    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)
        self.config_dir = self.dir / CONFIG_SUBDIR
        self.keys_dir = self.dir / KEYS_SUBDIR
        self.had_config = False  # once a config was read, its vanishing is an error, not "no routes"
        self.had_keys = False

    def load(self) -> tuple[GatewayConfig, Keys]:
        path = self.config_dir / CONFIG_FILE
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            if self.had_config:
                raise ConfigError(f"{path} vanished") from None
            # The operator writes modelroute-config once the namespace has a ModelRoute or
            # ProviderKey; until then the (optional) volume is empty. Serving no routes, and
            # being ready, keeps the pod's readiness from waiting on a platform team.
            log.warning(f"{path} not found: serving no routes until the ConfigMap modelroute-config exists")
            return GatewayConfig(), {}
        config = parse_config(raw, str(path))
        keys: Keys = {}
        if self.keys_dir.is_dir():
            for entry in sorted(os.listdir(self.keys_dir)):
                if entry.startswith("."):
                    continue  # ..data, ..2026_11_24_...: kubelet's bookkeeping
                f = self.keys_dir / entry
                if not f.is_file():
                    raise ConfigError(f"{f}: not a readable file (a dangling symlink?)")
                keys[entry] = split_keys(f.read_text())
        elif self.had_keys:
            raise ConfigError(f"{self.keys_dir} vanished")
        self.had_config = True
        self.had_keys = self.had_keys or bool(keys)
        return config, keys

    def signature(self) -> object:
        return (_dir_signature(self.config_dir), _dir_signature(self.keys_dir))


def parse_config(raw: bytes, origin: str) -> GatewayConfig:
    """The compiled config, parsed and validated; :class:`ConfigError` names the rule and where.

    A reload runs in a thread, and a C call holds the GIL from start to end: one over 20,000
    routes (12 MB) would stall the event loop for a tenth of a second. The text is parsed and
    validated one route at a time (:func:`.schema.read_json`), in Python between the C calls,
    which lets the event loop run in between.
    """
    try:
        return from_json(raw, GatewayConfig)
    except ConfigInvalid as e:
        raise ConfigError(format_config_error(origin, e)) from None


def _dir_signature(d: Path) -> object:
    try:
        return os.readlink(d / "..data")
    except FileNotFoundError:
        return None if not d.exists() else "missing-data"
    except OSError:
        # Not a kubelet volume: a plain directory someone edits by hand.
        try:
            return tuple(sorted((e.name, e.stat().st_mtime_ns, e.stat().st_size) for e in os.scandir(d)))
        except FileNotFoundError:
            return None


T = TypeVar("T")


@contextlib.contextmanager
def long_lived() -> Iterator[None]:
    """Build a config with the cyclic GC paused, then freeze what is alive.

    A big config is hundreds of thousands of objects that live until the next reload. The
    collector would scan them on every full collection, each a pause of the whole process
    (the GIL is held) of a third of a second at 10,000 routes; during the load itself such
    collections made up most of its time. Frozen objects are still freed by reference
    counting once the config is replaced (a config holds no cycles: 60 reloads leave the
    frozen count where it was); only cyclic garbage that happens to be alive at the moment of
    freezing (a request's, say) would outlive it, once per reload.
    """
    with gcpause.paused():
        try:
            yield
        finally:
            gc.freeze()


async def watch(source: Source, prepare: Callable[[GatewayConfig, Keys], T], install: Callable[[T], None],
                on_result: Callable[[str], None], interval: float = 1.0, last: object = None) -> None:
    """Poll ``source`` and apply changes until cancelled. A failed load keeps the old config.

    A change is loaded once the files have held still for one interval: an editor saving in
    place (truncate, then write) or a slow `cat > file` must not get its empty or half-written
    file applied, which would drop routes until the next good edit. Reading, parsing and
    ``prepare`` (building what requests use) run in a thread, so a big config never stalls
    requests; ``install`` then swaps the result in on the event loop, in one step.
    """
    seen = last

    def load() -> tuple[T, int, int]:
        with long_lived():
            config, keys = source.load()
            return prepare(config, keys), len(config.routes), len(config.provider_keys)

    while True:
        await asyncio.sleep(interval)
        try:
            sig = source.signature() if source.quick_signature else await asyncio.to_thread(source.signature)
        except (ConfigError, OSError) as e:
            log.warning(f"config source unreadable: {e}")
            continue
        if sig == last or sig != seen:
            seen = sig
            continue
        try:
            prepared, routes, provider_keys = await asyncio.to_thread(load)
        except (ConfigError, OSError) as e:
            log.error(f"config reload failed, keeping the previous config: {e}")
            on_result("error")
            last = sig  # do not retry the same broken files every second
            continue
        except Exception as e:  # a bug must not end reloads for good; its text may quote a key
            log.error(f"config reload failed, keeping the previous config: {type(e).__name__}")
            on_result("error")
            last = sig
            continue
        install(prepared)
        last = sig
        on_result("success")
        log.info("config reloaded", extra={"fields": {"routes": routes, "provider_keys": provider_keys}})

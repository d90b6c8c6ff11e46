"""Where config comes from, and noticing when it changes.

Two sources, one shape: each can ``load()`` a (config, keys) pair and report a cheap
``signature()`` that changes when the files do. :func:`watch` polls the signature and
applies a new config only when it loads cleanly, so a bad edit leaves the last good
config serving. Polling a few ``stat`` calls a second costs nothing measurable and,
unlike inotify, follows kubelet's ``..data`` symlink swaps without special cases.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

from pydantic import ValidationError

from .compile import SourceDoc, compile_resources, format_validation_error, split_keys
from .config import CONFIG_FILE, CONFIG_SUBDIR, KEYS_SUBDIR, GatewayConfig, Keys

log = logging.getLogger("modelroute.config")

YAML_SUFFIXES = (".yaml", ".yml", ".json")


class ConfigError(Exception):
    """The config could not be loaded; the message names the file, document and field."""


class Source(Protocol):
    def load(self) -> tuple[GatewayConfig, Keys]: ...

    def signature(self) -> object: ...


def _files(paths: Sequence[str | Path]) -> list[Path]:
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(f for f in p.rglob("*") if f.suffix in YAML_SUFFIXES and f.is_file()
                              and not any(part.startswith(".") for part in f.relative_to(p).parts)))
        elif p.exists():
            out.append(p)
        else:
            raise ConfigError(f"{p}: no such file or directory")
    return out


def read_documents(paths: Sequence[str | Path]) -> list[SourceDoc]:
    import yaml  # only `serve` reads YAML; the sidecar never pays for the import

    docs: list[SourceDoc] = []
    for f in _files(paths):
        try:
            loaded = list(yaml.safe_load_all(f.read_text()))
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

    def __init__(self, paths: Sequence[str | Path], env: Mapping[str, str] | None = None,
                 base: GatewayConfig | None = None) -> None:
        self.paths = list(paths)
        self.env = dict(os.environ) if env is None else dict(env)
        self.base = base

    def load(self) -> tuple[GatewayConfig, Keys]:
        docs = read_documents(self.paths)
        _warn_redefined(docs)
        result = compile_resources(docs, env=self.env, base=self.base)
        if result.errors:
            raise ConfigError("\n".join(result.errors))
        for status in result.statuses.values():
            if not status.ready:
                log.warning(f"{status.kind} {status.name} not ready: {status.reason}: {status.message}",
                            extra={"fields": {"kind": status.kind, "name": status.name, "reason": status.reason}})
        return result.config, result.keys

    def signature(self) -> object:
        sig = []
        for f in _files(self.paths):
            try:
                st = f.stat()
            except FileNotFoundError:
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

    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)
        self.config_dir = self.dir / CONFIG_SUBDIR
        self.keys_dir = self.dir / KEYS_SUBDIR

    def load(self) -> tuple[GatewayConfig, Keys]:
        path = self.config_dir / CONFIG_FILE
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            # The operator writes modelroute-config once the namespace has a ModelRoute or
            # ProviderKey; until then the (optional) volume is empty. Serving no routes, and
            # being ready, keeps the pod's readiness from waiting on a platform team.
            log.warning(f"{path} not found: serving no routes until the ConfigMap modelroute-config exists")
            return GatewayConfig(), {}
        try:
            config = GatewayConfig.model_validate_json(raw)
        except ValidationError as e:
            raise ConfigError(format_validation_error(str(path), e)) from None
        keys: Keys = {}
        if self.keys_dir.is_dir():
            for entry in sorted(os.listdir(self.keys_dir)):
                if entry.startswith("."):
                    continue  # ..data, ..2026_11_24_...: kubelet's bookkeeping
                f = self.keys_dir / entry
                if f.is_file():
                    keys[entry] = split_keys(f.read_text())
        return config, keys

    def signature(self) -> object:
        return (_dir_signature(self.config_dir), _dir_signature(self.keys_dir))


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


async def watch(source: Source, apply: Callable[[GatewayConfig, Keys], None], on_result: Callable[[str], None],
                interval: float = 1.0, last: object = None) -> None:
    """Poll ``source`` and apply changes until cancelled. A failed load keeps the old config.

    A change is loaded once the files have held still for one interval: an editor saving in
    place (truncate, then write) or a slow `cat > file` must not get its empty or half-written
    file applied, which would drop routes until the next good edit.
    """
    seen = last
    while True:
        await asyncio.sleep(interval)
        try:
            sig = source.signature()
        except (ConfigError, OSError) as e:
            log.warning(f"config source unreadable: {e}")
            continue
        if sig == last or sig != seen:
            seen = sig
            continue
        try:
            config, keys = source.load()
        except (ConfigError, OSError) as e:
            log.error(f"config reload failed, keeping the previous config: {e}")
            on_result("error")
            last = sig  # do not retry the same broken files every second
            continue
        apply(config, keys)
        last = sig
        on_result("success")
        log.info("config reloaded", extra={"fields": {"routes": len(config.routes),
                                                       "provider_keys": len(config.provider_keys)}})

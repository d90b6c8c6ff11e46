"""From a compiled config to what requests use: routes, backends, keys, circuit state.

A :class:`Runtime` is built once per config load and never mutated by requests except
for health state (breakers, key cooldowns, latency), which lives in :class:`State`
and outlives reloads, so a reload neither forgets a failing backend nor resets key
rotation. A request takes the Runtime current at its start and keeps it to the end:
a reload never changes a request in flight.
"""

from __future__ import annotations

import fnmatch
import hashlib
import random
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson

from .config import CircuitBreaker as BreakerSettings
from .config import GatewayConfig, KeyCooldowns, Keys, RetryPolicy, RouteConfig, Timeouts
from .credentials import CredentialSources
from .identity import Callers
from .metrics import BackendMetrics, Metrics
from .pricing import find_price
from .providers import adapter_class
from .providers.base import ProviderAdapter
from .redact import Redactor

if TYPE_CHECKING:
    from .credentials import CredentialSource

# Routes built for names a glob matched, kept for reuse; the oldest go first. They hold no
# state of their own (breakers, latency and metrics are keyed by the glob), so evicting one
# loses nothing but the microseconds to rebuild it.
_PATTERN_CACHE_MAX = 1024

Clock = Callable[[], float]


# Plain classes with slots, not dataclasses: each @dataclass compiles its methods at import,
# a start-up cost paid in every pod for a few one-line __init__s.
class KeyState:
    __slots__ = ("cooldown_until",)

    def __init__(self, cooldown_until: float = 0.0) -> None:
        self.cooldown_until = cooldown_until


class BreakerState:
    """Closed (open_until 0) -> open (until open_until) -> half-open: one probe at a time.

    A probe holds the backend until ``probe_until``, so a probe whose caller vanished
    cannot keep the backend out of rotation for longer than one open period.
    """

    __slots__ = ("failures", "open_until", "probe_until")

    def __init__(self, failures: int = 0, open_until: float = 0.0, probe_until: float = 0.0) -> None:
        self.failures = failures
        self.open_until = open_until
        self.probe_until = probe_until


class LatencyState:
    __slots__ = ("ewma",)

    def __init__(self, ewma: float | None = None) -> None:
        self.ewma = ewma


class State:
    """Health that survives reloads, keyed by stable identities (never by key value)."""

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self.keys: dict[str, KeyState] = {}
        self.breakers: dict[str, BreakerState] = {}
        self.latency: dict[str, LatencyState] = {}
        self.rotation: dict[str, int] = {}
        self.clock = clock  # injectable, so tests step time instead of sleeping through it
        # "<ProviderKey>|<baseURL>" of upstreams found without a Responses API (bridged since).
        self.no_responses_api: set[str] = set()
        # Workload identity credentials, renewed in the background across reloads.
        self.credentials = CredentialSources()


class KeyEntry:
    __slots__ = ("headers", "label", "source", "state")

    def __init__(self, headers: dict[str, str], label: str, state: KeyState,
                 source: CredentialSource[Any] | None = None) -> None:
        self.headers = headers
        self.label = label  # "openai#2": safe to log, never the key
        self.state = state
        # Workload identity: the credential is asked for per attempt (it is renewed in the
        # background), and the adapter turns it into headers (credential_headers).
        self.source = source


class KeyRing:
    """A ProviderKey's keys, used in turn; a refused key rests while the others work."""

    __slots__ = ("_next", "clock", "cooldowns", "entries", "name")

    def __init__(self, name: str, entries: list[KeyEntry], cooldowns: KeyCooldowns, start: int,
                 clock: Clock = time.monotonic) -> None:
        self.name = name
        self.entries = entries
        self.cooldowns = cooldowns
        self._next = start
        self.clock = clock

    def pick(self) -> KeyEntry | None:
        entries = self.entries
        n = len(entries)
        if n == 0:
            return None
        now = self.clock()
        i = self._next
        self._next = i + 1
        for k in range(n):
            e = entries[(i + k) % n]
            if e.state.cooldown_until <= now:
                return e
        # Every key is resting: the one that comes back first beats failing outright.
        return min(entries, key=lambda e: e.state.cooldown_until)

    def pick_available(self) -> bool:
        """Whether some key is not resting now."""
        now = self.clock()
        return any(e.state.cooldown_until <= now for e in self.entries)

    def cool_down(self, entry: KeyEntry, seconds: float) -> None:
        entry.state.cooldown_until = self.clock() + seconds

    @property
    def position(self) -> int:
        return self._next


class Backend:
    """One backend of one route: adapter, model, keys, breaker, metrics.

    ``label`` is what metrics and health state are keyed by: ``id`` for a configured model, the
    ProviderKey's glob (``openai/gpt-*``) for a name only a glob matched, so that names a caller
    makes up cannot grow them.
    """

    __slots__ = ("adapter", "breaker", "clock", "id", "keyring", "label", "latency", "metrics", "model", "price",
                 "provider", "provider_key", "settings", "weight")

    def __init__(self, route: str, adapter: ProviderAdapter, keyring: KeyRing, model: str, weight: int,
                 state: State, metrics: Metrics, settings: BreakerSettings, cfg: GatewayConfig,
                 model_label: str | None = None) -> None:
        self.adapter = adapter
        self.provider_key = adapter.pk.name
        self.provider = adapter.kind
        self.model = model
        self.weight = weight
        self.id = f"{self.provider_key}/{model}"
        self.label = self.id if model_label is None else f"{self.provider_key}/{model_label}"
        self.keyring = keyring
        self.settings = settings
        self.clock = state.clock
        self.breaker = state.breakers.setdefault(f"{route}|{self.label}", BreakerState())
        self.latency = state.latency.setdefault(self.label, LatencyState())
        self.metrics = BackendMetrics(metrics, route, self.provider, model_label or model, self.label)
        self.metrics.up.set(0 if self.breaker.open_until > self.clock() else 1)
        self.price = find_price(model, cfg.prices) if adapter.priced else None

    def available(self, now: float) -> bool:
        """Closed, or half-open with no probe in flight."""
        b = self.breaker
        return b.open_until <= now and b.probe_until <= now

    def start_attempt(self) -> None:
        b = self.breaker
        if b.open_until:  # open or half-open: this attempt is the probe; others keep away
            b.probe_until = self.clock() + self.settings.open_seconds

    def abandoned(self) -> None:
        """The attempt ended without a verdict (the caller left): admit the next probe."""
        self.breaker.probe_until = 0.0

    def first_byte(self, seconds: float) -> None:
        """The upstream answered: its time to first byte feeds the latency strategy."""
        lat = self.latency
        lat.ewma = seconds if lat.ewma is None else 0.8 * lat.ewma + 0.2 * seconds

    def succeeded(self) -> None:
        """The attempt ended well (a stream only once it has ended): the circuit closes."""
        b = self.breaker
        if b.failures or b.open_until:
            b.failures = 0
            b.open_until = 0.0
            b.probe_until = 0.0
            self.metrics.up.set(1)

    def failed(self) -> None:
        b = self.breaker
        b.failures += 1
        b.probe_until = 0.0
        if b.failures >= self.settings.failure_threshold or b.open_until:
            b.open_until = self.clock() + self.settings.open_seconds
            self.metrics.up.set(0)


class Route:
    __slots__ = ("allowed", "backends", "label", "max_price", "name", "order", "retries",
                 "source", "timeouts", "unavailable")

    def __init__(self, name: str, backends: list[Backend], strategy: str, retries: RetryPolicy,
                 timeouts: Timeouts, source: str, label: str | None = None,
                 unavailable: tuple[str, ...] = (), allowed: frozenset[str] | None = None) -> None:
        self.name = name
        self.allowed = allowed  # caller names that may use it; None: everyone
        self.label = name if label is None else label  # the `route` label of its metrics
        self.unavailable = unavailable  # why configured backends are missing, for the 503
        self.backends = backends
        self.retries = retries
        self.timeouts = timeouts
        self.source = source
        self.order: Callable[[], list[Backend]] = _STRATEGIES[strategy](backends)
        # USD per million (input, output) tokens at its most expensive backend: budgets reserve at it.
        prices = [b.price for b in backends if b.price is not None]
        self.max_price = (max((p.input for p in prices), default=0.0), max((p.output for p in prices), default=0.0))

    def permits(self, caller: str | None) -> bool:
        allowed = self.allowed
        return allowed is None or caller in allowed

    def who_decides(self) -> str:
        """For a 403: the object whose allowedServiceAccounts refused the caller."""
        if self.source.startswith("ModelRoute/"):
            return self.source
        return "ProviderKey " + ", ".join(b.provider_key for b in self.backends)

    def plan(self) -> list[Backend]:
        """Backends in the order to try: strategy order, open circuits last."""
        ordered = self.order()
        if len(ordered) < 2:
            return ordered
        now = ordered[0].clock()
        healthy = [b for b in ordered if b.available(now)]
        if len(healthy) == len(ordered):
            return ordered
        return healthy + [b for b in ordered if not b.available(now)]


def _failover(backends: list[Backend]) -> Callable[[], list[Backend]]:
    return lambda: backends


def _weighted(backends: list[Backend]) -> Callable[[], list[Backend]]:
    def order() -> list[Backend]:
        # Weighted shuffle (Efraimidis-Spirakis): first pick by weight, the rest as failover.
        rnd = random.random
        return sorted(backends, key=lambda b: rnd() ** (1.0 / b.weight) if b.weight > 0 else -1.0, reverse=True)
    return order


def _latency(backends: list[Backend]) -> Callable[[], list[Backend]]:
    def order() -> list[Backend]:
        # Unmeasured backends first so each gets measured; then fastest first. A small
        # chance of shuffling keeps measurements of slower backends fresh.
        if random.random() < 0.05:
            return random.sample(backends, len(backends))
        return sorted(backends, key=lambda b: -1.0 if b.latency.ewma is None else b.latency.ewma)
    return order


_STRATEGIES: dict[str, Callable[[list[Backend]], Callable[[], list[Backend]]]] = {
    "failover": _failover, "weighted": _weighted, "latency": _latency,
}


def _key_id(provider_key: str, key: str) -> str:
    return provider_key + ":" + hashlib.sha256(key.encode()).hexdigest()[:16]


class Runtime:
    """Everything a request needs, derived once from (config, keys)."""

    def __init__(self, config: GatewayConfig, keys: Keys, state: State, metrics: Metrics,
                 callers: Callers | None = None) -> None:
        self.config = config
        self.callers = callers or Callers()
        self.state = state
        self.metrics = metrics
        self.max_body_bytes = config.max_body_bytes
        self.adapters: dict[str, ProviderAdapter] = {}
        self.keyrings: dict[str, KeyRing] = {}
        self.secrets: list[str] = []  # every key value
        sources = state.credentials.sources(config.provider_keys.values())
        for name, pk in config.provider_keys.items():
            adapter = adapter_class(pk.provider)(pk)
            if f"{name}|{pk.base_url}" in self.state.no_responses_api:
                adapter.bridge_responses()
            self.adapters[name] = adapter
            entries = []
            for i, key in enumerate(keys.get(name, [])):
                kid = _key_id(name, key)
                entries.append(KeyEntry(adapter.auth_headers(key), f"{name}#{i + 1}",
                                        state.keys.setdefault(kid, KeyState()), adapter.key_source(key)))
                self.secrets.extend(adapter.secrets_of(key))
            if name in sources:
                entries = [KeyEntry({}, f"{name}#identity", state.keys.setdefault(f"{name}|identity", KeyState()),
                                    sources[name])]
            if not entries:
                entries.append(KeyEntry({}, f"{name}#none", KeyState()))
            self.keyrings[name] = KeyRing(name, entries, config.key_cooldowns, state.rotation.get(name, 0),
                                          state.clock)
        # Built here, once: upstream error text passes through it (with the workload identity
        # credentials of the moment: see the redactor property).
        self.key_redactor = Redactor(self.secrets)
        self._redactor = self.key_redactor
        self._redactor_version = -1
        # Forget health of keys that are gone, so the state cannot grow without bound.
        live = {_key_id(n, k) for n, ks in keys.items() for k in ks} | {f"{n}|identity" for n in sources}
        for kid in [k for k in state.keys if k not in live]:
            del state.keys[kid]
        self.routes: dict[str, Route] = {
            model: self._route(model, rc.backends_as_pairs(), rc) for model, rc in config.routes.items()
        }
        self._patterns = [(name, [(p, re.compile(fnmatch.translate(p))) for p in pk.models])
                          for name, pk in sorted(config.provider_keys.items()) if pk.models]
        self._pattern_routes: dict[str, Route | None] = {}
        self.model_names = sorted(set(self.routes) | self._literal_models())
        self._models_by_caller: dict[str | None, bytes] = {}
        self._names_by_caller: dict[str | None, list[str]] = {}
        self._unready = [(name, [re.compile(fnmatch.translate(p)) for p in u.models], u.message)
                         for name, u in sorted(config.unready_provider_keys.items()) if u.models]

    @property
    def redactor(self) -> Redactor:
        """The keys' redactor, with the workload identity credentials held now (error paths only)."""
        creds = self.state.credentials
        if self._redactor_version != creds.version:
            self._redactor = self.key_redactor | creds.redactor if creds.redactor else self.key_redactor
            self._redactor_version = creds.version
        return self._redactor

    def why_unrouted(self, model: str) -> str | None:
        """For a 404: the not-ready ProviderKeys whose globs match ``model``, and why (rare path)."""
        why = [f"ProviderKey {name} would serve it but is not ready ({message})"
               for name, pats, message in self._unready if any(rx.match(model) for rx in pats)]
        return "; ".join(why) or None

    def _route(self, model: str, pairs: list[tuple[str, str, int]], rc: RouteConfig) -> Route:
        cfg = self.config
        backends = [Backend(model, self.adapters[pk], self.keyrings[pk], m, w, self.state, self.metrics,
                            cfg.circuit_breaker, cfg) for pk, m, w in pairs]
        return Route(model, backends, rc.strategy, rc.retries, rc.timeouts, rc.source,
                     unavailable=rc.unavailable, allowed=frozenset(rc.allowed_service_accounts) or None)

    def _glob_route(self, model: str, matched: list[tuple[str, str]]) -> Route:
        """A name no ModelRoute names: the ProviderKeys whose globs match it, in name order,
        labelled (and kept healthy or not) by the first glob that matched it."""
        cfg = self.config
        label = matched[0][1]
        backends = [Backend(label, self.adapters[pk], self.keyrings[pk], model, 1, self.state, self.metrics,
                            cfg.circuit_breaker, cfg, pattern) for pk, pattern in matched]
        # A caller may use a glob-routed name only if every ProviderKey in its chain allows it:
        # failover must not carry a request to a key the caller may not spend.
        allowed: frozenset[str] | None = None
        for pk, _ in matched:
            names = cfg.provider_keys[pk].allowed_service_accounts
            if names:
                allowed = frozenset(names) if allowed is None else allowed & frozenset(names)
        return Route(model, backends, "failover", cfg.default_retries, cfg.default_timeouts, "ProviderKey pattern",
                     label, allowed=allowed)

    def resolve(self, model: str) -> Route | None:
        route = self.routes.get(model)
        if route is not None:
            return route
        cache = self._pattern_routes
        if model in cache:
            return cache[model]
        matched = []
        for name, pats in self._patterns:
            pattern = next((p for p, rx in pats if rx.match(model)), None)
            if pattern is not None:
                matched.append((name, pattern))
        found = self._glob_route(model, matched) if matched else None
        if len(cache) >= _PATTERN_CACHE_MAX:
            del cache[next(iter(cache))]  # the oldest: bounded, whatever names callers send
        cache[model] = found
        return found

    def models_for(self, caller: str | None) -> list[str]:
        """The names ``caller`` may use (cached by the caller: callers are the few names of the
        caller keys, or the pod's one ServiceAccount)."""
        found = self._names_by_caller.get(caller)
        if found is None:
            found = self._names_by_caller[caller] = [
                m for m in self.model_names if (r := self.resolve(m)) is None or r.permits(caller)]
        return found

    def models_body(self, caller: str | None) -> bytes:
        """``/v1/models`` for ``caller``: the names it may use, rendered once per caller."""
        found = self._models_by_caller.get(caller)
        if found is None:
            names = self.models_for(caller)
            found = orjson.dumps({"object": "list", "data": [
                {"id": name, "object": "model", "created": 0, "owned_by": "modelroute"} for name in names]})
            self._models_by_caller[caller] = found
        return found

    def _literal_models(self) -> set[str]:
        """Pattern entries without wildcards are routable names too; globs are not listable."""
        out: set[str] = set()
        for pk in self.config.provider_keys.values():
            out.update(p for p in pk.models if not any(c in p for c in "*?["))
        return out

    def continue_rotation(self, old: Runtime) -> None:
        """Key rotation goes on where the Runtime this one replaces left it."""
        for name, ring in self.keyrings.items():
            prev = old.keyrings.get(name)
            if prev is not None:
                ring._next = prev.position

    def retire(self) -> None:
        """Hand key rotation positions to the next Runtime."""
        for name, ring in self.keyrings.items():
            self.state.rotation[name] = ring.position


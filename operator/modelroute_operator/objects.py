"""Pure builders: from a namespace's objects and their CompileResult to what the
operator writes (the ConfigMap, the Secret, status patches and Events).

Nothing here talks to the API server, so every decision (what to write, whether
anything changed, which Event a user sees) is a plain function with plain tests.

Ownership: the ConfigMap ``modelroute-config`` and the Secret ``modelroute-keys`` carry
an ownerReference to every ModelRoute and ProviderKey of their namespace (none of them
``controller``). The operator deletes both when the last source goes; should it be
down then, the garbage collector does, once every owner is gone.
"""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from modelroute_sidecar.compile import CompileResult, Kind, ObjectStatus, SourceDoc
from modelroute_sidecar.config import CONFIG_FILE, CONFIGMAP_NAME, KEYS_SECRET_NAME
from modelroute_sidecar.resources import API_VERSION

from . import names

Body = Mapping[str, Any]
KINDS: tuple[Kind, ...] = ("ProviderKey", "ModelRoute", "ModelBudget")


def origin(body: Body) -> str:
    """How a document is named in compile errors: ``<Kind> <namespace>/<name>``."""
    meta = body.get("metadata") or {}
    return f"{body.get('kind')} {meta.get('namespace')}/{meta.get('name')}"


def source_docs(sources: Iterable[Body], secrets: Iterable[Body]) -> list[SourceDoc]:
    docs = [SourceDoc(origin(b), b) for b in sources]
    # Objects read from the API server carry no `kind` in list items' Secrets; add it.
    docs += [SourceDoc(f"Secret {(s.get('metadata') or {}).get('name')}", {**s, "kind": "Secret"}) for s in secrets]
    return docs


def referenced_secret_names(provider_keys: Iterable[Body]) -> set[str]:
    """Secret names the ProviderKeys point at, read leniently (before validation)."""
    out: set[str] = set()
    for pk in provider_keys:
        ref = (pk.get("spec") or {}).get("secretRef")
        if isinstance(ref, Mapping) and isinstance(ref.get("name"), str) and ref["name"]:
            out.add(ref["name"])
    return out


def all_statuses(result: CompileResult, sources: Iterable[Body]) -> dict[tuple[Kind, str], ObjectStatus]:
    """One status per source object: the compiler's, or ``Invalid`` for a document the
    compiler could not read at all (its error message names the fields)."""
    statuses = dict(result.statuses)
    for body in sources:
        kind, name = body.get("kind"), (body.get("metadata") or {}).get("name")
        if kind not in KINDS or not isinstance(name, str) or (kind, name) in statuses:
            continue
        prefix = origin(body) + ": "
        message = next((e[len(prefix):] for e in result.errors if e.startswith(prefix)), "invalid document")
        generation = (body.get("metadata") or {}).get("generation")
        statuses[(kind, name)] = ObjectStatus(kind, name, False, "Invalid", message, generation)
    return statuses


def failed_statuses(statuses: Mapping[tuple[Kind, str], ObjectStatus], reason: str,
                    message: str) -> dict[tuple[Kind, str], ObjectStatus]:
    """Every object not ready, for a reason of the namespace's (its config could not be written);
    the compiler's summary (keys, backends) stays."""
    return {k: dataclasses.replace(s, ready=False, reason=reason, message=message) for k, s in statuses.items()}


def redact(text: str, keys: Mapping[str, Sequence[str]], limit: int = 512) -> str:
    """``text`` (e.g. an API server's or an admission webhook's refusal) without any of ``keys``,
    as written or base64-encoded as in the Secret, and at most ``limit`` characters."""
    secrets = {k for values in keys.values() for k in values if k}
    secrets |= {v for v in keys_data_values(keys) if v}
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "[redacted]")
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- the ConfigMap and the Secret -----------------------------------------------------------


def owner_references(sources: Iterable[Body]) -> list[dict[str, Any]]:
    refs = []
    for body in sources:
        meta = body.get("metadata") or {}
        if meta.get("uid") and meta.get("name") and body.get("kind") in KINDS:
            refs.append({"apiVersion": API_VERSION, "kind": body["kind"], "name": meta["name"], "uid": meta["uid"]})
    return sorted(refs, key=lambda r: (r["kind"], r["name"], r["uid"]))


def _labels() -> dict[str, str]:
    return {names.MANAGED_BY_LABEL: names.MANAGED_BY_VALUE, names.PART_OF_LABEL: names.PART_OF_VALUE}


def desired_configmap(namespace: str, result: CompileResult, owners: Sequence[Mapping[str, Any]],
                      extra: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``extra``: more files for the sidecar (e.g. the lease server's CA, ``budget-ca.crt``)."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": CONFIGMAP_NAME, "namespace": namespace, "labels": _labels(),
                     "ownerReferences": [dict(o) for o in owners]},
        "data": {CONFIG_FILE: result.config.dump_json(), **(extra or {})},
    }


def keys_data(result: CompileResult) -> dict[str, str]:
    """Secret data: one entry per ProviderKey in the config, its keys one per line (base64)."""
    return dict(zip(sorted(result.keys), keys_data_values(result.keys), strict=True))


def keys_data_values(keys: Mapping[str, Sequence[str]]) -> list[str]:
    """The Secret's data values, in the order of the sorted ProviderKey names."""
    return [base64.b64encode("\n".join(keys[name]).encode("utf-8")).decode("ascii") for name in sorted(keys)]


def desired_keys_secret(namespace: str, result: CompileResult, owners: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {"name": KEYS_SECRET_NAME, "namespace": namespace, "labels": _labels(),
                     "ownerReferences": [dict(o) for o in owners]},
        "data": keys_data(result),
    }


def merged_for_update(existing: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, Any] | None:
    """``existing`` with our data, labels and ownerReferences, or None when it already has them.

    Labels and annotations that others put on the object are kept.
    """
    meta = dict(existing.get("metadata") or {})
    labels = {**(meta.get("labels") or {}), **desired["metadata"]["labels"]}
    same = (
        (existing.get("data") or {}) == desired["data"]
        and (meta.get("labels") or {}) == labels
        and _owner_keys(meta.get("ownerReferences") or []) == _owner_keys(desired["metadata"]["ownerReferences"])
        and existing.get("type", desired.get("type")) == desired.get("type")
    )
    if same:
        return None
    meta["labels"] = labels
    meta["ownerReferences"] = desired["metadata"]["ownerReferences"]
    out = {**existing, "metadata": meta, "data": desired["data"]}
    out.pop("stringData", None)
    if "type" in desired:
        out["type"] = desired["type"]
    return out


def _owner_keys(refs: Iterable[Mapping[str, Any]]) -> list[tuple[Any, ...]]:
    return sorted((r.get("apiVersion"), r.get("kind"), r.get("name"), r.get("uid"), bool(r.get("controller")))
                  for r in refs)


def is_ours(obj: Mapping[str, Any]) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return labels.get(names.MANAGED_BY_LABEL) == names.MANAGED_BY_VALUE


# --- status and events ----------------------------------------------------------------------


def ready_condition(status: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    for cond in (status or {}).get("conditions") or []:
        if isinstance(cond, Mapping) and cond.get("type") == names.READY:
            return cond
    return None


def status_body(status: ObjectStatus, old: Mapping[str, Any] | None, now: str) -> dict[str, Any]:
    """The full ``.status`` for an object; lastTransitionTime moves only on a transition."""
    state = "True" if status.ready else "False"
    prev = ready_condition(old)
    since = prev.get("lastTransitionTime") if prev and prev.get("status") == state else None
    cond: dict[str, Any] = {
        "type": names.READY,
        "status": state,
        "reason": status.reason,
        "message": status.message,
        "lastTransitionTime": since or now,
    }
    body: dict[str, Any] = {"conditions": [cond]}
    if status.generation is not None:
        cond["observedGeneration"] = status.generation
        body["observedGeneration"] = status.generation
    if status.kind == "ProviderKey":
        body["keys"] = int(status.summary.get("keys", 0))
    else:
        backends = status.summary.get("backends")
        if isinstance(backends, str) and "/" in backends:
            usable, total = backends.split("/", 1)
            body.update(backends=backends, usableBackends=int(usable), totalBackends=int(total))
    return body


_STATUS_FIELDS = ("observedGeneration", "keys", "backends", "usableBackends", "totalBackends", "conditions")


def status_patch(status: ObjectStatus, old: Mapping[str, Any] | None, now: str) -> dict[str, Any] | None:
    """A merge patch for the status subresource, or None when the status is already right.

    Fields of ours that no longer apply are removed (``None``)."""
    new = status_body(status, old, now)
    old = old or {}
    if all(old.get(k) == new.get(k) for k in _STATUS_FIELDS):
        return None
    patch: dict[str, Any] = {k: None for k in _STATUS_FIELDS if k in old and k not in new}
    patch.update(new)
    return {"status": patch}


@dataclass(frozen=True, slots=True)
class EventSpec:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


def event_for(status: ObjectStatus, old: Mapping[str, Any] | None) -> EventSpec | None:
    """The Event a user should see for this status, if it is news.

    Warning for every not-ready state when it first appears or changes (a missing Secret,
    an unknown ProviderKey, an empty key, a conflict...); Normal when an object that was
    not ready becomes ready. Nothing on a steady state, so restarts repeat nothing.
    """
    prev = ready_condition(old)
    before = (prev.get("status"), prev.get("reason"), prev.get("message")) if prev else None
    now = ("True" if status.ready else "False", status.reason, status.message)
    if before == now:
        return None
    if not status.ready:
        return EventSpec("Warning", status.reason, status.message)
    if before is not None and before[0] != "True":
        return EventSpec("Normal", status.reason, status.message)
    return None


def event_body(
    involved: Body, spec: EventSpec, now: str, *, instance: str = names.EVENT_SOURCE
) -> dict[str, Any]:
    meta = involved.get("metadata") or {}
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta.get('name')}.", "namespace": meta.get("namespace")},
        "involvedObject": {
            "apiVersion": involved.get("apiVersion", API_VERSION),
            "kind": involved.get("kind"),
            "name": meta.get("name"),
            "namespace": meta.get("namespace"),
            "uid": meta.get("uid"),
            "resourceVersion": meta.get("resourceVersion"),
        },
        "reason": spec.reason,
        "message": spec.message[:1024],
        "type": spec.type,
        "source": {"component": names.EVENT_SOURCE},
        "reportingComponent": names.EVENT_SOURCE,
        "reportingInstance": instance,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }

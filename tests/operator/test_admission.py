"""Registering the webhook configuration (admission.register) and the owner lookup, against a fake
API: what is written, and when nothing is."""

from __future__ import annotations

import copy
from typing import Any, cast

import pytest

from modelroute_operator.admission import OwnerError, clusterrole_owner, register
from modelroute_operator.kube import WEBHOOKS_PATH, ApiError, Kube
from modelroute_operator.settings import WebhookSettings
from modelroute_operator.webhook import webhook_configuration

OWNER = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "name": "mr-operator", "uid": "u-1"}


class FakeKube:
    """Objects by path; GET adds what an API server adds (resourceVersion, a default)."""

    def __init__(self, objects: dict[str, dict[str, Any]] | None = None, denied: bool = False) -> None:
        self.objects = objects or {}
        self.writes: list[tuple[str, str]] = []
        self.denied = denied

    async def get(self, path: str) -> dict[str, Any] | None:
        if self.denied:
            raise ApiError(403, "Forbidden", "clusterroles is forbidden", "GET", path)
        return copy.deepcopy(self.objects.get(path))

    async def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        self.writes.append(("create", path))
        stored = copy.deepcopy(body)
        stored["metadata"]["resourceVersion"] = "1"
        for hook in stored.get("webhooks", []):
            hook.setdefault("namespaceSelector", {})
        self.objects[f"{path}/{body['metadata']['name']}"] = stored
        return stored

    async def replace(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        self.writes.append(("replace", path))
        self.objects[path] = copy.deepcopy(body)
        return body


def api(fake: FakeKube) -> Kube:
    return cast(Kube, fake)


def config(owner: dict[str, Any] | None) -> dict[str, Any]:
    return webhook_configuration({"url": "https://127.0.0.1:9443/inject", "caBundle": "Q0E="}, WebhookSettings(),
                                 owner=owner)


async def test_register_writes_once_and_follows_the_owner() -> None:
    fake = FakeKube()
    kube = api(fake)
    assert await register(kube, config(OWNER)) is True
    assert await register(kube, config(OWNER)) is False
    assert fake.writes == [("create", WEBHOOKS_PATH)]
    # An operator that names no owner takes the old one off: else deleting it would delete the configuration.
    assert await register(kube, config(None)) is True
    assert "ownerReferences" not in fake.objects[f"{WEBHOOKS_PATH}/modelroute.dev"]["metadata"]
    assert await register(kube, config(None)) is False
    # A new owner (the ClusterRole made again): its uid.
    assert await register(kube, config({**OWNER, "uid": "u-2"})) is True


async def test_clusterrole_owner() -> None:
    kube = api(FakeKube({"/apis/rbac.authorization.k8s.io/v1/clusterroles/mr-operator":
                         {"metadata": {"name": "mr-operator", "uid": "u-1"}}}))
    assert await clusterrole_owner(kube, "mr-operator") == OWNER
    with pytest.raises(OwnerError, match=r"ClusterRole other, the owner of .* does not exist"):
        await clusterrole_owner(kube, "other")
    with pytest.raises(OwnerError, match=r"403 Forbidden.*needs get on it"):
        await clusterrole_owner(api(FakeKube(denied=True)), "mr-operator")

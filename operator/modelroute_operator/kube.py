"""A small asynchronous Kubernetes REST client: JSON in, JSON out.

Built on ``kubernetes.aio`` for what it does well (kubeconfig and in-cluster
credentials, token refresh, TLS), without its generated models: the operator works
with plain dicts, as they come from the API server and as kopf hands them over.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

from kubernetes.aio import client as aio_client
from kubernetes.aio import config as aio_config

from modelroute_sidecar.resources import GROUP, VERSION

JSON = dict[str, Any]
MERGE_PATCH = "application/merge-patch+json"


class ApiError(Exception):
    def __init__(self, status: int, reason: str, message: str, method: str, path: str,
                 causes: tuple[str, ...] = ()) -> None:
        super().__init__(f"{method} {path}: {status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message
        self.causes = causes  # details.causes[].reason, e.g. NamespaceTerminating

    @property
    def namespace_terminating(self) -> bool:
        return "NamespaceTerminating" in self.causes


def custom_path(plural: str, namespace: str, name: str | None = None, sub: str | None = None) -> str:
    path = f"/apis/{GROUP}/{VERSION}/namespaces/{quote(namespace)}/{plural}"
    if name is not None:
        path += f"/{quote(name)}"
    if sub is not None:
        path += f"/{sub}"
    return path


def core_path(plural: str, namespace: str, name: str | None = None) -> str:
    path = f"/api/v1/namespaces/{quote(namespace)}/{plural}"
    return path if name is None else f"{path}/{quote(name)}"


WEBHOOKS_PATH = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"


class Kube:
    def __init__(self, api: aio_client.ApiClient) -> None:
        self._api = api

    @classmethod
    async def connect(cls, kubeconfig: str | os.PathLike[str] | None = None) -> Kube:
        """From ``kubeconfig``, else $KUBECONFIG, else ~/.kube/config, else the pod's ServiceAccount."""
        configuration = aio_client.Configuration()
        path = kubeconfig_path(kubeconfig)
        if path is None:
            aio_config.load_incluster_config(client_configuration=configuration)
        else:
            # A KUBECONFIG list (a:b) means the first file, like most tools' simple case.
            await aio_config.load_kube_config(config_file=str(path).split(os.pathsep)[0],
                                              client_configuration=configuration, persist_config=False)
        return cls(aio_client.ApiClient(configuration))

    async def close(self) -> None:
        await self._api.close()

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        query: Mapping[str, str] | None = None,
        content_type: str = "application/json",
        request_timeout: float = 30.0,
    ) -> Any:
        headers = {"Accept": "application/json", "Content-Type": content_type}
        params = await self._api.param_serialize(
            method=method, resource_path=path, query_params=list((query or {}).items()),
            header_params=headers, body=body, auth_settings=["BearerToken"],
        )
        response = await self._api.call_api(*params, _request_timeout=request_timeout)
        data = await response.read()
        if not 200 <= response.status < 300:
            causes: tuple[str, ...] = ()
            try:
                status = json.loads(data)
                message, reason = status.get("message", ""), status.get("reason", "")
                causes = tuple(str(c.get("reason")) for c in (status.get("details") or {}).get("causes") or [])
            except (ValueError, AttributeError):
                message, reason = data.decode("utf-8", "replace")[:500], ""
            raise ApiError(response.status, reason or str(response.reason), message, method, path, causes)
        return json.loads(data) if data else None

    async def get(self, path: str) -> JSON | None:
        """The object, or None when it does not exist."""
        try:
            result: JSON = await self.request("GET", path)
        except ApiError as e:
            if e.status == 404:
                return None
            raise
        return result

    async def list(self, path: str) -> list[JSON]:
        items: list[JSON] = []
        cont = ""
        while True:
            page = await self.request("GET", path, query={"limit": "500", **({"continue": cont} if cont else {})})
            items += page.get("items") or []
            cont = (page.get("metadata") or {}).get("continue") or ""
            if not cont:
                return items

    async def create(self, path: str, body: Mapping[str, Any]) -> JSON:
        result: JSON = await self.request("POST", path, body=dict(body))
        return result

    async def replace(self, path: str, body: Mapping[str, Any]) -> JSON:
        result: JSON = await self.request("PUT", path, body=dict(body))
        return result

    async def merge_patch(self, path: str, patch: Mapping[str, Any]) -> JSON:
        result: JSON = await self.request("PATCH", path, body=dict(patch), content_type=MERGE_PATCH)
        return result

    async def delete(self, path: str, *, resource_version: str | None = None) -> bool:
        """Delete; False when it was already gone."""
        body = {"kind": "DeleteOptions", "apiVersion": "v1",
                **({"preconditions": {"resourceVersion": resource_version}} if resource_version else {})}
        try:
            await self.request("DELETE", path, body=body)
        except ApiError as e:
            if e.status == 404:
                return False
            raise
        return True

    async def watch(self, path: str, query: Mapping[str, str], *, timeout_seconds: int = 300) -> AsyncIterator[JSON]:
        """The events of one watch request (``{"type", "object"}``), until the server ends it
        (after ``timeout_seconds``). A refused request raises :class:`ApiError`."""
        params = await self._api.param_serialize(
            method="GET", resource_path=path,
            query_params=list({**query, "watch": "1", "timeoutSeconds": str(timeout_seconds)}.items()),
            header_params={"Accept": "application/json"}, auth_settings=["BearerToken"],
        )
        response = await self._api.call_api(*params, _request_timeout=timeout_seconds + 30)
        try:
            if not 200 <= response.status < 300:
                data = await response.read()
                try:
                    status = json.loads(data)
                    message, reason = status.get("message", ""), status.get("reason", "")
                except (ValueError, AttributeError):
                    message, reason = data.decode("utf-8", "replace")[:500], ""
                raise ApiError(response.status, reason or str(response.reason), message, "WATCH", path)
            # One JSON document per line; a line can exceed aiohttp's readline limit (a large Secret).
            buffer = b""
            async for chunk in response.response.content.iter_any():
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if line.strip():
                        yield json.loads(line)
        finally:
            response.response.release()

    async def allowed(self, verb: str, resource: str, namespace: str) -> bool:
        """Whether RBAC lets this client ``verb`` ``resource`` (core group) in ``namespace``: a
        SelfSubjectAccessReview, which every authenticated identity may ask."""
        review = await self.request("POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", body={
            "apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": {"verb": verb, "resource": resource, "namespace": namespace}}})
        return bool((review.get("status") or {}).get("allowed"))

    async def server_version(self) -> tuple[int, int]:
        """(major, minor) of the API server, e.g. (1, 33); a "+" suffix is ignored."""
        info = await self.request("GET", "/version")
        return _digits(info.get("major", "0")), _digits(info.get("minor", "0"))


def kubeconfig_path(explicit: str | os.PathLike[str] | None) -> str | None:
    """The kubeconfig file to use, or None for the pod's ServiceAccount (in cluster)."""
    if explicit is not None:
        return str(explicit)
    if os.environ.get("KUBECONFIG"):
        return os.environ["KUBECONFIG"]
    default = Path.home() / ".kube" / "config"
    if os.environ.get("KUBERNETES_SERVICE_HOST") and not default.exists():
        return None
    return str(default)


def _digits(value: str) -> int:
    digits = "".join(c for c in str(value) if c.isdigit())
    return int(digits) if digits else 0

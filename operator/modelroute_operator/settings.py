"""The operator's settings: what the CLI (and the chart, through it) can change.

Everything here is a pydantic model, so a bad value fails at start-up with the name of
the setting, never later in a handler.
"""

from __future__ import annotations

import os
import re
from importlib import metadata
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from modelroute_sidecar.config import DEFAULT_CONFIG_DIR, DEFAULT_METRICS_PORT, DEFAULT_PORT

# A Kubernetes resource quantity (the forms people write: 100m, 0.5, 64Mi, 1G, 1e3).
QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?([eE][0-9]+|m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")


def _version() -> str:
    try:
        return metadata.version("modelroute")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "latest"


DEFAULT_IMAGE = os.environ.get("MODELROUTE_SIDECAR_IMAGE") or f"ghcr.io/modelroute/modelroute:{_version()}"


def check_quantity(value: str | None) -> str | None:
    if value is not None and not QUANTITY.match(value):
        raise ValueError(f"{value!r} is not a resource quantity (e.g. 100m, 64Mi, 1Gi)")
    return value


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InjectionSettings(_Model):
    """How the webhook builds the sidecar. Pod annotations can override some of it."""

    image: str = Field(DEFAULT_IMAGE, min_length=1, pattern=r"^\S+$")
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = None
    port: int = Field(DEFAULT_PORT, ge=1, le=65535)
    metrics_port: int = Field(DEFAULT_METRICS_PORT, ge=1, le=65535)
    config_dir: str = DEFAULT_CONFIG_DIR
    cpu_request: str | None = "50m"
    memory_request: str | None = "64Mi"
    cpu_limit: str | None = None
    memory_limit: str | None = "256Mi"
    # Native sidecar (initContainer with restartPolicy: Always), Kubernetes >= 1.29.
    native_sidecar: bool = True
    run_as_user: int = Field(65532, ge=1)
    # The operator's lease server (budgets), e.g. https://modelroute-operator.modelroute-system.svc:9444;
    # None: no lease server, and the sidecar gets neither the URL nor the token.
    budget_url: str | None = Field(None, pattern=r"^https://\S+$")

    @field_validator("cpu_request", "memory_request", "cpu_limit", "memory_limit")
    @classmethod
    def _quantity(cls, value: str | None) -> str | None:
        return check_quantity(value)

    @model_validator(mode="after")
    def _distinct_ports(self) -> InjectionSettings:
        if self.port == self.metrics_port:
            raise ValueError(f"port and metrics port must differ (both are {self.port})")
        return self


class WebhookSettings(_Model):
    """Where the admission webhook listens and how the API server reaches it."""

    # Out of cluster: listen on this address and register https://<address>/inject.
    address: tuple[str, int] | None = None
    # In cluster: register Service <name>.<namespace>:<service_port>, listen on `listen`.
    service: tuple[str, str] | None = None
    service_port: int = Field(443, ge=1, le=65535)
    listen: tuple[str, int] = ("0.0.0.0", 9443)
    cert_dir: Path | None = None
    # How often the certificate files are re-read; a renewed certificate (e.g. cert-manager's,
    # through the mounted Secret) is served, and its CA registered, without a restart.
    cert_check_seconds: float = Field(60.0, gt=0, le=3600)
    # A ClusterRole that owns the MutatingWebhookConfiguration: when it is deleted (e.g. by
    # `helm uninstall`), the garbage collector deletes the configuration too.
    owner_clusterrole: str | None = Field(None, min_length=1, max_length=253,
                                          pattern=r"^[a-z0-9]([-a-z0-9.:]*[a-z0-9])?$")
    # Only pods that opted in reach the webhook, so refusing them while it is down is the
    # safe default: a pod never starts without the gateway it asked for.
    failure_policy: Literal["Fail", "Ignore"] = "Fail"
    timeout_seconds: int = Field(10, ge=1, le=30)
    # Remove the MutatingWebhookConfiguration on a graceful exit. Default: yes out of
    # cluster (a developer's operator going away must not block pods), no in cluster (a
    # rolling update must not let pods through uninjected).
    remove_on_exit: bool | None = None

    @property
    def enabled(self) -> bool:
        return self.address is not None or self.service is not None

    @property
    def removes_on_exit(self) -> bool:
        return self.remove_on_exit if self.remove_on_exit is not None else self.service is None

    @model_validator(mode="after")
    def _one_mode(self) -> WebhookSettings:
        if self.address is not None and self.service is not None:
            raise ValueError("--webhook-address and --webhook-service are exclusive")
        return self


class BudgetSettings(_Model):
    """The lease server (ModelBudgets): HTTPS with the webhook's certificate."""

    # None: no lease server (sidecars then follow their budgets' failurePolicy once a lease is spent).
    port: int | None = Field(None, ge=1, le=65535)
    # What sidecars are told; default: https://<Service>.<ns>.svc:<port> in cluster, the webhook's host out of it.
    url: str | None = Field(None, pattern=r"^https://\S+$")
    lease_ttl_seconds: float = Field(30.0, ge=1, le=3600)
    token_cache_seconds: float = Field(60.0, ge=0, le=600)

    @property
    def enabled(self) -> bool:
        return self.port is not None


class OperatorSettings(_Model):
    namespaces: tuple[str, ...] = ()  # empty: every namespace
    injection: InjectionSettings = InjectionSettings()
    webhook: WebhookSettings = WebhookSettings()
    budget: BudgetSettings = BudgetSettings()
    # None: decide from the server's version at start-up.
    native_sidecars: bool | None = None
    standalone: bool = True
    peering_name: str | None = None
    liveness_endpoint: str | None = None
    # Serve Prometheus metrics on GET http://<host>:<port>/metrics; None: not at all.
    metrics_listen: tuple[str, int] | None = None
    resync_seconds: float = Field(300.0, ge=0)  # 0 disables the periodic resync
    concurrency: int = Field(8, ge=1, le=256)  # namespaces reconciled at once
    kubeconfig: str | None = None

    @model_validator(mode="after")
    def _budget_needs_the_webhook(self) -> OperatorSettings:
        if self.budget.enabled and not self.webhook.enabled:
            raise ValueError("--budget-port needs the webhook (--webhook-address or --webhook-service): the lease "
                             "server uses its certificate")
        if self.budget.enabled and self.webhook.address is not None and self.budget.port == self.webhook.address[1]:
            raise ValueError(f"--budget-port {self.budget.port} is the webhook's port")
        return self

    @property
    def budget_listen(self) -> tuple[str, int] | None:
        if self.budget.port is None:
            return None
        host = self.webhook.address[0] if self.webhook.address is not None else self.webhook.listen[0]
        return host, self.budget.port

    @property
    def budget_url(self) -> str | None:
        """What the webhook tells sidecars: the lease server's URL."""
        if self.budget.port is None:
            return None
        if self.budget.url:
            return self.budget.url
        if self.webhook.service is not None:
            name, namespace = self.webhook.service
            return f"https://{name}.{namespace}.svc:{self.budget.port}"
        host = self.webhook.address[0] if self.webhook.address is not None else "127.0.0.1"
        return f"https://{f'[{host}]' if ':' in host else host}:{self.budget.port}"

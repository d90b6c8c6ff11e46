"""Wiring: settings -> API client, reconciler, kopf registry and settings -> kopf.operator()."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import tempfile
from pathlib import Path

import kopf

from . import names
from .admission import RegisteringWebhookServer, clusterrole_owner, unregister
from .budget_reconcile import RollOver, reconcile_budgets
from .budget_store import BudgetStore
from .certs import ensure_certs, renew_generated_forever, service_hosts
from .handlers import build_registry, configure
from .kube import Kube
from .lease_server import LeaseServer
from .metrics import OperatorMetrics, serve_metrics
from .reconcile import Reconciler, reconcile_and_log
from .secret_watch import SecretWatches
from .settings import InjectionSettings, OperatorSettings, WebhookSettings
from .tokenauth import TokenReviewer

logger = logging.getLogger("modelroute.operator")

NATIVE_SIDECAR_MIN = (1, 29)  # SidecarContainers on by default (beta) since 1.29, GA 1.33


def peer_identity() -> str:
    """This process's name for kopf (peering, logs): the pod's name and the pid. kopf's own
    guess asks getpass.getuser(), which fails for a uid without a passwd entry, as the image's
    65532 and OpenShift's arbitrary uids are."""
    pod = os.environ.get("POD_ID") or os.environ.get("HOSTNAME") or socket.gethostname()
    return f"{pod}/{os.getpid()}"


def webhook_hosts(settings: WebhookSettings) -> list[str]:
    """The names a generated certificate carries."""
    if settings.service is not None:
        return service_hosts(*settings.service)
    host = settings.address[0] if settings.address is not None else "127.0.0.1"
    return list(dict.fromkeys([host, "127.0.0.1", "localhost"]))


def checked_hosts(settings: WebhookSettings) -> list[str]:
    """The name the API server checks the webhook's certificate for: what a certificate from
    elsewhere must name. For a Service, kube-apiserver dials ``NAME.NS.svc``."""
    if settings.service is not None:
        name, namespace = settings.service
        return [f"{name}.{namespace}.svc"]
    return [settings.address[0] if settings.address is not None else "127.0.0.1"]


async def injection_settings(kube: Kube, settings: OperatorSettings) -> InjectionSettings:
    """The injection settings, with native sidecars decided once, from the server's version."""
    native = settings.native_sidecars
    if native is None:
        version = await kube.server_version()
        native = version >= NATIVE_SIDECAR_MIN
        logger.info("API server %d.%d: injecting the sidecar as a %s", *version,
                    "native sidecar (initContainer, restartPolicy: Always)" if native else "regular container")
    return settings.injection.model_copy(update={"native_sidecar": native, "budget_url": settings.budget_url})


async def follow_ca(ca_file: Path, into: dict[str, str], reconciler: Reconciler, interval: float) -> None:
    """Keep ``into`` (the ConfigMaps' extra files) holding the lease server's CA; a new CA (a
    renewed generated certificate) is written to every namespace's ConfigMap."""
    while True:
        await asyncio.sleep(interval)
        try:
            ca = await asyncio.to_thread(ca_file.read_text)
        except OSError as e:
            logger.error("cannot read the lease server's CA %s: %s", ca_file, e)
            continue
        if into.get(names.BUDGET_CA_KEY) != ca:
            into[names.BUDGET_CA_KEY] = ca
            reconciler.trigger_all()


async def run(settings: OperatorSettings) -> None:
    kube = await Kube.connect(settings.kubeconfig)
    background: list[asyncio.Task[None]] = []
    metrics = OperatorMetrics()
    metrics_server = None
    server: RegisteringWebhookServer | None = None
    watches: SecretWatches | None = None
    budget_ca: dict[str, str] = {}  # the ConfigMap's budget-ca.crt, when the lease server runs
    store = BudgetStore(kube, ttl=settings.budget.lease_ttl_seconds, instance=peer_identity(),
                        per_pod=settings.budget_listen is None)
    reconciler = Reconciler(lambda ns: reconcile_and_log(kube, ns, metrics, watches.follow if watches else None,
                                                         extra=lambda: budget_ca, budgets=store),
                            concurrency=settings.concurrency)
    watches = SecretWatches(kube, reconciler.trigger)
    lease_server: LeaseServer | None = None

    async def reconcile_ns_budgets(namespace: str) -> None:
        roll_over.at(namespace, await reconcile_budgets(kube, store, namespace))

    budgets = Reconciler(reconcile_ns_budgets, concurrency=settings.concurrency)
    roll_over = RollOver(budgets.trigger)
    try:
        if settings.metrics_listen is not None:
            metrics_server = await serve_metrics(metrics, *settings.metrics_listen)
        kopf_settings = kopf.OperatorSettings()
        configure(kopf_settings)
        injection = None
        if settings.webhook.enabled:
            injection = await injection_settings(kube, settings)
            cert_dir = settings.webhook.cert_dir or Path(tempfile.mkdtemp(prefix="modelroute-webhook-"))
            checked = checked_hosts(settings.webhook)
            certs = ensure_certs(cert_dir, webhook_hosts(settings.webhook), required=checked)
            background.append(asyncio.create_task(renew_generated_forever(cert_dir, webhook_hosts(settings.webhook))))
            if settings.budget_listen is not None:
                lease_server = LeaseServer(store, TokenReviewer(kube, ttl=settings.budget.token_cache_seconds),
                                           namespaces=settings.namespaces, ttl=settings.budget.lease_ttl_seconds,
                                           metrics=metrics)
                await lease_server.start(*settings.budget_listen, certs, settings.webhook.cert_check_seconds)
                budget_ca[names.BUDGET_CA_KEY] = certs.ca.read_text()  # before the first reconcile
                background.append(asyncio.create_task(follow_ca(certs.ca, budget_ca, reconciler,
                                                                settings.webhook.cert_check_seconds)))
            owner = None
            if settings.webhook.owner_clusterrole is not None:
                owner = await clusterrole_owner(kube, settings.webhook.owner_clusterrole)
            kopf_settings.admission.server = server = RegisteringWebhookServer(
                kube=kube, settings=settings.webhook, certs=certs, namespaces=settings.namespaces,
                checked_hosts=tuple(checked), owner=owner, metrics=metrics)
        registry = build_registry(reconciler, injection, budgets)
        if settings.resync_seconds > 0:
            background.append(asyncio.create_task(reconciler.resync_forever(settings.resync_seconds)))
        await kopf.operator(
            registry=registry,
            settings=kopf_settings,
            identity=peer_identity(),  # type: ignore[arg-type]  # kopf.Identity: a NewType of str, not exported
            clusterwide=not settings.namespaces,
            namespaces=list(settings.namespaces),
            standalone=settings.standalone,
            peering_name=settings.peering_name,
            liveness_endpoint=settings.liveness_endpoint,
        )
    finally:
        for task in background:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await reconciler.close()
        await budgets.close()
        roll_over.close()
        if lease_server is not None:
            await lease_server.close()
        await store.close()
        await watches.close()
        if metrics_server is not None:
            await metrics_server.cleanup()
        # Only what this process registered: a failed start leaves another operator's alone.
        if server is not None and server.registered and settings.webhook.removes_on_exit:
            await unregister(kube)
            logger.info("webhook configuration removed")
        await kube.close()

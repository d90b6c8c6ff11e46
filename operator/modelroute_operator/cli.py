"""``modelroute operator``: the command line of the operator.

    modelroute operator [-n NS ...] [--webhook-address 127.0.0.1:9443]
                        [--webhook-service NAME.NS --webhook-cert-dir DIR] ...

Without a webhook option it only compiles (no injection). ``python -m
modelroute_operator`` is the same command.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

from .settings import BudgetSettings, InjectionSettings, OperatorSettings, WebhookSettings

logger = logging.getLogger("modelroute.operator")

def _host_port(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{value!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def _service(value: str) -> tuple[str, str]:
    name, sep, namespace = value.partition(".")
    if not sep or not name or not namespace or "." in namespace:
        raise argparse.ArgumentTypeError(f"{value!r} is not NAME.NAMESPACE")
    return name, namespace


def _tristate(value: str) -> bool | None:
    options = {"auto": None, "true": True, "false": False}
    if value not in options:
        raise argparse.ArgumentTypeError("expected auto, true or false")
    return options[value]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="modelroute operator",
        description="Compile ModelRoutes and ProviderKeys into each namespace's sidecar config "
                    "and inject the sidecar into pods that ask for it.",
    )
    p.add_argument("-n", "--namespace", action="append", default=[], metavar="NS",
                   help="serve only this namespace (repeatable); default: all namespaces")
    p.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config, in-cluster)")
    g = p.add_argument_group("webhook (sidecar injection)")
    mode = g.add_mutually_exclusive_group()
    mode.add_argument("--webhook-address", type=_host_port, metavar="HOST:PORT",
                      help="out of cluster: serve the webhook on HOST:PORT and register https://HOST:PORT/inject")
    mode.add_argument("--webhook-service", type=_service, metavar="NAME.NS",
                      help="in cluster: register Service NAME in namespace NS; listen on --webhook-listen")
    g.add_argument("--webhook-listen", type=_host_port, default=("0.0.0.0", 9443), metavar="ADDR:PORT",
                   help="where the webhook listens with --webhook-service (default 0.0.0.0:9443)")
    g.add_argument("--webhook-service-port", type=int, default=443, help="the Service's port (default 443)")
    g.add_argument("--webhook-cert-dir", type=Path, metavar="DIR",
                   help="tls.crt, tls.key, ca.crt. Files put there by someone else (e.g. a mounted cert-manager "
                        "Secret) are used as given, and the operator refuses to start, saying why, if they cannot "
                        "serve the webhook; an empty directory gets a generated CA and certificate, remade when due "
                        "(default: a private temporary directory)")
    g.add_argument("--webhook-cert-check-seconds", type=float, default=60.0, metavar="SECONDS",
                   help="re-read the certificate files this often; a renewed certificate is served and its CA "
                        "registered without a restart (default 60)")
    g.add_argument("--webhook-owner-clusterrole", metavar="NAME",
                   help="make ClusterRole NAME (e.g. the operator's own, which the chart installs) the owner of "
                        "the webhook configuration, so deleting it (helm uninstall) deletes the configuration; "
                        "needs get on that ClusterRole")
    g.add_argument("--failure-policy", choices=["Fail", "Ignore"], default="Fail",
                   help="what the API server does with an opted-in pod when the webhook does not answer "
                        "(default Fail: the pod is refused, and its controller retries)")
    rm = g.add_mutually_exclusive_group()
    rm.add_argument("--remove-webhook-on-exit", dest="remove_webhook", action="store_true", default=None,
                    help="delete the webhook configuration on a graceful exit (default with --webhook-address)")
    rm.add_argument("--keep-webhook-on-exit", dest="remove_webhook", action="store_false",
                    help="keep it (default with --webhook-service)")
    s = p.add_argument_group("the injected sidecar")
    defaults = InjectionSettings()
    s.add_argument("--sidecar-image", default=defaults.image,
                   help=f"image (default $MODELROUTE_SIDECAR_IMAGE or {defaults.image})")
    s.add_argument("--sidecar-image-pull-policy", choices=["Always", "IfNotPresent", "Never"])
    s.add_argument("--sidecar-port", type=int, default=defaults.port, metavar="PORT",
                   help=f"API port, on 127.0.0.1 (default {defaults.port}); OPENAI_BASE_URL and "
                        "ANTHROPIC_BASE_URL follow it. A pod can override it with modelroute.dev/port")
    s.add_argument("--sidecar-metrics-port", type=int, default=defaults.metrics_port, metavar="PORT",
                   help=f"/metrics, /healthz, /readyz on the pod IP (default {defaults.metrics_port}); probes and "
                        "scrape annotations follow it. A pod can override it with modelroute.dev/metrics-port")
    s.add_argument("--sidecar-cpu-request", default=defaults.cpu_request)
    s.add_argument("--sidecar-memory-request", default=defaults.memory_request)
    s.add_argument("--sidecar-cpu-limit", default=defaults.cpu_limit)
    s.add_argument("--sidecar-memory-limit", default=defaults.memory_limit)
    s.add_argument("--native-sidecars", type=_tristate, default=None, metavar="auto|true|false",
                   help="inject as a native sidecar (initContainer, restartPolicy Always); "
                        "auto: when the API server is 1.29 or newer")
    b = p.add_argument_group("budgets (the lease server for ModelBudgets)")
    b.add_argument("--budget-port", type=int, metavar="PORT",
                   help="serve leases on https://HOST:PORT/budget/v1/leases with the webhook's certificate (HOST: "
                        "the webhook's address, or --webhook-listen's); sidecars get the URL and a ServiceAccount "
                        "token for it. Default: none (the chart sets 9444)")
    b.add_argument("--budget-url", metavar="URL",
                   help="the URL sidecars are given (default https://NAME.NS.svc:PORT with --webhook-service, "
                        "https://HOST:PORT with --webhook-address)")
    b.add_argument("--budget-lease-ttl", type=float, default=30.0, metavar="SECONDS",
                   help="how long a lease counts its holder as active; sidecars report at least every half of it "
                        "(default 30)")
    o = p.add_argument_group("operation")
    peer = o.add_mutually_exclusive_group()
    peer.add_argument("--standalone", dest="peering", action="store_const", const=None, default=None,
                      help="no kopf peering (the default: reconciling is idempotent, two replicas agree)")
    peer.add_argument("--peering", metavar="NAME", help="use kopf peering NAME (needs kopf's peering CRDs and RBAC)")
    o.add_argument("--liveness", metavar="URL", help="kopf liveness endpoint, e.g. http://0.0.0.0:8080/healthz")
    o.add_argument("--metrics-listen", type=_host_port, metavar="ADDR:PORT",
                   help="serve the operator's Prometheus metrics on http://ADDR:PORT/metrics, e.g. 0.0.0.0:8081 "
                        "(default: none)")
    o.add_argument("--resync-seconds", type=float, default=300.0,
                   help="re-reconcile every namespace this often as a safety net (0: never; default 300)")
    o.add_argument("--concurrency", type=int, default=8, help="namespaces reconciled at once (default 8)")
    o.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    o.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    return p


def settings_from_args(args: argparse.Namespace) -> OperatorSettings:
    return OperatorSettings(
        namespaces=tuple(dict.fromkeys(args.namespace)),
        injection=InjectionSettings(
            image=args.sidecar_image, image_pull_policy=args.sidecar_image_pull_policy,
            port=args.sidecar_port, metrics_port=args.sidecar_metrics_port,
            cpu_request=args.sidecar_cpu_request or None, memory_request=args.sidecar_memory_request or None,
            cpu_limit=args.sidecar_cpu_limit or None, memory_limit=args.sidecar_memory_limit or None,
        ),
        webhook=WebhookSettings(
            address=args.webhook_address, service=args.webhook_service, listen=args.webhook_listen,
            service_port=args.webhook_service_port, cert_dir=args.webhook_cert_dir,
            cert_check_seconds=args.webhook_cert_check_seconds, owner_clusterrole=args.webhook_owner_clusterrole,
            failure_policy=args.failure_policy, remove_on_exit=args.remove_webhook,
        ),
        budget=BudgetSettings(port=args.budget_port, url=args.budget_url, lease_ttl_seconds=args.budget_lease_ttl),
        native_sidecars=args.native_sidecars,
        standalone=args.peering is None,
        peering_name=args.peering,
        liveness_endpoint=args.liveness,
        metrics_listen=args.metrics_listen,
        resync_seconds=args.resync_seconds,
        concurrency=args.concurrency,
        kubeconfig=args.kubeconfig,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        settings = settings_from_args(args)
    except ValidationError as e:
        print(f"modelroute operator: invalid settings:\n{e}", file=sys.stderr)
        return 2
    if settings.kubeconfig:
        os.environ["KUBECONFIG"] = settings.kubeconfig  # kopf's login reads it too
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    import kopf  # imported here: `modelroute` must not pay for kopf unless it runs the operator

    kopf.configure(debug=args.verbose, verbose=args.verbose, quiet=args.quiet)
    logging.getLogger().setLevel(level)
    if not args.verbose:  # kopf says "Handler ... succeeded" for every watch event
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    try:
        from .runner import run

        asyncio.run(run(settings))
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # a start-up failure: say what, without a traceback wall
        logger.error("modelroute operator failed: %s: %s", type(e).__name__, e)
        if args.verbose:
            raise
        return 1
    return 0

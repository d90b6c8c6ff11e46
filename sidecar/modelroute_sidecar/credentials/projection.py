"""Which ServiceAccount tokens the sidecar needs, where they are, and the environment that
points the credential code at them: one table shared by the webhook (which projects the
tokens into the sidecar only) and the sidecar (which reads them). Pure; no cloud library.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..config import AWS_STS_AUDIENCE, AZURE_AUDIENCE, EKS_POD_IDENTITY_AUDIENCE, WorkloadIdentity

TOKEN_DIR = "/var/run/secrets/modelroute-identity"
TOKEN_DIR_ENV = "MODELROUTE_IDENTITY_TOKEN_DIR"
# kubelet renews a projected token at 80% of its lifetime; an hour is what EKS and AKS use.
TOKEN_EXPIRATION_SECONDS = 3600
# The EKS Pod Identity agent's link-local address (IPv4).
EKS_POD_IDENTITY_URI = "http://169.254.170.23/v1/credentials"


@dataclass(frozen=True, order=True, slots=True)
class TokenProjection:
    file: str  # name under TOKEN_DIR
    audience: str


def gcp_file(audience: str) -> str:
    # Pool provider names are long and full of slashes: a digest names the file.
    return "gcp-" + hashlib.sha256(audience.encode()).hexdigest()[:16]


def gcp_token_path(token_dir: str | None, audience: str) -> Path:
    return Path(token_dir or TOKEN_DIR) / gcp_file(audience)


def projection_of(wi: WorkloadIdentity) -> TokenProjection | None:
    """The token a workload identity needs (None: the GKE metadata server needs none)."""
    if wi.aws is not None:
        if wi.aws.role_arn:
            return TokenProjection("aws-sts", AWS_STS_AUDIENCE)
        return TokenProjection("eks-pod-identity", EKS_POD_IDENTITY_AUDIENCE)
    if wi.gcp is not None:
        return TokenProjection(gcp_file(wi.gcp.audience), wi.gcp.audience) if wi.gcp.audience else None
    return TokenProjection("azure", AZURE_AUDIENCE)


def projections(identities: Iterable[WorkloadIdentity]) -> list[TokenProjection]:
    """The distinct tokens for a namespace's workload identities, in a stable order."""
    return sorted({p for wi in identities if (p := projection_of(wi)) is not None})


def sidecar_env(tokens: Iterable[TokenProjection], token_dir: str = TOKEN_DIR) -> list[dict[str, str]]:
    """The variables that point the credential code (ours, botocore's conventions) at the tokens."""
    env = [{"name": TOKEN_DIR_ENV, "value": token_dir}]
    for t in tokens:
        path = f"{token_dir}/{t.file}"
        if t.file == "aws-sts":
            env.append({"name": "AWS_WEB_IDENTITY_TOKEN_FILE", "value": path})
        elif t.file == "eks-pod-identity":
            env.append({"name": "AWS_CONTAINER_CREDENTIALS_FULL_URI", "value": EKS_POD_IDENTITY_URI})
            env.append({"name": "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", "value": path})
        elif t.file == "azure":
            env.append({"name": "AZURE_FEDERATED_TOKEN_FILE", "value": path})
    return env

# syntax=docker/dockerfile:1
# One image, two commands:
#   modelroute operator ...   the operator (the Helm chart's Deployment)
#   modelroute sidecar ...    the in-pod gateway (injected by the operator's webhook)
# (and `modelroute serve -f FILE` for running the gateway from YAML without a cluster).
#
#   docker build -t ghcr.io/modelroute/modelroute:0.1.0 .
#   image/build.sh      # the same Dockerfile, built without a Docker engine (buildah)
#
# Three stages: `python` is Debian with its python3 and its CA store; `build` adds venv
# support and installs the package and its dependencies (all of them ship binary wheels,
# so no compiler is needed) into a virtualenv; the final stage is `python` with only that
# virtualenv copied in: no pip, no apt lists, no build tools, no source tree.

ARG BASE_IMAGE=debian:bookworm-slim

FROM ${BASE_IMAGE} AS python
ARG DEBIAN_FRONTEND=noninteractive
# ca-certificates: python3 only recommends it, and without it /etc/ssl/certs is missing, so
# Python's default SSL context trusts nothing and every HTTPS provider fails verification.
# Its postinst writes the bundle (certs/ca-certificates.crt) and the OpenSSL hash links
# (certs/<subject hash>.0) OpenSSL looks a CA up by in a CA directory (capath).
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 ca-certificates \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* /var/cache/debconf/*-old /var/log/* /usr/share/doc/* /usr/share/man/*

FROM python AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_PROGRESS_BAR=off \
    PIP_ONLY_BINARY=:all: \
    PYTHONDONTWRITEBYTECODE=1
RUN apt-get update && apt-get install -y --no-install-recommends python3-venv
RUN python3 -m venv /opt/modelroute
WORKDIR /src
COPY pyproject.toml README.md ./
COPY sidecar ./sidecar
COPY operator ./operator
# setuptools builds the project itself from source; everything else must be a wheel.
RUN /opt/modelroute/bin/pip install --no-binary modelroute ".[operator]" \
 && /opt/modelroute/bin/pip uninstall --yes pip setuptools \
 && /opt/modelroute/bin/python -m compileall -q /opt/modelroute/lib \
 && /opt/modelroute/bin/modelroute --help >/dev/null \
 && /opt/modelroute/bin/python -c "import modelroute_operator.cli, kopf, kubernetes, cryptography, prometheus_client"

FROM python
LABEL org.opencontainers.image.title="modelroute" \
      org.opencontainers.image.description="Kubernetes-native LLM gateway: operator and sidecar" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/modelroute /opt/modelroute
# The root filesystem is read-only in the pods: no bytecode writes, logs straight out.
ENV PATH=/opt/modelroute/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
# Numeric, so runAsNonRoot can verify it; the chart and the injected sidecar run as 65532 too.
USER 65532:65532
EXPOSE 8700 8701 9443
ENTRYPOINT ["modelroute"]
CMD ["sidecar"]

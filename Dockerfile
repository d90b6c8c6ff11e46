# syntax=docker/dockerfile:1
# One image, two commands:
#   modelroute operator ...   the operator (the Helm chart's Deployment)
#   modelroute sidecar ...    the in-pod gateway (injected by the operator's webhook)
# (and `modelroute serve -f FILE` for running the gateway from YAML without a cluster).
#
#   docker build -t modelroute:dev .
#
# Two stages: the build stage installs the package and its dependencies (all of them ship
# binary wheels, so no compiler is needed) into a virtualenv; the final stage is the same
# slim Python with only that virtualenv copied in: no pip, no build tools, no source tree.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ONLY_BINARY=:all: \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/modelroute
WORKDIR /src
COPY pyproject.toml README.md ./
COPY sidecar ./sidecar
COPY operator ./operator
# setuptools builds the project itself from source; everything else must be a wheel.
RUN /opt/modelroute/bin/pip install --no-binary modelroute ".[operator]" \
 && /opt/modelroute/bin/pip uninstall --yes pip setuptools \
 && /opt/modelroute/bin/python -m compileall -q /opt/modelroute/lib \
 && /opt/modelroute/bin/modelroute --help >/dev/null \
 && /opt/modelroute/bin/python -c "import modelroute_operator.cli, kopf, kubernetes, cryptography"

FROM ${PYTHON_IMAGE}
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

# modelroute developer entry points.
.PHONY: controlplane prometheus

# Build (or find in the cache) etcd, kube-apiserver, kube-controller-manager, kubectl and
# helm for the tests' control plane. The last line printed is the directory holding them.
# Progress (what is built, time elapsed) goes to stderr.
controlplane:
	@bash tests/controlplane/build.sh

# Build (or find in the cache) the Prometheus server the monitoring tests scrape with (only
# Kubernetes service discovery compiled in). The last line printed is the binary.
prometheus:
	@bash tests/prometheus/build.sh

# What the node tests need, built once and cached (progress on stderr): kubelet and
# kube-scheduler (same Kubernetes as the control plane), and the image from the Dockerfile.
.PHONY: node image
node: controlplane
	@bash tests/controlplane/build.sh node

# The modelroute image, built from the Dockerfile without a Docker engine (buildah); the
# last line printed is the OCI archive (`ctr -n k8s.io images import`, `skopeo copy oci-archive:...`).
image:
	@bash image/build.sh

# The whole test suite, as CI runs it on a fresh machine: installs the Python packages,
# builds (or finds) the Go-built binaries, checks style and types, runs pytest.
# The tiers below are the same tests, split by what they need (pytest markers):
#   test-fast     nothing built, no cluster: the gateway, dialects, translation, operator logic
#   test-cluster  the control plane (marker controlplane), only its helm (marker helm), or
#                 a real Prometheus (marker prometheus)
#   test-node     a real kubelet node running pods (marker node)
.PHONY: test test-fast test-cluster test-node install lint serve
PYTHON ?= python3
FAST_TIER = not helm and not controlplane and not prometheus and not node
CLUSTER_TIER = (helm or controlplane or prometheus) and not node
NODE_TIER = node

install:
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -e '.[test]'

lint:
	$(PYTHON) -m ruff check .
	$(PYTHON) -m mypy

test: install
	@bash tests/controlplane/build.sh >/dev/null
	@bash tests/prometheus/build.sh >/dev/null
	$(MAKE) --no-print-directory lint
	$(PYTHON) -m pytest $(PYTEST_ARGS)

test-fast: install
	$(PYTHON) -m pytest -m "$(FAST_TIER)" $(PYTEST_ARGS)

test-cluster: install
	@bash tests/controlplane/build.sh >/dev/null
	@bash tests/prometheus/build.sh >/dev/null
	$(PYTHON) -m pytest -m "$(CLUSTER_TIER)" $(PYTEST_ARGS)

test-node: install
	@bash tests/controlplane/build.sh >/dev/null
	@bash tests/prometheus/build.sh >/dev/null
	$(PYTHON) -m pytest -m "$(NODE_TIER)" $(PYTEST_ARGS)

# The gateway without a cluster, on the embedded default route file.
serve: install
	modelroute serve -f examples/quickstart.yaml

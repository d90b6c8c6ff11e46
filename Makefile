# modelroute developer entry points.
.PHONY: controlplane

# Build (or find in the cache) etcd, kube-apiserver, kube-controller-manager, kubectl and
# helm for the tests' control plane. The last line printed is the directory holding them.
controlplane:
	@bash tests/controlplane/build.sh

# The whole test suite, as CI runs it on a fresh machine: installs the Python packages,
# builds (or finds) the control-plane binaries, checks style and types, runs pytest.
.PHONY: test install lint serve
PYTHON ?= python3

install:
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -e '.[test]'

lint:
	$(PYTHON) -m ruff check .
	$(PYTHON) -m mypy

test: install
	@bash tests/controlplane/build.sh >/dev/null
	$(MAKE) --no-print-directory lint
	$(PYTHON) -m pytest $(PYTEST_ARGS)

# The gateway without a cluster, on the embedded default route file.
serve: install
	modelroute serve -f examples/quickstart.yaml

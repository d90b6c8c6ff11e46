pytest_plugins = ["tests.controlplane.plugin", "tests.prometheus.plugin", "tests.node.plugin"]

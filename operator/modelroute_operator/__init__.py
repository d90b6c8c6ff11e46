"""modelroute operator: compiles ModelRoute/ProviderKey into sidecar config and injects the sidecar."""

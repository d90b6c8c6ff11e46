"""modelroute sidecar: the in-pod gateway and the config contract shared with the operator."""

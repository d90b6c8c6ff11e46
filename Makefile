# modelroute developer entry points.
.PHONY: controlplane

# Build (or find in the cache) etcd, kube-apiserver, kube-controller-manager, kubectl and
# helm for the tests' control plane. The last line printed is the directory holding them.
controlplane:
	@bash tests/controlplane/build.sh

# Versions and locations of the Kubernetes binaries (sourced by scripts/kube/build.sh,
# scripts/node.sh and the test scripts). One cache dir outside the repository, keyed by the
# Kubernetes release; every binary in it is checked against its pinned version before use.
# shellcheck shell=bash
KUBE_VERSION=1.34.4
KUBE_DIR=${CIVIC_KUBE_DIR:-$HOME/.cache/civic-mcp/kube-$KUBE_VERSION}
KUBE_BIN=$KUBE_DIR/bin
# containerd, runc, etcd, CoreDNS, crictl (bin/) and the CNI plugins (cni/), built by
# scripts/kube/build-tools.sh into the same dir.
NODE_TOOLS_DIR=$KUBE_DIR
NODE_TOOLS_BIN=$NODE_TOOLS_DIR/bin
# The sandbox image every pod's pause container runs (scripts/images.sh builds it from source).
PAUSE_IMAGE=docker.io/civic-mcp/pause:3.10.1
export KUBE_VERSION KUBE_DIR KUBE_BIN NODE_TOOLS_DIR NODE_TOOLS_BIN PAUSE_IMAGE

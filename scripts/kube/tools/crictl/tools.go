//go:build tools

// Keeps the command this module builds in go.mod and go.sum.
package tools

import _ "sigs.k8s.io/cri-tools/cmd/crictl"

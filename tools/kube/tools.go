//go:build tools

// Package tools pins the Kubernetes components that xlb's tests and demo build from source:
// kube-apiserver and kubectl. They are never imported by the product; build.sh builds them.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kubectl"
)

//go:build tools

// Package tools pins etcd for xlb's tests and demo. etcd's own go.mod has replace directives, so
// `go install go.etcd.io/etcd/server/v3@...` fails; a separate module that requires it works.
package tools

import (
	_ "go.etcd.io/etcd/etcdctl/v3"
	_ "go.etcd.io/etcd/server/v3"
)

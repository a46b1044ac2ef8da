// Package netns is the network-namespace test harness of xlb: it builds a
// client → load balancer → backends topology out of namespaces and veths
// (see Topology for the layout and the address plan), runs code and
// processes inside a namespace, and serves/consumes HTTP, TCP-stream and UDP
// traffic from in-process servers that answer with the backend's name and
// the client address they saw.
//
// Rules it follows (DEVELOPERS.md): everything is created under a per-test
// random prefix, torn down through t.Cleanup even when setup fails halfway,
// waits are polls with deadlines, and only processes it started are killed,
// by PID. Tests that use it are skipped unless run as root.
//
// Every topology logs nothing by itself; its Prefix ("x" + 5 random
// characters) names all its namespaces ("PREFIX-cli", "PREFIX-lb",
// "PREFIX-seg", "PREFIX-b0", ...). Leftovers of a killed run are removed with
// Cleanup(PREFIX). Never pass a bare "x": other tests may be running.
package netns

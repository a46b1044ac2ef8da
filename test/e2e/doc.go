// Package e2e holds end-to-end tests that push real traffic through network
// namespaces (test/netns) into the real eBPF datapath and, later, the xlbd
// daemon, the CCM, health checks and BGP. Every test is skipped unless run
// as root. Shared helpers belong in test/netns, not here.
package e2e

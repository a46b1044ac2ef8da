// Package version holds the build version, set with -ldflags at build time.
package version

// Version is overridden by the Makefile (-X .../internal/version.Version=...).
var Version = "dev"

// Command xlbctl is the operator CLI of xlbd: it lists, inspects, applies
// and deletes load-balanced services and shows the datapath's state
// through xlbd's REST API (package lbclient). See docs/xlbctl.md.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr, os.Getenv)
	stop()
	os.Exit(code)
}

// run executes one xlbctl invocation and returns its exit code: 0 on
// success, 1 on any error (printed on stderr). Tests call it in-process.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer, getenv func(string) string) int {
	root := newRootCmd(&streams{in: stdin, out: stdout, errOut: stderr}, getenv)
	root.SetArgs(args)
	if err := root.ExecuteContext(ctx); err != nil {
		fmt.Fprintf(stderr, "error: %v\n", err)
		if errors.Is(err, syscall.ECONNREFUSED) {
			fmt.Fprintf(stderr, "hint: is xlbd running there? Point xlbctl at it with --server or %s.\n", envServer)
		}
		return 1
	}
	return 0
}

package main

// Helpers of the control-plane sections (health, bgp): build cmd/xlbd once,
// run it as a real process inside a namespace with a private bpffs, and
// reach its loopback-only API from the bench process through a forwarder.
// Patterns copied from test/e2e (a test package, not importable).

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/xlb-dev/xlb/lbclient"
	"github.com/xlb-dev/xlb/test/netns"
)

// xlbdAPIPort is where xlbd listens inside its namespace (loopback).
const xlbdAPIPort = 7470

// buildXlbd builds cmd/xlbd into dir and returns the binary's path.
func buildXlbd(ctx context.Context, dir string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	out := filepath.Join(dir, "xlbd")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, "github.com/xlb-dev/xlb/cmd/xlbd")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/xlbd: %w\n%s", err, b)
	}
	return out, nil
}

// xlbdRun is one xlbd process in a namespace with everything it needs
// around it. close releases all of it (process by PID, forwarder, bpffs
// mount, temporary directory), also after a failed start.
type xlbdRun struct {
	dir    string
	bpffs  string
	client *lbclient.Client
	cmd    *exec.Cmd
	done   chan struct{}
	log    *lockedBuffer
	fwd    func()
	mount  bool
}

type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// tail is the last n lines of the log, for error messages.
func (l *lockedBuffer) tail(n int) string {
	lines := strings.Split(strings.TrimSpace(l.String()), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// startXlbd runs `ip netns exec NS xlbd --interfaces IFACES ...` and waits
// until /readyz answers (at most 60 s).
func startXlbd(ctx context.Context, bin string, ns *netns.NS, ifaces []string, extra ...string) (_ *xlbdRun, err error) {
	dir, err := os.MkdirTemp("", "xlb-bench-xlbd-")
	if err != nil {
		return nil, err
	}
	x := &xlbdRun{dir: dir, bpffs: filepath.Join(dir, "bpffs"), log: &lockedBuffer{}}
	defer func() {
		if err != nil {
			err = errors.Join(err, x.close())
		}
	}()
	// A private bpffs: pins of parallel runs must not meet; xlbd does not
	// mount one itself.
	if err := os.MkdirAll(x.bpffs, 0o700); err != nil {
		return x, err
	}
	if err := unix.Mount("bpf", x.bpffs, "bpf", 0, "mode=0700"); err != nil {
		return x, fmt.Errorf("mount bpffs at %s: %w", x.bpffs, err)
	}
	x.mount = true
	tok := filepath.Join(dir, "token")
	if err := os.WriteFile(tok, []byte("bench-token\n"), 0o600); err != nil {
		return x, err
	}
	api := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), xlbdAPIPort).String()
	endpoint, stop, err := forwardToNS(ns, api)
	if err != nil {
		return x, err
	}
	x.fwd = stop
	if x.client, err = lbclient.New(lbclient.Config{Endpoint: "http://" + endpoint, TokenFile: tok, Retries: -1, Timeout: 5 * time.Second}); err != nil {
		return x, err
	}
	args := append([]string{"netns", "exec", ns.Name, bin,
		"--interfaces", strings.Join(ifaces, ","), "--hook", "tcx",
		"--api-listen", api, "--api-token-file", tok,
		"--state-dir", filepath.Join(dir, "state"),
		"--bpffs-path", filepath.Join(x.bpffs, "xlb"),
		"--conntrack-flows", "65536"}, extra...)
	x.cmd = exec.Command("ip", args...) // ip execs xlbd: the PID is xlbd's
	x.cmd.Stdout, x.cmd.Stderr = x.log, x.log
	if err := x.cmd.Start(); err != nil {
		x.cmd = nil
		return x, fmt.Errorf("start xlbd: %w", err)
	}
	x.done = make(chan struct{})
	go func() { _ = x.cmd.Wait(); close(x.done) }()
	var last error
	err = pollFor(ctx, 60*time.Second, 50*time.Millisecond, func() (bool, error) {
		select {
		case <-x.done:
			return false, fmt.Errorf("xlbd exited before it was ready:\n%s", x.log.tail(20))
		default:
		}
		c, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		last = x.client.Readyz(c)
		return last == nil, nil
	})
	if err != nil {
		return x, fmt.Errorf("xlbd not ready (last /readyz: %v): %w\n%s", last, err, x.log.tail(20))
	}
	return x, nil
}

// pollFor calls fn every interval until it reports done, returns an error
// (which ends the poll), or timeout (or ctx) expires.
func pollFor(parent context.Context, timeout, every time.Duration, fn func() (bool, error)) error {
	ctx, cancel := context.WithTimeout(parent, timeout)
	defer cancel()
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		ok, err := fn()
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			if err := parent.Err(); err != nil {
				return fmt.Errorf("interrupted: %w", err)
			}
			return fmt.Errorf("not done after %v: %w", timeout, ctx.Err())
		case <-tick.C:
		}
	}
}

// close stops xlbd with SIGTERM (SIGKILL after 20 s), by its PID, then
// removes the forwarder, the bpffs mount and the directory.
func (x *xlbdRun) close() error {
	var errs []error
	if x.cmd != nil && x.cmd.Process != nil {
		select {
		case <-x.done:
		default:
			_ = x.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-x.done:
			case <-time.After(20 * time.Second):
				_ = x.cmd.Process.Kill()
				<-x.done
				errs = append(errs, fmt.Errorf("xlbd (pid %d) ignored SIGTERM for 20s; killed", x.cmd.Process.Pid))
			}
		}
		x.cmd = nil
	}
	if x.fwd != nil {
		x.fwd()
		x.fwd = nil
	}
	if x.mount {
		if err := unix.Unmount(x.bpffs, unix.MNT_DETACH); err != nil {
			errs = append(errs, fmt.Errorf("unmount %s: %w", x.bpffs, err))
		}
		x.mount = false
	}
	if x.dir != "" {
		if err := os.RemoveAll(x.dir); err != nil {
			errs = append(errs, err)
		}
		x.dir = ""
	}
	return errors.Join(errs...)
}

// forwardToNS listens on 127.0.0.1:0 in the bench's namespace and forwards
// every connection to target dialled from inside ns (each a fresh dial, so
// it survives xlbd restarts). stop closes the listener and every
// connection and waits for the goroutines.
func forwardToNS(ns *netns.NS, target string) (string, func(), error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	var (
		mu    sync.Mutex
		conns = map[net.Conn]struct{}{}
		wg    sync.WaitGroup
	)
	track := func(c net.Conn) bool {
		mu.Lock()
		defer mu.Unlock()
		if conns == nil {
			c.Close()
			return false
		}
		conns[c] = struct{}{}
		return true
	}
	untrack := func(cs ...net.Conn) {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range cs {
			c.Close()
			if conns != nil {
				delete(conns, c)
			}
		}
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			in, err := ln.Accept()
			if err != nil {
				return
			}
			if !track(in) {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				out, err := ns.DialContext(ctx, "tcp", target)
				cancel()
				if err != nil {
					untrack(in)
					return
				}
				if !track(out) {
					untrack(in)
					return
				}
				var cwg sync.WaitGroup
				cwg.Add(2)
				pipe := func(dst, src net.Conn) {
					defer cwg.Done()
					_, _ = io.Copy(dst, src)
					if tc, ok := dst.(*net.TCPConn); ok {
						_ = tc.CloseWrite()
					}
				}
				go pipe(out, in)
				go pipe(in, out)
				cwg.Wait()
				untrack(in, out)
			}()
		}
	}()
	stop := func() {
		ln.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		conns = nil
		mu.Unlock()
		wg.Wait()
	}
	return ln.Addr().String(), stop, nil
}

// durStats are the order statistics the control-plane sections report.
type durStats struct {
	n                  int
	min, p50, p99, max time.Duration
}

// quantile is the nearest-rank quantile q (0..1] of sorted xs.
func quantile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(q*float64(len(sorted))+0.999999) - 1
	i = max(0, min(i, len(sorted)-1))
	return sorted[i]
}

func stats(xs []time.Duration) durStats {
	s := append([]time.Duration(nil), xs...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	if len(s) == 0 {
		return durStats{}
	}
	return durStats{n: len(s), min: s[0], p50: quantile(s, 0.5), p99: quantile(s, 0.99), max: s[len(s)-1]}
}

// ms formats a duration in milliseconds.
func ms(d time.Duration) string {
	return fmt.Sprintf("%d ms", d.Round(time.Millisecond).Milliseconds())
}

// statRow is the common row: n, p50, p99, min–max and every sample.
func statRow(xs []time.Duration) []string {
	s := stats(xs)
	var all []string
	for _, x := range xs {
		all = append(all, fmt.Sprintf("%d", x.Round(time.Millisecond).Milliseconds()))
	}
	return []string{fmt.Sprintf("%d", s.n), ms(s.p50), ms(s.p99), ms(s.min) + " – " + ms(s.max), strings.Join(all, ", ")}
}

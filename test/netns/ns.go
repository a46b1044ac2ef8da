package netns

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
)

// netnsDir is where `ip netns` (and vishvananda/netns) keep named namespaces.
const netnsDir = "/var/run/netns"

// NewPrefix returns a short random prefix ("x" + 5 base-36 characters) for
// the names of one test's namespaces and links. Link names are the prefix
// plus at most 4 characters, far inside the 15-character IFNAMSIZ limit.
func NewPrefix() string {
	const alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
	b := make([]byte, 5)
	if _, err := rand.Read(b); err != nil {
		panic(fmt.Sprintf("crypto/rand: %v", err)) // never fails on Linux
	}
	for i := range b {
		b[i] = alphabet[int(b[i])%len(alphabet)]
	}
	return "x" + string(b)
}

// NS is one named network namespace (visible to `ip netns`).
type NS struct {
	Name   string
	handle vnetns.NsHandle
	nl     *netlink.Handle
}

// CreateNS creates the named namespace NAME, brings its loopback up and
// returns it. The caller owns it and must Delete it.
func CreateNS(name string) (*NS, error) {
	if len(name) > 64 {
		return nil, fmt.Errorf("namespace name %q: longer than 64 characters", name)
	}
	// NewNamed switches the calling thread into the new namespace, so run it
	// on a throwaway locked thread that dies with its goroutine.
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		h, err := vnetns.NewNamed(name)
		if err == nil {
			h.Close()
		}
		errc <- err
	}()
	if err := <-errc; err != nil {
		return nil, fmt.Errorf("create namespace %s: %w", name, err)
	}
	n, err := OpenNS(name)
	if err != nil {
		_ = vnetns.DeleteNamed(name)
		return nil, err
	}
	lo, err := n.nl.LinkByName("lo")
	if err == nil {
		err = n.nl.LinkSetUp(lo)
	}
	if err != nil {
		n.Delete()
		return nil, fmt.Errorf("namespace %s: bring lo up: %w", name, err)
	}
	return n, nil
}

// OpenNS opens an existing named namespace.
func OpenNS(name string) (*NS, error) {
	h, err := vnetns.GetFromName(name)
	if err != nil {
		return nil, fmt.Errorf("open namespace %s: %w", name, err)
	}
	nl, err := netlink.NewHandleAt(h)
	if err != nil {
		h.Close()
		return nil, fmt.Errorf("netlink handle in namespace %s: %w", name, err)
	}
	return &NS{Name: name, handle: h, nl: nl}, nil
}

// Handle is the namespace's file descriptor (valid until Delete).
func (n *NS) Handle() vnetns.NsHandle { return n.handle }

// Netlink returns a netlink handle that operates inside the namespace.
func (n *NS) Netlink() *netlink.Handle { return n.nl }

// Delete closes our handles and removes the name. The kernel frees the
// namespace, and the veths in it, once no socket or process holds it.
func (n *NS) Delete() error {
	if n.nl != nil {
		n.nl.Close()
		n.nl = nil
	}
	if n.handle.IsOpen() {
		n.handle.Close()
	}
	if err := vnetns.DeleteNamed(n.Name); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("delete namespace %s: %w", n.Name, err)
	}
	return nil
}

// Do runs fn on an OS thread that has entered the namespace. The thread is
// never returned to the Go scheduler (it exits with its goroutine), so a
// namespace switch cannot leak into unrelated goroutines. Sockets created by
// fn stay in the namespace for their whole life. fn runs on another
// goroutine: it must not call t.Fatal.
func (n *NS) Do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // deliberately never unlocked
		if err := vnetns.Set(n.handle); err != nil {
			errc <- fmt.Errorf("enter namespace %s: %w", n.Name, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// Command returns `ip netns exec NAME name args...`. Use it for tools
// (ethtool, nft, ping, iperf3); `ip netns exec` also bind-mounts a matching
// /sys so that sysfs-based tools see the namespace's links.
func (n *NS) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", n.Name, name}, args...)...)
}

// Run runs a command in the namespace and returns its combined output; the
// error includes the output.
func (n *NS) Run(ctx context.Context, name string, args ...string) (string, error) {
	out, err := n.Command(ctx, name, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("netns %s: %s %s: %w: %s", n.Name, name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// Start starts a long-running command in the namespace; the test's cleanup
// kills exactly that PID and reaps it. configure (optional) may set Stdout,
// Stderr or Env before the start.
func (n *NS) Start(t testing.TB, configure func(*exec.Cmd), name string, args ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command("ip", append([]string{"netns", "exec", n.Name, name}, args...)...)
	if configure != nil {
		configure(cmd)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("netns %s: start %s: %v", n.Name, name, err)
	}
	t.Cleanup(func() { StopProcess(cmd) })
	return cmd
}

// StopProcess kills a started command by its PID and waits for it. `ip netns
// exec` execs the target, so the PID is the tool itself.
func StopProcess(cmd *exec.Cmd) {
	if cmd == nil || cmd.Process == nil {
		return
	}
	if cmd.ProcessState == nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}
}

// Sysctl writes a /proc/sys value inside the namespace; key uses dots or
// slashes ("net.ipv4.ip_forward").
func (n *NS) Sysctl(key, value string) error {
	path := filepath.Join("/proc/sys", strings.ReplaceAll(key, ".", "/"))
	return n.Do(func() error {
		if err := os.WriteFile(path, []byte(value), 0o644); err != nil {
			return fmt.Errorf("netns %s: sysctl %s=%s: %w", n.Name, key, value, err)
		}
		return nil
	})
}

// Listen creates a listener inside the namespace.
func (n *NS) Listen(ctx context.Context, network, addr string) (net.Listener, error) {
	var ln net.Listener
	err := n.Do(func() error {
		var lc net.ListenConfig
		var err error
		ln, err = lc.Listen(ctx, network, addr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("netns %s: listen %s %s: %w", n.Name, network, addr, err)
	}
	return ln, nil
}

// ListenPacket creates a packet socket (UDP) inside the namespace.
func (n *NS) ListenPacket(ctx context.Context, network, addr string) (net.PacketConn, error) {
	var pc net.PacketConn
	err := n.Do(func() error {
		var lc net.ListenConfig
		var err error
		pc, err = lc.ListenPacket(ctx, network, addr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("netns %s: listen %s %s: %w", n.Name, network, addr, err)
	}
	return pc, nil
}

// DialContext dials from inside the namespace. The socket is created on a
// thread in the namespace and keeps it; the connection can then be used from
// any goroutine. Use it as http.Transport.DialContext.
func (n *NS) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	return n.DialFrom(ctx, nil, network, addr)
}

// DialFrom is DialContext with a fixed local address (nil: any).
func (n *NS) DialFrom(ctx context.Context, local net.Addr, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := n.Do(func() error {
		d := net.Dialer{LocalAddr: local}
		var err error
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("netns %s: dial %s %s: %w", n.Name, network, addr, err)
	}
	return c, nil
}

// Cleanup deletes every named namespace whose name starts with prefix
// (leftovers of a killed test run). Links go with their namespaces. It
// returns the names it deleted.
func Cleanup(prefix string) ([]string, error) {
	if prefix == "" {
		return nil, errors.New("cleanup: empty prefix would match every namespace")
	}
	entries, err := os.ReadDir(netnsDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("cleanup: %w", err)
	}
	var deleted []string
	var errs []error
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), prefix) {
			continue
		}
		if err := vnetns.DeleteNamed(e.Name()); err != nil {
			errs = append(errs, fmt.Errorf("cleanup %s: %w", e.Name(), err))
			continue
		}
		deleted = append(deleted, e.Name())
	}
	return deleted, errors.Join(errs...)
}

// RequireRoot skips the test unless it runs as root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespaces, veths, eBPF)")
	}
}

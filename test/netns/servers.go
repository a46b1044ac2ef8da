package netns

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"
)

// Reply is what the harness's HTTP and UDP servers answer: the backend's
// label and the client address the backend saw (after any NAT).
type Reply struct {
	Backend string
	Peer    netip.AddrPort
}

func formatReply(label string, peer string) string { return label + " " + peer + "\n" }

// ParseReply parses "LABEL ADDR:PORT".
func ParseReply(s string) (Reply, error) {
	f := strings.Fields(s)
	if len(f) != 2 {
		return Reply{}, fmt.Errorf("reply %q: want \"LABEL ADDR:PORT\"", s)
	}
	ap, err := netip.ParseAddrPort(f[1])
	if err != nil {
		return Reply{}, fmt.Errorf("reply %q: %w", s, err)
	}
	return Reply{Backend: f[0], Peer: netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())}, nil
}

// ServeHTTP starts, in-process, an HTTP server listening on [::]:port (IPv4
// and IPv6) inside the host's namespace. Every response body is
// "LABEL PEER\n". It stops at test cleanup.
func (h *Host) ServeHTTP(t testing.TB, port uint16) {
	t.Helper()
	stop, err := h.StartHTTP(context.Background(), port)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
}

// StartHTTP is ServeHTTP for callers without a testing.TB (benchmarks);
// stop closes the server and waits for it.
func (h *Host) StartHTTP(ctx context.Context, port uint16) (stop func(), err error) {
	ln, err := h.Listen(ctx, "tcp", fmt.Sprintf("[::]:%d", port))
	if err != nil {
		return nil, err
	}
	label := h.Label
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.WriteString(w, formatReply(label, r.RemoteAddr))
		}),
		ReadHeaderTimeout: 5 * time.Second,
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(ln)
	}()
	return func() {
		_ = srv.Close()
		<-done
	}, nil
}

// ServeStream starts a TCP server on [::]:port that first writes
// "LABEL PEER\n" and then echoes everything it reads, for long-lived
// connections (stickiness, throughput of both directions). It stops, closing
// every connection, at test cleanup.
func (h *Host) ServeStream(t testing.TB, port uint16) {
	t.Helper()
	h.ServeTCP(t, port, func(c net.Conn) {
		if _, err := io.WriteString(c, formatReply(h.Label, c.RemoteAddr().String())); err != nil {
			return
		}
		_, _ = io.Copy(c, c)
	})
}

// ServeTCP starts a TCP server on [::]:port that runs handle for every
// connection (and closes the connection when handle returns). At test
// cleanup it stops accepting, closes every open connection and waits for
// the handlers.
func (h *Host) ServeTCP(t testing.TB, port uint16, handle func(net.Conn)) {
	t.Helper()
	ln, err := h.Listen(context.Background(), "tcp", fmt.Sprintf("[::]:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu    sync.Mutex
		conns = map[net.Conn]struct{}{}
		wg    sync.WaitGroup
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[c] = struct{}{}
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() {
					mu.Lock()
					delete(conns, c)
					mu.Unlock()
					c.Close()
				}()
				handle(c)
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
}

// ServeUDP starts a UDP server on [::]:port that answers every datagram with
// "LABEL PEER\n". It stops at test cleanup.
func (h *Host) ServeUDP(t testing.TB, port uint16) {
	t.Helper()
	pc, err := h.ListenPacket(context.Background(), "udp", fmt.Sprintf("[::]:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 2048)
		for {
			_, peer, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = pc.WriteTo([]byte(formatReply(h.Label, peer.String())), peer)
		}
	}()
	t.Cleanup(func() {
		pc.Close()
		<-done
	})
}

// ServeAll starts ServeHTTP, ServeStream and ServeUDP on every backend.
// Zero ports are skipped.
func (tp *Topology) ServeAll(t testing.TB, httpPort, streamPort, udpPort uint16) {
	t.Helper()
	for _, b := range tp.Backends {
		if httpPort != 0 {
			b.ServeHTTP(t, httpPort)
		}
		if streamPort != 0 {
			b.ServeStream(t, streamPort)
		}
		if udpPort != 0 {
			b.ServeUDP(t, udpPort)
		}
	}
}

// HTTPClient returns a client whose connections are made from inside the
// namespace. keepAlive=false opens one connection per request (each one is
// a new flow for the load balancer).
func (n *NS) HTTPClient(keepAlive bool) *http.Client {
	return &http.Client{
		Transport: &http.Transport{
			DialContext:       n.DialContext,
			DisableKeepAlives: !keepAlive,
			MaxIdleConns:      16,
			IdleConnTimeout:   30 * time.Second,
		},
		Timeout: 5 * time.Second,
	}
}

// Get fetches http://ADDR:PORT/ from inside the namespace with a fresh
// connection (optionally from a given local IP) and parses the reply.
func (n *NS) Get(ctx context.Context, local netip.Addr, target netip.AddrPort) (Reply, error) {
	var laddr net.Addr
	if local.IsValid() {
		laddr = &net.TCPAddr{IP: net.IP(local.AsSlice())}
	}
	c, err := n.DialFrom(ctx, laddr, "tcp", target.String())
	if err != nil {
		return Reply{}, err
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	req := fmt.Sprintf("GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", target)
	if _, err := io.WriteString(c, req); err != nil {
		return Reply{}, fmt.Errorf("http %s: write: %w", target, err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return Reply{}, fmt.Errorf("http %s: read: %w", target, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return Reply{}, fmt.Errorf("http %s: body: %w", target, err)
	}
	if resp.StatusCode != http.StatusOK {
		return Reply{}, fmt.Errorf("http %s: status %d", target, resp.StatusCode)
	}
	return ParseReply(string(body))
}

// UDPRequest sends one datagram from inside the namespace and waits for one
// reply until ctx's deadline (or 2 s).
func (n *NS) UDPRequest(ctx context.Context, target netip.AddrPort, payload []byte) (Reply, error) {
	c, err := n.DialContext(ctx, "udp", target.String())
	if err != nil {
		return Reply{}, err
	}
	defer c.Close()
	dl, ok := ctx.Deadline()
	if !ok {
		dl = time.Now().Add(2 * time.Second)
	}
	_ = c.SetDeadline(dl)
	if _, err := c.Write(payload); err != nil {
		return Reply{}, fmt.Errorf("udp %s: write: %w", target, err)
	}
	buf := make([]byte, 2048)
	nr, err := c.Read(buf)
	if err != nil {
		return Reply{}, fmt.Errorf("udp %s: read: %w", target, err)
	}
	return ParseReply(string(buf[:nr]))
}

// Stream is a client connection to a ServeStream server.
type Stream struct {
	Conn  net.Conn
	Hello Reply // the server's first line: which backend, which peer
	r     *bufio.Reader
	buf   []byte
	Bytes int64 // bytes echoed back so far
}

// OpenStream connects from inside the namespace and reads the server's hello.
func (n *NS) OpenStream(ctx context.Context, target netip.AddrPort) (*Stream, error) {
	c, err := n.DialContext(ctx, "tcp", target.String())
	if err != nil {
		return nil, err
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	r := bufio.NewReader(c)
	line, err := r.ReadString('\n')
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("stream %s: hello: %w", target, err)
	}
	hello, err := ParseReply(line)
	if err != nil {
		c.Close()
		return nil, err
	}
	_ = c.SetDeadline(time.Time{})
	return &Stream{Conn: c, Hello: hello, r: r, buf: make([]byte, 16<<10)}, nil
}

// RoundTrip writes n bytes and reads the n echoed bytes back within timeout.
func (s *Stream) RoundTrip(n int, timeout time.Duration) error {
	if n > len(s.buf) {
		return fmt.Errorf("round trip of %d bytes: at most %d", n, len(s.buf))
	}
	_ = s.Conn.SetDeadline(time.Now().Add(timeout))
	defer func() { _ = s.Conn.SetDeadline(time.Time{}) }()
	for i := range s.buf[:n] {
		s.buf[i] = byte(i)
	}
	if _, err := s.Conn.Write(s.buf[:n]); err != nil {
		return fmt.Errorf("stream write: %w", err)
	}
	got := make([]byte, n)
	if _, err := io.ReadFull(s.r, got); err != nil {
		return fmt.Errorf("stream read after %d bytes: %w", s.Bytes, err)
	}
	for i := range got {
		if got[i] != byte(i) {
			return errors.New("stream: echoed bytes differ")
		}
	}
	s.Bytes += int64(n)
	return nil
}

// Close closes the connection.
func (s *Stream) Close() error { return s.Conn.Close() }

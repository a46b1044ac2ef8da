package health

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"syscall"
)

// prober runs one probe against dst and returns nil when the backend is
// healthy. ctx carries the probe timeout; every prober must return promptly
// when it ends.
type prober interface {
	probe(ctx context.Context, dst netip.AddrPort) error
}

// newProber builds the prober for a normalized spec. The ping prober shares
// the Manager's ICMP sockets.
func newProber(s spec, p *pinger) prober {
	switch s.Type {
	case TypeTCP:
		return tcpProber{}
	case TypeUDP:
		return udpProber{request: []byte(s.Request), response: []byte(s.Response)}
	case TypeHTTP, TypeHTTPS:
		return newHTTPProber(s)
	case TypePing:
		return pingProber{p: p}
	default: // TypeNone is never scheduled
		return noneProber{}
	}
}

// dialer is shared by the tcp and http probers. KeepAlive -1 saves a
// setsockopt per probe: probe connections live for milliseconds.
var dialer = net.Dialer{KeepAlive: -1}

type tcpProber struct{}

func (tcpProber) probe(ctx context.Context, dst netip.AddrPort) error {
	c, err := dialer.DialContext(ctx, "tcp", dst.String())
	if err != nil {
		return fmt.Errorf("tcp connect: %w", err)
	}
	// Close with RST (linger 0) instead of FIN: the active closer of a FIN
	// handshake keeps the 4-tuple in TIME_WAIT for 60 s, and at thousands of
	// probes per second that would fill the kernel's TIME_WAIT table and
	// eat ephemeral ports. HAProxy closes its health-check connections the
	// same way. The backend application sees an accepted connection that is
	// reset, which servers treat as a client going away.
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	if err := c.Close(); err != nil {
		return fmt.Errorf("tcp close: %w", err)
	}
	return nil
}

// udpProber sends request on a connected socket. A connected UDP socket
// receives the ICMP port-unreachable of the backend's kernel as
// ECONNREFUSED on the next read, which is how a closed port is detected.
// With no response configured, silence until the timeout is success: UDP
// has no handshake, and most UDP services do not answer arbitrary payloads.
type udpProber struct {
	request  []byte
	response []byte
}

// udpReadMax bounds the reply examined for the expected response.
const udpReadMax = 4096

func (p udpProber) probe(ctx context.Context, dst netip.AddrPort) error {
	c, err := dialer.DialContext(ctx, "udp", dst.String())
	if err != nil {
		return fmt.Errorf("udp socket: %w", err)
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		if err := c.SetDeadline(dl); err != nil {
			return fmt.Errorf("udp set deadline: %w", err)
		}
	}
	// Wake the read if the Manager stops before the deadline.
	stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(aLongTimeAgo) })
	defer stop()

	if _, err := c.Write(p.request); err != nil {
		if errors.Is(err, syscall.ECONNREFUSED) {
			return fmt.Errorf("udp: port unreachable (ICMP): %w", err)
		}
		return fmt.Errorf("udp send: %w", err)
	}
	buf := make([]byte, udpReadMax)
	n, err := c.Read(buf)
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return fmt.Errorf("udp: port unreachable (ICMP): %w", err)
	case isTimeout(err):
		if ctx.Err() == context.Canceled {
			return ctx.Err()
		}
		if len(p.response) == 0 {
			return nil // no ICMP error within the timeout
		}
		return fmt.Errorf("udp: no reply within the timeout")
	case err != nil:
		return fmt.Errorf("udp receive: %w", err)
	}
	if len(p.response) > 0 && !bytes.Contains(buf[:n], p.response) {
		return fmt.Errorf("udp: reply %q does not contain %q", truncate(buf[:n], 64), p.response)
	}
	return nil
}

// httpProber sends one request per probe on a fresh connection.
type httpProber struct {
	client *http.Client
	scheme string
	method string
	path   string
	host   string
	expect []int // nil: 200-399
	body   []byte
}

func newHTTPProber(s spec) *httpProber {
	tlsConf := &tls.Config{
		InsecureSkipVerify: s.InsecureSkipVerify,
		// With a Host header, verify the certificate for that name (and
		// send it as SNI); without one, Go verifies against the backend IP
		// (the certificate needs an IP SAN).
		ServerName: hostOnly(s.Host),
	}
	tr := &http.Transport{
		// Never honour HTTP_PROXY for a health check: it must reach the
		// backend itself.
		Proxy:       nil,
		DialContext: dialer.DialContext,
		// A new connection per probe: a reused connection would report a
		// backend healthy while it no longer accepts new ones.
		DisableKeepAlives:      true,
		DisableCompression:     true,
		TLSClientConfig:        tlsConf,
		MaxResponseHeaderBytes: 16 << 10,
	}
	return &httpProber{
		client: &http.Client{
			Transport: tr,
			// A redirect is an answer: judge its status, do not follow it
			// to somewhere that is not this backend.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		scheme: s.Type, // "http" or "https"
		method: s.Method,
		path:   s.Path,
		host:   s.Host,
		expect: s.ExpectStatus,
		body:   []byte(s.ExpectBody),
	}
}

func (p *httpProber) probe(ctx context.Context, dst netip.AddrPort) error {
	url := p.scheme + "://" + dst.String() + p.path
	req, err := http.NewRequestWithContext(ctx, p.method, url, nil)
	if err != nil {
		return fmt.Errorf("http request %s: %w", url, err)
	}
	if p.host != "" {
		req.Host = p.host
	}
	req.Header.Set("User-Agent", "xlb-health/1")
	resp, err := p.client.Do(req)
	if err != nil {
		return fmt.Errorf("http: %w", err)
	}
	defer resp.Body.Close()
	if !p.statusOK(resp.StatusCode) {
		want := "200-399"
		if p.expect != nil {
			want = fmt.Sprint(p.expect)
		}
		return fmt.Errorf("http %s %s: status %d, want %s", p.method, url, resp.StatusCode, want)
	}
	if len(p.body) == 0 {
		return nil
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxBodyRead))
	if err != nil {
		return fmt.Errorf("http %s %s: read body: %w", p.method, url, err)
	}
	if !bytes.Contains(b, p.body) {
		return fmt.Errorf("http %s %s: body (first %d bytes) does not contain %q", p.method, url, len(b), p.body)
	}
	return nil
}

func (p *httpProber) statusOK(code int) bool {
	if p.expect == nil {
		return code >= 200 && code <= 399
	}
	return slices.Contains(p.expect, code)
}

type pingProber struct{ p *pinger }

func (pp pingProber) probe(ctx context.Context, dst netip.AddrPort) error {
	return pp.p.ping(ctx, dst.Addr())
}

type noneProber struct{}

func (noneProber) probe(context.Context, netip.AddrPort) error { return nil }

// hostOnly strips an optional port from a Host header value.
func hostOnly(h string) string {
	if host, _, err := net.SplitHostPort(h); err == nil {
		return host
	}
	return strings.TrimSuffix(strings.TrimPrefix(h, "["), "]")
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func truncate(b []byte, n int) []byte {
	if len(b) > n {
		return b[:n]
	}
	return b
}

package daemon

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"io"
	"log/slog"
	"math/big"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/xlb-dev/xlb/api"
	"github.com/xlb-dev/xlb/dataplane"
	"github.com/xlb-dev/xlb/internal/config"
	"github.com/xlb-dev/xlb/internal/daemon/fakedp"
	"github.com/xlb-dev/xlb/internal/localports"
	"github.com/xlb-dev/xlb/internal/state"
)

func TestExpand(t *testing.T) {
	in := api.Service{Name: "web", Spec: api.ServiceSpec{
		VIPs: []string{"192.0.2.1", "2001:db8::1"}, Port: 443, Protocol: "tcp", NATMode: "fullnat",
		SNATAddresses: []string{"2001:db8::99"},
		SourceRanges:  []string{"10.0.0.0/8"},
		Backends:      []api.Backend{{Address: "10.0.0.1", Port: 8443}, {Address: "10.0.0.2", Port: 8443}},
	}}
	if err := api.ValidateService(&in, api.ValidateOptions{DefaultSNAT: []netip.Addr{netip.MustParseAddr("192.0.2.254")}}); err != nil {
		t.Fatal(err)
	}
	health := healthFunc(func(svc string, ap netip.AddrPort) (dataplane.BackendState, bool) {
		return dataplane.BackendDown, svc == "web" && ap.String() == "10.0.0.2:8443"
	})
	out := expand(api.DefaultService(in), []netip.Addr{netip.MustParseAddr("192.0.2.254"), netip.MustParseAddr("2001:db8::254")}, localports.Range{}, health)
	if len(out) != 2 {
		t.Fatalf("want one datapath service per VIP, got %d", len(out))
	}
	v4, v6 := out[0], out[1]
	if v4.Name != "web/v4" || v4.VIP.String() != "192.0.2.1" || v4.SNATAddr.String() != "192.0.2.254" || len(v4.Backends) != 2 ||
		v4.IdleTimeout != 240*time.Second || v4.AffinityTimeout != 10800*time.Second || v4.Algorithm != dataplane.AlgoMaglev {
		t.Fatalf("v4: %+v", v4)
	}
	if v4.Backends[1].State != dataplane.BackendDown || v4.Backends[0].State != dataplane.BackendActive || v4.Backends[0].Weight != 1 {
		t.Fatalf("backend states: %+v", v4.Backends)
	}
	if len(v4.SourceRanges) != 1 || v4.SourceRanges[0].String() != "10.0.0.0/8" {
		t.Fatalf("v4 ranges: %v", v4.SourceRanges)
	}
	// The service's own SNAT address wins over the default; the v6 VIP has
	// no backends (allowed) and, with only IPv4 ranges listed, admits no
	// IPv6 client.
	if v6.Name != "web/v6" || v6.SNATAddr.String() != "2001:db8::99" || len(v6.Backends) != 0 {
		t.Fatalf("v6: %+v", v6)
	}
	if len(v6.SourceRanges) != 1 || v6.SourceRanges[0] != denyAllV6 {
		t.Fatalf("v6 ranges must deny all: %v", v6.SourceRanges)
	}
	if apiName("web/v6") != "web" {
		t.Fatal("apiName")
	}
}

type healthFunc func(string, netip.AddrPort) (dataplane.BackendState, bool)

func (f healthFunc) BackendState(s string, ap netip.AddrPort) (dataplane.BackendState, bool) {
	return f(s, ap)
}

// startDaemon runs a daemon with a fake datapath until the test ends.
func startDaemon(t *testing.T, cfg config.Config, dp *fakedp.Fake) (*Daemon, func() error) {
	t.Helper()
	var logs bytes.Buffer
	ctx, cancel := context.WithCancel(context.Background())
	d, err := New(ctx, Options{Config: cfg, Logger: slog.New(slog.NewTextHandler(&logs, nil)), Version: "test",
		OpenDataplane: func(context.Context, config.Config, *slog.Logger) (ManagedDataplane, error) { return dp, nil }})
	if err != nil {
		cancel()
		t.Fatalf("New: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	stopped := false
	stop := func() error {
		if stopped {
			return nil
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			return err
		case <-time.After(ShutdownTimeout + 5*time.Second):
			t.Fatal("daemon did not stop")
			return nil
		}
	}
	t.Cleanup(func() { stop() })
	return d, stop
}

func testConfig(t *testing.T, stateDir string) config.Config {
	cfg := config.Defaults()
	cfg.APIListen = "127.0.0.1:0"
	cfg.StateDir = stateDir
	cfg.Interfaces = []string{"eth0"}
	return cfg
}

func doJSON(t *testing.T, c *http.Client, method, url string, body any, out any) int {
	t.Helper()
	var rd io.Reader
	if body != nil {
		raw, _ := json.Marshal(body)
		rd = bytes.NewReader(raw)
	}
	req, _ := http.NewRequest(method, url, rd)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	if out != nil {
		json.NewDecoder(resp.Body).Decode(out)
	}
	return resp.StatusCode
}

// The desired state survives a restart: the new process programs the
// datapath from the state file before it serves, and keeps the generation.
func TestRestartRestoresState(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(t, dir)
	dp := fakedp.New("eth0")
	d, stop := startDaemon(t, cfg, dp)
	base := "http://" + d.Addr().String()
	svc := api.Service{Spec: api.ServiceSpec{VIPs: []string{"192.0.2.1"}, Port: 53, Protocol: "udp", Backends: []api.Backend{{Address: "10.0.0.1", Port: 53}}}}
	if code := doJSON(t, http.DefaultClient, "PUT", base+"/v1/services/dns", svc, nil); code != 201 {
		t.Fatalf("put: %d", code)
	}
	var st1 api.Status
	doJSON(t, http.DefaultClient, "GET", base+"/v1/status", nil, &st1)
	if err := stop(); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	if closed, destroyed := dp.Lifecycle(); !closed || destroyed {
		t.Fatalf("shutdown must close without detaching: closed=%v destroyed=%v", closed, destroyed)
	}

	dp2 := fakedp.New("eth0")
	d2, _ := startDaemon(t, cfg, dp2)
	// Restored and applied before the API was even listening.
	applied, calls := dp2.Applied()
	if calls != 1 || len(applied) != 1 || applied[0].Name != "dns/v4" || applied[0].Protocol != "udp" {
		t.Fatalf("restart applied %+v (%d calls)", applied, calls)
	}
	var st2 api.Status
	base2 := "http://" + d2.Addr().String()
	doJSON(t, http.DefaultClient, "GET", base2+"/v1/status", nil, &st2)
	if st2.Generation != st1.Generation || st2.BootID == st1.BootID || st2.Services != 1 || !st2.Ready {
		t.Fatalf("before %+v after %+v", st1, st2)
	}
	resp, err := http.Get(base2 + "/readyz")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("readyz after restart: %v %v", resp, err)
	}
	resp.Body.Close()
}

func TestCorruptStateStartsEmpty(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, state.FileName), []byte("{garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	d, _ := startDaemon(t, testConfig(t, dir), fakedp.New("eth0"))
	var st api.Status
	doJSON(t, http.DefaultClient, "GET", "http://"+d.Addr().String()+"/v1/status", nil, &st)
	if st.Services != 0 || !st.Ready {
		t.Fatalf("status %+v", st)
	}
	if m, _ := filepath.Glob(filepath.Join(dir, state.FileName+".corrupt-*")); len(m) != 1 {
		t.Fatalf("corrupt file not kept aside: %v", m)
	}
}

func TestDetachOnExit(t *testing.T) {
	cfg := testConfig(t, t.TempDir())
	cfg.DetachOnExit = true
	dp := fakedp.New("eth0")
	_, stop := startDaemon(t, cfg, dp)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if _, destroyed := dp.Lifecycle(); !destroyed {
		t.Fatal("--detach-on-exit did not detach")
	}
	// The state file exists after a clean exit even with no change.
	if _, err := os.Stat(filepath.Join(cfg.StateDir, state.FileName)); err != nil {
		t.Fatal(err)
	}
}

// A failed initial Apply keeps the API up (so an operator can fix the
// state) but not ready; the next successful change makes it ready.
func TestInitialApplyFailureNotReady(t *testing.T) {
	dp := fakedp.New("eth0")
	dp.FailNextApply(io.ErrUnexpectedEOF)
	d, _ := startDaemon(t, testConfig(t, t.TempDir()), dp)
	base := "http://" + d.Addr().String()
	var e api.Error
	if code := doJSON(t, http.DefaultClient, "GET", base+"/readyz", nil, &e); code != 503 || !strings.Contains(e.Message, "apply failed") {
		t.Fatalf("readyz: %d %+v", code, e)
	}
	if err := d.Manager().Reconcile(context.Background()); err != nil {
		t.Fatal(err)
	}
	if code := doJSON(t, http.DefaultClient, "GET", base+"/readyz", nil, nil); code != 200 {
		t.Fatalf("readyz after reconcile: %d", code)
	}
}

// --- mTLS ---

type pki struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func newCA(t *testing.T, cn string) pki {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: cn}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return pki{cert, key}
}

func (ca pki) issue(t *testing.T, cn string, server bool) tls.Certificate {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	if server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tmpl.DNSNames = []string{"localhost"}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func writePEM(t *testing.T, dir, name, typ string, der []byte) string {
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestMutualTLS(t *testing.T) {
	dir := t.TempDir()
	serverCA, clientCA, otherCA := newCA(t, "server-ca"), newCA(t, "client-ca"), newCA(t, "rogue-ca")
	srvCert := serverCA.issue(t, "xlbd", true)
	keyDER, _ := x509.MarshalPKCS8PrivateKey(srvCert.PrivateKey)
	cfg := testConfig(t, filepath.Join(dir, "state"))
	cfg.TLSCertFile = writePEM(t, dir, "tls.crt", "CERTIFICATE", srvCert.Certificate[0])
	cfg.TLSKeyFile = writePEM(t, dir, "tls.key", "PRIVATE KEY", keyDER)
	cfg.ClientCAFile = writePEM(t, dir, "client-ca.crt", "CERTIFICATE", clientCA.cert.Raw)
	d, _ := startDaemon(t, cfg, fakedp.New("eth0"))
	base := "https://localhost:" + strings.TrimPrefix(d.Addr().String(), "127.0.0.1:")

	roots := x509.NewCertPool()
	roots.AddCert(serverCA.cert)
	client := func(certs ...tls.Certificate) *http.Client {
		return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
			TLSClientConfig: &tls.Config{RootCAs: roots, Certificates: certs, ServerName: "localhost"},
		}}
	}
	rogueCert := otherCA.issue(t, "ccm", false)
	good, none := client(clientCA.issue(t, "ccm", false)), client()
	// Go clients send no certificate when theirs does not match the CAs
	// the server asks for; force it, as a misconfigured client would.
	rogue := client()
	rogue.Transport.(*http.Transport).TLSClientConfig.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
		return &rogueCert, nil
	}

	if code := doJSON(t, good, "GET", base+"/v1/status", nil, nil); code != 200 {
		t.Fatalf("good client cert: %d", code)
	}
	// A certificate from another CA fails the handshake itself.
	req, _ := http.NewRequest("GET", base+"/v1/status", nil)
	if resp, err := rogue.Do(req); err == nil {
		resp.Body.Close()
		t.Fatalf("rogue client cert accepted: %d", resp.StatusCode)
	} else if !strings.Contains(err.Error(), "tls") && !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("rogue client: unexpected error %v", err)
	}
	// A client whose only certificate is from another CA presents none: 401.
	if code := doJSON(t, client(rogueCert), "GET", base+"/v1/status", nil, nil); code != 401 {
		t.Fatalf("client with a non-matching certificate: %d", code)
	}
	// Without a certificate: probes work, the API answers 401.
	if code := doJSON(t, none, "GET", base+"/healthz", nil, nil); code != 200 {
		t.Fatalf("healthz without cert: %d", code)
	}
	var e api.Error
	if code := doJSON(t, none, "GET", base+"/v1/status", nil, &e); code != 401 || e.Code != api.CodeUnauthorized {
		t.Fatalf("no cert: %d %+v", code, e)
	}
}

// Credentials are checked before anything else starts.
func TestNewRejectsBadCredentials(t *testing.T) {
	dir := t.TempDir()
	empty := filepath.Join(dir, "token")
	os.WriteFile(empty, []byte("  \n"), 0o600)
	for name, mut := range map[string]func(*config.Config){
		"empty token":    func(c *config.Config) { c.APITokenFile = empty },
		"missing token":  func(c *config.Config) { c.APITokenFile = filepath.Join(dir, "nope") },
		"missing cert":   func(c *config.Config) { c.TLSCertFile, c.TLSKeyFile = filepath.Join(dir, "c"), filepath.Join(dir, "k") },
		"public no auth": func(c *config.Config) { c.APIListen = "0.0.0.0:0" },
	} {
		cfg := testConfig(t, filepath.Join(dir, "state"))
		mut(&cfg)
		opened := false
		_, err := New(context.Background(), Options{Config: cfg, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
			OpenDataplane: func(context.Context, config.Config, *slog.Logger) (ManagedDataplane, error) {
				opened = true
				return fakedp.New(), nil
			}})
		if err == nil || opened {
			t.Errorf("%s: err=%v, datapath opened=%v", name, err, opened)
		}
	}
}

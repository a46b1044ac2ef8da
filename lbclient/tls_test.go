package lbclient_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"log"
	"math/big"
	"net"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/xlb-dev/xlb/lbclient"
	"github.com/xlb-dev/xlb/lbclient/lbclienttest"
)

type pki struct {
	caCert *x509.Certificate
	caKey  *ecdsa.PrivateKey
	caPEM  []byte
}

func newPKI(t *testing.T) *pki {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "xlb test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &pki{caCert: cert, caKey: key, caPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// issue returns PEM cert and key for cn, usable as server (with ips) or
// client certificate.
func (p *pki) issue(t *testing.T, serial int64, cn string, ips ...net.IP) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		IPAddresses:  ips,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.caCert, &key.PublicKey, p.caKey)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
}

func writeFile(t *testing.T, dir, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestMutualTLS(t *testing.T) {
	dir := t.TempDir()
	p := newPKI(t)
	srvCert, srvKey := p.issue(t, 2, "xlbd", net.ParseIP("127.0.0.1"))
	cliCert, cliKey := p.issue(t, 3, "xlb-ccm")
	pair, err := tls.X509KeyPair(srvCert, srvKey)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(p.caCert)

	fake := lbclienttest.NewFake()
	srv := httptest.NewUnstartedServer(fake)
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{pair}, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: pool}
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // refused handshakes are on purpose
	srv.StartTLS()
	t.Cleanup(srv.Close)

	caFile := writeFile(t, dir, "ca.pem", p.caPEM)
	certFile := writeFile(t, dir, "client.pem", cliCert)
	keyFile := writeFile(t, dir, "client-key.pem", cliKey)

	c := newClient(t, lbclient.Config{Endpoint: srv.URL, TLS: lbclient.TLSConfig{CAFile: caFile, CertFile: certFile, KeyFile: keyFile}})
	if _, err := c.Status(t.Context()); err != nil {
		t.Fatalf("Status over mTLS: %v", err)
	}
	reqs := fake.Requests()
	if len(reqs) != 1 || reqs[0].ClientCertCN != "xlb-ccm" {
		t.Fatalf("server saw %+v, want one request with client certificate CN xlb-ccm", reqs)
	}

	// Rotate the client certificate in place: the next handshake must
	// present the new one without a new Client.
	cliCert2, cliKey2 := p.issue(t, 4, "xlb-ccm-rotated")
	writeFile(t, dir, "client.pem", cliCert2)
	writeFile(t, dir, "client-key.pem", cliKey2)
	future := time.Now().Add(time.Minute)
	for _, f := range []string{certFile, keyFile} {
		if err := os.Chtimes(f, future, future); err != nil {
			t.Fatal(err)
		}
	}
	srv.CloseClientConnections() // force a new handshake
	if _, err := c.Status(t.Context()); err != nil {
		t.Fatalf("Status after rotation: %v", err)
	}
	reqs = fake.Requests()
	if got := reqs[len(reqs)-1].ClientCertCN; got != "xlb-ccm-rotated" {
		t.Errorf("client certificate after rotation: CN %q, want xlb-ccm-rotated", got)
	}

	// No client certificate: refused by the server, and not retried.
	before := len(fake.Requests())
	noCert := newClient(t, lbclient.Config{Endpoint: srv.URL, TLS: lbclient.TLSConfig{CAFile: caFile}})
	if _, err := noCert.Status(t.Context()); err == nil || !strings.Contains(err.Error(), "certificate") || strings.Contains(err.Error(), "attempts") {
		t.Errorf("without client certificate: %v, want one certificate error, not retried", err)
	}
	// Unknown CA: a verification error, not retried.
	noCA := newClient(t, lbclient.Config{Endpoint: srv.URL, TLS: lbclient.TLSConfig{CertFile: certFile, KeyFile: keyFile}})
	_, err = noCA.Status(t.Context())
	if err == nil || !strings.Contains(err.Error(), "certificate") || strings.Contains(err.Error(), "attempts") {
		t.Errorf("with an unknown server CA: %v, want one certificate verification error", err)
	}
	if n := len(fake.Requests()) - before; n != 0 {
		t.Errorf("%d requests reached the handler without valid certificates", n)
	}
}

package lbclient

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"
)

// fileStamp identifies one version of a file cheaply: a rotation (rewrite
// or Kubernetes' atomic symlink swap of a mounted Secret) changes the
// modification time or the size of the file the path resolves to.
type fileStamp struct {
	modTime time.Time
	size    int64
}

func stampOf(path string) (fileStamp, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return fileStamp{}, err
	}
	return fileStamp{modTime: fi.ModTime(), size: fi.Size()}, nil
}

// tokenFile serves the bearer token kept in a file, re-reading the file
// whenever it changed so that a rotated token is used without a restart.
type tokenFile struct {
	path string

	mu    sync.Mutex
	stamp fileStamp
	token string
}

func newTokenFile(path string) (*tokenFile, error) {
	t := &tokenFile{path: path}
	// Read once now so that a wrong path fails at start-up, not on the
	// first request.
	if _, err := t.get(); err != nil {
		return nil, err
	}
	return t, nil
}

func (t *tokenFile) get() (string, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	st, err := stampOf(t.path)
	if err != nil {
		return "", fmt.Errorf("token file: %w", err)
	}
	if t.token != "" && st == t.stamp {
		return t.token, nil
	}
	raw, err := os.ReadFile(t.path)
	if err != nil {
		return "", fmt.Errorf("token file: %w", err)
	}
	tok := strings.TrimSpace(string(raw))
	if tok == "" {
		return "", fmt.Errorf("token file %s is empty", t.path)
	}
	t.token, t.stamp = tok, st
	return tok, nil
}

// clientCert serves the mTLS client certificate, reloading the pair when
// either file changed (cert-manager and friends rotate them in place).
type clientCert struct {
	certFile, keyFile string

	mu                  sync.Mutex
	certStamp, keyStamp fileStamp
	cert                *tls.Certificate
}

func newClientCert(certFile, keyFile string) (*clientCert, error) {
	c := &clientCert{certFile: certFile, keyFile: keyFile}
	if _, err := c.get(); err != nil {
		return nil, err
	}
	return c, nil
}

func (c *clientCert) get() (*tls.Certificate, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	cs, err := stampOf(c.certFile)
	if err != nil {
		return nil, fmt.Errorf("client certificate: %w", err)
	}
	ks, err := stampOf(c.keyFile)
	if err != nil {
		return nil, fmt.Errorf("client key: %w", err)
	}
	if c.cert != nil && cs == c.certStamp && ks == c.keyStamp {
		return c.cert, nil
	}
	pair, err := tls.LoadX509KeyPair(c.certFile, c.keyFile)
	if err != nil {
		// Mid-rotation the files may briefly not match; keep serving the
		// previous pair rather than failing the handshake.
		if c.cert != nil {
			return c.cert, nil
		}
		return nil, fmt.Errorf("load client certificate %s / key %s: %w", c.certFile, c.keyFile, err)
	}
	c.cert, c.certStamp, c.keyStamp = &pair, cs, ks
	return c.cert, nil
}

// buildTLS turns TLSConfig into a *tls.Config.
func buildTLS(cfg TLSConfig) (*tls.Config, error) {
	tc := &tls.Config{
		MinVersion:         tls.VersionTLS12,
		ServerName:         cfg.ServerName,
		InsecureSkipVerify: cfg.InsecureSkipVerify, //nolint:gosec // operator's explicit choice
	}
	if cfg.CAFile != "" {
		pem, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return nil, fmt.Errorf("CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("CA file %s: no PEM certificate found", cfg.CAFile)
		}
		tc.RootCAs = pool
	}
	if (cfg.CertFile == "") != (cfg.KeyFile == "") {
		return nil, errors.New("TLS: CertFile and KeyFile must be given together")
	}
	if cfg.CertFile != "" {
		cc, err := newClientCert(cfg.CertFile, cfg.KeyFile)
		if err != nil {
			return nil, err
		}
		tc.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return cc.get()
		}
	}
	return tc, nil
}

package apiserver

import (
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"

	"github.com/xlb-dev/xlb/api"
)

// authenticator checks the credentials of one request. When both a token
// and client certificates are configured, both are required.
type authenticator struct {
	tokenSum    [sha256.Size]byte
	hasToken    bool
	requireCert bool
}

func newAuthenticator(token []byte, requireCert bool) authenticator {
	a := authenticator{requireCert: requireCert, hasToken: len(token) > 0}
	if a.hasToken {
		a.tokenSum = sha256.Sum256(token)
	}
	return a
}

func (a authenticator) check(r *http.Request) error {
	if a.requireCert && (r.TLS == nil || len(r.TLS.VerifiedChains) == 0) {
		return &api.Error{Code: api.CodeUnauthorized, Message: "a client certificate signed by the configured client CA is required"}
	}
	if !a.hasToken {
		return nil
	}
	scheme, tok, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || tok == "" {
		return &api.Error{Code: api.CodeUnauthorized, Message: "missing bearer token (Authorization: Bearer <token>)"}
	}
	// Comparing fixed-size digests in constant time hides both the token
	// and its length from timing.
	sum := sha256.Sum256([]byte(strings.TrimSpace(tok)))
	if subtle.ConstantTimeCompare(sum[:], a.tokenSum[:]) != 1 {
		return &api.Error{Code: api.CodeUnauthorized, Message: "invalid bearer token"}
	}
	return nil
}

// ReadToken reads a bearer token file; surrounding whitespace is ignored.
func ReadToken(path string) ([]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("api token file: %w", err)
	}
	tok := strings.TrimSpace(string(data))
	if tok == "" {
		return nil, fmt.Errorf("api token file %s is empty", path)
	}
	if strings.ContainsAny(tok, " \t\r\n") {
		return nil, fmt.Errorf("api token file %s: the token must be one line without spaces", path)
	}
	return []byte(tok), nil
}

// TLSConfig builds the server TLS configuration. With a client CA, a
// client certificate that is presented must verify against it (a wrong
// certificate fails the handshake); a connection without one is accepted
// at the TLS layer so that kubelet probes can reach /healthz and /readyz,
// and every other route then answers 401 (see Options.RequireClientCert).
func TLSConfig(certFile, keyFile, clientCAFile string) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("tls certificate %s / key %s: %w", certFile, keyFile, err)
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}}
	if clientCAFile != "" {
		pem, err := os.ReadFile(clientCAFile)
		if err != nil {
			return nil, fmt.Errorf("client CA: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, errors.New("client CA " + clientCAFile + ": no PEM certificate found")
		}
		cfg.ClientCAs = pool
		cfg.ClientAuth = tls.VerifyClientCertIfGiven
	}
	return cfg, nil
}

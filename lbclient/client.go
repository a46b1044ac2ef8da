// Package lbclient is the typed Go client of xlbd's REST API v1 (wire types
// in package api). It is used by xlb-ccm and by xlbctl.
//
// Every method takes a context; Config.Timeout bounds each HTTP attempt and
// the context bounds the whole call including retries. Transient failures
// (connection errors, 429, 502, 503, 504) are retried with exponential
// backoff and jitter; validation and other 4xx answers never are.
package lbclient

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/go-resty/resty/v2"

	"github.com/xlb-dev/xlb/api"
)

// DefaultEndpoint is where xlbd listens unless told otherwise.
const DefaultEndpoint = "http://127.0.0.1:7470"

// Defaults applied to zero Config fields.
const (
	DefaultTimeout      = 10 * time.Second
	DefaultRetries      = 3
	DefaultRetryWaitMin = 100 * time.Millisecond
	DefaultRetryWaitMax = 2 * time.Second
	DefaultUserAgent    = "xlb-lbclient/" + api.Version
)

// maxRetryAfter caps a server's Retry-After so that a misconfigured proxy
// cannot park a caller for hours; the context still bounds every wait.
const maxRetryAfter = time.Minute

// maxResponseBytes guards the client against an endless or hostile body.
const maxResponseBytes = 64 << 20

// TLSConfig configures https endpoints.
type TLSConfig struct {
	// CAFile: PEM bundle used to verify xlbd (default: system roots).
	CAFile string
	// CertFile and KeyFile: client certificate for mTLS. Reloaded when the
	// files change, so rotation needs no restart.
	CertFile string
	KeyFile  string
	// ServerName overrides the name verified in xlbd's certificate.
	ServerName string
	// InsecureSkipVerify disables verification of xlbd's certificate.
	// For experiments only.
	InsecureSkipVerify bool
}

func (t TLSConfig) isSet() bool { return t != TLSConfig{} }

// Config configures a Client. Only Endpoint is required.
type Config struct {
	// Endpoint: http://host:port or https://host:port, optionally with a
	// path prefix when xlbd sits behind a proxy.
	Endpoint string
	// Token is sent as "Authorization: Bearer TOKEN". TokenFile instead
	// names a file holding the token; it is re-read when it changes.
	Token     string
	TokenFile string
	TLS       TLSConfig
	// Timeout bounds one HTTP attempt (default 10s).
	Timeout time.Duration
	// Retries: further attempts after a transient failure (default 3;
	// negative disables retries).
	Retries int
	// RetryWaitMin/Max bound the exponential backoff (default 100ms / 2s).
	RetryWaitMin time.Duration
	RetryWaitMax time.Duration
	// UserAgent identifies the caller in xlbd's logs.
	UserAgent string
	// Logger receives one record per retry (default: discard).
	Logger *slog.Logger
}

// Client talks to one xlbd. It is safe for concurrent use.
type Client struct {
	endpoint  string
	rc        *resty.Client
	token     string
	tokenFile *tokenFile
	retries   int
	waitMin   time.Duration
	waitMax   time.Duration
	log       *slog.Logger
}

// New validates cfg and builds a Client. It reads the token file and the
// TLS files once so that a wrong path fails here rather than later.
func New(cfg Config) (*Client, error) {
	endpoint, err := parseEndpoint(cfg.Endpoint)
	if err != nil {
		return nil, err
	}
	if cfg.Token != "" && cfg.TokenFile != "" {
		return nil, errors.New("lbclient: set Token or TokenFile, not both")
	}
	if cfg.TLS.isSet() && endpoint.Scheme != "https" {
		return nil, fmt.Errorf("lbclient: TLS settings given but endpoint %q is not https://", cfg.Endpoint)
	}
	c := &Client{
		endpoint: strings.TrimSuffix(endpoint.String(), "/"),
		token:    strings.TrimSpace(cfg.Token),
		retries:  cfg.Retries,
		waitMin:  cfg.RetryWaitMin,
		waitMax:  cfg.RetryWaitMax,
		log:      cfg.Logger,
	}
	if cfg.TokenFile != "" {
		if c.tokenFile, err = newTokenFile(cfg.TokenFile); err != nil {
			return nil, fmt.Errorf("lbclient: %w", err)
		}
	}
	switch {
	case c.retries == 0:
		c.retries = DefaultRetries
	case c.retries < 0:
		c.retries = 0
	}
	if c.waitMin <= 0 {
		c.waitMin = DefaultRetryWaitMin
	}
	if c.waitMax <= 0 {
		c.waitMax = DefaultRetryWaitMax
	}
	if c.waitMax < c.waitMin {
		c.waitMax = c.waitMin
	}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	timeout := cfg.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	ua := cfg.UserAgent
	if ua == "" {
		ua = DefaultUserAgent
	}

	tr := http.DefaultTransport.(*http.Transport).Clone()
	if endpoint.Scheme == "https" {
		if tr.TLSClientConfig, err = buildTLS(cfg.TLS); err != nil {
			return nil, fmt.Errorf("lbclient: %w", err)
		}
	}
	c.rc = resty.NewWithClient(&http.Client{Transport: tr, Timeout: timeout}).
		SetRetryCount(0). // retries are done by Client.do, see there
		SetHeader("User-Agent", ua).
		SetHeader("Accept", "application/json").
		SetResponseBodyLimit(maxResponseBytes).
		SetLogger(restyLogger{c.log})
	return c, nil
}

func parseEndpoint(raw string) (*url.URL, error) {
	if raw == "" {
		return nil, errors.New("lbclient: Endpoint is empty")
	}
	if !strings.Contains(raw, "://") {
		return nil, fmt.Errorf("lbclient: Endpoint %q: scheme must be http:// or https:// (e.g. http://%s)", raw, raw)
	}
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("lbclient: Endpoint %q: %w", raw, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Errorf("lbclient: Endpoint %q: scheme must be http:// or https://", raw)
	}
	if u.Host == "" {
		return nil, fmt.Errorf("lbclient: Endpoint %q: no host", raw)
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("lbclient: Endpoint %q: no query or fragment allowed", raw)
	}
	return u, nil
}

// Endpoint is the base URL the client talks to.
func (c *Client) Endpoint() string { return c.endpoint }

// request is one API call.
type request struct {
	method string
	path   string // already escaped, starts with "/"
	query  url.Values
	body   []byte
	// statusIsAnswer: a 503 from /readyz means "not ready"; retrying it
	// would only delay that answer.
	statusIsAnswer bool
}

// do runs r, retrying transient failures, and returns the 2xx response or
// an error (an *APIError for a non-2xx answer).
//
// Retrying is safe for every call of this API: reads are GETs and every
// mutation is an idempotent PUT or DELETE of a named object, so sending it
// twice leaves the same state. (A DELETE whose first answer was lost
// reports not-found on the retry; callers treat IsNotFound on delete as
// done.)
func (c *Client) do(ctx context.Context, r request) (*resty.Response, error) {
	for attempt := 1; ; attempt++ {
		resp, err := c.once(ctx, r)
		if err == nil && resp.IsSuccess() {
			return resp, nil
		}
		if ctxErr := ctx.Err(); ctxErr != nil {
			return nil, fmt.Errorf("%s %s: %w", r.method, r.path, ctxErr)
		}
		var failure error
		var retryable bool
		var after time.Duration
		if err != nil {
			retryable = transientTransportError(err)
			// url.Error would repeat method and URL; keep its cause only.
			var ue *url.Error
			if errors.As(err, &ue) {
				err = ue.Err
			}
			failure = fmt.Errorf("%s %s%s: %w", r.method, c.endpoint, r.path, err)
		} else {
			failure = decodeAPIError(r, resp)
			retryable = !r.statusIsAnswer && retryableStatus(resp.StatusCode())
			after = retryAfter(resp.Header().Get("Retry-After"), time.Now())
		}
		if !retryable || attempt > c.retries {
			if attempt > 1 {
				return nil, fmt.Errorf("%w (after %d attempts)", failure, attempt)
			}
			return nil, failure
		}
		wait := c.backoff(attempt, after)
		if deadline, ok := ctx.Deadline(); ok && time.Until(deadline) < wait {
			// Waiting would end after the caller's deadline: report the
			// real failure now instead of a bare "deadline exceeded" later.
			return nil, fmt.Errorf("%w (after %d attempts; no time left to retry)", failure, attempt)
		}
		c.log.InfoContext(ctx, "xlbd request failed, retrying",
			"method", r.method, "path", r.path, "attempt", attempt, "wait", wait, "error", failure)
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("%w; retry abandoned: %w", failure, ctx.Err())
		}
	}
}

// once sends one attempt. The token is looked up per attempt so that a
// rotated token file takes effect immediately.
func (c *Client) once(ctx context.Context, r request) (*resty.Response, error) {
	req := c.rc.R().SetContext(ctx)
	tok := c.token
	if c.tokenFile != nil {
		var err error
		if tok, err = c.tokenFile.get(); err != nil {
			return nil, err
		}
	}
	if tok != "" {
		req.SetHeader("Authorization", "Bearer "+tok)
	}
	if r.query != nil {
		req.SetQueryParamsFromValues(r.query)
	}
	if r.body != nil {
		req.SetHeader("Content-Type", "application/json").SetBody(r.body)
	}
	return req.Execute(r.method, c.endpoint+r.path)
}

// backoff is capped exponential backoff with jitter: the n-th retry waits
// a random time in [d/2, d] with d = min(waitMax, waitMin*2^(n-1)), so that
// many CCM replicas retrying after an xlbd restart do not arrive in step.
// A server-sent Retry-After wins.
func (c *Client) backoff(attempt int, retryAfter time.Duration) time.Duration {
	if retryAfter > 0 {
		return min(retryAfter, maxRetryAfter)
	}
	d := c.waitMax
	if shift := attempt - 1; shift < 30 {
		d = min(c.waitMax, c.waitMin<<shift)
	}
	half := d / 2
	return half + rand.N(d-half+1)
}

func retryableStatus(code int) bool {
	switch code {
	case http.StatusTooManyRequests, http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return true
	}
	return false
}

// transientTransportError tells connection trouble (refused, reset, timed
// out: xlbd restarting) from errors that a retry cannot fix.
func transientTransportError(err error) bool {
	var (
		unknownAuthority x509.UnknownAuthorityError
		hostname         x509.HostnameError
		invalid          x509.CertificateInvalidError
		verify           *tls.CertificateVerificationError
		recordHeader     tls.RecordHeaderError
		opErr            *net.OpError
	)
	switch {
	// Certificate trouble, plain HTTP spoken to TLS, or the server refusing
	// our client certificate: the next attempt would fail the same way.
	case errors.As(err, &unknownAuthority), errors.As(err, &hostname), errors.As(err, &invalid),
		errors.As(err, &verify), errors.As(err, &recordHeader),
		errors.As(err, &opErr) && opErr.Op == "remote error":
		return false
	case errors.Is(err, resty.ErrResponseBodyTooLarge):
		return false
	}
	var ue *url.Error
	// Errors outside the HTTP round trip (e.g. an unreadable token file)
	// are not url.Errors and are not transient either.
	return errors.As(err, &ue)
}

// retryAfter parses a Retry-After header: delay-seconds or an HTTP date.
func retryAfter(v string, now time.Time) time.Duration {
	if v == "" {
		return 0
	}
	if s, err := strconv.Atoi(strings.TrimSpace(v)); err == nil {
		if s <= 0 {
			return 0
		}
		return time.Duration(s) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		return max(t.Sub(now), 0)
	}
	return 0
}

// decodeAPIError turns a non-2xx response into an *APIError.
func decodeAPIError(r request, resp *resty.Response) *APIError {
	ae := &APIError{Method: r.method, Path: r.path, StatusCode: resp.StatusCode()}
	body := resp.Body()
	if err := json.Unmarshal(body, &ae.Detail); err != nil || (ae.Detail.Code == "" && ae.Detail.Message == "") {
		// Not an api.Error: keep the start of the body, it is often the
		// only clue (a proxy's error page, a plain-text probe answer).
		ae.Detail = api.Error{Message: snippet(body)}
		if ae.Detail.Message == "" {
			ae.Detail.Message = http.StatusText(ae.StatusCode)
		}
	}
	if ae.Detail.Code == "" {
		ae.Detail.Code = codeForStatus(ae.StatusCode)
	}
	return ae
}

func snippet(b []byte) string {
	const limit = 200
	s := strings.Join(strings.Fields(string(b)), " ")
	if len(s) > limit {
		s = s[:limit] + "..."
	}
	return s
}

// decodeJSON decodes a 2xx body into v.
func decodeJSON(r request, resp *resty.Response, v any) error {
	if err := json.Unmarshal(resp.Body(), v); err != nil {
		return fmt.Errorf("%s %s: decode answer: %w", r.method, r.path, err)
	}
	return nil
}

// restyLogger routes resty's own messages to the client's logger.
type restyLogger struct{ l *slog.Logger }

func (r restyLogger) Errorf(format string, v ...any) { r.l.Error(fmt.Sprintf(format, v...)) }
func (r restyLogger) Warnf(format string, v ...any)  { r.l.Warn(fmt.Sprintf(format, v...)) }
func (r restyLogger) Debugf(format string, v ...any) { r.l.Debug(fmt.Sprintf(format, v...)) }

// call sends one request (in, when non-nil, is the JSON body) and decodes
// the JSON answer into a T. created reports HTTP 201. what names the
// operation in encoding errors ("put service web").
func call[T any](ctx context.Context, c *Client, method, path string, query url.Values, in any, what string) (out T, created bool, err error) {
	r := request{method: method, path: path, query: query}
	if in != nil {
		if r.body, err = json.Marshal(in); err != nil {
			return out, false, fmt.Errorf("%s: encode: %w", what, err)
		}
	}
	resp, err := c.do(ctx, r)
	if err != nil {
		return out, false, err
	}
	if err := decodeJSON(r, resp, &out); err != nil {
		return out, false, err
	}
	return out, resp.StatusCode() == http.StatusCreated, nil
}

// Package apiserver is xlbd's REST API v1 over net/http: routing, request
// decoding and limits, error bodies, authentication and metrics. The
// desired-state logic lives behind the Core interface (internal/daemon).
package apiserver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/xlb-dev/xlb/api"
	"github.com/xlb-dev/xlb/dataplane"
)

// Body limits (documented in docs/api.md). A bulk replace carries every
// service of a cluster, so it gets more room.
const (
	MaxBodyBytes     = 4 << 20
	MaxBulkBodyBytes = 64 << 20
	DefaultFlowLimit = 1000
	MaxFlowLimit     = 10000
)

// Core is what the handlers need from the daemon (implemented by
// daemon.Manager). Errors that are *api.Error are sent as they are; any
// other error is a 500.
type Core interface {
	PutService(ctx context.Context, s api.Service) (api.Service, bool, error)
	GetService(ctx context.Context, name string) (api.Service, error)
	ListServices(ctx context.Context, selector map[string]string) ([]api.Service, error)
	DeleteService(ctx context.Context, name string) error
	ReplaceServices(ctx context.Context, req api.BulkReplace) (api.BulkResult, error)
	Flows(ctx context.Context, f dataplane.FlowFilter) (api.FlowList, error)
	Status(ctx context.Context) api.Status
	Ready() (bool, string)
}

// BGPCore is what the BGP handlers need (implemented by
// daemon.BGPController). Nil in Options: the BGP routes answer 503.
type BGPCore interface {
	GetBGP(ctx context.Context) (api.BGPStatus, error)
	PutBGP(ctx context.Context, g api.BGPGlobal) (api.BGPGlobal, error)
	DeleteBGP(ctx context.Context) error
	ListBGPPeers(ctx context.Context) (api.BGPPeerList, error)
	ReplaceBGPPeers(ctx context.Context, req api.BGPPeerReplace) (api.BGPPeerList, error)
	PutBGPPeer(ctx context.Context, address string, p api.BGPPeer) (api.BGPPeerStatus, bool, error)
	DeleteBGPPeer(ctx context.Context, address string) error
}

// Options configure a Server.
type Options struct {
	Core   Core
	BGP    BGPCore
	Logger *slog.Logger
	// Token, when non-empty, is the bearer token every request except
	// /healthz and /readyz must carry.
	Token []byte
	// RequireClientCert: every request except /healthz and /readyz must
	// come over TLS with a client certificate verified against the client
	// CA (the TLS layer verifies any certificate that is presented).
	RequireClientCert bool
}

// Route is one method + path the server answers.
type Route struct {
	Method string
	Path   string // net/http pattern syntax, also the OpenAPI path
	// Public routes need no authentication.
	Public  bool
	handler http.HandlerFunc
}

// Server is the HTTP API.
type Server struct {
	core     Core
	bgp      BGPCore
	log      *slog.Logger
	auth     authenticator
	routes   []Route
	handler  http.Handler
	registry *prometheus.Registry
	metrics  *apiMetrics
}

// New builds the server and its private Prometheus registry.
func New(opts Options) *Server {
	s := &Server{core: opts.Core, bgp: opts.BGP, log: opts.Logger, auth: newAuthenticator(opts.Token, opts.RequireClientCert)}
	if s.log == nil {
		s.log = slog.Default()
	}
	s.registry, s.metrics = newRegistry(opts.Core, opts.BGP)
	s.routes = []Route{
		{Method: http.MethodGet, Path: "/healthz", Public: true, handler: s.healthz},
		{Method: http.MethodGet, Path: "/readyz", Public: true, handler: s.readyz},
		{Method: http.MethodGet, Path: "/metrics", handler: s.metricsHandler().ServeHTTP},
		{Method: http.MethodGet, Path: "/v1/openapi.json", handler: s.openapi},
		{Method: http.MethodGet, Path: "/v1/status", handler: s.status},
		{Method: http.MethodGet, Path: "/v1/services", handler: s.listServices},
		{Method: http.MethodPut, Path: "/v1/services", handler: s.bulkReplace},
		{Method: http.MethodGet, Path: "/v1/services/{name}", handler: s.getService},
		{Method: http.MethodPut, Path: "/v1/services/{name}", handler: s.putService},
		{Method: http.MethodDelete, Path: "/v1/services/{name}", handler: s.deleteService},
		{Method: http.MethodGet, Path: "/v1/conntrack", handler: s.conntrack},
		{Method: http.MethodGet, Path: "/v1/bgp", handler: s.getBGP},
		{Method: http.MethodPut, Path: "/v1/bgp", handler: s.putBGP},
		{Method: http.MethodDelete, Path: "/v1/bgp", handler: s.deleteBGP},
		{Method: http.MethodGet, Path: "/v1/bgp/peers", handler: s.listBGPPeers},
		{Method: http.MethodPut, Path: "/v1/bgp/peers", handler: s.replaceBGPPeers},
		{Method: http.MethodPut, Path: "/v1/bgp/peers/{address}", handler: s.putBGPPeer},
		{Method: http.MethodDelete, Path: "/v1/bgp/peers/{address}", handler: s.deleteBGPPeer},
	}
	// Patterns are registered without a method so that a wrong method
	// gets our 405 body (with Allow) instead of net/http's plain text.
	mux := http.NewServeMux()
	byPath := map[string][]Route{}
	var paths []string
	for _, r := range s.routes {
		if _, ok := byPath[r.Path]; !ok {
			paths = append(paths, r.Path)
		}
		byPath[r.Path] = append(byPath[r.Path], r)
	}
	for _, p := range paths {
		mux.Handle(p, s.dispatch(p, byPath[p]))
	}
	mux.Handle("/", s.instrument("other", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, &api.Error{Code: api.CodeNotFound, Message: "no such endpoint: " + r.URL.Path, Allowed: "the paths listed in /v1/openapi.json"})
	}))
	s.handler = mux
	return s
}

// Handler is the root handler.
func (s *Server) Handler() http.Handler { return s.handler }

// Routes lists what the server answers (the OpenAPI test compares it with
// docs/openapi.json).
func (s *Server) Routes() []Route { return append([]Route(nil), s.routes...) }

// Registry is the server's Prometheus registry (other components of the
// daemon may register their collectors here).
func (s *Server) Registry() *prometheus.Registry { return s.registry }

func (s *Server) dispatch(path string, routes []Route) http.Handler {
	var allow []string
	for _, r := range routes {
		allow = append(allow, r.Method)
	}
	sort.Strings(allow)
	return s.instrument(path, func(w http.ResponseWriter, r *http.Request) {
		for _, rt := range routes {
			if rt.Method != r.Method {
				continue
			}
			if !rt.Public {
				if err := s.auth.check(r); err != nil {
					w.Header().Set("WWW-Authenticate", `Bearer realm="xlbd"`)
					writeError(w, err)
					return
				}
			}
			rt.handler(w, r)
			return
		}
		w.Header().Set("Allow", strings.Join(allow, ", "))
		writeError(w, &api.Error{Code: api.CodeMethodNotAllowed, Message: "method " + r.Method + " not allowed on " + path,
			Value: r.Method, Allowed: strings.Join(allow, ", ")})
	})
}

// statusRecorder captures the status code for metrics and logs.
type statusRecorder struct {
	http.ResponseWriter
	code int
}

func (r *statusRecorder) WriteHeader(code int) {
	if r.code == 0 {
		r.code = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *statusRecorder) Write(b []byte) (int, error) {
	if r.code == 0 {
		r.code = http.StatusOK
	}
	return r.ResponseWriter.Write(b)
}

func (s *Server) instrument(route string, h http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w}
		h(rec, r)
		if rec.code == 0 {
			rec.code = http.StatusOK
		}
		code := strconv.Itoa(rec.code)
		elapsed := time.Since(start)
		s.metrics.requests.WithLabelValues(r.Method, route, code).Inc()
		s.metrics.latency.WithLabelValues(r.Method, route, code).Observe(elapsed.Seconds())
		level := slog.LevelDebug
		if rec.code >= 500 {
			level = slog.LevelWarn
		}
		s.log.Log(r.Context(), level, "api request", "method", r.Method, "path", r.URL.Path, "code", rec.code,
			"duration", elapsed, "remote", r.RemoteAddr)
	})
}

var statusByCode = map[string]int{
	api.CodeInvalid:          http.StatusBadRequest,
	api.CodeNotFound:         http.StatusNotFound,
	api.CodeConflict:         http.StatusConflict,
	api.CodeUnauthorized:     http.StatusUnauthorized,
	api.CodeTooLarge:         http.StatusRequestEntityTooLarge,
	api.CodeMethodNotAllowed: http.StatusMethodNotAllowed,
	api.CodeUnavailable:      http.StatusServiceUnavailable,
	api.CodeInternal:         http.StatusInternalServerError,
}

// writeError sends err as an api.Error body with the matching status.
func writeError(w http.ResponseWriter, err error) {
	var e *api.Error
	if !errors.As(err, &e) {
		e = &api.Error{Code: api.CodeInternal, Message: err.Error()}
	}
	status, ok := statusByCode[e.Code]
	if !ok {
		status = http.StatusInternalServerError
	}
	writeJSON(w, status, e)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		status = http.StatusInternalServerError
		body, _ = json.Marshal(api.Error{Code: api.CodeInternal, Message: "encoding the response failed: " + err.Error()})
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)+1))
	w.WriteHeader(status)
	_, _ = w.Write(append(body, '\n'))
}

// readBody reads at most limit bytes and decodes them strictly into v.
func readBody(w http.ResponseWriter, r *http.Request, limit int64, v any) error {
	data, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			return &api.Error{Code: api.CodeTooLarge, Message: fmt.Sprintf("request body larger than %d bytes", limit),
				Allowed: fmt.Sprintf("at most %d bytes", limit)}
		}
		return &api.Error{Code: api.CodeInvalid, Message: "reading the request body failed: " + err.Error()}
	}
	return api.DecodeStrict(data, v)
}

// checkQuery rejects query parameters the route does not know, so that a
// typo (?selecter=) is not silently ignored.
func checkQuery(r *http.Request, known ...string) error {
	for k := range r.URL.Query() {
		if !contains(known, k) {
			allowed := strings.Join(known, ", ")
			if allowed == "" {
				allowed = "none"
			}
			return &api.Error{Code: api.CodeInvalid, Field: k, Value: r.URL.Query().Get(k), Message: "unknown query parameter", Allowed: allowed}
		}
	}
	return nil
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

func (s *Server) healthz(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, _ = io.WriteString(w, "ok\n")
}

func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	ready, reason := s.core.Ready()
	if !ready {
		writeError(w, &api.Error{Code: api.CodeUnavailable, Message: "not ready: " + reason})
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, _ = io.WriteString(w, "ok\n")
}

func (s *Server) status(w http.ResponseWriter, r *http.Request) {
	if err := checkQuery(r); err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, s.core.Status(r.Context()))
}

func (s *Server) pathName(r *http.Request) (string, error) {
	name := r.PathValue("name")
	if err := api.ValidateName("name", name); err != nil {
		return "", err
	}
	return name, nil
}

func (s *Server) putService(w http.ResponseWriter, r *http.Request) {
	name, err := s.pathName(r)
	if err == nil {
		err = checkQuery(r)
	}
	var svc api.Service
	if err == nil {
		err = readBody(w, r, MaxBodyBytes, &svc)
	}
	if err == nil && svc.Name != "" && svc.Name != name {
		err = &api.Error{Code: api.CodeInvalid, Field: "name", Value: svc.Name, Message: "body name differs from the name in the path", Allowed: "empty or " + name}
	}
	if err != nil {
		writeError(w, err)
		return
	}
	svc.Name = name
	svc.Status = nil // a GET-modify-PUT round trip carries status; it is not desired state
	out, created, err := s.core.PutService(r.Context(), svc)
	if err != nil {
		writeError(w, err)
		return
	}
	code := http.StatusOK
	if created {
		code = http.StatusCreated
	}
	writeJSON(w, code, out)
}

func (s *Server) getService(w http.ResponseWriter, r *http.Request) {
	name, err := s.pathName(r)
	if err == nil {
		err = checkQuery(r)
	}
	var svc api.Service
	if err == nil {
		svc, err = s.core.GetService(r.Context(), name)
	}
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, svc)
}

func (s *Server) deleteService(w http.ResponseWriter, r *http.Request) {
	name, err := s.pathName(r)
	if err == nil {
		err = checkQuery(r)
	}
	if err == nil {
		err = s.core.DeleteService(r.Context(), name)
	}
	if err != nil {
		writeError(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) listServices(w http.ResponseWriter, r *http.Request) {
	err := checkQuery(r, "selector")
	var sel map[string]string
	if err == nil {
		sel, err = api.ParseSelector(r.URL.Query().Get("selector"))
	}
	var items []api.Service
	if err == nil {
		items, err = s.core.ListServices(r.Context(), sel)
	}
	if err != nil {
		writeError(w, err)
		return
	}
	if items == nil {
		items = []api.Service{}
	}
	writeJSON(w, http.StatusOK, api.ServiceList{Items: items})
}

func (s *Server) bulkReplace(w http.ResponseWriter, r *http.Request) {
	err := checkQuery(r)
	var req api.BulkReplace
	if err == nil {
		err = readBody(w, r, MaxBulkBodyBytes, &req)
	}
	var res api.BulkResult
	if err == nil {
		for i := range req.Services {
			req.Services[i].Status = nil
		}
		res, err = s.core.ReplaceServices(r.Context(), req)
	}
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, res)
}

func (s *Server) conntrack(w http.ResponseWriter, r *http.Request) {
	if err := checkQuery(r, "vip", "client", "limit", "after"); err != nil {
		writeError(w, err)
		return
	}
	q := r.URL.Query()
	f := dataplane.FlowFilter{Limit: DefaultFlowLimit, After: q.Get("after")}
	for _, p := range []struct {
		name string
		dst  *netip.Addr
		port *uint16
	}{{"vip", &f.VIP, &f.VIPPort}, {"client", &f.Client, &f.ClientPort}} {
		if v := q.Get(p.name); v != "" {
			// ADDR or ADDR:PORT ([v6]:port), as xlbctl documents.
			a, err := netip.ParseAddr(v)
			if err != nil {
				ap, perr := netip.ParseAddrPort(v)
				a, err = ap.Addr(), perr
				*p.port = ap.Port()
			}
			if err != nil || a.Zone() != "" {
				writeError(w, &api.Error{Code: api.CodeInvalid, Field: p.name, Value: v, Message: "invalid address", Allowed: "an IPv4 or IPv6 address, optionally with a port (ADDR:PORT, [V6]:PORT)"})
				return
			}
			*p.dst = a
		}
	}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > MaxFlowLimit {
			writeError(w, &api.Error{Code: api.CodeInvalid, Field: "limit", Value: v, Message: "invalid limit", Allowed: fmt.Sprintf("1-%d (default %d)", MaxFlowLimit, DefaultFlowLimit)})
			return
		}
		f.Limit = n
	}
	list, err := s.core.Flows(r.Context(), f)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, list)
}

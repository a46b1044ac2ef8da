// Package lbclienttest is an in-memory fake of xlbd's REST API v1 for unit
// tests of its consumers (lbclient, xlbctl, the CCM's provider). It
// implements the wire contract (status codes, api.Error bodies, selectors,
// bulk replace, conntrack paging) with light validation; it is not xlbd and
// says nothing about the datapath. End-to-end tests use the real xlbd.
package lbclienttest

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/xlb-dev/xlb/api"
)

// Request is what the fake recorded of one request.
type Request struct {
	Method        string
	Path          string
	Query         string
	Authorization string
	UserAgent     string
	// ClientCertCN is the common name of the verified client certificate.
	ClientCertCN string
}

// Failure is an injected answer served instead of the real one.
type Failure struct {
	Status     int
	RetryAfter string
	Body       api.Error
}

// Fake is an http.Handler serving the API from memory. Safe for concurrent
// use.
type Fake struct {
	mu            sync.Mutex
	services      map[string]api.Service
	serviceStatus map[string]*api.ServiceStatus
	flows         []api.Flow
	status        api.Status
	ready         bool
	token         string
	failures      []Failure
	requests      []Request
	bgpGlobal     *api.BGPGlobal
	bgpPeers      map[string]api.BGPPeer
	peerStates    map[string]string
}

// NewFake returns an empty, ready fake without authentication.
func NewFake() *Fake {
	return &Fake{
		services:      map[string]api.Service{},
		serviceStatus: map[string]*api.ServiceStatus{},
		bgpPeers:      map[string]api.BGPPeer{},
		peerStates:    map[string]string{},
		ready:         true,
		status:        api.Status{Version: "fake", BootID: "00000000-0000-0000-0000-000000000000", Ready: true},
	}
}

// Start serves f on a loopback httptest server closed at the end of the
// test, and returns its URL.
func (f *Fake) Start(t testing.TB) string {
	t.Helper()
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	return srv.URL
}

// SetToken makes every request require "Authorization: Bearer tok".
func (f *Fake) SetToken(tok string) { f.mu.Lock(); f.token = tok; f.mu.Unlock() }

// SetReady sets the /readyz answer and Status.Ready.
func (f *Fake) SetReady(r bool) { f.mu.Lock(); f.ready = r; f.mu.Unlock() }

// SetStatus sets the /v1/status body (Services is filled in live).
func (f *Fake) SetStatus(s api.Status) { f.mu.Lock(); f.status = s; f.mu.Unlock() }

// SetFlows sets the conntrack table.
func (f *Fake) SetFlows(flows []api.Flow) {
	f.mu.Lock()
	f.flows = slices.Clone(flows)
	f.mu.Unlock()
}

// SetServiceStatus sets the live status reported for a service.
func (f *Fake) SetServiceStatus(name string, st *api.ServiceStatus) {
	f.mu.Lock()
	f.serviceStatus[name] = st
	f.mu.Unlock()
}

// FailNext queues answers served, in order, to the next requests.
func (f *Fake) FailNext(fs ...Failure) {
	f.mu.Lock()
	f.failures = append(f.failures, fs...)
	f.mu.Unlock()
}

// Requests returns what was received so far.
func (f *Fake) Requests() []Request {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.requests)
}

// Service returns the stored service (without status).
func (f *Fake) Service(name string) (api.Service, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, ok := f.services[name]
	return s, ok
}

// Names returns the stored service names, sorted.
func (f *Fake) Names() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	names := make([]string, 0, len(f.services))
	for n := range f.services {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, status int, e api.Error) { writeJSON(w, status, e) }

func (f *Fake) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	rec := Request{Method: r.Method, Path: r.URL.Path, Query: r.URL.RawQuery,
		Authorization: r.Header.Get("Authorization"), UserAgent: r.UserAgent()}
	if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
		rec.ClientCertCN = r.TLS.PeerCertificates[0].Subject.CommonName
	}
	f.requests = append(f.requests, rec)

	if f.token != "" && r.Header.Get("Authorization") != "Bearer "+f.token {
		writeError(w, http.StatusUnauthorized, api.Error{Code: "unauthorized", Message: "missing or wrong bearer token"})
		return
	}
	if len(f.failures) > 0 {
		fl := f.failures[0]
		f.failures = f.failures[1:]
		if fl.RetryAfter != "" {
			w.Header().Set("Retry-After", fl.RetryAfter)
		}
		writeError(w, fl.Status, fl.Body)
		return
	}

	path := r.URL.Path
	switch {
	case path == "/healthz" && r.Method == http.MethodGet:
		_, _ = w.Write([]byte("ok\n"))
	case path == "/readyz" && r.Method == http.MethodGet:
		if !f.ready {
			http.Error(w, "not ready: datapath not attached", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	case path == "/metrics" && r.Method == http.MethodGet:
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		fmt.Fprintf(w, "# TYPE xlb_services gauge\nxlb_services %d\n", len(f.services))
	case path == "/v1/openapi.json" && r.Method == http.MethodGet:
		writeJSON(w, http.StatusOK, map[string]any{"openapi": "3.0.3", "info": map[string]string{"title": "xlbd", "version": api.Version}})
	case path == "/v1/status" && r.Method == http.MethodGet:
		st := f.status
		st.Ready = f.ready
		st.Services = len(f.services)
		writeJSON(w, http.StatusOK, st)
	case path == "/v1/conntrack" && r.Method == http.MethodGet:
		f.conntrack(w, r)
	case path == "/v1/bgp" || strings.HasPrefix(path, "/v1/bgp/"):
		f.bgp(w, r)
	case path == "/v1/services" && r.Method == http.MethodGet:
		f.list(w, r)
	case path == "/v1/services" && r.Method == http.MethodPut:
		f.bulk(w, r)
	case strings.HasPrefix(path, "/v1/services/"):
		name := strings.TrimPrefix(path, "/v1/services/")
		switch r.Method {
		case http.MethodGet:
			s, ok := f.services[name]
			if !ok {
				writeError(w, http.StatusNotFound, api.Error{Code: "not_found", Message: fmt.Sprintf("service %q not found", name)})
				return
			}
			writeJSON(w, http.StatusOK, f.withStatus(s))
		case http.MethodPut:
			f.put(w, r, name)
		case http.MethodDelete:
			if _, ok := f.services[name]; !ok {
				writeError(w, http.StatusNotFound, api.Error{Code: "not_found", Message: fmt.Sprintf("service %q not found", name)})
				return
			}
			delete(f.services, name)
			w.WriteHeader(http.StatusNoContent)
		default:
			writeError(w, http.StatusMethodNotAllowed, api.Error{Code: "invalid", Message: "method not allowed", Allowed: "GET, PUT, DELETE"})
		}
	default:
		writeError(w, http.StatusNotFound, api.Error{Code: "not_found", Message: "no such endpoint: " + r.Method + " " + path})
	}
}

func (f *Fake) withStatus(s api.Service) api.Service {
	if st := f.serviceStatus[s.Name]; st != nil {
		c := *st
		s.Status = &c
		return s
	}
	st := &api.ServiceStatus{Backends: []api.BackendStatus{}}
	for _, b := range s.Spec.Backends {
		state := "active"
		if b.Weight != nil && *b.Weight == 0 {
			state = "draining"
		}
		st.Backends = append(st.Backends, api.BackendStatus{Address: b.Address, Port: b.Port, State: state})
	}
	s.Status = st
	return s
}

func decodeStrict(r *http.Request, v any) *api.Error {
	dec := json.NewDecoder(http.MaxBytesReader(nil, r.Body, 1<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return &api.Error{Code: "invalid", Message: "body: " + err.Error()}
	}
	return nil
}

func (f *Fake) put(w http.ResponseWriter, r *http.Request, name string) {
	var s api.Service
	if e := decodeStrict(r, &s); e != nil {
		writeError(w, http.StatusBadRequest, *e)
		return
	}
	if e := validate(s, ""); e != nil {
		writeError(w, http.StatusBadRequest, *e)
		return
	}
	if s.Name != name {
		writeError(w, http.StatusBadRequest, api.Error{Code: "invalid", Message: "name must equal the name in the path", Field: "name", Value: s.Name, Allowed: name})
		return
	}
	_, existed := f.services[name]
	s.Status = nil
	f.services[name] = s
	status := http.StatusCreated
	if existed {
		status = http.StatusOK
	}
	writeJSON(w, status, f.withStatus(s))
}

func matches(labels, sel map[string]string) bool {
	for k, v := range sel {
		if labels[k] != v {
			return false
		}
	}
	return true
}

func parseSelector(s string) (map[string]string, bool) {
	out := map[string]string{}
	if s == "" {
		return out, true
	}
	for _, p := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(p, "=")
		if !ok || k == "" {
			return nil, false
		}
		out[k] = v
	}
	return out, true
}

func (f *Fake) sortedNames() []string {
	names := make([]string, 0, len(f.services))
	for n := range f.services {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

func (f *Fake) list(w http.ResponseWriter, r *http.Request) {
	sel, ok := parseSelector(r.URL.Query().Get("selector"))
	if !ok {
		writeError(w, http.StatusBadRequest, api.Error{Code: "invalid", Message: "bad selector", Field: "selector", Value: r.URL.Query().Get("selector"), Allowed: "k=v[,k2=v2...]"})
		return
	}
	out := api.ServiceList{Items: []api.Service{}}
	for _, n := range f.sortedNames() {
		if s := f.services[n]; matches(s.Labels, sel) {
			out.Items = append(out.Items, f.withStatus(s))
		}
	}
	writeJSON(w, http.StatusOK, out)
}

func (f *Fake) bulk(w http.ResponseWriter, r *http.Request) {
	var b api.BulkReplace
	if e := decodeStrict(r, &b); e != nil {
		writeError(w, http.StatusBadRequest, *e)
		return
	}
	seen := map[string]bool{}
	for i, s := range b.Services {
		prefix := fmt.Sprintf("services[%d].", i)
		if e := validate(s, prefix); e != nil {
			writeError(w, http.StatusBadRequest, *e)
			return
		}
		if !matches(s.Labels, b.Selector) {
			writeError(w, http.StatusBadRequest, api.Error{Code: "invalid", Message: "service does not match the selector", Field: prefix + "labels"})
			return
		}
		if seen[s.Name] {
			writeError(w, http.StatusBadRequest, api.Error{Code: "invalid", Message: "duplicate name", Field: prefix + "name", Value: s.Name})
			return
		}
		seen[s.Name] = true
	}
	res := api.BulkResult{Created: []string{}, Updated: []string{}, Unchanged: []string{}, Deleted: []string{}}
	for _, n := range f.sortedNames() {
		if s := f.services[n]; matches(s.Labels, b.Selector) && !seen[n] {
			delete(f.services, n)
			res.Deleted = append(res.Deleted, n)
		}
	}
	for _, s := range b.Services {
		s.Status = nil
		old, ok := f.services[s.Name]
		switch {
		case !ok:
			res.Created = append(res.Created, s.Name)
		case reflect.DeepEqual(old, s):
			res.Unchanged = append(res.Unchanged, s.Name)
		default:
			res.Updated = append(res.Updated, s.Name)
		}
		f.services[s.Name] = s
	}
	writeJSON(w, http.StatusOK, res)
}

// hostMatches reports whether "addr:port" matches a filter "addr" or
// "addr:port".
func hostMatches(addrPort, filter string) bool {
	if filter == "" || addrPort == filter {
		return true
	}
	ap, err := netip.ParseAddrPort(addrPort)
	if err != nil {
		return false
	}
	a, err := netip.ParseAddr(filter)
	return err == nil && ap.Addr() == a
}

func (f *Fake) conntrack(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	limit := 100
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			writeError(w, http.StatusBadRequest, api.Error{Code: "invalid", Message: "bad limit", Field: "limit", Value: v, Allowed: "1-10000"})
			return
		}
		limit = n
	}
	start := 0
	if v := q.Get("after"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			writeError(w, http.StatusBadRequest, api.Error{Code: "invalid", Message: "bad cursor", Field: "after", Value: v})
			return
		}
		start = n
	}
	out := api.FlowList{Items: []api.Flow{}}
	for i := start; i < len(f.flows); i++ {
		fl := f.flows[i]
		if !hostMatches(fl.VIP, q.Get("vip")) || !hostMatches(fl.Client, q.Get("client")) {
			continue
		}
		if len(out.Items) == limit {
			out.Next = strconv.Itoa(i)
			break
		}
		out.Items = append(out.Items, fl)
	}
	writeJSON(w, http.StatusOK, out)
}

// validate runs the API's own validation (package api), so that the fake
// rejects exactly what xlbd rejects for a single service. SNAT defaults
// are xlbd's configuration, which the fake does not have.
func validate(s api.Service, prefix string) *api.Error {
	err := api.ValidateService(&s, api.ValidateOptions{FieldPrefix: prefix, SNATOptional: true})
	if err == nil {
		return nil
	}
	var ae *api.Error
	if errors.As(err, &ae) {
		return ae
	}
	return &api.Error{Code: api.CodeInvalid, Message: err.Error()}
}

// SetPeerState sets the session state the fake reports for a peer
// (default "idle").
func (f *Fake) SetPeerState(address, state string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.peerStates[address] = state
}

// BGPPeer returns a stored peer, password included.
func (f *Fake) BGPPeer(address string) (api.BGPPeer, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	p, ok := f.bgpPeers[address]
	return p, ok
}

func (f *Fake) peerStatus(p api.BGPPeer) api.BGPPeerStatus {
	st := api.BGPPeerStatus{BGPPeer: p, PasswordSet: p.Password != "", State: f.peerStates[p.Address]}
	st.Password = ""
	if st.State == "" {
		st.State = "idle"
	}
	return st
}

func (f *Fake) peerList() api.BGPPeerList {
	addrs := make([]string, 0, len(f.bgpPeers))
	for a := range f.bgpPeers {
		addrs = append(addrs, a)
	}
	slices.Sort(addrs)
	out := api.BGPPeerList{Items: []api.BGPPeerStatus{}}
	for _, a := range addrs {
		out.Items = append(out.Items, f.peerStatus(f.bgpPeers[a]))
	}
	return out
}

func validPeer(p api.BGPPeer, prefix string) *api.Error {
	if a, err := netip.ParseAddr(p.Address); err != nil || a.Zone() != "" {
		return &api.Error{Code: "invalid", Field: prefix + "address", Value: p.Address, Message: "invalid peer address", Allowed: "a unicast IPv4 or IPv6 address without zone"}
	}
	if p.ASN == 0 || p.ASN == 4294967295 {
		return &api.Error{Code: "invalid", Field: prefix + "asn", Value: strconv.FormatUint(uint64(p.ASN), 10), Message: "invalid asn", Allowed: "1-4294967294"}
	}
	return nil
}

// bgp serves /v1/bgp and /v1/bgp/peers[/{address}] (light validation).
func (f *Fake) bgp(w http.ResponseWriter, r *http.Request) {
	path := r.URL.Path
	switch {
	case path == "/v1/bgp" && r.Method == http.MethodGet:
		st := api.BGPStatus{Global: f.bgpGlobal, Peers: f.peerList().Items, Announced: []string{}}
		writeJSON(w, http.StatusOK, st)
	case path == "/v1/bgp" && r.Method == http.MethodPut:
		var g api.BGPGlobal
		if e := decodeStrict(r, &g); e != nil {
			writeError(w, http.StatusBadRequest, *e)
			return
		}
		if a, err := netip.ParseAddr(g.RouterID); err != nil || !a.Is4() {
			writeError(w, http.StatusBadRequest, api.Error{Code: "invalid", Field: "routerID", Value: g.RouterID, Message: "invalid router ID", Allowed: "an IPv4 address"})
			return
		}
		if g.ASN == 0 || g.ASN == 4294967295 {
			writeError(w, http.StatusBadRequest, api.Error{Code: "invalid", Field: "asn", Value: strconv.FormatUint(uint64(g.ASN), 10), Message: "invalid asn", Allowed: "1-4294967294"})
			return
		}
		f.bgpGlobal = &g
		writeJSON(w, http.StatusOK, g)
	case path == "/v1/bgp" && r.Method == http.MethodDelete:
		f.bgpGlobal = nil
		w.WriteHeader(http.StatusNoContent)
	case path == "/v1/bgp/peers" && r.Method == http.MethodGet:
		writeJSON(w, http.StatusOK, f.peerList())
	case path == "/v1/bgp/peers" && r.Method == http.MethodPut:
		var req api.BGPPeerReplace
		if e := decodeStrict(r, &req); e != nil {
			writeError(w, http.StatusBadRequest, *e)
			return
		}
		next := map[string]api.BGPPeer{}
		for i, p := range req.Items {
			if e := validPeer(p, fmt.Sprintf("items[%d].", i)); e != nil {
				writeError(w, http.StatusBadRequest, *e)
				return
			}
			next[p.Address] = p
		}
		f.bgpPeers = next
		writeJSON(w, http.StatusOK, f.peerList())
	case strings.HasPrefix(path, "/v1/bgp/peers/"):
		addr := strings.TrimPrefix(path, "/v1/bgp/peers/")
		switch r.Method {
		case http.MethodPut:
			var p api.BGPPeer
			if e := decodeStrict(r, &p); e != nil {
				writeError(w, http.StatusBadRequest, *e)
				return
			}
			if p.Address == "" {
				p.Address = addr
			}
			if p.Address != addr {
				writeError(w, http.StatusBadRequest, api.Error{Code: "invalid", Field: "address", Value: p.Address, Message: "body address differs from the address in the path", Allowed: "empty or " + addr})
				return
			}
			if e := validPeer(p, ""); e != nil {
				writeError(w, http.StatusBadRequest, *e)
				return
			}
			_, exists := f.bgpPeers[addr]
			f.bgpPeers[addr] = p
			code := http.StatusOK
			if !exists {
				code = http.StatusCreated
			}
			writeJSON(w, code, f.peerStatus(p))
		case http.MethodDelete:
			if _, ok := f.bgpPeers[addr]; !ok {
				writeError(w, http.StatusNotFound, api.Error{Code: "not_found", Field: "address", Value: addr, Message: "bgp peer " + addr + " not found"})
				return
			}
			delete(f.bgpPeers, addr)
			w.WriteHeader(http.StatusNoContent)
		default:
			writeError(w, http.StatusMethodNotAllowed, api.Error{Code: "method_not_allowed", Message: "method not allowed", Allowed: "PUT, DELETE"})
		}
	default:
		writeError(w, http.StatusMethodNotAllowed, api.Error{Code: "method_not_allowed", Message: "method " + r.Method + " not allowed on " + path})
	}
}
